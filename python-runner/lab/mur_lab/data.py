"""Fashion-MNIST from Debian's dataset-fashion-mnist (IDX files, gzip)."""

import gzip
import os
from pathlib import Path

import numpy as np

DEFAULT_DIR = Path(os.environ.get("MUR_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def read_idx(path: Path) -> np.ndarray:
    """An IDX array (the MNIST file format): magic, dimensions, big-endian data."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    if raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an IDX file")
    dtype = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}[raw[2]]
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=dtype, offset=4 + 4 * ndim).reshape(shape)


def load(split: str = "train", directory: Path = DEFAULT_DIR):
    """(images float32 in [0, 1] of shape (n, 1, 28, 28), labels int64) for 'train' or 't10k'."""
    images = directory / f"{split}-images-idx3-ubyte.gz"
    labels = directory / f"{split}-labels-idx1-ubyte.gz"
    for p in (images, labels):
        if not p.exists():
            raise FileNotFoundError(
                f"{p} is missing: install Debian's dataset-fashion-mnist "
                f"(apt-get install dataset-fashion-mnist) or set MUR_FASHION_MNIST"
            )
    x = read_idx(images).astype(np.float32)[:, None, :, :] / 255.0
    y = read_idx(labels).astype(np.int64)
    return x, y
