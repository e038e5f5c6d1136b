"""The value checks every config section shares (``model.transfer``, ``model.distillation``, the multilingual keys).

Each takes a value and the key it came from (``where``, e.g. ``"model.lid.weight"``) and returns the value
in its checked type, or raises :class:`~nemo_tl.errors.InputError` naming the key and the fix. A section
parser (``TransferConfig.from_section``, ...) calls them once and keeps the result in a frozen dataclass.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from nemo_tl.errors import input_error

__all__ = [
    "checked_choice",
    "checked_flag",
    "checked_int",
    "checked_int_list",
    "checked_number",
    "checked_section",
    "finite_float",
    "to_plain",
]

_FLAG_FIX = "write true or false, without quotes"


def to_plain(value: Any) -> Any:
    """``value`` as plain dicts and lists (interpolations resolved) when it is an OmegaConf node; else itself."""
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def finite_float(value: Any) -> float | None:
    """``value`` as a finite float, or None when it is not a number (a bool, a string, NaN, ±inf)."""
    if not _is_number(value):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def checked_section(value: Any, where: str, known: Iterable[str], *, fix: str) -> dict[str, Any]:
    """A config section as a plain dict holding only ``known`` keys (None: ``{}``).

    ``fix`` says how to write the section; it is given when ``value`` is not a mapping.
    """
    value = to_plain(value)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise input_error(f"must be a mapping, got {type(value).__name__} {value!r}", where=where, fix=fix)
    known = list(known)
    unknown = sorted(str(k) for k in set(value) - set(known))
    if unknown:
        raise input_error(
            f"unknown key(s) {', '.join(unknown)}", where=f"{where}.{unknown[0]}", fix=f"use only {', '.join(known)}"
        )
    return dict(value)


def checked_number(
    value: Any, where: str, *, positive: bool = False, finite: bool = False, fix: str | None = None
) -> float:
    """``value`` as a float ≥ 0 (``positive``: > 0); ``inf`` passes unless ``finite``; NaN never does."""
    ok = _is_number(value) and not math.isnan(value) and (value > 0 if positive else value >= 0)
    if not ok or (finite and math.isinf(value)):
        bound = "> 0" if positive else "≥ 0"
        kind = "a finite number" if finite else "a number"
        raise input_error(f"must be {kind} {bound}, got {value!r}", where=where, fix=fix or f"give a number {bound}")
    return float(value)


def checked_int(value: Any, where: str, *, minimum: int = 0, fix: str | None = None) -> int:
    """``value`` as a whole number ≥ ``minimum`` (a bool or a float such as 2.0 is not one)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise input_error(
            f"must be a whole number ≥ {minimum}, got {value!r}", where=where, fix=fix or f"give a whole number ≥ {minimum}"
        )
    return value


def checked_int_list(value: Any, where: str, *, fix: str) -> tuple[int, ...]:
    """``value`` (a list of whole numbers, or None: empty) as a tuple."""
    value = [] if value is None else to_plain(value)
    if not isinstance(value, list | tuple) or any(isinstance(v, bool) or not isinstance(v, int) for v in value):
        raise input_error(f"must be a list of whole numbers, got {value!r}", where=where, fix=fix)
    return tuple(value)


def checked_flag(value: Any, where: str, *, fix: str = _FLAG_FIX) -> bool:
    """``value`` as a bool; the string ``"false"`` (true in Python) is refused."""
    if not isinstance(value, bool):
        raise input_error(f"must be true or false, got {value!r}", where=where, fix=fix)
    return value


def checked_choice(value: Any, choices: Sequence[str], where: str, *, what: str, fix: str | None = None) -> str:
    """``value`` when it is one of ``choices``; ``what`` names the setting in the message ("vocabulary mode")."""
    if not isinstance(value, str) or value not in choices:
        raise input_error(f"unknown {what} {value!r}", where=where, fix=fix or f"use one of {', '.join(choices)}")
    return value
