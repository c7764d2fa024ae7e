"""Issue 15 item 14: ``--hp`` values are parsed robustly, checked with the accepted range, and written back exactly."""

from __future__ import annotations

import math
import shlex

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from probprec.bench.cli import _build_parser, main
from probprec.bench.errors import UserError
from probprec.bench.hyperparams import (
    hyperparameter_argument,
    parse_hyperparameter_value,
    parse_hyperparameters,
    same_value,
)


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize(
    "optimizer,hp,expected",
    [
        ("SGD", "lr=nan", "hyperparameter lr must be a finite number >= 0, got nan"),
        ("SGD", "lr=inf", "hyperparameter lr must be a finite number >= 0, got inf"),
        ("SGD", "lr=1e400", "hyperparameter lr must be a finite number >= 0, got inf"),
        ("SGD", "lr=abc", "hyperparameter lr must be a number, got 'abc'"),
        ("SGD", "lr=-1", "hyperparameter lr must be a finite number >= 0, got -1"),
        ("Momentum", "momentum=-0.5", "hyperparameter momentum must be a finite number >= 0, got -0.5"),
        ("Momentum", "nesterov=maybe", "hyperparameter nesterov must be True or False, got 'maybe'"),
        ("Adam", "betas=(0.9, 1.5)", "hyperparameter betas must be two numbers in [0, 1), got (0.9, 1.5)"),
        ("Adam", "betas=(nan, 0.999)", "hyperparameter betas must be two numbers in [0, 1)"),
        ("torch.optim.RMSprop", "lr=0.01|alpha=-INF", "hyperparameter alpha must be a finite number >= 0, got -inf"),
        ("PreconditionedSGD", "lr=Infinity", "lr must be a finite number >= 0, got inf"),
        ("PreconditionedSGD", "noise_floor=nan", "hyperparameter noise_floor must be a finite number"),
        ("SGD", f"lr={'1' * 5000}", "hyperparameter lr must be a finite number >= 0, got inf"),
        ("SGD", "lr=0.1|lr=0.2", "hyperparameter lr is given twice"),
    ],
    ids=lambda v: v[:30],
)
def test_bad_values_are_one_line_naming_the_range(tmp_path, capsys, optimizer, hp, expected):
    code = main(["run", "quadratic_deep", "--optimizer", optimizer, "--epochs", "1", "--hp", *hp.split("|"),
                 "--output-dir", str(tmp_path / "out")])
    assert code == 2
    line = one_error_line(capsys)
    assert line.startswith("probprec: error: ") and expected in line
    assert not (tmp_path / "out").exists() or not any(p.is_file() for p in (tmp_path / "out").rglob("*"))


def test_a_nan_in_a_sweep_grid_is_refused_naming_it(tmp_path, capsys):
    sweep = tmp_path / "s.toml"
    sweep.write_text('[s]\nproblems = ["quadratic_deep"]\nseeds = [1]\n'
                     '[[s.optimizers]]\nname = "SGD"\ngrid = { lr = [0.1, inf] }\n')
    assert main(["sweep", str(sweep), "--scale", "s", "--output-dir", str(tmp_path / "out")]) == 2
    assert "hyperparameter lr must be a finite number >= 0, got inf" in one_error_line(capsys)


@pytest.mark.parametrize("text,value", [
    ("0.1", 0.1), ("1e400", math.inf), ("-1e400", -math.inf), ("1e-400", 0.0), ("NaN", math.nan),
    ("-inf", -math.inf), ("+Infinity", math.inf), ("true", True), ("FALSE", False), ("True", True),
    ("None", None), ("1_000", 1000), ("(0.9, 0.999)", (0.9, 0.999)), ("[1, inf]", [1, math.inf]),
    ("thesis", "thesis"), ("'True'", "True"), ("x=y", "x=y"), ("[1, abc]", "[1, abc]"), ("1j", "1j"),
    ("{1: 2}", "{1: 2}"), ("", ""), ("  0.5 ", 0.5), ("(" * 300 + ")" * 300, "(" * 300 + ")" * 300),
], ids=lambda v: repr(v)[:20])
def test_values_parse_as_documented(text, value):
    assert same_value(parse_hyperparameter_value(text), value)


def test_booleans_are_booleans_not_truthy_strings():
    """``nesterov=false`` used to be the string "false", which is true."""
    assert parse_hyperparameters(["nesterov=false", "amsgrad=true"]) == {"nesterov": False, "amsgrad": True}


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_any_text_is_a_value_or_one_line_error(text):
    try:
        parsed = parse_hyperparameters([text])
    except UserError as error:
        assert "\n" not in str(error) and str(error)
        return
    [(key, value)] = parsed.items()
    assert key.isidentifier()
    assert value is None or isinstance(value, (bool, int, float, str, list, tuple))


SCALARS = (st.none() | st.booleans() | st.integers(-10**40, 10**40)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.lists(inner, max_size=3).map(tuple),
                      max_leaves=8)


@settings(max_examples=400, deadline=None)
@given(VALUES)
def test_writing_a_value_and_parsing_it_back_gives_the_same_value(value):
    argument = hyperparameter_argument("k", value)
    assert argument.isprintable()  # a command line can carry it
    assert same_value(parse_hyperparameters([argument])["k"], value)


@settings(max_examples=100, deadline=None)
@given(VALUES)
def test_the_written_value_survives_the_shell_and_argparse(value):
    argv = shlex.split(shlex.join(["run", "p", "--optimizer", "o", "--hp", hyperparameter_argument("k", value)]))
    assert same_value(parse_hyperparameters(_build_parser().parse_args(argv).hp)["k"], value)


def test_values_no_command_line_carries_are_refused_in_one_line():
    with pytest.raises(UserError, match="cannot be written on a command line"):
        hyperparameter_argument("k", {"a": 1})
    with pytest.raises(UserError, match="cannot be written on a command line"):
        hyperparameter_argument("k", 10**5000)
