"""
Reading a results directory into pandas
=======================================

The harness writes one JSON file per run (DeepOBS's layout, see :doc:`/harness/runs`).
:func:`probprec.bench.analysis.load_results` reads every run under a directory into two tidy
tables: ``runs``, one row per run, and ``curves``, one row per run, epoch and metric. Here four short
runs make a results directory, and pandas and matplotlib draw their test loss.
"""

# %%
# Four runs: two optimizers, two seeds
# ------------------------------------
# ``probprec run`` on the command line; here the same command through its Python entry point.
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt

from probprec.bench.analysis import load_results
from probprec.bench.cli import main as probprec

results_dir = Path(tempfile.mkdtemp()) / "results"
for optimizer in ("PreconditionedSGD", "SGD"):
    for seed in (42, 43):
        status = probprec(
            [
                "run",
                "digits_mlp",
                "--optimizer",
                optimizer,
                "--seed",
                str(seed),
                "--epochs",
                "3",
                "--batch-size",
                "128",
                "--output-dir",
                str(results_dir),
                "--no-progress",
            ]
        )
        assert status == 0

# %%
# The tables
# ----------
results = load_results(results_dir)
assert not results.problems_found  # every file is a valid run
print(
    results.runs[
        [
            "problem",
            "optimizer",
            "seed",
            "status",
            "epochs_completed",
            "total_wall_time",
        ]
    ]
)
print(results.curves.head())

# %%
# The test loss per epoch, median over the seeds
# ----------------------------------------------
test_loss = results.curves[results.curves["metric"] == "test_loss"].pivot_table(
    index="epoch", columns="optimizer", values="value", aggfunc="median"
)
print(test_loss)

ax = test_loss.plot(marker="o", figsize=(6, 3.5))
ax.set(
    xlabel="epoch (0: before training)",
    ylabel="test loss, median of 2 seeds",
    yscale="log",
    title="digits_mlp",
)
plt.tight_layout()

assert (test_loss.iloc[-1] < test_loss.iloc[0]).all(), (
    "every optimizer's test loss went down"
)
