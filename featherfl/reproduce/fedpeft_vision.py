"""``featherfl reproduce fedpeft-vision``: FedPEFT with a vision backbone pretrained on another data set.

FedPEFT (Sun et al. 2022) pretrains a ViT on one source (ImageNet) and fine-tunes it
federatedly on different targets (CIFAR, Resisc45, ...), training and sending only the
head, the biases, adapters, prompts or LoRA factors. Offline, the two image sources
that exist are MNIST (the t10k files in ``../shared/data``) and scikit-learn's UCI
digits, so this recipe pretrains featherfl's ``vit-tiny`` centrally on MNIST and
fine-tunes it on the digits across 10 clients:

* source: MNIST's 8,000-image training split (of the t10k files), all ten classes,
  brought to the digits' format the way the UCI digits were made (each character
  scaled to fill a 32 x 32 box, binarised, on-pixels counted in 4 x 4 blocks: 8 x 8
  inputs in {0, 1/16, ..., 1});
* target: the UCI digits (43 other writers, a different scanner and pre-processing),
  1,437 training images in 10 IID clients, 360 test images; the backbone never sees
  a digits image.

Every method, and full fine-tuning of the same ViT from random weights (what the
backbone buys), gets the same federation; each method's client learning rate is
chosen on a validation split held out from the digits *training* images (20 %,
stratified), never on the test split, every time the recipe runs.
"""

from __future__ import annotations

from pathlib import Path

import torch

from featherfl.config import ConfigError
from featherfl.reproduce.fedpeft_text import LABELS as PEFT_LABELS
from featherfl.reproduce.table import Recipe, Row

METHODS = ("head", "bias", "adapter", "prompt", "lora", "full", "scratch", "random-head")
#: The rows that start from random weights instead of the MNIST backbone, and the method they run.
UNPRETRAINED = {"scratch": "full", "random-head": "head"}
#: Round after which the full / scratch curves are compared (the final runs evaluate every EARLY rounds).
EARLY = 5
LABELS = {**PEFT_LABELS, "scratch": "Full training, no pretraining", "random-head": "Head on a random backbone"}
#: Client Adam learning rates tried per method on the validation split.
GRID = {
    "head": (1e-2, 3e-2, 1e-1),
    "bias": (1e-2, 3e-2, 1e-1),
    "adapter": (3e-3, 1e-2, 3e-2),
    "prompt": (1e-2, 3e-2, 1e-1),
    "lora": (3e-3, 1e-2, 3e-2),
    "full": (3e-4, 1e-3, 3e-3),
    "scratch": (3e-4, 1e-3, 3e-3),
    "random-head": (1e-2, 3e-2, 1e-1),
}
SIZES = {"clients": 10, "rounds": 30, "batch": 16, "pretrain_epochs": 10, "max_source": 0, "grid": None}
QUICK = {"clients": 2, "rounds": 1, "batch": 16, "pretrain_epochs": 1, "max_source": 200, "grid": 1}
VALIDATION = 0.2
SEED = 0


def _source_folder(data_dir: Path) -> Path:
    return Path(data_dir) / "mnist-t10k"


def check(data_dir: Path) -> None:
    """The MNIST t10k files (shapes, labels) and the digits, before any folder is written."""
    from featherfl.reproduce.baffle_mnist import check as check_mnist

    check_mnist(data_dir, name="fedpeft-vision")


