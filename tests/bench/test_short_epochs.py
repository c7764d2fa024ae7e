"""A harness run whose epochs are shorter than an estimation cycle still trains (issue: the README loop stalled).

quadratic_deep has 7 minibatches per epoch at batch 128; a cycle of PreconditionedSGD spends P + K - 1 = 14.
With a fresh estimate requested every epoch, each request arrives while the previous cycle is still
estimating; the cycle in progress finishes (it already estimates at the current parameters), so the run
moves the parameters, and the optimizer's log in the result says what happened.
"""

from __future__ import annotations

import warnings

import pytest

from probprec.bench.runner import RunConfig, run


@pytest.mark.parametrize("optimizer", ["PreconditionedSGD", "OnlyAdaptiveSGD"])
def test_restarting_every_short_epoch_still_trains(tmp_path, optimizer):
    config = RunConfig("quadratic_deep", optimizer, epochs=8, restart="epoch", output_dir=str(tmp_path),
                       progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = run(config)
    record = result.record
    assert result.status == "completed"
    last = record["optimizer_logs"][-1]
    assert last["step_sizes"][0] is not None and last["cycles_completed"] >= 2
    assert record["train_losses"][-1] < 0.9 * record["train_losses"][0], "the parameters must move"
    if optimizer == "PreconditionedSGD":  # OnlyAdaptiveSGD's cycle (P = 10) is shorter than 2 epochs
        kinds = {e["kind"] for log in record["optimizer_logs"] for e in log["events"]}
        assert "restart_skipped" in kinds
