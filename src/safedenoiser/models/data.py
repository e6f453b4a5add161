"""Fashion-MNIST from the idx files of the Debian package `dataset-fashion-mnist`.

Images come back as float tensors in [-1, 1], shape (N, 1, 28, 28), or (N, 1, 32, 32) with
``size=32``: the bundled models work at 32x32 (the 28x28 image padded by 2 pixels of background
on each side) so that two 2x downsamplings give whole latents (32 -> 8) and the UNets can halve
8x8 again; 28 -> 7 cannot be halved.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import torch
import torch.nn.functional as F

from safedenoiser.errors import SafeDenoiserError

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
ENV_VAR = "SAFEDENOISER_FASHION_MNIST_DIR"

CLASS_NAMES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]

_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def data_dir() -> Path:
    """The directory holding the idx files: `$SAFEDENOISER_FASHION_MNIST_DIR` or the Debian path."""
    return Path(os.environ.get(ENV_VAR) or DEFAULT_DIR)


def _find(directory: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        path = directory / name
        if path.is_file():
            return path
    raise SafeDenoiserError(
        f"Fashion-MNIST file {stem}(.gz) not found in {directory}. Install the data with "
        f"`sudo apt-get install dataset-fashion-mnist` (or `make data`), or point {ENV_VAR} "
        "at a directory holding the four idx files."
    )


def _read_idx(path: Path) -> torch.Tensor:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08:
        raise SafeDenoiserError(f"{path} is not an idx file of unsigned bytes")
    shape = struct.unpack(">" + "I" * ndim, raw[4 : 4 + 4 * ndim])
    data = torch.frombuffer(bytearray(raw[4 + 4 * ndim :]), dtype=torch.uint8)
    return data.reshape(shape)


def pad_to_32(images: torch.Tensor) -> torch.Tensor:
    """Pad 28x28 images in [-1, 1] to 32x32 with background (-1); 32x32 input is returned as is."""
    if images.shape[-1] == 32:
        return images
    return F.pad(images, (2, 2, 2, 2), value=-1.0)


def load_fashion_mnist(
    split: str = "train", size: int = 28, directory: str | Path | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 1, size, size) float32 in [-1, 1] and labels (N,) int64 in 0..9.

    `split` is "train" (60000 images) or "test" (10000); `size` is 28 (native) or 32 (padded).
    """
    if split not in _FILES:
        raise SafeDenoiserError(f"unknown split {split!r}; use 'train' or 'test'")
    if size not in (28, 32):
        raise SafeDenoiserError(f"size must be 28 or 32, not {size}")
    directory = Path(directory) if directory is not None else data_dir()
    if not directory.is_dir():
        raise SafeDenoiserError(
            f"Fashion-MNIST directory {directory} does not exist. Install the data with "
            f"`sudo apt-get install dataset-fashion-mnist` (or `make data`), or set {ENV_VAR} "
            "to a directory holding the four idx files."
        )
    image_stem, label_stem = _FILES[split]
    images = _read_idx(_find(directory, image_stem))
    labels = _read_idx(_find(directory, label_stem)).long()
    images = images.unsqueeze(1).float().div_(127.5).sub_(1.0)
    if size == 32:
        images = pad_to_32(images)
    return images, labels
