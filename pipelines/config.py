"""Typed configs that round-trip to JSON and reject unknown keys with a clear message."""
from __future__ import annotations

import dataclasses
import difflib
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
