"""Under CI a Slurm test may not skip: a pytest plugin (loaded by this folder's conftest).

The tests marked ``slurm`` skip, saying why, where there is no Slurm cluster. That is right on a
laptop, and wrong in CI, which starts a cluster (``.ci/slurm-up.sh``) precisely to run them: a cluster
that did not come up would leave CI green with the Slurm tests skipped. So when the ``CI``
environment variable is set (to anything but ``""``, ``0``, ``false`` or ``no``), a ``slurm`` test
that skips is reported as failed, with its reason.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import pytest

__all__ = ["pytest_runtest_makereport", "under_ci"]

NOT_CI = ("", "0", "false", "no")


def under_ci(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the tests run under CI (the ``CI`` environment variable, as CI services set it)."""
    return environ.get("CI", "").strip().lower() not in NOT_CI


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    reason = str(longrepr[2]) if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return reason.removeprefix("Skipped: ")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Turn the skip of a ``slurm`` test into a failure under CI."""
    outcome = yield
    report = outcome.get_result()
    if (report.skipped and not hasattr(report, "wasxfail") and item.get_closest_marker("slurm") is not None
            and under_ci()):
        report.outcome = "failed"
        report.longrepr = (f"a Slurm test may not skip under CI (CI={os.environ.get('CI')!r}; .ci/slurm-up.sh "
                           f"starts a cluster): {_skip_reason(report)}")
