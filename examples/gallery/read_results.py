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
import pandas as pd

from probprec.bench.analysis import load_results
from probprec.bench.cli import main as probprec

results_dir = Path(tempfile.mkdtemp()) / "results"
options = "--epochs 3 --no-progress".split()
for optimizer in ("PreconditionedSGD", "SGD"):
    for seed in ("42", "43"):
        arguments = ["run", "digits_mlp", "--optimizer", optimizer, "--seed", seed]
        status = probprec([*arguments, *options, "--output-dir", str(results_dir)])
        assert status == 0

# %%
# The tables
# ----------
results = load_results(results_dir)
assert not results.problems_found  # every file is a valid run
pd.set_option("display.width", 88)
pd.set_option("display.max_columns", 8)
columns = ["optimizer", "seed", "status", "epochs_completed", "total_wall_time"]
print(results.runs[columns])
print(results.curves[["optimizer", "seed", "epoch", "metric", "value"]].head(8))

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
