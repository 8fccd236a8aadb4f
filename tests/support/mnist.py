"""Tiny MNIST-format IDX files for tests (no real data, no network)."""


def write_idx(path, arr):
    import gzip
    import struct

    with gzip.open(path, "wb") as f:
        f.write(bytes([0, 0, 0x08, arr.ndim]) + struct.pack(">" + "I" * arr.ndim, *arr.shape) + arr.tobytes())


def tiny_mnist(root, n=300):
    """MNIST-format t10k files: ten class-dependent blob positions plus noise (learnable, seeded)."""
    import numpy as np

    rng = np.random.default_rng(0)
    y = (np.arange(n) % 10).astype(np.uint8)
    x = rng.integers(0, 60, size=(n, 28, 28)).astype(np.uint8)
    for i, c in enumerate(y):
        r, q = divmod(int(c), 5)
        x[i, 4 + 12 * r : 12 + 12 * r, 2 + 5 * q : 6 + 5 * q] = 255
    folder = root / "mnist-t10k"
    folder.mkdir(parents=True)
    write_idx(folder / "t10k-images-idx3-ubyte.gz", x)
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", y)
    return folder
