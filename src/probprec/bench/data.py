"""Data sets on disk, their splits, and the image pipelines of the DeepOBS problems.

The files are read by this module from the layouts that ``torchvision`` downloads
(``MNIST/raw``, ``FashionMNIST/raw``, ``cifar-10-batches-py``, ``cifar-100-python``,
``train_32x32.mat``); ``torchvision`` is used only to download them, and only
when asked (``download=True``). Reading the formats here (IDX, the pickled CIFAR
batches, SVHN's MATLAB files) keeps the loaders testable on tiny files.

Splits differ from DeepOBS's PyTorch beta (1.2.0-beta0) on purpose. The beta draws
its validation set with the run's seed, so the validation set changes with the seed,
and reports the "train" metrics on a fresh random subset of the whole official
training set (validation examples included), augmented and redrawn every epoch.
Here the validation set is drawn with a fixed *split seed*, not the run seed, so
every run of a problem sees the same validation set; ``train_eval`` (the set the
"train" metrics are reported on) is a fixed subset of the training part, the
same size as the validation set, never overlapping it and never augmented.
"""

from __future__ import annotations

import gzip
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = [
    "ArraySplits",
    "DataMissingError",
    "ImageDataset",
    "Splits",
    "load_cifar",
    "load_mnist",
    "load_svhn",
    "read_idx",
    "split_indices",
]

SPLIT_SEED = 42
"""Seed of every validation split and train_eval subset (independent of the run seed)."""

ArraySplits = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
"""A data set as read from its files: train images, train labels, test images, test labels."""


class DataMissingError(FileNotFoundError):
    """A data set's files are not where they should be."""


@dataclass
class Splits:
    """The four data sets of a problem."""

    train: Dataset
    train_eval: Dataset
    valid: Dataset
    test: Dataset


class ImageDataset(Dataset):
    """Images (uint8, ``N x H x W`` or ``N x H x W x C``) and labels, with a per-sample transform."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable[[Tensor], Tensor]):
        self.images = images
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image = torch.from_numpy(np.ascontiguousarray(self.images[index]))
        image = image[None] if image.ndim == 2 else image.permute(2, 0, 1)
        return self.transform(image), self.labels[index]


def split_indices(n: int, n_valid: int, seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fixed (train, valid, train_eval) indices of an ``n``-example training set.

    ``train_eval`` is a subset of ``train`` of size ``min(n_valid, len(train))``.

    Example:
        >>> train, valid, train_eval = split_indices(10, 3)
        >>> len(train), len(valid), len(train_eval), set(train_eval) <= set(train)
        (7, 3, 3, True)
    """
    if not 0 < n_valid < n:
        raise ValueError(f"the validation set must be smaller than the training set: {n_valid} of {n}")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    valid, train = np.sort(perm[:n_valid]), np.sort(perm[n_valid:])
    train_eval = np.sort(rng.choice(train, size=min(n_valid, len(train)), replace=False))
    return train, valid, train_eval


def _missing(name: str, root: Path, expected: list[str]) -> DataMissingError:
    listed = ", ".join(expected)
    return DataMissingError(
        f"{name} not found in {root}: expected {listed}; put the files there "
        f"(the layout torchvision downloads) or pass --download to fetch them"
    )


def _find(root: Path, names: list[str]) -> list[Path] | None:
    """Each name as is or gzipped; None if any is missing."""
    found = []
    for name in names:
        for candidate in (root / name, root / f"{name}.gz"):
            if candidate.exists():
                found.append(candidate)
                break
        else:
            return None
    return found


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped or not.

    Header: two zero bytes, a type code (0x08 = unsigned byte), the number of
    dimensions, then each dimension as a big-endian 32-bit integer.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise ValueError(f"{path} is truncated: header says {shape}, found {array.size} values")
    return array.reshape(shape).copy()  # writable, so that tensors can be made from it


_MNIST_FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                "t10k-labels-idx1-ubyte"]


def load_mnist(root: str | Path, fashion: bool = False, download: bool = False) -> ArraySplits:
    """(train images, train labels, test images, test labels) of MNIST or Fashion-MNIST."""
    name = "FashionMNIST" if fashion else "MNIST"
    folder = Path(root) / name / "raw"
    files = _find(folder, _MNIST_FILES)
    if files is None and download:
        import torchvision

        cls = torchvision.datasets.FashionMNIST if fashion else torchvision.datasets.MNIST
        for train in (True, False):
            cls(str(root), train=train, download=True)
        files = _find(folder, _MNIST_FILES)
    if files is None:
        raise _missing(name, folder, _MNIST_FILES)
    train_images, train_labels, test_images, test_labels = (read_idx(f) for f in files)
    return train_images, train_labels, test_images, test_labels


def _unpickle(path: Path) -> dict[bytes, Any]:
    with open(path, "rb") as handle:
        return pickle.load(handle, encoding="bytes")


def load_cifar(root: str | Path, classes: int = 10, download: bool = False) -> ArraySplits:
    """(train images NHWC, train labels, test images, test labels) of CIFAR-10 or CIFAR-100."""
    if classes == 10:
        name, folder = "CIFAR-10", Path(root) / "cifar-10-batches-py"
        train_files, test_files, key = [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels"
    else:
        name, folder = "CIFAR-100", Path(root) / "cifar-100-python"
        train_files, test_files, key = ["train"], ["test"], b"fine_labels"
    expected = train_files + test_files
    if _find(folder, expected) is None and download:
        import torchvision

        cls = torchvision.datasets.CIFAR10 if classes == 10 else torchvision.datasets.CIFAR100
        cls(str(root), train=True, download=True)
    if any(not (folder / f).exists() for f in expected):
        raise _missing(name, folder, expected)

    def read(files: list[str]) -> tuple[np.ndarray, np.ndarray]:
        batches = [_unpickle(folder / f) for f in files]
        images = np.concatenate([b[b"data"] for b in batches]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        labels = np.concatenate([np.asarray(b[key]) for b in batches])
        return np.ascontiguousarray(images, dtype=np.uint8), labels.astype(np.int64)

    return (*read(train_files), *read(test_files))


def load_svhn(root: str | Path, download: bool = False) -> ArraySplits:
    """(train images NHWC, train labels, test images, test labels) of SVHN (the 'train' split, not 'extra')."""
    folder = Path(root)
    expected = ["train_32x32.mat", "test_32x32.mat"]
    if any(not (folder / f).exists() for f in expected) and download:
        import torchvision

        for split in ("train", "test"):
            torchvision.datasets.SVHN(str(root), split=split, download=True)
    if any(not (folder / f).exists() for f in expected):
        raise _missing("SVHN", folder, expected)
    from scipy.io import loadmat

    def read(name: str) -> tuple[np.ndarray, np.ndarray]:
        mat = loadmat(folder / name)
        images = np.ascontiguousarray(mat["X"].transpose(3, 0, 1, 2), dtype=np.uint8)
        labels = mat["y"].reshape(-1).astype(np.int64) % 10  # the digit 0 is stored as 10
        return images, labels

    return (*read(expected[0]), *read(expected[1]))
