"""Make the backbone featherfl ships: ``vit-tiny`` pretrained on MNIST in the UCI digits' 8 x 8 format.

FedPEFT fine-tunes a backbone pretrained on *another* source. For the embedded digits data
that source is MNIST (other writers, scanner and pre-processing): each image of the
8,000-image training split of MNIST's t10k files (stratified, seed 12345; the other 2,000
are held out and only scored) is brought to the digits' format (``to_digits_format``:
scaled to fill a 32 x 32 box, binarised, counted in 4 x 4 blocks), and ``vit-tiny`` is
trained centrally on all ten classes (Adam 3e-3, cosine schedule, batch 32, 10 epochs,
seed 20221004, one thread). The MNIST head is dropped; what is saved is the backbone
alone, safetensors with the recipe in its metadata. The command that made the shipped file:

    .venv/bin/python tools/make_mnist_backbone.py --data-dir ../shared/data/mnist-t10k

It writes ``featherfl/models/weights/vit-tiny-mnist.safetensors`` and prints its SHA-256,
which goes into ``featherfl/models/shipped.py`` (the loader refuses any other file).
Another machine's floating point may give other bytes: the checksum pins the file
shipped, not this script's output. MNIST (LeCun, Cortes, Burges) is copyright Yann LeCun
and Corinna Cortes and made available under the Creative Commons Attribution-Share Alike 3.0
licence; see ``featherfl/models/weights/README.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

import torch

OUT = Path(__file__).resolve().parents[1] / "featherfl" / "models" / "weights" / "vit-tiny-mnist.safetensors"


def main() -> int:
    from featherfl.data.sources import load_dataset
    from featherfl.models.pretrain import PRETRAIN_SEED, pretrain, save_backbone
    from featherfl.reproduce.fedpeft_vision import to_digits_format
    from featherfl.schema import build_config

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", required=True, help="folder with MNIST's t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--out", default=str(OUT))
    a = ap.parse_args()
    t0 = time.perf_counter()
    cfg = build_config(overrides=[("dataset", "mnist"), ("data.dir", a.data_dir), ("data.download", False), ("data.test_fraction", 0.2)])
    ds = load_dataset(cfg)
    tx, vx = to_digits_format(ds.train_x), to_digits_format(ds.test_x)
    net, meta = pretrain(tx, ds.train_y, "vit-tiny", 0, tuple(range(10)), a.epochs, seed=PRETRAIN_SEED)
    with torch.no_grad():
        meta["source_test_accuracy"] = float((net(vx).argmax(1) == ds.test_y).float().mean())
    meta["source"] = (
        f"MNIST t10k training split ({len(tx):,} images; {len(vx):,} held out), in the UCI digits' 8 x 8 format "
        "(scaled to a 32 x 32 box, binarised, 4 x 4 block counts), classes 0-9"
    )
    meta["licence"] = "trained on MNIST (Yann LeCun and Corinna Cortes), CC BY-SA 3.0"
    meta["made_by"] = "tools/make_mnist_backbone.py --data-dir <mnist-t10k> --epochs " + str(a.epochs)
    path = save_backbone(net, meta, Path(a.out))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    print(
        f"{path}: {path.stat().st_size:,} bytes, sha256 {digest}; MNIST train accuracy {meta['source_train_accuracy']:.4f}, "
        f"held-out {meta['source_test_accuracy']:.4f}; {time.perf_counter() - t0:.0f} s",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
