"""A restart requested before the current cycle has finished never stops training silently.

The README's loop starts a fresh estimate every epoch. When an epoch has fewer minibatches than a cycle
needs (P + K - 1), each request arrives while the previous cycle is still estimating: the cycle in progress
is finished first (one warning, and a log event per skipped request), so the parameters move.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from helpers import classification_batches, mlp
from probprec import OnlyAdaptiveSGD, PreconditionedSGD

warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph=True")

P, K = 10, 5  # the defaults: a cycle spends 14 minibatches


def readme_loop(opt, model, epochs, batches_per_epoch):
    data = classification_batches(batches_per_epoch, seed=1)
    for epoch in range(epochs):
        if epoch > 0:
            opt.start_estimate()
        for x, y in data:
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward(create_graph=opt.create_graph)
            opt.step()


@pytest.mark.parametrize("cls", [PreconditionedSGD, OnlyAdaptiveSGD])
@pytest.mark.parametrize("batches_per_epoch", [6, 9])  # OnlyAdaptiveSGD: a cycle of 10
def test_epochs_shorter_than_a_cycle_still_train(cls, batches_per_epoch):
    model = mlp()
    start = [p.detach().clone() for p in model.parameters()]
    opt = cls(model.parameters())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        readme_loop(opt, model, epochs=20, batches_per_epoch=batches_per_epoch)
    log = opt.get_log()
    assert log["step_sizes"][0] is not None and log["cycles_completed"] >= 3
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), start, strict=True))
    ours = [w for w in caught if "start_estimate() was called" in str(w.message)]
    assert len(ours) == 1, "one warning per optimizer, not one per epoch"
    assert "still estimating" in str(ours[0].message)
    kinds = [e["kind"] for e in log["events"]]
    assert "restart_skipped" in kinds


def test_a_restart_at_the_start_of_a_cycle_is_silent_and_harmless():
    model = mlp()
    opt = PreconditionedSGD(model.parameters(), prior_iterations=3, num_observations=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.start_estimate()  # nothing gathered yet: a true restart, nothing lost
    assert opt.phase == "prior" and opt.get_log()["events"] == []


def test_a_request_during_a_cycle_is_satisfied_by_that_cycle():
    """The parameters do not move while estimating, so the cycle in progress is already an estimate at the
    current parameters: it finishes, and no further cycle starts after it."""
    model = mlp()
    opt = PreconditionedSGD(model.parameters(), prior_iterations=3, num_observations=2)
    data = classification_batches(10, seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for t, (x, y) in enumerate(data):
            if t == 2:
                opt.start_estimate()  # mid-prior: skipped
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward(create_graph=opt.create_graph)
            opt.step()
    log = opt.get_log()
    assert log["cycle"] == 0 and log["cycles_completed"] == 1 and opt.phase == "optimize"