def to_digits_format(x: torch.Tensor, threshold: float = 0.5, dilate: int = 0) -> torch.Tensor:
    """MNIST [N, 1, 28, 28] in [0, 1] -> [N, 1, 8, 8] made the way the UCI digits were made.

    The UCI digits are NIST's normalised 32 x 32 bitmaps (each character scaled to fill the box,
    its aspect ratio kept) whose on-pixels are counted in 4 x 4 blocks. So each MNIST image is
    cropped to its ink's bounding box, scaled (bilinear) until its longer side is 32 pixels,
    centred in a 32 x 32 frame, binarised at ``threshold`` (strokes optionally thickened by
    ``dilate`` pixels on each side), and averaged over 4 x 4 blocks: values in {0, 1/16, ..., 1}.
    Mean ink: 0.26 on the converted MNIST training images, 0.31 on the digits training images
    (0.41 with ``dilate=1``, so none is applied). An image without ink stays blank.
    """
    import torch.nn.functional as F

    if x.dim() != 4 or tuple(x.shape[1:]) != (1, 28, 28):
        raise ConfigError(f"fedpeft-vision: expected MNIST images [N, 1, 28, 28], got {tuple(x.shape)}")
    frames = torch.zeros(len(x), 1, 32, 32)
    for i, img in enumerate(x[:, 0]):
        rows, cols = torch.nonzero(img > threshold, as_tuple=True)
        if len(rows) == 0:
            continue
        crop = img[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        h, w = crop.shape
        scale = 32 / max(h, w)
        nh, nw = max(1, min(32, round(h * scale))), max(1, min(32, round(w * scale)))
        big = F.interpolate(crop[None, None], size=(nh, nw), mode="bilinear", align_corners=False)[0, 0]
        top, left = (32 - nh) // 2, (32 - nw) // 2
        frames[i, 0, top : top + nh, left : left + nw] = (big > threshold).float()
    if dilate:  # thicker strokes: the forms' pens against MNIST's scaled-up thin ones
        frames = F.max_pool2d(frames, 2 * dilate + 1, stride=1, padding=dilate)
    return F.avg_pool2d(frames, 4)


def _source(data_dir: Path, z: dict):
    from featherfl.schema import build_config
    from featherfl.data.sources import load_dataset, stratified_subset

    cfg = build_config(overrides=[("dataset", "mnist"), ("data.dir", str(_source_folder(data_dir))), ("data.download", False), ("data.test_fraction", 0.2)])
    ds = load_dataset(cfg)
    tx, ty, vx, vy = to_digits_format(ds.train_x), ds.train_y, to_digits_format(ds.test_x), ds.test_y
    if z["max_source"]:
        keep = stratified_subset(ty.numpy(), z["max_source"], seed=SEED)
        tx, ty = tx[keep], ty[keep]
    return tx, ty, vx, vy


def make_backbones(data_dir: Path, out: Path, z: dict) -> tuple[Path, Path, dict]:
    """The MNIST-pretrained backbone and a randomly initialised one of the same architecture (same seed)."""
    from featherfl.models.pretrain import PRETRAIN_SEED, pretrain, save_backbone

    tx, ty, vx, vy = _source(data_dir, z)
    classes = tuple(range(10))
    net, meta = pretrain(tx, ty, "vit-tiny", 0, classes, z["pretrain_epochs"])
    with torch.no_grad():
        meta["source_test_accuracy"] = float((net(vx).argmax(1) == vy).float().mean())
    meta["source"] = f"MNIST t10k training split ({len(ty):,} images, normalised to 32 x 32, binarised, 4 x 4 block counts), classes 0-9"
    pre = save_backbone(net, meta, Path(out) / "backbones" / "vit-tiny-mnist.safetensors")
    rand, rmeta = _random_backbone(tx.shape[1:], PRETRAIN_SEED)
    scratch = save_backbone(rand, rmeta, Path(out) / "backbones" / "vit-tiny-random.safetensors")
    return pre, scratch, meta


def _random_backbone(input_shape, seed: int):
    from featherfl.models import build_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build_model("vit-tiny", tuple(input_shape), 10)
    return net, {"model": "vit-tiny", "input_shape": list(input_shape), "arch": net.arch, "source": "none (random initialisation)", "epochs": 0}


def _digits():
    from featherfl.schema import build_config
    from featherfl.data.sources import load_dataset

    return load_dataset(build_config(overrides=[("dataset", "digits")]))


def settings(method: str, lr: float, backbone: Path, z: dict, name: str) -> dict:
    return {
        "name": name,
        "algorithm": "fedpeft",
        "clients": z["clients"],
        "partition.name": "iid",
        "rounds": z["rounds"],
        "engine.fraction": 1.0,
        "eval.every": z["rounds"],
        "model.pretrained": str(backbone),
        "fedpeft.method": UNPRETRAINED.get(method, method),
        "fedpeft.local_epochs": 1,
        "fedpeft.batch_size": z["batch"],
        "fedpeft.optimizer": "adam",
        "fedpeft.lr": lr,
        "fedpeft.weight_decay": 0.0,
        "fedpeft.adapter_reduction": 8,
        "fedpeft.prompt_tokens": 8,
        "fedpeft.prompt_depth": "deep",
        "fedpeft.lora_rank": 8,
        "fedpeft.lora_alpha": 16.0,
        "seed": SEED,
    }


def _run_one(folder: Path, cfg: dict, dataset=None):
    import featherfl

    return featherfl.run(cfg, out=folder, dataset=dataset, overwrite=True)


def choose_rates(digits, backbones: dict, out: Path, z: dict, quiet: bool) -> tuple[dict, dict]:
    """Each method's learning rate: the best validation accuracy over GRID (ties: the lower rate)."""
    from featherfl.data.sources import stratified_split

    tr, va = stratified_split(digits.train_y.numpy(), VALIDATION, seed=SEED)
    data = (digits.train_x[tr], digits.train_y[tr], digits.train_x[va], digits.train_y[va])
    scores: dict = {}
    chosen: dict = {}
    for m in METHODS:
        grid = GRID[m][: z["grid"]] if z["grid"] else GRID[m]
        for lr in grid:
            r = _run_one(Path(out) / "validation" / f"{m}-lr{lr:g}", settings(m, lr, backbones[m], z, f"fedpeft-vision-val-{m}"), dataset=data)
            if r.status != "completed" or r.final_accuracy is None:
                raise ConfigError(f"fedpeft-vision: the validation run {m} at lr {lr:g} did not complete ({r.status})")
            scores.setdefault(m, {})[lr] = r.final_accuracy
            if not quiet:
                print(f"validation {m} lr {lr:g}: {r.final_accuracy:.4f}", flush=True)
        best = max(scores[m].values())
        chosen[m] = min(lr for lr, a in scores[m].items() if a == best)
    return chosen, scores


def run(out: Path, quick: bool, data_dir: Path, quiet: bool) -> list[Row]:
    z = QUICK if quick else SIZES
    pre, scratch, meta = make_backbones(data_dir, out, z)
    backbones = {m: (scratch if m in UNPRETRAINED else pre) for m in METHODS}
    digits = _digits()
    chosen, scores = choose_rates(digits, backbones, out, z, quiet)
    results = {}
    for m in METHODS:
        cfg = {**settings(m, chosen[m], backbones[m], z, f"fedpeft-vision-{m}"), "dataset": "digits", "eval.every": min(EARLY, z["rounds"])}
        r = _run_one(Path(out) / m, cfg)
        if r.status != "completed" or r.final_accuracy is None:
            raise ConfigError(f"fedpeft-vision: the run {m} did not complete ({r.status})")
        results[m] = r
    full = results["full"]
    full_bytes = full.bytes_up + full.bytes_down
    rows = []
    for m in METHODS:
        r = results[m]
        s = r.summary
        sent = r.bytes_up + r.bytes_down
        grid = ", ".join(f"{a:.3f} at {lr:g}" for lr, a in scores[m].items())
        note = (
            f"{s['trainable_parameters']:,} trainable parameters ({100 * s['trainable_share']:.2f} % of {s['total_parameters']:,}); "
            f"bytes = {100 * sent / full_bytes:.2f} % of full fine-tuning's; Adam lr {chosen[m]:g} (validation: {grid})"
        )
        rows.append(Row(f"{LABELS[m]}, digits", None, r.final_accuracy, sent / z["clients"], str(Path(out) / m), note))
    by = {m: results[m].final_accuracy for m in METHODS}
    early = {m: _accuracy_at(results[m], min(EARLY, z["rounds"])) for m in ("full", "scratch")}
    rows[METHODS.index("full")].note += (
        ". Headline check, vs full fine-tuning: "
        + "; ".join(f"{LABELS[m]} {100 * (by[m] - by['full']):+.1f} points" for m in ("head", "bias", "adapter", "prompt", "lora"))
        + f"; pretraining buys {100 * (by['full'] - by['scratch']):+.1f} points over the same ViT trained from random weights "
        f"({100 * (early['full'] - early['scratch']):+.1f} after {min(EARLY, z['rounds'])} rounds: {early['full']:.3f} vs {early['scratch']:.3f}) "
        f"and the head {100 * (by['head'] - by['random-head']):+.1f} points over a head on the random backbone. "
        f"Backbone: vit-tiny pretrained on {meta['source']}, {meta['epochs']} epochs, source train accuracy "
        f"{meta['source_train_accuracy']:.3f}, MNIST held-out accuracy {meta['source_test_accuracy']:.3f}"
    )
    return rows


def _accuracy_at(result, round_: int) -> float:
    """Test accuracy recorded at ``round_`` (the final runs evaluate every EARLY rounds)."""
    for m in result.metrics:
        if m.get("round") == round_ and m.get("accuracy") is not None:
            return m["accuracy"]
    raise ConfigError(f"fedpeft-vision: {result.run_dir} has no accuracy at round {round_}")


PROTOCOL = (
    "Source: featherfl's vit-tiny (4 blocks, width 96, 3 heads, 4 x 4 patches) trained centrally on MNIST (the 8,000-image training split "
    "of the t10k files, classes 0-9, each character scaled to fill a 32 x 32 box, binarised and counted in 4 x 4 blocks: the UCI digits' 8 x 8 format), Adam 3e-3 "
    "with a cosine schedule, 10 epochs; its MNIST head is dropped. Target: scikit-learn's UCI digits (1,437 training / 360 test images, "
    "never seen in pretraining) in 10 IID clients, every client every round, 30 rounds of one local epoch of Adam at batch 16, FedAvg of "
    "the trainable tensors, a fresh head. Methods: head, bias, adapter (reduction 8), prompt (8 deep tokens), LoRA (rank 8, alpha 16, "
    "on qkv), full fine-tuning, and, to see what the backbone buys, full training and head-only training of the same ViT from random weights. Each method's learning rate: the best of three "
    "on a validation split (20 % of the digits training images, stratified; the rest trains), ties to the lower rate. Accuracy: the "
    "final global model on the 360 test images. Bytes: the ledger's up + down bytes over the run / clients."
)

DEVIATIONS = [
    "the paper pretrains ViT-B/16 (86M parameters) on ImageNet-21k and fine-tunes on CIFAR-10/100, Resisc45 and others; offline, the only "
    "two image sources are MNIST's t10k files and the UCI digits, so both the backbone (vit-tiny, about 0.45M parameters) and the "
    "task (digits, 10 classes) are small. The source and target share their labels (both are the ten digits) but come from different "
    "writers, scanners and pre-processing; the paper's ImageNet-21k likewise covers its targets' concepts. The paper's figures are on "
    "other data sets, so every row's paper figure is None and the recipe checks the paper's claims.",
    "test set: 360 images, so each figure carries about +-1.2 points of sampling error at 95 % accuracy (one standard deviation); "
    "differences under about 2-3 points are not resolved.",
    "no DP rows (the text recipes hold the DP comparison): with 144 images per client, epsilon 5 over 30 rounds of 9 steps at "
    "sampling rate 16 / 144 needs noise multiplier 1.96 (the RDP accountant, delta 1e-5), about three times the text recipes' 0.64; "
    "not run here.",
    "learning rates: chosen on a validation split of the digits training images every time the recipe runs (three Adam rates per method); "
    "the test images are read only for the final figures. Where the best rate is the grid's largest, a larger one was not tried.",
]

RECIPE = Recipe(
    name="fedpeft-vision",
    paper="Sun et al. 2022, Exploring Parameter-Efficient Fine-Tuning to Enable Foundation Models in Federated Learning "
    "(FedPEFT, arXiv 2210.01708): a backbone pretrained on one source, fine-tuned federatedly on another with head / bias / adapter / "
    "prompt / LoRA / full fine-tuning",
    protocol=PROTOCOL,
    run=run,
    deviations=DEVIATIONS,
    check=check,
)
