"""Hyperparameter values: their text on the command line (``--hp key=value``), its inverse, and their check.

:func:`parse_hyperparameters` reads ``key=value`` pairs. A value is, in this order:

* a Python literal made of numbers, booleans, ``None``, strings, lists and tuples
  (``0.1``, ``1_000``, ``(0.9, 0.999)``, ``'True'``), where ``nan``, ``inf`` and
  ``infinity`` (any case, signed) are floats and ``true``/``false`` (any case) booleans;
* a number that overflows a float (``1e400``, a 5,000-digit integer): ``inf``;
* otherwise the text itself, as a string (``thesis``, ``x=y``).

:func:`hyperparameter_argument` is its inverse: the ``key=value`` text that
:func:`parse_hyperparameters` reads back as the same value of the same type (what
``probprec sweep --emit-commands`` writes).

:func:`check_hyperparameters` refuses values that no optimizer can use, before
it is built: non-finite numbers, a string or a boolean where the optimizer's
default is a number, a non-boolean where it is a boolean, and values out of the
range that torch's optimizers accept for their common hyperparameters
(:data:`RANGES`). The message names the hyperparameter and what is accepted.
"""

from __future__ import annotations

import ast
import inspect
import math
from collections.abc import Callable, Iterable
from typing import Any

from .errors import ConfigError

__all__ = ["RANGES", "check_hyperparameters", "hyperparameter_argument", "parse_hyperparameter_value",
           "parse_hyperparameters", "same_value", "shown"]

_SPECIAL_WORDS: dict[str, Any] = {"nan": math.nan, "inf": math.inf, "infinity": math.inf, "true": True,
                                  "false": False}
"""Bare words that are values (lower case)."""
_PARSE_ERRORS = (SyntaxError, ValueError, TypeError, MemoryError, RecursionError)
"""What Python's parser raises for text that is not an expression (or too large or deep to be one)."""

RANGES: dict[str, tuple[float, float, bool, str]] = {
    "lr": (0.0, math.inf, False, "a finite number >= 0"),
    "momentum": (0.0, math.inf, False, "a finite number >= 0"),
    "weight_decay": (0.0, math.inf, False, "a finite number >= 0"),
    "eps": (0.0, math.inf, False, "a finite number >= 0"),
    "alpha": (0.0, math.inf, False, "a finite number >= 0"),
    "betas": (0.0, 1.0, True, "two numbers in [0, 1)"),
}
"""name: (low, high, high excluded, accepted) of every number in the value; torch.optim's own limits."""


_SHOWN_CHARACTERS = 80
"""Values in messages are cut to this length."""


def shown(value: Any) -> str:
    """``repr(value)`` for a one-line message: at most about :data:`_SHOWN_CHARACTERS` characters.

    Example:
        >>> shown("x" * 100)[-16:], shown(-10**5000)
        ('(102 characters)', 'an integer of 5001 digits')
    """
    try:
        text = repr(value)
    except ValueError:  # an int longer than Python prints
        return f"an integer of {int(math.log10(abs(value))) + 1} digits"
    if len(text) > _SHOWN_CHARACTERS:
        return f"{text[:_SHOWN_CHARACTERS - 20]}... ({len(text)} characters)"
    return text


class _NotALiteral(Exception):
    """The text is not one of the literals we read (it is then a string)."""


def _literal(node: ast.AST) -> Any:
    """The value of an expression made of our literals, or _NotALiteral."""
    if isinstance(node, ast.Constant) and (node.value is None or isinstance(node.value, (bool, int, float, str))):
        return node.value
    if isinstance(node, ast.Name) and node.id.lower() in _SPECIAL_WORDS:
        return _SPECIAL_WORDS[node.id.lower()]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
        operand = _literal(node.operand)
        if isinstance(operand, (int, float)) and not isinstance(operand, bool):
            return -operand if isinstance(node.op, ast.USub) else operand
    if isinstance(node, (ast.List, ast.Tuple)):
        items = [_literal(item) for item in node.elts]
        return items if isinstance(node, ast.List) else tuple(items)
    raise _NotALiteral


def parse_hyperparameter_value(text: str) -> Any:
    """The value of the text after ``key=`` (see the module docstring); never raises.

    Example:
        >>> [parse_hyperparameter_value(t) for t in ["0.1", "1e400", "NaN", "false", "(0.9, 0.99)", "thesis"]]
        [0.1, inf, nan, False, (0.9, 0.99), 'thesis']
    """
    text = text.strip()
    try:
        return _literal(ast.parse(text, mode="eval").body)
    except (_NotALiteral, *_PARSE_ERRORS):
        pass
    try:
        return float(text)  # what Python cannot parse as a literal but is a number: 5,000 digits, " 1e400"
    except (ValueError, OverflowError):
        return text


