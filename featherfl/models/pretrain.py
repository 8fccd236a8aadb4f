"""Pretraining of the project's own vision backbone (``featherfl pretrain``) and its cache.

FedPEFT needs a backbone pretrained on a *different* task from the one the
federation fine-tunes on (Sun et al. 2022 pretrain on ImageNet and fine-tune on
CIFAR, Resisc45, ...). Offline, the default here is:

    source task: classify the digits 0-4 of the training split (centrally);
    target task: classify all ten digits (federated).

The backbone never sees a label 5-9 nor any test image. Training takes a few
seconds on a CPU; the result is cached under ``$FEATHERFL_CACHE`` (default
``~/.cache/featherfl``) in ``backbones/`` as safetensors with the architecture
in its metadata, so ``featherfl run --algorithm fedpeft`` works out of the box.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from featherfl.config import ConfigError

DEFAULT_SOURCE_CLASSES = (0, 1, 2, 3, 4)
DEFAULT_EPOCHS = 10
PRETRAIN_SEED = 20221004


def cache_dir() -> Path:
    return Path(os.environ.get("FEATHERFL_CACHE", Path.home() / ".cache" / "featherfl")).expanduser()


#: Sources whose data is whatever ``data.dir`` holds: their backbones are cached per folder.
FOLDER_SOURCES = ("imagefolder", "npz", "csv", "hf")


def data_identity(cfg) -> str:
    """What besides the dataset's name decides its training split: for your own files the
    folder and how it is read (two ImageFolders must not share one cached backbone)."""
    if cfg["dataset"] not in FOLDER_SOURCES:
        return ""
    folder = str(Path(cfg["data.dir"]).expanduser().resolve()) if cfg["data.dir"] else ""
    return json.dumps([folder, cfg["data.image_size"], cfg["data.label_column"], cfg["data.input_column"], cfg["data.test_fraction"]])


def default_backbone_path(dataset: str, model: str, width: int, source: str = "") -> Path:
    key = json.dumps([dataset, model, width, list(DEFAULT_SOURCE_CLASSES), DEFAULT_EPOCHS, PRETRAIN_SEED] + ([source] if source else []))
    tag = hashlib.blake2b(key.encode(), digest_size=6).hexdigest()
    return cache_dir() / "backbones" / f"{model}-{dataset}-{tag}.safetensors"


def pretrain(
    x: torch.Tensor,
    y: torch.Tensor,
    model: str = "vit-tiny",
    width: int = 0,
    classes=DEFAULT_SOURCE_CLASSES,
    epochs: int | None = None,
    lr: float = 3e-3,
    batch_size: int = 32,
    seed: int = PRETRAIN_SEED,
) -> tuple[torch.nn.Module, dict]:
    """Train ``model`` centrally on the samples of ``classes`` (relabelled 0..k-1) with Adam."""
    from featherfl.models import build_model

    epochs = DEFAULT_EPOCHS if epochs is None else epochs
    keep = torch.isin(y, torch.tensor(list(classes)))
    xs, ys = x[keep], y[keep]
    remap = {c: i for i, c in enumerate(classes)}
    ys = torch.tensor([remap[int(v)] for v in ys], dtype=torch.int64)
    if len(ys) == 0:
        raise ConfigError(f"pretrain: no training samples with labels {list(classes)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build_model(model, tuple(x.shape[1:]), len(classes), width=width)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is faster than two that contend
    try:
        _fit(net, xs, ys, epochs, lr, batch_size, seed)
    finally:
        torch.set_num_threads(threads)
    net.eval()
    with torch.no_grad():
        acc = float((net(xs).argmax(1) == ys).float().mean())
    meta = {"model": model, "input_shape": list(x.shape[1:]), "arch": getattr(net, "arch", {}), "source_classes": list(classes), "epochs": epochs, "source_train_accuracy": acc}
    return net, meta


def _fit(net, xs, ys, epochs, lr, batch_size, seed) -> None:
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * -(-len(ys) // batch_size))
    gen = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(ys), generator=gen).split(batch_size):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(net(xs[idx]), ys[idx]).backward()
            opt.step()
            sched.step()


def save_backbone(net: torch.nn.Module, meta: dict, path: Path) -> Path:
    """Save the backbone without its source-task head, atomically (temp file + rename)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: v.contiguous() for k, v in net.state_dict().items() if not k.startswith("head.")}
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    save_file(sd, str(tmp), metadata={"featherfl": json.dumps(meta)})
    os.replace(tmp, path)
    return path


