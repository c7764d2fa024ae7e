"""Result files: DeepOBS 1.2's folder layout and keys, strict JSON, atomic writes.

One JSON file per run at::

    <output_dir>/<testproblem>/<optimizer>/num_epochs__<N>__batch_size__<B>[__weight_decay__<wd>]
        __<hp1>__<v1>__.../random_seed__<seed>__<YYYY-MM-DD-HH-MM-SS>.json

with DeepOBS 1.2's keys (``testproblem``, ``batch_size``, ``num_epochs``,
``random_seed``, ``weight_decay``, ``optimizer_name``, ``optimizer_hyperparams``,
``training_params``, the per-epoch ``train/valid/test_losses`` and ``_accuracies``
of length N+1, ``minibatch_train_losses``), so tools written for DeepOBS read
them, plus ours: ``status`` and its reason, step and epoch, per-epoch timing,
environment metadata and the optimizer's logs. Non-finite numbers are written as
``null``; files are written to a temporary name and renamed, so a reader never
sees half a file.

Folder names: every key and value is rendered as DeepOBS renders it
(:func:`format_value`) and kept as it is when it is *plain*: letters, digits,
``+-.,=()[]'``, spaces and single inner underscores, so existing folders stay
valid. Any other text (a ``/``, ``__``, ``%``, a
leading or trailing underscore, control characters, any non-ASCII character) is
percent-encoded (UTF-8, ``_`` as ``%5F``), which keeps the name one path
component (no ``/``; a name that starts with ``num_epochs`` is never ``..``) and
splittable at ``__``; :func:`parse_settings_folder` reverses it.
A name longer than a file name may be (:data:`NAME_MAX` bytes) is refused.
"""

from __future__ import annotations

import json
import math
import string
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from .atomic import atomic_writer
from .errors import ConfigError

__all__ = [
    "SCHEMA_VERSION",
    "TUNING_RECORD",
    "dump_strict",
    "ensure_writable_folder",
    "existing_results",
    "format_value",
    "parse_settings_folder",
    "result_path",
    "settings_folder",
    "write_json_atomic",
]

SCHEMA_VERSION = 1
STATUSES = ("completed", "diverged", "collapsed", "interrupted", "failed")
TUNING_RECORD = "tuning.json"
"""The tuning protocol's record, written beside its runs (not a run result: the analysis skips it)."""
SEPARATOR = "__"
"""Between the keys and values of a settings folder name (DeepOBS's)."""
NAME_MAX = 255
"""The longest file name, in bytes, that common file systems allow (Linux, macOS, Windows)."""
_PLAIN_PUNCTUATION = "+-.,=()[]' "
"""Kept as they are in folder names besides letters, digits and single inner underscores."""
_PLAIN = frozenset(string.ascii_letters + string.digits + _PLAIN_PUNCTUATION + "_")


def format_value(value: Any) -> str:
    """DeepOBS's rendering of a value in a folder name: floats with 10 significant digits.

    Example:
        >>> format_value(0.01), format_value(0.039810717055349734), format_value(128), format_value(None)
        ('1.e-02', '3.9810717055e-02', '128', 'None')
    """
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # inf, -inf, nan
    if isinstance(value, float):
        mantissa, exponent = f"{value:.10e}".split("e")
        return f"{mantissa.rstrip('0')}e{exponent}"
    return str(value)


def _is_plain(text: str) -> bool:
    return set(text) <= _PLAIN and SEPARATOR not in text and not text.startswith("_") and not text.endswith("_")


def encode_part(text: str) -> str:
    """A key or rendered value as it appears in a folder name: plain text as it is, any other percent-encoded.

    Example:
        >>> encode_part("1.e-02"), encode_part("[0.9, 0.999]"), encode_part("a/b"), encode_part("x__y")
        ('1.e-02', '[0.9, 0.999]', 'a%2Fb', 'x%5F%5Fy')
    """
    if _is_plain(text):
        return text
    return quote(text, safe=_PLAIN_PUNCTUATION, errors="surrogatepass").replace("_", "%5F").replace("~", "%7E")


