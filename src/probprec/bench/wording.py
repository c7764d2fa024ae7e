"""Words in the harness's messages: counts with the right number ("1 seed", "3 seeds")."""

from __future__ import annotations

__all__ = ["counted"]


def counted(count: int, noun: str, plural: str | None = None) -> str:
    """``count`` and ``noun`` in the singular or the plural.

    Args:
        count: how many.
        noun: the singular.
        plural: the plural, where it is not ``noun + "s"``.

    Example:
        >>> counted(1, "seed"), counted(3, "seed"), counted(0, "run"), counted(2, "repetition")
        ('1 seed', '3 seeds', '0 runs', '2 repetitions')
    """
    return f"{count} {noun if count == 1 else plural or noun + 's'}"
