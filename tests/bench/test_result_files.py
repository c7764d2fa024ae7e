"""Issue 15 items 11, 15 and 17: result files survive a full disk, get the umask's permissions, and any
hyperparameter value keeps DeepOBS's folder layout (one folder per setting, reversible names)."""

from __future__ import annotations

import errno
import json
import os
import stat
import string
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from probprec.bench.atomic import atomic_writer
from probprec.bench.cli import main
from probprec.bench.errors import ConfigError
from probprec.bench.problems.synthetic import QuadraticDeep
from probprec.bench.results import (
    NAME_MAX,
    format_value,
    parse_settings_folder,
    settings_folder,
    write_json_atomic,
    write_text_atomic,
)
from probprec.bench.runner import RunConfig, run

CURVES = ["train_losses", "valid_losses", "test_losses", "minibatch_train_losses"]
ENOSPC = OSError(errno.ENOSPC, "No space left on device")


class TaggedSGD(torch.optim.SGD):
    """SGD with a free-text hyperparameter, as user optimizers have (names, paths, modes)."""

    def __init__(self, params, lr: float = 0.01, tag: str = ""):
        super().__init__(params, lr=lr)
        self.tag = tag


TAGGED = f"{__name__}.TaggedSGD"


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("probprec: error: ")
    return err


def files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def run_argv(out: Path, epochs: int = 4) -> list[str]:
    return ["run", "quadratic_deep", "--optimizer", "PreconditionedSGD", "--epochs", str(epochs), "--no-progress",
            "--output-dir", str(out)]


def reference_curves(tmp_path: Path, epochs: int = 4) -> dict:
    record = run(RunConfig("quadratic_deep", "PreconditionedSGD", epochs=epochs, output_dir=str(tmp_path / "ref"),
                           progress=False)).record
    return {key: record[key] for key in CURVES}


def only_result(out: Path) -> dict:
    [path] = [p for p in out.rglob("random_seed__*.json")]
    return json.loads(path.read_text())


# ---------------------------------------------------------------------------------------------------------------
# Item 11: a full disk


def failing_torch_save(monkeypatch, from_call: int) -> None:
    """torch.save writes part of the checkpoint and then finds the disk full, from its ``from_call``-th call on."""
    real_save, calls = torch.save, {"n": 0}

    def save(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] >= from_call:
            f.write(b"the first bytes of a checkpoint")
            raise ENOSPC
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)


def failing_result_fsync(monkeypatch) -> None:
    """Flushing a result JSON to disk fails (the disk filled up while it was written)."""
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc/self/fd to tell which file is flushed")
    real_fsync = os.fsync

    def fsync(fd):
        if ".json." in os.readlink(f"/proc/self/fd/{fd}"):
            raise ENOSPC
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def test_full_disk_at_a_checkpoint_is_one_line_recorded_interrupted_and_resumes(tmp_path, capsys, monkeypatch):
    reference = reference_curves(tmp_path)
    out = tmp_path / "out"
    failing_torch_save(monkeypatch, from_call=2)  # the checkpoint after epoch 2
    assert main(run_argv(out)) == 2
    line = one_error_line(capsys)
    assert "No space left on device" in line and ".checkpoint__random_seed__42.pt" in line
    assert not [f for f in files(out) if f.endswith(".tmp")]  # no partial file
    record = only_result(out)
    assert record["status"] == "interrupted" and "resumes from epoch 1" in record["status_reason"]
    assert "No space left on device" in record["status_reason"]
    monkeypatch.undo()
    assert main(run_argv(out)) == 0
    record = only_result(out)
    assert record["status"] == "completed" and record["metadata"]["resumed_at_epochs"] == [1]
    assert {key: record[key] for key in CURVES} == reference
    assert not [f for f in files(out) if ".checkpoint" in f or f.endswith(".tmp")]


