"""Text classification sources: SST-2 and AG News, tokenized for the configured backbone.

Files (``data.dir``), in the formats the public releases use:

- ``sst2``: ``train.tsv`` and ``dev.tsv`` with a header ``sentence<TAB>label``
  (label 0/1); ``dev.tsv`` is the test split.
- ``agnews``: TSV without header, ``text<TAB>label_name`` with the names World,
  Sports, Business, Sci/Tech. ``train.tsv`` is the training split when present;
  with only ``dev.tsv`` and ``test.tsv`` (the offline copy), ``dev.tsv`` trains.

Without ``data.dir`` the Hugging Face ``datasets`` hub copies are used when that
package is installed and online. ``x`` holds token ids (N x L, int64) padded
with the tokenizer's pad id to the longest example (at most ``data.max_length``).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import torch

from featherfl.config import ConfigError
from featherfl.data.dataset import Dataset, register_source

AGNEWS_LABELS = ("World", "Sports", "Business", "Sci/Tech")


def _read_tsv(path: Path, header: bool) -> list[list[str]]:
    """Rows of a two-column TSV; a missing, non-UTF-8, empty or header-only file is a ConfigError."""
    if not path.is_file():
        raise ConfigError(f"config key 'data.dir': missing {path}")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path} is not UTF-8 text (byte {e.start})") from None
    rows = [r for r in csv.reader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE) if r]
    if header:
        rows = rows[1:]
    if not rows:
        raise ConfigError(f"{path} holds no examples" + (" (only a header)" if header and text.strip() else ""))
    return rows


def _checked_rows(path: Path, rows: list[list[str]], label_of, expected: str) -> tuple[list[str], list[int]]:
    """Every row must be ``text<TAB>label`` with a known label; the first bad row is named."""
    texts, labels = [], []
    for i, r in enumerate(rows, 1):
        label = label_of(r[1]) if len(r) == 2 else None
        if label is None or not r[0].strip():
            raise ConfigError(f"{path}: row {i} is not 'text<TAB>{expected}' (got {len(r)} columns{', label ' + repr(r[1][:20]) if len(r) == 2 else ''})")
        texts.append(r[0])
        labels.append(label)
    return texts, labels


def _sst2_rows(root: Path, split: str) -> tuple[list[str], list[int]]:
    path = root / f"{split}.tsv"
    return _checked_rows(path, _read_tsv(path, header=True), lambda v: {"0": 0, "1": 1}.get(v.strip()), "0|1")


def _agnews_rows(root: Path, split: str) -> tuple[list[str], list[int]]:
    path = root / f"{split}.tsv"
    index = {n: i for i, n in enumerate(AGNEWS_LABELS)}
    return _checked_rows(path, _read_tsv(path, header=False), lambda v: index.get(v.strip()), "|".join(AGNEWS_LABELS))


def _from_hub(name: str) -> tuple[tuple[list[str], list[int]], tuple[list[str], list[int]]]:
    try:
        import datasets
    except ImportError:
        raise ConfigError(f"{name}: set data.dir to a folder with the TSV files (see docs/methods/fedpeft.md), or install `datasets` when online") from None
    try:
        if name == "sst2":
            d = datasets.load_dataset("glue", "sst2")
            return (d["train"]["sentence"], d["train"]["label"]), (d["validation"]["sentence"], d["validation"]["label"])
        d = datasets.load_dataset("ag_news")
        return (d["train"]["text"], d["train"]["label"]), (d["test"]["text"], d["test"]["label"])
    except Exception as e:  # offline, hub errors
        raise ConfigError(f"{name}: could not fetch from the Hugging Face hub ({e.__class__.__name__}); set data.dir") from None


def tokenize(texts: list[str], tokenizer, max_length: int, length: int | None = None) -> torch.Tensor:
    """Token ids padded with the pad id to ``length`` (default: the longest, at most ``max_length``)."""
    enc = tokenizer(list(texts), truncation=True, max_length=max_length, padding=False)["input_ids"]
    n = length or max((len(e) for e in enc), default=1)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out = torch.full((len(enc), n), pad, dtype=torch.int64)
    for i, e in enumerate(enc):
        out[i, : min(n, len(e))] = torch.tensor(e[:n], dtype=torch.int64)
    return out


def check_text_model(cfg, name: str) -> None:
    """Token ids feed a text encoder (FedPEFT's ``model.pretrained``) or a model of your own;
    the built-in vision models would fail on them mid-run, so that is a ConfigError now."""
    from featherfl.plugins import is_dotted

    if cfg["algorithm"] == "fedpeft" or (cfg["algorithm"] == "baffle" and cfg["baffle.peft"]):
        return
    if is_dotted(cfg["model.name"]) or cfg["model.name"].startswith("python-"):
        return
    raise ConfigError(
        f"dataset {name} holds text (token ids), which the built-in model {cfg['model.name']!r} cannot read: "
        "train with algorithm = fedpeft (or baffle with baffle.peft = true) and a text encoder in model.pretrained, or name your own model (model.name = module:build)"
    )


def token_ids(cfg, train: list[str], test: list[str] | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Both splits tokenized with ``model.pretrained``'s tokenizer and padded to one length."""
    from featherfl.models.text import load_tokenizer

    tok = load_tokenizer(cfg["model.pretrained"])
    max_len = cfg["data.max_length"]
    trx = tokenize(train, tok, max_len)
    if test is None:
        return trx, None
    tex = tokenize(test, tok, max_len)
    n = max(trx.shape[1], tex.shape[1])
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    trx, tex = (torch.nn.functional.pad(t, (0, n - t.shape[1]), value=pad) for t in (trx, tex))
    return trx, tex


def _load(cfg, name: str) -> Dataset:
    check_text_model(cfg, name)
    if cfg["data.dir"]:
        root = Path(cfg["data.dir"]).expanduser()
        if name == "sst2":
            train, test = _sst2_rows(root, "train"), _sst2_rows(root, "dev")
        else:
            train = _agnews_rows(root, "train" if (root / "train.tsv").is_file() else "dev")
            test = _agnews_rows(root, "test")
    else:
        train, test = _from_hub(name)
    trx, tex = token_ids(cfg, train[0], test[0])
    n = trx.shape[1]
    classes = 2 if name == "sst2" else 4
    note = f"{name} from {cfg['data.dir'] or 'the Hugging Face hub'}, {len(train[1])} train / {len(test[1])} test, <= {n} tokens"
    return Dataset(name, trx, torch.tensor(train[1]), tex, torch.tensor(test[1]), classes, (n,), note)


register_source("sst2", lambda cfg: _load(cfg, "sst2"))
register_source("agnews", lambda cfg: _load(cfg, "agnews"))
