"""Errors raised by nemo_tl for bad user input."""

from __future__ import annotations


class InputError(ValueError):
    """Bad user input: a manifest, a config, a model file or a model pair.

    The message names what is wrong, where (file and line, or config key) and how to
    fix it. Raised before any training starts.
    """


def input_error(problem: str, *, where: str | None = None, fix: str | None = None) -> InputError:
    """Build an :class:`InputError` with a uniform ``where: problem. Fix: ...`` message."""
    text = f"{where}: {problem}" if where else problem
    if fix:
        text = f"{text}\n  Fix: {fix}"
    return InputError(text)