def parse_hyperparameters(pairs: Iterable[str]) -> dict[str, Any]:
    """Parse ``key=value`` strings (see the module docstring).

    Raises:
        ConfigError: a pair without ``=`` or whose key is not a name, or a key given twice.

    Example:
        >>> parse_hyperparameters(["lr=0.1", "nesterov=true", "betas=(0.9, 0.99)", "name=x"])
        {'lr': 0.1, 'nesterov': True, 'betas': (0.9, 0.99), 'name': 'x'}
    """
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ConfigError(f"hyperparameter {shown(pair)} must look like name=value (name: letters, digits, _)")
        if key in out:
            raise ConfigError(f"hyperparameter {key} is given twice ({key}={shown(out[key])} and {shown(pair)})")
        out[key] = parse_hyperparameter_value(text)
    return out


def same_value(a: Any, b: Any) -> bool:
    """Equal values of the same types, element by element, where NaN equals NaN."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def _text(value: Any) -> str:
    """Literal text of a value inside a list or tuple (strings always quoted)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, (list, tuple)):
        inner = ", ".join(_text(item) for item in value)
        if isinstance(value, list):
            return f"[{inner}]"
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    if value is None or isinstance(value, (bool, int, float, str)):
        return repr(value)
    raise TypeError(type(value).__name__)


def hyperparameter_argument(key: str, value: Any) -> str:
    """``key=value`` such that :func:`parse_hyperparameters` reads ``value`` back (the same value and type).

    Raises:
        ConfigError: a value that no command line can carry (not a number, boolean, None, string or list/tuple
            of them, or an integer too long to print).

    Example:
        >>> [hyperparameter_argument(k, v) for k, v in [("nesterov", False), ("lr", 0.1), ("mode", "thesis"),
        ...                                             ("name", "True"), ("lr", float("inf"))]]
        ['nesterov=False', 'lr=0.1', 'mode=thesis', "name='True'", 'lr=inf']
    """
    if isinstance(value, str) and value.isprintable() and same_value(parse_hyperparameter_value(value), value):
        return f"{key}={value}"
    try:
        text = _text(value)
    except (TypeError, ValueError):  # ValueError: an int longer than Python prints
        text = None
    if text is None or not same_value(parse_hyperparameter_value(text), value):
        raise ConfigError(f"hyperparameter {key}={shown(value)} cannot be written on a command line")
    return f"{key}={text}"


def _numbers(value: Any) -> list[float | int]:
    if isinstance(value, (list, tuple)):
        return [n for item in value for n in _numbers(item)]
    return [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else []


def _defaults(factory: Callable[..., Any]) -> dict[str, Any]:
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return {}
    return {name: p.default for name, p in parameters.items() if p.default is not inspect.Parameter.empty}


def _check_type(key: str, value: Any, default: Any) -> None:
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, bool) and not isinstance(value, bool):
        raise ConfigError(f"hyperparameter {key} must be True or False, got {shown(value)}")
    if isinstance(default, (int, float)) and not isinstance(default, bool) and not is_number:
        raise ConfigError(f"hyperparameter {key} must be a number, got {shown(value)}")


def _check_range(key: str, value: Any) -> None:
    numbers = _numbers(value)
    if key in RANGES:
        low, high, open_high, accepted = RANGES[key]
        inside = all(low <= n < high if open_high else low <= n <= high for n in numbers)
        if not inside or not all(math.isfinite(n) for n in numbers):
            raise ConfigError(f"hyperparameter {key} must be {accepted}, got {shown(value)}")
    elif not all(math.isfinite(n) for n in numbers):
        raise ConfigError(f"hyperparameter {key} must be a finite number (or numbers), got {shown(value)}")


def check_hyperparameters(factory: Callable[..., Any], hyperparams: dict[str, Any]) -> None:
    """Refuse values that ``factory`` (an optimizer class) cannot use; see the module docstring.

    Raises:
        ConfigError: naming the hyperparameter and what it accepts.
    """
    defaults = _defaults(factory)
    for key, value in hyperparams.items():
        if key in defaults:
            _check_type(key, value, defaults[key])
        _check_range(key, value)
