"""Typed configs that round-trip to JSON and reject unknown keys with a clear message."""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Type, TypeVar

from .errors import UserError

T = TypeVar("T")


def strict_from_dict(cls: Type[T], data: dict[str, Any] | None, where: str = "") -> T:
    """Build dataclass `cls` from `data`, refusing keys it does not define."""
    data = dict(data or {})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, sorted(names), n=1)
            hints.append(f"'{key}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
        label = where or cls.__name__
        raise UserError(f"Unknown config key(s) for {label}: {', '.join(hints)}. "
                        f"Allowed keys: {', '.join(sorted(names))}.")
    return cls(**data)


def to_dict(obj) -> dict[str, Any]:
    """Dataclass -> plain JSON-able dict (tuples become lists)."""
    return dataclasses.asdict(obj)


def check_types(obj, where: str = "") -> None:
    """Refuse a dataclass whose field values do not match their annotations, naming the field.

    Handles what JSON configs hold: bool, int, float (an int is accepted), str, None, unions,
    list/tuple/dict of those, and nested dataclasses. `bool` is not taken for a number.
    """
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if not _matches(value, hints[f.name]):
            label = where or type(obj).__name__
            raise UserError(f"{label}: '{f.name}' must be {_describe(hints[f.name])}, got {value!r} "
                            f"({type(value).__name__}).")


def _matches(value, tp) -> bool:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return True
    if origin is typing.Union or origin is types.UnionType:
        return any(_matches(value, a) for a in args)
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin is list:
        return isinstance(value, list) and all(_matches(v, args[0]) for v in value) if args else isinstance(value, list)
    if origin is tuple:
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(v, args[0]) for v in value)
        return not args or (len(value) == len(args) and all(_matches(v, a) for v, a in zip(value, args)))
    if origin is dict:
        return isinstance(value, dict) and (not args or all(
            _matches(k, args[0]) and _matches(v, args[1]) for k, v in value.items()))
    return isinstance(value, origin or tp)


def _describe(tp) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union or origin is types.UnionType:
        return " or ".join(_describe(a) for a in args)
    if tp is type(None):
        return "null"
    if origin is tuple and args and args[-1] is not Ellipsis:
        return "a list [" + ", ".join(_describe(a) for a in args) + "]"
    if origin in (list, tuple):
        return f"a list of {_describe(args[0])}" if args else "a list"
    if origin is dict:
        return "an object" + (f" of {_describe(args[1])}" if args else "")
    name = getattr(tp, "__name__", str(tp))
    return {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}.get(name, f"a {name}")
