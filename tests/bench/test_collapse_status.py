"""Issue 10, item 3: a run that ends having learned nothing is recorded ``collapsed``, with the epoch and the evidence.

digits_mlp (a ReLU MLP) with plain SGD: at lr 10 the network dies in the first epoch (its loss jumps above the
initial level and stays there, accuracy at chance); at lr 1 (SGD's tuned rate) it learns; at lr 1e-3 it learns
slowly (its loss falls about 0.1 % per epoch) and must not be flagged.
"""

from __future__ import annotations

import itertools

from probprec.bench.analysis import load_results, write_report
from probprec.bench.cli import main
from probprec.bench.collapse import DEFAULT_CRITERION, detect_collapse, ended_collapsed
from probprec.bench.runner import RunConfig, run


def digits_sgd(tmp_path, lr: float, epochs: int, **options) -> RunConfig:
    return RunConfig("digits_mlp", "SGD", {"lr": lr}, seed=0, epochs=epochs, output_dir=str(tmp_path),
                     progress=False, **options)


def test_a_network_made_to_die_is_collapsed_with_the_epoch_and_the_evidence(tmp_path):
    result = run(digits_sgd(tmp_path, lr=10.0, epochs=5))
    record = result.record
    assert result.status == "collapsed"
    assert record["collapsed_at_epoch"] == 1
    assert record["status_reason"].startswith("learned nothing from epoch 1: training loss")
    assert "initial 2.3" in record["status_reason"]
    assert record["epochs_completed"] == 5 and len(record["train_losses"]) == 6, "it trains its whole budget"
    assert max(record["train_accuracies"][1:]) < 0.2
    again = run(digits_sgd(tmp_path, lr=10.0, epochs=5))
    assert again.status == "skipped", "a collapsed run is finished: the same command does not repeat it"
    loaded = load_results(tmp_path)
    assert list(loaded.runs["status"]) == ["collapsed"], "the result file passes the schema"


def test_a_healthy_run_completes(tmp_path):
    result = run(digits_sgd(tmp_path, lr=1.0, epochs=4))
    assert result.status == "completed" and "collapsed_at_epoch" not in result.record
    assert result.record["train_accuracies"][-1] > 0.9


def test_a_slowly_learning_run_is_not_flagged(tmp_path):
    result = run(digits_sgd(tmp_path, lr=1e-3, epochs=5))
    losses = result.record["train_losses"]
    assert result.status == "completed"
    assert all(b < a for a, b in itertools.pairwise(losses)), "it learns, every epoch"
    assert losses[-1] > 0.99 * losses[0], "and slowly: within 1 % of the initial loss after 5 epochs"


def test_a_slow_start_then_learning_is_not_a_collapse_but_a_dead_end_is():
    warm_up = [2.3, 2.3, 2.3, 2.3, 1.0, 0.5]  # a step size that warms up (DoG's first epochs), then learns
    assert detect_collapse(warm_up).epoch == 1, "the analysis flags the stuck stretch"
    assert ended_collapsed(warm_up) is None, "the runner does not give it the status"
    died = [2.3, 1.2, 2.5, 2.4, 2.45, 2.41]  # learned, then died and stayed dead
    assert ended_collapsed(died).epoch == 2
    assert ended_collapsed([2.3, 2.3, 2.3]) is None, f"shorter than {DEFAULT_CRITERION.epochs} epochs: no verdict"


def test_the_cli_exits_0_and_the_report_counts_collapsed_runs(tmp_path, capsys):
    out = tmp_path / "runs"
    code = main(["run", "digits_mlp", "--optimizer", "SGD", "--hp", "lr=10", "--seed", "0", "--epochs", "4",
                 "--output-dir", str(out), "--no-progress"])
    assert code == 0, "a collapsed run is a result like any other"
    run(digits_sgd(out, lr=1.0, epochs=4))
    report = write_report(out, tmp_path / "report")
    text = report.markdown.read_text()
    assert "(1 completed, 1 collapsed)" in text or "(1 collapsed, 1 completed)" in text
    assert "Runs that did not complete or learned nothing" in text and "learned nothing from epoch 1" in text
    assert "stuck at chance" not in text, "a run the runner recorded as collapsed is not listed twice"


def test_a_loss_that_bounces_around_its_initial_level_is_a_collapse():
    """Measured: PreconditionedSGD on robust_mlp_deep, seed 42, stayed at chance (validation accuracy 10 %) for ten
    epochs while its training loss bounced between 2.295 and 2.362; the last window ended 0.004 below the initial
    loss, which the first criterion took for progress. Progress is a new low, not a value below the window's
    first; a run that falls every epoch, however slowly, still sets one."""
    bounced = [2.306, 2.335, 2.295, 2.302, 2.362, 2.328, 2.323, 2.323, 2.315, 2.347, 2.302]
    accuracies = [0.087, 0.087, 0.087, 0.14, 0.06, 0.097, 0.087, 0.097, 0.087, 0.137, 0.097]
    assert ended_collapsed(bounced, accuracies) is not None
    slow = [2.3 * 0.994 ** epoch for epoch in range(11)]  # 0.6 % per epoch
    assert ended_collapsed(slow) is None and detect_collapse(slow) is None
