"""Sweep files: grids, random search, validation that names the key (issue 6, acceptance 5)."""

from __future__ import annotations

import math

import pytest
from sweep_helpers import EXAMPLES, sweep_main, write_sweep

from probprec.bench.orchestration import prepare_runs
from probprec.bench.sweeps import SweepError, expand, load_sweep, settings

SEARCH = """
[s]
problems = ["two_d_branin"]
seeds = [42]
trials = 5
{extra}

[[s.optimizers]]
name = "Momentum"
grid = {{ nesterov = [false, true] }}
search = {{ lr = {{ log_uniform = [1e-4, 1.0] }}, momentum = {{ uniform = [0.1, 0.99] }} }}
"""


def test_examples_expand_as_documented():
    smoke = load_sweep(EXAMPLES / "embedded.toml", "smoke")
    runs = list(expand(smoke, "out"))
    assert len(runs) == 2 * 3 * 3
    assert {r.config.problem for r in runs} == {"quadratic_deep", "two_d_rosenbrock"}
    assert sorted({r.config.seed for r in runs}) == [42, 43, 44]
    full = load_sweep(EXAMPLES / "embedded.toml", "full")
    assert len(list(expand(full, "out"))) == 2 * (1 + 3 + 3) * 10
    tune = load_sweep(EXAMPLES / "tune_embedded.toml", "smoke")
    assert len(list(expand(tune, "out"))) == 3 + 4


def test_random_search_is_deterministic_within_bounds_and_combines_with_the_grid(tmp_path):
    spec = load_sweep(write_sweep(tmp_path / "s.toml", SEARCH.format(extra="")), "s")
    points = settings(spec, spec.optimizers[0])
    assert points == settings(load_sweep(tmp_path / "s.toml", "s"), spec.optimizers[0])
    assert len(points) == 2 * 5  # grid x trials
    assert {p["nesterov"] for p in points} == {False, True}
    draws = {(p["lr"], p["momentum"]) for p in points}
    assert len(draws) == 5  # the same 5 draws with every grid point
    for lr, momentum in draws:
        assert 1e-4 <= lr <= 1.0 and 0.1 <= momentum <= 0.99
        assert lr == float(f"{lr:.6g}")
    spread = [math.log10(lr) for lr, _ in draws]
    assert max(spread) - min(spread) > 0.5  # log-uniform over four decades, not stuck at one end
    other = load_sweep(write_sweep(tmp_path / "t.toml", SEARCH.format(extra="search_seed = 7")), "s")
    assert settings(other, other.optimizers[0]) != points
    assert len(list(expand(spec, tmp_path))) == 10


def test_choice_and_fixed_hyperparameters(tmp_path):
    path = write_sweep(tmp_path / "c.toml", """
[s]
problems = ["two_d_branin"]
optimizers = [{ name = "SGD", hyperparams = { momentum = 0.5 }, search = { lr = { choice = [0.1, 0.01] } } }]
seeds = [1]
trials = 6
""")
    spec = load_sweep(path, "s")
    points = settings(spec, spec.optimizers[0])
    assert {p["lr"] for p in points} <= {0.1, 0.01}
    assert len(points) == len({p["lr"] for p in points})  # coinciding draws are listed once
    assert all(p["momentum"] == 0.5 for p in points)


def test_coinciding_runs_are_run_once(tmp_path):
    path = write_sweep(tmp_path / "d.toml", """
[s]
problems = ["two_d_branin"]
optimizers = [{ name = "SGD", grid = { lr = [0.01] } }, { name = "SGD", hyperparams = { lr = 0.01 }, label = "again" }]
seeds = [1, 2]
""")
    assert len(prepare_runs(load_sweep(path, "s"), tmp_path / "out")) == 2