def test_full_disk_at_the_result_file_leaves_no_file_and_resumes(tmp_path, capsys, monkeypatch):
    reference = reference_curves(tmp_path)
    out = tmp_path / "out"
    failing_result_fsync(monkeypatch)
    assert main(run_argv(out)) == 2
    line = one_error_line(capsys)
    assert "No space left on device" in line and "random_seed__42__" in line and ".json" in line
    assert [f.rsplit("/", 1)[-1] for f in files(out)] == [".checkpoint__random_seed__42.pt"]  # the last epoch's
    monkeypatch.undo()
    assert main(run_argv(out)) == 0
    record = only_result(out)
    assert record["status"] == "completed" and record["metadata"]["resumed_at_epochs"] == [3]
    assert {key: record[key] for key in CURVES} == reference


def test_disk_full_for_every_write_keeps_the_last_checkpoint_and_resumes(tmp_path, capsys, monkeypatch):
    reference = reference_curves(tmp_path)
    out = tmp_path / "out"
    failing_torch_save(monkeypatch, from_call=3)
    failing_result_fsync(monkeypatch)
    assert main(run_argv(out)) == 2
    assert "No space left on device" in one_error_line(capsys)
    assert [f.rsplit("/", 1)[-1] for f in files(out)] == [".checkpoint__random_seed__42.pt"]
    monkeypatch.undo()
    assert main(run_argv(out)) == 0
    record = only_result(out)
    assert record["metadata"]["resumed_at_epochs"] == [2]
    assert {key: record[key] for key in CURVES} == reference


def test_a_failed_atomic_write_leaves_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "r.json"
    write_json_atomic(target, {"old": 1})
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(ENOSPC))
    with pytest.raises(OSError, match="No space left"):
        write_json_atomic(target, {"new": 2})
    assert json.loads(target.read_text()) == {"old": 1} and files(tmp_path) == ["r.json"]


# ---------------------------------------------------------------------------------------------------------------
# Item 15: permissions


@pytest.fixture(params=[0o022, 0o077], ids=["umask022", "umask077"])
def umask(request):
    previous = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_every_written_file_has_the_mode_open_gives(tmp_path, umask, monkeypatch):
    with open(tmp_path / "by_open", "w") as handle:
        handle.write("x")
    expected = mode(tmp_path / "by_open")
    assert expected == 0o666 & ~umask

    write_text_atomic(tmp_path / "text.md", "x")
    write_json_atomic(tmp_path / "data.json", {"a": 1})
    with atomic_writer(tmp_path / "bytes.bin", "wb") as handle:
        handle.write(b"x")

    # a run interrupted in its second epoch: a result file and a checkpoint
    original, calls = QuadraticDeep.loss, {"n": 0}

    def interrupting(self, outputs, targets):
        calls["n"] += torch.is_grad_enabled()
        if calls["n"] == 7 + 3:
            raise KeyboardInterrupt("SIGINT")
        return original(self, outputs, targets)

    monkeypatch.setattr(QuadraticDeep, "loss", interrupting)
    result = run(RunConfig("quadratic_deep", "SGD", epochs=3, output_dir=str(tmp_path / "runs"), progress=False))
    assert result.status == "interrupted"
    [checkpoint] = list((tmp_path / "runs").rglob(".checkpoint*"))

    from probprec.bench.analysis import write_report

    report = write_report([tmp_path / "runs"], tmp_path / "report")
    written = [tmp_path / "text.md", tmp_path / "data.json", tmp_path / "bytes.bin", result.path, checkpoint,
               report.html, report.markdown, *map(Path, report.tables), *map(Path, report.figures)]
    assert any(str(p).endswith(".csv") for p in written)
    assert {str(p): oct(mode(p)) for p in written} == {str(p): oct(expected) for p in written}


# ---------------------------------------------------------------------------------------------------------------
# Item 17: any value in the folder layout


HOSTILE = ["a/b", "../../x", "..", "a__b", "_x_", "50%", "caf\u00e9", "e\u0301", "\u202egnp.exe", "x\ny", "~", "/",
           "a\\b", "C:", " ", "%2F"]


