"""The collapse criterion (probprec.bench.collapse): stuck at the initial loss or at chance, never a slow learner."""

from __future__ import annotations

import pytest

from probprec.bench.collapse import DEFAULT_CRITERION, CollapseCriterion, detect_collapse


def test_a_loss_flat_at_its_initial_level_is_a_collapse_from_its_first_epoch():
    found = detect_collapse([2.30, 2.301, 2.30, 2.302, 2.30])
    assert found is not None and found.epoch == 1
    assert "training loss" in found.evidence and "initial 2.3" in found.evidence


def test_a_loss_that_returns_to_its_initial_level_collapses_where_it_returned():
    # learns for two epochs, then dies: back above the initial loss from epoch 3 on
    found = detect_collapse([2.3, 1.2, 0.8, 2.31, 2.33, 2.32, 2.32])
    assert found is not None and found.epoch == 3


def test_falling_back_from_a_spike_above_the_initial_loss_is_no_progress():
    # DeepOBS's Momentum at lr 0.158: a jump above the initial loss, then flat a little above it
    assert detect_collapse([2.307, 2.349, 2.336, 2.332, 2.332]).epoch == 1


@pytest.mark.parametrize("losses", [
    [2.307, 2.293, 2.280, 2.267, 2.256, 2.245],  # DeepOBS's SGD at lr 1e-5: 0.6 % per epoch
    [2.300, 2.296, 2.290, 2.284, 2.279, 2.273],  # slower still: inside the 1 % band, but falling in every window
    [2.3, 1.0, 0.5, 0.3, 0.2],  # healthy
    [2.3, 1.0, 0.9, 0.9, 0.9],  # converged well below the initial loss
])
def test_a_run_that_learns_even_slowly_is_not_flagged(losses):
    assert detect_collapse(losses) is None


def test_accuracy_at_chance_is_a_collapse_when_the_loss_says_nothing():
    losses = [2.3, 2.0, 1.9, 1.8, 1.7]  # the loss falls (e.g. the logits shrink) but nothing is classified
    assert detect_collapse(losses, [0.10, 0.10, 0.11, 0.10, 0.10], chance=0.1).epoch == 1
    assert detect_collapse(losses, [0.10, 0.40, 0.60, 0.70, 0.80], chance=0.1) is None
    # chance unknown: the accuracy before training stands in for it
    assert detect_collapse(losses, [0.12, 0.11, 0.12, 0.12, 0.11]).epoch == 1
    assert detect_collapse(losses, [0.12, 0.13, 0.15, 0.17, 0.19]) is None  # slowly better than chance


def test_divergence_is_not_evidence_of_a_collapse():
    nan = float("nan")
    assert detect_collapse([2.3, nan, nan, nan, nan]) is None
    assert detect_collapse([2.3, 2.3, 2.3, float("inf")]) is None


def test_the_window_is_the_stated_number_of_epochs():
    flat = [2.3, 2.3, 2.3]
    assert detect_collapse(flat) is None  # two evaluations after epoch 0: fewer than the 3 epochs
    assert detect_collapse(flat, criterion=CollapseCriterion(epochs=2)).epoch == 1
    assert DEFAULT_CRITERION.epochs == 3 and DEFAULT_CRITERION.loss_tolerance == 0.01


@pytest.mark.parametrize("field,value", [("epochs", 0), ("epochs", 2.5), ("loss_tolerance", -0.1),
                                         ("accuracy_margin", 1.5), ("progress_tolerance", "x")])
def test_bad_thresholds_are_refused_naming_them(field, value):
    with pytest.raises(ValueError, match=field):
        CollapseCriterion(**{field: value})