def settings_folder(num_epochs: int, batch_size: int, weight_decay: float | None, hyperparams: dict[str, Any],
                    training_params: dict[str, Any] | None = None) -> str:
    """The folder name of one setting: epochs, batch size, weight decay and hyperparameters sorted by name.

    Raises:
        ConfigError: the name would be longer than :data:`NAME_MAX` bytes (naming the longest value).
    """
    pairs: list[tuple[str, Any]] = [("num_epochs", num_epochs), ("batch_size", batch_size)]
    if weight_decay is not None:
        pairs.append(("weight_decay", weight_decay))
    pairs += [(key, hyperparams[key]) for key in sorted(hyperparams)]
    params = training_params or {}
    pairs += [(key, params[key]) for key in sorted(params)]
    parts = [(encode_part(str(key)), encode_part(format_value(value))) for key, value in pairs]
    name = SEPARATOR.join(part for pair in parts for part in pair)
    if len(name.encode()) > NAME_MAX:
        key, text = max(parts, key=lambda pair: len(pair[1]))
        raise ConfigError(f"the settings folder name would be {len(name.encode())} bytes, more than the {NAME_MAX} "
                          f"a file name may have; shorten the values (the longest: {unquote(key)}, "
                          f"{len(text)} characters in the name)")
    return name


def parse_settings_folder(name: str) -> list[tuple[str, str]]:
    """The (key, rendered value) pairs of a settings folder name: the inverse of :func:`settings_folder`.

    Raises:
        ValueError: ``name`` is not a settings folder name (an odd number of parts).

    Example:
        >>> parse_settings_folder("num_epochs__1__batch_size__32__tag__a%2Fb")
        [('num_epochs', '1'), ('batch_size', '32'), ('tag', 'a/b')]
    """
    parts = name.split(SEPARATOR)
    if len(parts) % 2:
        raise ValueError(f"{name!r} is not a settings folder name (keys and values alternate, separated by __)")
    decoded = [unquote(part, errors="surrogatepass") for part in parts]
    return list(zip(decoded[::2], decoded[1::2], strict=True))


def result_path(output_dir: str | Path, problem: str, optimizer: str, folder: str, seed: int,
                started: datetime) -> Path:
    """The JSON file of one run."""
    stamp = started.strftime("%Y-%m-%d-%H-%M-%S")
    return Path(output_dir) / problem / optimizer / folder / f"random_seed__{seed}__{stamp}.json"


def existing_results(folder: Path, seed: int) -> list[tuple[Path, dict[str, Any]]]:
    """Readable results of ``seed`` in a settings folder, oldest first (unreadable files are skipped)."""
    found = []
    for path in sorted(folder.glob(f"random_seed__{seed}__*.json")):
        try:
            found.append((path, json.loads(path.read_text())))
        except (OSError, ValueError):
            continue
    return found


def _strict(value: Any) -> Any:
    """Replace non-finite floats by None, recursively (JSON has no NaN or Infinity)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    return value


def dump_strict(data: Any) -> str:
    """Strict JSON text (``NaN`` and ``Infinity`` become ``null``), indented like DeepOBS 1.2."""
    return json.dumps(_strict(data), indent=4, allow_nan=False, default=str)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as strict JSON to ``path`` through a temporary file in the same folder."""
    write_text_atomic(path, dump_strict(data) + "\n")


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, with the permissions the umask gives (:mod:`.atomic`)."""
    with atomic_writer(path) as handle:
        handle.write(text)


def ensure_writable_folder(directory: str | Path) -> None:
    """Create ``directory`` if needed and check that files can be created in it.

    Raises:
        ConfigError: naming the folder and the system's reason.
    """
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".probprec-write-test-"):
            pass
    except OSError as error:
        raise ConfigError(f"output directory {directory} is not writable: {error.strerror or error}") from None
