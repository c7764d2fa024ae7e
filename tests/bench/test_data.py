"""Data readers on tiny files in the real formats, and the fixed splits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from probprec.bench.data import DataMissingError, load_cifar, load_mnist, load_svhn, read_idx, split_indices
from probprec.bench.problems import get_problem
from probprec.bench.synthetic_files import make_mnist, write_idx


@pytest.mark.parametrize("compress", [False, True])
def test_idx_round_trip(tmp_path, compress):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "x-idx3-ubyte", array, compress)
    path = tmp_path / ("x-idx3-ubyte.gz" if compress else "x-idx3-ubyte")
    assert np.array_equal(read_idx(path), array)


def test_idx_rejects_other_files(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x00\x00\x0d\x01\x00\x00\x00\x02ab")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x09ab")
    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / "short")


def test_readers_on_tiny_files(data_dir):
    x, y, tx, _ = load_mnist(data_dir)
    assert x.shape == (60, 28, 28) and x.dtype == np.uint8 and set(y) == {1, 3, 5, 7} and tx.shape[0] == 20
    x, y, _, _ = load_mnist(data_dir, fashion=True)  # gzipped
    assert x.shape == (60, 28, 28) and set(y) == set(range(10))
    x, y, tx, _ = load_cifar(data_dir, 10)
    assert x.shape == (60, 32, 32, 3) and tx.shape == (10, 32, 32, 3) and y.max() < 10
    x, y, _, _ = load_cifar(data_dir, 100)
    assert x.shape == (60, 32, 32, 3) and y.max() < 100
    x, y, tx, _ = load_svhn(data_dir)
    assert x.shape == (40, 32, 32, 3) and tx.shape[0] == 10 and y.min() >= 0 and y.max() <= 9


def test_cifar_pixel_layout(tmp_path):
    """A CIFAR row is 1024 red, 1024 green, 1024 blue values, each image row by row."""
    import pickle

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    image = np.zeros((3, 32, 32), dtype=np.uint8)
    image[0, 0, 1], image[1, 2, 0], image[2, 31, 31] = 10, 20, 30
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as handle:
            pickle.dump({b"data": image.reshape(1, -1), b"labels": [4]}, handle)
    x, y, _, _ = load_cifar(tmp_path, 10)
    assert x[0, 0, 1, 0] == 10 and x[0, 2, 0, 1] == 20 and x[0, 31, 31, 2] == 30 and y[0] == 4


@pytest.mark.parametrize("name,where", [("mnist_mlp", "MNIST"), ("fmnist_2c2d", "FashionMNIST"),
                                        ("cifar10_3c3d", "cifar-10-batches-py"),
                                        ("cifar100_allcnnc", "cifar-100-python"), ("svhn_wrn164", "SVHN")])
def test_missing_data_says_where_and_how(tmp_path, name, where):
    with pytest.raises(DataMissingError) as info:
        get_problem(name).splits(tmp_path / "nothing-here")
    message = str(info.value)
    assert where in message and "--download" in message and "nothing-here" in message


def test_splits_are_fixed_disjoint_and_not_augmented(data_dir):
    problem = get_problem("cifar10_3c3d")
    torch.manual_seed(1)
    a = problem.splits(data_dir)
    torch.manual_seed(2)
    b = problem.splits(data_dir)
    assert np.array_equal(a.valid.images, b.valid.images)  # independent of the run seed
    train = {bytes(img) for img in a.train.images}
    assert not train & {bytes(img) for img in a.valid.images}
    assert {bytes(img) for img in a.train_eval.images} <= train
    assert len(a.train_eval) == len(a.valid)
    # train is augmented (random), train_eval is not
    x1, x2 = a.train_eval[0][0], a.train_eval[0][0]
    assert torch.equal(x1, x2)
    torch.manual_seed(0)
    t1 = a.train[0][0]
    torch.manual_seed(1)
    t2 = a.train[0][0]
    assert not torch.equal(t1, t2)


def test_split_indices():
    train, valid, train_eval = split_indices(100, 20, seed=3)
    assert len(valid) == 20 and len(train) == 80 and len(train_eval) == 20
    assert not set(train) & set(valid) and set(train_eval) <= set(train)
    assert np.array_equal(split_indices(100, 20, seed=3)[1], valid)
    with pytest.raises(ValueError, match="smaller than the training set"):
        split_indices(10, 10)


def test_mnist35_keeps_threes_and_fives(tmp_path):
    make_mnist(tmp_path, digits=[3, 5, 0])
    splits = get_problem("mnist35_logreg").splits(tmp_path)
    labels = {int(splits.train[i][1]) for i in range(len(splits.train))}
    assert labels == {0, 1} and len(splits.train) + len(splits.valid) == 40
