"""The harness's default restart policy leaves the restarts to an optimizer that restarts itself."""

from __future__ import annotations

import warnings

import pytest

from probprec.bench.runner import RunConfig, run


@pytest.mark.parametrize("optimizer,forced", [("PreconditionedSGD", False), ("ThesisPreconditionedSGD", True)])
def test_the_default_policy_forces_restarts_only_on_optimizers_without_adaptive_restarts(tmp_path, optimizer, forced):
    config = RunConfig("digits_mlp", optimizer, epochs=4, output_dir=str(tmp_path), progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        record = run(config).record
    cycles = [log["cycle"] for log in record["optimizer_logs"]]
    if forced:  # a fresh estimate at the start of every epoch (digits: restart_every = 1)
        assert cycles == [0, 1, 2, 3]
    else:  # the optimizer's own restarts only: each new cycle follows a stale estimate
        restarts = [e for e in record["optimizer_logs"][-1]["events"] if e["kind"] == "restart"]
        assert all("stale estimate" in e["message"] for e in restarts)
        assert cycles[-1] == len(restarts)
