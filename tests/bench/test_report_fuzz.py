"""A fuzz test of `probprec report` over mutated result files (issue 15).

Every example is a folder with valid files in the three formats the report reads (ours, DeepOBS 1.2,
DeepOBS 1.1) and some mutated copies: truncated text, bytes that are not UTF-8, a value of the wrong type, a
required key dropped, a curve of the wrong length. The properties: no exception; every mutated file is named
(exactly once, by its path) and not loaded; every valid file is loaded and reported. Derandomized, with a
bounded number of examples: the same examples every run, in seconds.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
from analysis_helpers import probprec_record
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from probprec.bench.analysis import ReportOptions, analyse, write_report
from probprec.bench.cli import main

CURVES = ("train_losses", "valid_losses", "test_losses", "train_accuracies", "valid_accuracies", "test_accuracies")
_DEEPOBS_12_KEYS = ("testproblem", "batch_size", "num_epochs", "random_seed", "weight_decay", "optimizer_name",
                    "optimizer_hyperparams", "training_params", *CURVES)


def _ours(seed: int) -> dict:
    return probprec_record(seed=seed, hyperparams={"lr": 0.1})


def _deepobs_12(seed: int) -> dict:
    return {k: v for k, v in probprec_record(optimizer="SGD", seed=seed, hyperparams={"lr": 0.1}).items()
            if k in _DEEPOBS_12_KEYS}


def _deepobs_11(seed: int) -> dict:
    record = _deepobs_12(seed)
    for key in ("valid_losses", "valid_accuracies", "optimizer_name", "optimizer_hyperparams", "training_params"):
        record.pop(key)
    return record | {"optimizer": "MomentumOptimizer", "learning_rate": 0.01, "hyperparams": {"momentum": 0.9}}


FORMATS = {"ours": _ours, "deepobs-1.2": _deepobs_12, "deepobs-1.1": _deepobs_11}
REQUIRED = {"ours": ("testproblem", "optimizer_name", "num_epochs", "random_seed", "train_losses", "test_losses",
                     "optimizer_hyperparams"),
            "deepobs-1.2": ("testproblem", "optimizer_name", "num_epochs", "random_seed", "train_losses",
                            "test_losses", "optimizer_hyperparams"),
            "deepobs-1.1": ("testproblem", "optimizer", "num_epochs", "random_seed", "train_losses", "test_losses")}
FRACTIONS = st.floats(allow_nan=False, allow_infinity=False).filter(lambda x: x != int(x))
WRONG = st.one_of(st.text(max_size=5), st.booleans(), FRACTIONS, st.lists(st.integers(0, 3), max_size=2),
                  st.dictionaries(st.text(max_size=2), st.integers(), max_size=2))
ANY_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=4),
                        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner,
                                                                                     max_size=3), max_leaves=6)


@st.composite
def broken_file(draw, kind: str) -> bytes:
    """The bytes of a file of format ``kind`` broken one way that no valid result allows."""
    record = FORMATS[kind](seed=draw(st.integers(0, 1000)))
    text = json.dumps(record, indent=1)
    how = draw(st.sampled_from(["truncate", "not_utf8", "wrong_type", "drop_key", "bad_element", "length"]))
    if how == "truncate":
        return text[:draw(st.integers(0, text.rindex("}") - 1))].encode()
    if how == "not_utf8":
        at = draw(st.integers(0, len(text)))
        bad = draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80"]))
        return text[:at].encode() + bad + text[at:].encode()
    if how == "wrong_type":
        key = draw(st.sampled_from(["num_epochs", "random_seed", *CURVES[:1], "test_losses"]))
        record[key] = draw(WRONG | st.none()) if key in CURVES else draw(WRONG)
    elif how == "drop_key":
        record.pop(draw(st.sampled_from(REQUIRED[kind])))
    elif how == "bad_element":
        curve = draw(st.sampled_from([c for c in CURVES if c in record]))
        record[curve][draw(st.integers(0, len(record[curve]) - 1))] = draw(
            st.text(max_size=4) | st.booleans() | st.lists(st.floats(), max_size=2) | st.just({}))
    else:
        curve = draw(st.sampled_from([c for c in CURVES if c in record]))
        if draw(st.booleans()):
            record[curve].append(0.5)  # longer than the budget
        else:
            record[curve].pop()  # shorter than the other curves
    return json.dumps(record).encode()


@st.composite
def anything_file(draw, kind: str) -> bytes:
    """A file of format ``kind`` with any JSON value put anywhere (it may or may not still be valid)."""
    record = FORMATS[kind](seed=draw(st.integers(0, 1000)))
    target = record
    while True:
        key = draw(st.sampled_from(sorted(target))) if isinstance(target, dict) else draw(
            st.integers(0, len(target) - 1))
        inner = target[key]
        if not isinstance(inner, (dict, list)) or not inner or draw(st.booleans()):
            break
        target = inner
    target[key] = draw(ANY_JSON)
    return json.dumps(record).encode()


FOLDERS = st.fixed_dictionaries({
    "good": st.lists(st.sampled_from(sorted(FORMATS)), min_size=1, max_size=3),
    "broken": st.lists(st.sampled_from(sorted(FORMATS)).flatmap(broken_file), min_size=1, max_size=3),
    "anything": st.lists(st.sampled_from(sorted(FORMATS)).flatmap(anything_file), max_size=2),
})


def _write(root: Path, example: dict) -> tuple[list[Path], list[Path], list[Path]]:
    """Write an example under a fresh folder: (valid files, broken files, files of unknown validity)."""
    written: dict[str, list[Path]] = {"good": [], "broken": [], "anything": []}
    for group in written:
        for i, item in enumerate(example[group]):
            kind_folder = root / group / f"file{i}"
            kind_folder.mkdir(parents=True)
            path = kind_folder / f"random_seed__{i}__x.json"
            if group == "good":
                path.write_text(json.dumps(FORMATS[item](seed=100 + i)))
            else:
                path.write_bytes(item)
            written[group].append(path)
    return written["good"], written["broken"], written["anything"]


def _check(found: list[str], loaded: set[str], good: list[Path], broken: list[Path], others: list[Path]) -> None:
    for path in good:
        assert str(path) in loaded
    for path in broken:
        assert str(path) not in loaded
        assert len([line for line in found if line.startswith(f"{path}: ")]) == 1, found
    for path in others:  # valid or named, never both, never neither
        named = [line for line in found if line.startswith(f"{path}: ")]
        assert (str(path) in loaded) != bool(named) or any("unknown metric" in line for line in named), found


FUZZ = settings(derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@settings(FUZZ, max_examples=80)
@given(example=FOLDERS)
def test_loading_and_analysis_never_fail_and_name_every_bad_file(tmp_path_factory, example):
    root = tmp_path_factory.mktemp("fuzz")
    good, broken, others = _write(root, example)
    analysis = analyse(root, ReportOptions())
    loaded = set(analysis.results.runs["path"])
    _check(analysis.found, loaded, good, broken, others)
    assert analysis.summary["runs"].sum() <= len(loaded)
    written = analysis.results.to_files(root / "tables")  # CSV and Parquet take every column as loaded
    assert pd.read_csv(written[0])["path"].tolist() == analysis.results.runs["path"].tolist()


@settings(FUZZ, max_examples=4)
@given(example=FOLDERS)
def test_the_whole_report_is_written_whatever_the_files(tmp_path_factory, example):
    root = tmp_path_factory.mktemp("fuzz_report")
    good, broken, others = _write(root / "runs", example)
    report = write_report(root / "runs", root / "out", ReportOptions())
    loaded = set(pd.read_csv(root / "out" / "tables" / "runs.csv")["path"]) if good or others else set()
    _check(report.problems_found, loaded, good, broken, others)
    md = report.markdown.read_text()
    for path in broken:
        assert path.relative_to(root / "runs").as_posix() in md or str(path) in md


def _example_folder(root: Path) -> tuple[list[Path], list[Path]]:
    good, broken, _ = _write(root, {"good": ["ours", "deepobs-1.2", "deepobs-1.1"], "anything": [], "broken": [
        json.dumps(_ours(7))[:100].encode(), b"\xff" + json.dumps(_deepobs_12(8)).encode(),
        json.dumps(copy.deepcopy(_deepobs_11(9)) | {"random_seed": "fifty"}).encode(),
        json.dumps(_ours(10) | {"test_losses": ["NaN"] * 4}).encode()]})
    return good, broken


def test_the_command_line_in_process_and_as_a_program(tmp_path, capsys):
    _, broken = _example_folder(tmp_path / "runs")
    assert main(["report", str(tmp_path / "runs"), "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert all(f"{path}: " in err for path in broken) and "Traceback" not in err
    process = subprocess.run([sys.executable, "-m", "probprec.bench.cli", "report", str(tmp_path / "runs"), "--out",
                              str(tmp_path / "out2")], capture_output=True, text=True, timeout=300)
    assert process.returncode == 0, process.stderr
    assert "Traceback" not in process.stderr
    assert all(f"{path}: " in process.stderr for path in broken)
    assert "3 runs of 1 problem" in (tmp_path / "out2" / "report.md").read_text()
