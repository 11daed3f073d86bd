"""Checks of config values shared by the modules that take them, each error naming the setting.

A Hydra override reads `data.block_size=abc` as a string and `=true` as a boolean; without these checks such a value
fails later with a comparison error that names no setting, or, for a boolean, passes as 1.
"""

from __future__ import annotations

import math
from collections.abc import Mapping


def is_finite_number(value: object) -> bool:
    """Whether `value` is a finite int or float (a boolean, a string or nan is not)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_non_negative(name: str, value: object) -> None:
    """Raise unless `value` is a finite number >= 0 (a boolean, a string or nan is not)."""
    if not (is_finite_number(value) and value >= 0):
        raise ValueError(f"{name} must be a finite non-negative number, got {value!r}")


def check_flag(name: str, value: object) -> None:
    """Raise unless `value` is a boolean (a string such as `no` would read as true)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")


def check_whole_numbers(settings: Mapping[str, tuple[object, int]]) -> None:
    """Raise naming every setting of `{name: (value, least)}` that is not a whole number >= its least."""
    wrong = [
        f"{name} takes a whole number >= {least}, got {value!r}"
        for name, (value, least) in settings.items()
        if isinstance(value, bool) or not isinstance(value, int) or value < least
    ]
    if wrong:
        raise ValueError("; ".join(wrong))