def load_backbone(path: str | Path, num_classes: int, input_shape: tuple[int, ...], key: str = "model.pretrained") -> tuple[torch.nn.Module, dict]:
    """Rebuild the backbone from a checkpoint written by :func:`save_backbone` (or a shipped one,
    ``featherfl:<name>``, checked against its SHA-256); the head is new (seed-initialised by the caller's RNG)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from featherfl.models.vit import ViT

    from featherfl.models.shipped import is_shipped, shipped_path

    p = shipped_path(str(path), key) if is_shipped(path) else Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"config key '{key}': no backbone checkpoint at {p} (make one with `featherfl pretrain --out {p}`)")
    try:
        with safe_open(str(p), "pt") as f:
            meta = json.loads((f.metadata() or {}).get("featherfl", "{}"))
        sd = load_file(str(p))
    except Exception as e:  # corrupt or foreign file
        raise ConfigError(f"config key '{key}': cannot read {p} ({e.__class__.__name__})") from None
    if meta.get("model") != "vit-tiny" or "arch" not in meta:
        raise ConfigError(f"config key '{key}': {p} is not a featherfl ViT backbone (write one with `featherfl pretrain`)")
    if tuple(meta["input_shape"]) != tuple(input_shape):
        raise ConfigError(f"config key '{key}': backbone {p} expects inputs {tuple(meta['input_shape'])}, the data has {tuple(input_shape)}")
    a = meta["arch"]
    net = ViT(tuple(input_shape), num_classes, dim=a["dim"], depth=a["depth"], heads=a["heads"], mlp_ratio=a["mlp_ratio"], patch=a["patch"])
    missing, unexpected = net.load_state_dict(sd, strict=False)
    if unexpected or [m for m in missing if not m.startswith("head.")]:
        raise ConfigError(f"config key '{key}': {p} does not fit the ViT (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return net, meta


def default_backbone(cfg, train_x: torch.Tensor | None = None, train_y: torch.Tensor | None = None) -> Path:
    """The cached default backbone for ``cfg``'s dataset, pretraining it first if missing."""
    dataset = cfg["dataset"]
    path = default_backbone_path(dataset, "vit-tiny", cfg["model.width"], data_identity(cfg))
    if path.is_file():
        return path
    if train_x is None:
        from featherfl.data.sources import load_dataset

        src_cfg = cfg.replace(**{"data.max_train": 0, "data.max_test": 0})
        ds = load_dataset(src_cfg)
        train_x, train_y = ds.train_x, ds.train_y
    if train_x.dim() != 4:
        raise ConfigError(f"fedpeft: no default vision backbone for dataset {dataset!r}; set model.pretrained")
    net, meta = pretrain(train_x, train_y, "vit-tiny", cfg["model.width"])
    meta["source"] = f"{dataset} train split, classes {list(DEFAULT_SOURCE_CLASSES)}"
    return save_backbone(net, meta, path)


def cmd_pretrain(dataset: str, classes: str, epochs: int | None, width: int, out: str | None, overrides: list) -> str:
    """``featherfl pretrain``: train on the source classes of ``dataset``'s training split, save, report."""
    from featherfl.schema import build_config
    from featherfl.data.sources import load_dataset

    try:
        chosen = tuple(sorted({int(c) for c in classes.split(",") if c.strip()}))
    except ValueError:
        raise ConfigError(f"--classes: expected comma-separated labels, got {classes!r}") from None
    if len(chosen) < 2:
        raise ConfigError("--classes: a source task needs at least two labels")
    if epochs is not None and epochs < 1:
        raise ConfigError(f"--epochs: got {epochs}, expected >= 1")
    cfg = build_config(overrides=[("dataset", dataset), ("model.width", width), *overrides])
    ds = load_dataset(cfg)
    if ds.train_x.dim() != 4:
        raise ConfigError(f"--dataset: {dataset} is not an image dataset; text backbones come from model.pretrained")
    if max(chosen) >= ds.num_classes:
        raise ConfigError(f"--classes: {dataset} has labels 0-{ds.num_classes - 1}")
    is_default = chosen == DEFAULT_SOURCE_CLASSES and epochs in (None, DEFAULT_EPOCHS)
    if out is None and not is_default:
        raise ConfigError("--out is needed when --classes or --epochs differ from the defaults")
    path = Path(out) if out else default_backbone_path(dataset, "vit-tiny", width, data_identity(cfg))
    from featherfl.runfolder import check_output_file

    check_output_file(path)
    net, meta = pretrain(ds.train_x, ds.train_y, "vit-tiny", width, chosen, epochs)
    meta["source"] = f"{dataset} train split, classes {list(chosen)}"
    save_backbone(net, meta, path)
    return f"vit-tiny pretrained on {meta['source']} ({meta['epochs']} epochs, source train accuracy {meta['source_train_accuracy']:.3f}) -> {path}"
