"""The names of the metrics a result table holds, and which of them may choose a setting.

This module imports nothing heavy, so that the command line can name the metrics in ``--help``.

Metrics, per epoch:

* ``train_loss``, ``valid_loss``, ``test_loss``, ``train_accuracy``,
  ``valid_accuracy``, ``test_accuracy`` at epochs 0..N (epoch 0: before training);
* ``epoch_wall_time``, ``epoch_cpu_time`` (seconds of training in that epoch,
  evaluation excluded) and ``elapsed_wall_time`` (their running sum) at epochs 1..N;
* for the preconditioners, ``step_size`` (of the first parameter group) and
  ``top_curvature`` (the largest estimated curvature over the parameter tensors),
  read from the optimizer's ``get_log()`` at the end of epochs 1..N.
"""

from __future__ import annotations

__all__ = ["CURVE_METRICS", "LEGACY_TEST_LABEL", "METRICS", "SELECTION_METRICS", "UnknownMetricError",
           "canonical_metric", "higher_is_better"]

CURVE_METRICS = ("train_loss", "valid_loss", "test_loss", "train_accuracy", "valid_accuracy", "test_accuracy")
"""The evaluation curves, DeepOBS's ``<split>_losses``/``<split>_accuracies`` in the singular."""
METRICS = (*CURVE_METRICS, "epoch_wall_time", "epoch_cpu_time", "elapsed_wall_time", "step_size", "top_curvature")
"""Every metric a :class:`~probprec.bench.analysis.load.Results` table can hold."""
SELECTION_METRICS = ("valid_accuracy", "valid_loss", "train_accuracy", "train_loss")
"""The metrics that may choose a setting (DeepOBS's plural keys are accepted too). The test metrics choose only
where a problem's files have no validation curves and the user opts in (legacy DeepOBS 1.1 files)."""
LEGACY_TEST_LABEL = "selected on test (legacy files)"
"""The label of every table row and figure whose setting was chosen on the test set."""


class UnknownMetricError(ValueError):
    """A metric name that no result table knows."""


def canonical_metric(name: str) -> str:
    """``valid_accuracies`` (DeepOBS's key) or ``valid_accuracy`` -> ``valid_accuracy``; unknown names raise.

    Args:
        name: a metric name, singular or DeepOBS's plural.

    Returns:
        The singular name, one of :data:`METRICS`.

    Raises:
        UnknownMetricError: the name is not a metric.

    Example:
        >>> canonical_metric("valid_accuracies"), canonical_metric("test_loss")
        ('valid_accuracy', 'test_loss')
    """
    text = name.strip()
    for plural, singular in (("_losses", "_loss"), ("_accuracies", "_accuracy"), ("_times", "_time")):
        if text.endswith(plural):
            text = text[: -len(plural)] + singular
    if text not in METRICS:
        raise UnknownMetricError(f"unknown metric {name!r}; known metrics: {', '.join(METRICS)}")
    return text


def higher_is_better(metric: str) -> bool:
    """Accuracies go up; losses and times go down."""
    return "accuracy" in metric
