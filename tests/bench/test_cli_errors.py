"""Issue 15 item 10: every command reports bad input and a hostile environment in one line with exit status 2.

Each entry point gets a bad input through the real ``main()``; two go through a subprocess to show that
nothing but one line reaches standard error (no traceback, no "Exception ignored" at exit).
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from probprec.bench.cli import main
from probprec.bench.errors import UserError, describe_os_error

ROOT = Path(__file__).resolve().parents[2]
SWEEP = ROOT / "examples" / "sweeps" / "embedded.toml"
TUNE = ROOT / "examples" / "sweeps" / "tune_embedded.toml"
NO_SUCH_GPU = "cuda:99"  # refused with or without a GPU: no machine here has 100 of them


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("probprec: error: ") and "Traceback" not in err
    return err


def exit_code(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exit_:
        return int(exit_.code)


@pytest.fixture
def paths(tmp_path):
    """A file that is not UTF-8, a directory, a path below a plain file, and an output folder."""
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b'name = "x"\n\xff\xfe = 1\n')
    folder = tmp_path / "folder.toml"
    folder.mkdir()
    plain = tmp_path / "plain"
    plain.write_text("a file, not a folder\n")
    return {"BIN": str(binary), "DIR": str(folder), "UNDER_FILE": str(plain / "below"), "OUT": str(tmp_path / "out"),
            "SWEEP": str(SWEEP), "TUNE": str(TUNE)}


CASES = [
    # command, arguments, what the line must name
    ("run", "two_d_beale --optimizer SGD --epochs 1 --device DEVICE --output-dir OUT", "DEVICE"),
    ("run", "two_d_beale --optimizer SGD --epochs 1 --device gpu --output-dir OUT", "'gpu'"),
    ("runtime", "--problem two_d_beale --repetitions 1 --epochs 1 --device DEVICE --output-dir OUT", "DEVICE"),
    ("ablation", "--config BIN --output-dir OUT", "BIN"),
    ("ablation", "--config DIR --output-dir OUT", "DIR"),
    ("ablation", "--device DEVICE --output-dir OUT", "DEVICE"),
    ("sweep", "BIN --output-dir OUT", "BIN"),
    ("sweep", "UNDER_FILE --output-dir OUT", "UNDER_FILE"),
    ("sweep", "SWEEP --output-dir UNDER_FILE --workers 1", "UNDER_FILE"),
    ("sweep", "SWEEP --output-dir OUT --device DEVICE --workers 1", "DEVICE"),
    ("tune", "BIN --output-dir OUT", "BIN"),
    ("tune", "TUNE --output-dir OUT --device DEVICE --workers 1", "DEVICE"),
    ("experiment", "BIN --output-dir OUT", "BIN"),
    ("experiment", "exp1a --output-dir UNDER_FILE --workers 1", "UNDER_FILE"),
    ("demo", "--epochs 1 --output-dir UNDER_FILE", "UNDER_FILE"),
    ("benchmark", "--quick --problems two_d_beale --seeds 1 --output-dir UNDER_FILE --no-progress", "UNDER_FILE"),
]


@pytest.mark.parametrize("command,arguments,named", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_every_command_reports_bad_input_in_one_line(paths, capsys, command, arguments, named):
    values = {**paths, "DEVICE": NO_SUCH_GPU}
    argv = [command, *(values.get(word, word) for word in arguments.split())]
    assert exit_code(argv) == 2
    line = one_error_line(capsys)
    assert values.get(named, named) in line
    out = Path(paths["OUT"])
    assert not out.exists() or not [p for p in out.rglob("*") if p.is_file()]  # nothing written


def test_cuda_without_a_gpu_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code = exit_code(["run", "two_d_beale", "--optimizer", "SGD", "--device", "cuda", "--output-dir",
                      str(tmp_path / "out")])
    assert code == 2
    assert "device 'cuda': no CUDA device is available" in one_error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_sweep_file_that_is_not_utf8_names_the_file_and_position(paths, capsys):
    assert exit_code(["sweep", paths["BIN"]]) == 2
    line = one_error_line(capsys)
    assert paths["BIN"] in line and "not valid UTF-8 at byte 11 (line 2)" in line


def test_an_os_error_anywhere_is_one_line_naming_the_path(tmp_path, capsys, monkeypatch):
    """The mechanism itself: an OSError from deep inside a command (here: listing) becomes one line."""
    import probprec.bench.cli as cli

    def refuse():
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "secret"))

    monkeypatch.setattr(cli, "_list", refuse)
    assert main(["list"]) == 2
    assert one_error_line(capsys) == f"probprec: error: {tmp_path / 'secret'}: Permission denied"


def test_a_user_error_anywhere_is_one_line(capsys, monkeypatch):
    import probprec.bench.cli as cli

    def refuse():
        raise UserError("the thing named X is not acceptable (accepted: Y)")

    monkeypatch.setattr(cli, "_list", refuse)
    assert main(["list"]) == 2
    assert one_error_line(capsys) == "probprec: error: the thing named X is not acceptable (accepted: Y)"


def test_a_message_of_several_lines_is_still_one_line(capsys, monkeypatch):
    import probprec.bench.cli as cli

    def refuse():
        raise UserError("first part\n  second part\n")

    monkeypatch.setattr(cli, "_list", refuse)
    assert main(["list"]) == 2
    assert one_error_line(capsys) == "probprec: error: first part; second part"


def test_our_own_bugs_keep_their_traceback(monkeypatch):
    import probprec.bench.cli as cli

    def bug():
        raise ZeroDivisionError("a bug of ours")

    monkeypatch.setattr(cli, "_list", bug)
    with pytest.raises(ZeroDivisionError):
        main(["list"])


def test_describe_os_error_without_a_path_and_a_full_disk():
    assert describe_os_error(OSError(errno.EPIPE, "Broken pipe")) == "Broken pipe"
    line = describe_os_error(OSError(errno.ENOSPC, "No space left on device"), "r.json", "write")
    assert line == "cannot write r.json: No space left on device (free some space, then run the same command again)"


def run_cli(*argv: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "probprec.bench.cli", *argv], capture_output=True, text=True,
                          timeout=120, **kwargs)


def test_subprocess_not_utf8_sweep_is_exactly_one_line(paths):
    done = run_cli("sweep", paths["BIN"])
    assert done.returncode == 2
    assert len(done.stderr.splitlines()) == 1 and paths["BIN"] in done.stderr, done.stderr


def test_subprocess_list_into_a_closed_pipe_is_one_line():
    """``probprec list | head -0``: the reader is gone before the first line (EPIPE, certain: no reader is left)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run([sys.executable, "-m", "probprec.bench.cli", "list"], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write_end)
    assert done.returncode == 2
    assert done.stderr.splitlines() == ["probprec: error: standard output: Broken pipe"], done.stderr


def test_ctrl_c_is_one_line_and_status_130(monkeypatch, capsys):
    """Ctrl-C in any command (the demo, say) ends with one line and the shell's status for SIGINT."""
    import probprec.bench.cli as cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_dispatch", interrupted)
    assert cli.main(["demo"]) == 130
    err = capsys.readouterr().err
    assert err == "probprec: interrupted\n"