@pytest.mark.parametrize("tag", HOSTILE, ids=[ascii(t) for t in HOSTILE])
def test_any_string_value_keeps_one_settings_folder(tmp_path, tag):
    config = RunConfig("quadratic_deep", TAGGED, {"tag": tag}, epochs=1, output_dir=str(tmp_path), progress=False)
    first = run(config)
    assert first.status == "completed"
    relative = first.path.relative_to(tmp_path).parts
    assert len(relative) == 4 and relative[:2] == ("quadratic_deep", TAGGED)  # problem/optimizer/setting/file
    folder = relative[2]
    assert folder.startswith("num_epochs__1__batch_size__128__tag__")
    assert dict(parse_settings_folder(folder))["tag"] == tag
    assert run(config).status == "skipped"  # a rerun finds it: no duplicate
    assert len(list(tmp_path.rglob("*.json"))) == 1


def test_two_values_that_differ_get_two_folders(tmp_path):
    for tag in ("a/b", "a%2Fb", "a_b", "a__b"):
        run(RunConfig("quadratic_deep", TAGGED, {"tag": tag}, epochs=1, output_dir=str(tmp_path), progress=False))
    folders = {p.parent.name for p in tmp_path.rglob("*.json")}
    assert len(folders) == 4
    assert {dict(parse_settings_folder(f))["tag"] for f in folders} == {"a/b", "a%2Fb", "a_b", "a__b"}


def test_a_value_too_long_for_a_file_name_is_one_line(tmp_path, capsys):
    code = main(["run", "quadratic_deep", "--optimizer", TAGGED, "--hp", f"tag={'x' * 300}", "--epochs", "1",
                 "--output-dir", str(tmp_path / "out")])
    assert code == 2
    line = one_error_line(capsys)
    assert f"more than the {NAME_MAX}" in line and "tag" in line
    assert not (tmp_path / "out").exists() or files(tmp_path / "out") == []


@pytest.mark.parametrize("hyperparams,training,expected", [
    ({"lr": 0.01}, {}, "num_epochs__12__batch_size__128__lr__1.e-02"),
    ({"alpha": 0.9, "lr": 1e-3}, {}, "num_epochs__12__batch_size__128__alpha__9.e-01__lr__1.e-03"),
    ({"betas": [0.9, 0.999], "lr": 0.039810717055349734}, {},
     "num_epochs__12__batch_size__128__betas__[0.9, 0.999]__lr__3.9810717055e-02"),
    ({"mode": "thesis", "fixes": "prior_noise", "lr": None, "nesterov": False, "est_rank": 2}, {"restart": "epoch"},
     "num_epochs__12__batch_size__128__est_rank__2__fixes__prior_noise__lr__None__mode__thesis__nesterov__False"
     "__restart__epoch"),
    ({"optim_class": "torch.optim.sgd.SGD", "momentum": -0.5, "names": ["a b", "c"]}, {},
     "num_epochs__12__batch_size__128__momentum__-5.e-01__names__['a b', 'c']__optim_class__torch.optim.sgd.SGD"),
])
def test_ordinary_values_keep_deepobs_folder_names(hyperparams, training, expected):
    assert settings_folder(12, 128, None, hyperparams, training) == expected


KEYS = st.text(string.ascii_letters + "_" + string.digits, min_size=1, max_size=12).filter(str.isidentifier)
VALUES = (st.text(max_size=20) | st.integers(-10**12, 10**12) | st.floats(allow_nan=True, allow_infinity=True)
          | st.booleans() | st.none() | st.lists(st.text(max_size=5) | st.floats(), max_size=3))


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(KEYS, VALUES, max_size=4), st.integers(1, 10**4), st.integers(1, 10**4))
def test_folder_names_are_one_path_component_and_decode_to_the_rendered_values(hyperparams, epochs, batch):
    try:
        name = settings_folder(epochs, batch, None, hyperparams)
    except ConfigError as error:  # only a name too long for a file system is refused
        assert f"more than the {NAME_MAX}" in str(error)
        return
    assert "/" not in name and "\\" not in name and "\x00" not in name and name.isprintable()
    assert name.isascii() and len(name.encode()) <= NAME_MAX
    assert Path(name).name == name and name not in (".", "..")
    expected = [("num_epochs", str(epochs)), ("batch_size", str(batch))]
    expected += [(key, format_value(hyperparams[key])) for key in sorted(hyperparams)]
    assert parse_settings_folder(name) == expected
