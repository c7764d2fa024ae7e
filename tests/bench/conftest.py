from __future__ import annotations

import warnings

import pytest
from ci_skips import pytest_runtest_makereport  # noqa: F401 - under CI a Slurm test may not skip

from probprec.bench.synthetic_files import make_all

warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph=True")


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """Tiny MNIST, Fashion-MNIST, CIFAR-10/100 and SVHN files in torchvision's layout."""
    return make_all(tmp_path_factory.mktemp("data"))
