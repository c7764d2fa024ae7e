"""Acceptance 3 of issue 4: the ablation report at smoke scale (3 seeds)."""

from __future__ import annotations

import pytest

from probprec.bench.ablation import CONFIGURATIONS, load_ablation
from probprec.bench.cli import main
from probprec.thesis import FIXES


@pytest.mark.slow
def test_smoke_ablation_report(tmp_path, capsys):
    assert main(["ablation", "--scale", "smoke", "--output-dir", str(tmp_path), "--no-progress"]) == 0
    text = (tmp_path / "ablation.md").read_text()
    spec = load_ablation(scale="smoke")
    assert spec["seeds"] == [42, 43, 44]
    for problem in spec["problems"]:
        assert f"## {problem}" in text
    for fix in FIXES:
        assert f"| thesis + {fix} | 3/3" in text
    assert "| default mode | 3/3" in text and "| thesis mode | 3/3" in text
    # quadratic_deep: estimated curvatures, their error against the truth, the preconditioned condition number
    assert "estimated top curvatures" in text and "True top eigenvalues of the Hessian" in text
    runs = list((tmp_path / "runs").rglob("*.json"))
    assert len(runs) == len(CONFIGURATIONS) * len(spec["problems"]) * 3


def test_unknown_scale(tmp_path, capsys):
    assert main(["ablation", "--scale", "huge", "--output-dir", str(tmp_path)]) == 2
    assert "scale must be one of smoke, full" in capsys.readouterr().err
