"""Validation of method options: the one helper every method's `Options` dataclass calls in `__post_init__`.

An option's type annotation says what it accepts: `int`, `float`, `bool`, `str`, a `Literal[...]` of choices,
or any of those `| None`; a bound, where there is one, is declared with `option(default, minimum=...)`. A value
of the wrong type or below its bound raises ValueError naming the method and the option. Other annotations
(mappings, tuples) are left to the options class itself.

Example:
    >>> from embtables.methods.hash import HashOptions
    >>> HashOptions(buckets=0)
    Traceback (most recent call last):
    ...
    ValueError: hash option buckets must be an int >= 1, got 0
"""

from __future__ import annotations

import dataclasses
import math
import sys
import types
import typing
from typing import Any, Literal, Union


def option(default: Any, *, minimum: float | None = None, above: float | None = None) -> Any:
    """A dataclass field with a lower bound that `check_options` enforces: `minimum` inclusive, `above` exclusive."""
    return dataclasses.field(default=default, metadata={"minimum": minimum, "above": above})


def check_options(options: Any, method: str) -> None:
    """Check every field of a method's options dataclass against its annotation and bound.

    Args:
        options: a dataclass instance (a method's `Options`).
        method: the method's name, for the error messages.

    Raises:
        ValueError: `"<method> option <name> must be ..., got <value>"`.
    """
    cls = type(options)
    hints = typing.get_type_hints(cls, vars(sys.modules[cls.__module__]))
    for f in dataclasses.fields(options):
        value = getattr(options, f.name)
        accepted = _accepted(hints[f.name])
        if accepted is None:
            continue
        kinds, choices, optional = accepted
        if value is None and optional:
            continue
        minimum, above = f.metadata.get("minimum"), f.metadata.get("above")
        if choices:
            if value not in choices:
                raise ValueError(f"{method} option {f.name} must be one of {choices}, got {value!r}")
            continue
        low = (minimum is not None and not value >= minimum) or (above is not None and not value > above)
        if not any(_is(value, k) for k in kinds) or low:
            what = " or ".join("number" if k is float else k.__name__ for k in kinds)
            what += "" if minimum is None else f" >= {minimum:g}"
            what += "" if above is None else f" > {above:g}"
            raise ValueError(f"{method} option {f.name} must be {_article(what)}, got {value!r}")


def _accepted(hint: Any) -> tuple[tuple[type, ...], tuple[Any, ...], bool] | None:
    """(types, Literal choices, None allowed) for the annotations this module checks; None for others."""
    args = typing.get_args(hint) if typing.get_origin(hint) in (Union, types.UnionType) else (hint,)
    optional = type(None) in args
    args = tuple(a for a in args if a is not type(None))
    if len(args) == 1 and typing.get_origin(args[0]) is Literal:
        return (), typing.get_args(args[0]), optional
    if args and all(a in (int, float, bool, str) for a in args):
        return args, (), optional
    return None


def _is(value: Any, kind: type) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:  # ints are numbers too; NaN and infinities are not option values
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return isinstance(value, kind)


def _article(what: str) -> str:
    return ("an " if what[0] in "aeiou" else "a ") + what
