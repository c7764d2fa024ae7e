"""The embedded demo (the README's main job until the harness lands)."""

from __future__ import annotations

import json

import pytest

from probprec.bench.cli import main


def test_demo_writes_results_and_plot(tmp_path, capsys):
    assert main(["demo", "--epochs", "2", "--output-dir", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "demo.json").read_text())
    assert [r["optimizer"] for r in results] == ["SGD", "PreconditionedSGD"]
    assert all(len(r["train_loss"]) == 2 for r in results)
    assert results[1]["step_size"][0] > 0
    assert (tmp_path / "demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    assert "step size" in out and "epoch" in out


def test_demo_rejects_bad_arguments(capsys):
    with pytest.raises(SystemExit) as info:
        main(["demo", "--epochs", "0"])
    assert info.value.code == 2
    assert "--epochs: must be an integer >= 1" in capsys.readouterr().err
