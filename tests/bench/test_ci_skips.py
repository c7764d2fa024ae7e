"""Under CI a Slurm test that skips fails the run; elsewhere it skips with its reason (issue 15, item 22)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from ci_skips import under_ci

HERE = Path(__file__).resolve().parent

EXAMPLE = '''
import pytest

@pytest.mark.slurm
def test_needs_a_cluster():
    pytest.skip("no cluster here")

@pytest.mark.slurm
def test_runs_on_the_cluster():
    pass

@pytest.mark.slurm
@pytest.mark.xfail(reason="a known failure", strict=True)
def test_known_to_fail():
    raise AssertionError

def test_skips_for_another_reason():
    pytest.skip("not about Slurm")
'''


def _pytest(args: list[str], cwd: Path, ci: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rA", *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(("ci", "expected"), [("true", True), ("1", True), ("yes", True), (None, False), ("", False),
                                              ("0", False), ("false", False), ("False", False), ("no", False)])
def test_what_counts_as_ci(ci, expected):
    assert under_ci({} if ci is None else {"CI": ci}) is expected


@pytest.mark.parametrize("ci", ["true", None])
def test_a_skipping_slurm_test_fails_only_under_ci(tmp_path, ci):
    (tmp_path / "test_example.py").write_text(EXAMPLE)
    result = _pytest(["-p", "ci_skips", "-W", "ignore::pytest.PytestUnknownMarkWarning", "test_example.py"],
                     tmp_path, ci)
    output = result.stdout + result.stderr
    if ci:
        assert result.returncode == 1, output
        assert "1 failed, 1 passed, 1 skipped, 1 xfailed" in output
        assert "FAILED test_example.py::test_needs_a_cluster" in output
        assert "a Slurm test may not skip under CI (CI='true'; .ci/slurm-up.sh starts a cluster): no cluster here" \
            in output
    else:
        assert result.returncode == 0, output
        assert "1 passed, 2 skipped, 1 xfailed" in output
        assert "no cluster here" in output  # the reason is shown (-rA)


def test_the_slurm_tests_fail_under_ci_without_a_cluster(tmp_path):
    """The real Slurm tests with no sbatch on PATH: under CI the run fails and names the reason."""
    path = str(Path(sys.executable).parent)  # python, but no Slurm
    result = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rA",
                             str(HERE / "test_slurm.py")],
                            cwd=HERE.parents[1], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "CI": "true", "PATH": path})
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "a Slurm test may not skip under CI" in output and "sbatch is not on PATH" in output
    assert "2 errors in" in output, output  # the skip comes from a fixture: an error in the setup of each test