BAD = {
    "unknown scale key": ('optimiser = []', "unknown key 'optimiser'"),
    "unknown optimizer key": ('optimizers = [{ name = "SGD", grids = { lr = [0.1] } }]', "unknown key 'grids'"),
    "empty grid": ('optimizers = [{ name = "SGD", grid = { lr = [] } }]', "grid.lr is an empty grid"),
    "grid not a list": ('optimizers = [{ name = "SGD", grid = { lr = 0.1 } }]', "grid.lr must be a list"),
    "refused value": ('optimizers = [{ name = "SGD", grid = { lr = [0.1, -1.0] } }]', "lr=-1.0"),
    "unknown hyperparameter": ('optimizers = [{ name = "SGD", hyperparams = { lrr = 0.1 } }]', "lrr"),
    "unknown optimizer": ('optimizers = [{ name = "SDG" }]', "unknown optimizer 'SDG'"),
    "unknown distribution": ('optimizers = [{ name = "SGD", search = { lr = { normal = [0, 1] } } }]',
                             "search.lr: unknown distribution 'normal'"),
    "log-uniform from zero": ('optimizers = [{ name = "SGD", search = { lr = { log_uniform = [0, 1] } } }]',
                              "search.lr.log_uniform: low must be > 0"),
    "low above high": ('optimizers = [{ name = "SGD", search = { lr = { uniform = [1, 0.5] } } }]',
                       "search.lr.uniform: low 1 must be below high 0.5"),
    "one bound": ('optimizers = [{ name = "SGD", search = { lr = { uniform = [1] } } }]', "search.lr.uniform must be"),
    "grid and search": ('optimizers = [{ name = "SGD", grid = { lr = [0.1] }, search = { lr = { choice = [1] } } }]',
                        "lr is both in grid and in search"),
    "trials below one": ('optimizers = [{ name = "SGD", search = { lr = { choice = [0.1] } } }]\ntrials = 0',
                         "trials must be an integer >= 1"),
    "trials without search": ('optimizers = [{ name = "SGD" }]\ntrials = 3', "trials is set but no optimizer"),
    "epochs zero": ('optimizers = [{ name = "SGD" }]\nepochs = 0', "epochs must be integers >= 1"),
    "misspelt seeds": ('optimizers = [{ name = "SGD" }]\nseeds = [42]\nseed = 1', "unknown key 'seed'"),
    "empty seeds": ('optimizers = [{ name = "SGD" }]\nseeds = []', "seeds must be a non-empty list"),
    "restart": ('optimizers = [{ name = "SGD" }]\nrestart = "sometimes"', "restart must be one of"),
    "data": ('optimizers = [{ name = "SGD" }]\ndata = "download"', "data must be \"generate\""),
    "duplicate grid value": ('optimizers = [{ name = "SGD", grid = { lr = [0.1, 0.1] } }]',
                             "grid.lr lists a value twice"),
    "date as value": ('optimizers = [{ name = "SGD", hyperparams = { lr = 2024-01-01 } }]', "hyperparams.lr must be"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_files_fail_naming_the_key(tmp_path, case):
    body, expected = BAD[case]
    seeds = "" if "seeds" in body else "seeds = [42]\n"
    path = write_sweep(tmp_path / "bad.toml", f'[s]\nproblems = ["two_d_branin"]\n{seeds}{body}\n')
    with pytest.raises(SweepError) as error:
        load_sweep(path, "s")
    assert expected in str(error.value)
    assert "bad.toml [s]" in str(error.value)


def test_missing_file_scale_and_invalid_toml(tmp_path):
    with pytest.raises(SweepError, match="no such sweep file"):
        load_sweep(tmp_path / "none.toml", "s")
    with pytest.raises(SweepError, match="no scale 'huge'"):
        load_sweep(EXAMPLES / "embedded.toml", "huge")
    with pytest.raises(SweepError, match="not valid TOML"):
        load_sweep(write_sweep(tmp_path / "x.toml", "[s\n"), "s")


def test_a_bad_file_stops_the_command_before_anything_runs(tmp_path, capsys):
    path = write_sweep(tmp_path / "bad.toml", '[s]\nproblems = ["two_d_branin"]\nseeds = [42]\n'
                                              'optimizers = [{ name = "SGD", grid = { lr = [] } }]\n')
    out = tmp_path / "out"
    for command in ("sweep", "tune"):
        assert sweep_main([command, str(path), "--scale", "s", "--output-dir", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "grid.lr is an empty grid" in err
    assert not out.exists()
