"""Helpers of the sweep tests: the sweep and tune commands through a small parser, sweep files, result files."""

from __future__ import annotations

import json
import os
import signal
from collections import Counter
from pathlib import Path

import torch

from probprec.bench import sweep_cli
from probprec.bench.cli import main

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "sweeps"


def sweep_main(argv: list[str]) -> int:
    """``probprec sweep|tune ...`` through the main CLI (which reports bad input for every command)."""
    assert argv[0] in sweep_cli.COMMANDS
    return main(argv)


def write_sweep(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def results(output_dir: Path) -> list[tuple[Path, dict]]:
    """Every result file under ``output_dir`` (not the generated data, not hidden files) with its record."""
    found = []
    for path in sorted(output_dir.rglob("random_seed__*.json")):
        if not any(part.startswith(".") for part in path.relative_to(output_dir).parts):
            found.append((path, json.loads(path.read_text())))
    return found


def per_run(output_dir: Path) -> Counter:
    """Number of result files per (settings folder, seed): 1 everywhere means no duplicate."""
    return Counter((path.parent, record["random_seed"]) for path, record in results(output_dir))


class CrashingSGD(torch.optim.SGD):
    """SGD whose process dies at the first step, like a run killed by the out-of-memory killer."""

    def step(self, closure=None):
        os.kill(os.getpid(), signal.SIGKILL)
