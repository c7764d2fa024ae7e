"""Tiny random data sets in the real on-disk formats and torchvision's layout, for tests and smoke runs.

The images and labels are random: these files exercise the readers, the splits and
the training code exactly as real files would, and say nothing about the methods.
"""

from __future__ import annotations

import gzip
import pickle
from collections.abc import Iterable
from pathlib import Path

import numpy as np


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> None:
    """Write an IDX file of unsigned bytes (gzipped with ``compress``)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        with gzip.open(str(path) + ".gz", "wb") as handle:
            handle.write(data)
    else:
        path.write_bytes(data)


def make_mnist(root: Path, name: str = "MNIST", n_train: int = 60, n_test: int = 20, seed: int = 0,
               compress: bool = False, digits: Iterable[int] | None = None) -> None:
    """MNIST-format files (``name`` MNIST or FashionMNIST)."""
    rng = np.random.default_rng(seed)
    folder = root / name / "raw"
    classes = np.asarray(digits if digits is not None else range(10))
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)), compress)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", classes[np.arange(n) % len(classes)], compress)


def make_cifar(root: Path, classes: int = 10, per_batch: int = 12, n_test: int = 10, seed: int = 0) -> None:
    """CIFAR-10 (five training batches) or CIFAR-100 pickles."""
    rng = np.random.default_rng(seed)
    if classes == 10:
        folder = root / "cifar-10-batches-py"
        files = {f"data_batch_{i}": per_batch for i in range(1, 6)} | {"test_batch": n_test}
        key = b"labels"
    else:
        folder = root / "cifar-100-python"
        files = {"train": 5 * per_batch, "test": n_test}
        key = b"fine_labels"
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in files.items():
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 key: [int(v) for v in rng.integers(0, classes, n)]}
        with open(folder / name, "wb") as handle:
            pickle.dump(batch, handle)


def make_svhn(root: Path, n_train: int = 40, n_test: int = 10, seed: int = 0) -> None:
    """SVHN's MATLAB files."""
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for name, n in (("train_32x32.mat", n_train), ("test_32x32.mat", n_test)):
        savemat(root / name, {"X": rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8),
                              "y": rng.integers(1, 11, (n, 1)).astype(np.uint8)})


__all__ = ["make_all", "make_cifar", "make_mnist", "make_svhn", "write_idx"]


def make_all(root: Path) -> Path:
    """Write every data set (MNIST with the digits 1, 3, 5, 7 only) under ``root``; return it."""
    make_mnist(root, "MNIST", digits=[3, 5, 1, 7])
    make_mnist(root, "FashionMNIST", compress=True)
    make_cifar(root, 10)
    make_cifar(root, 100)
    make_svhn(root)
    return root
