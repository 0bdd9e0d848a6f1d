"""The objective registry: name -> factory with default parameters; specs like `jsd:beta=0.5`."""

from __future__ import annotations

from typing import Any

from ..registry import Registry

_OBJECTIVES = Registry("objective", KeyError)


def register(name: str, **defaults):
    """Class decorator: register an Objective subclass under `name` with its default parameters."""
    return _OBJECTIVES.register(name, **defaults)


def available() -> list[str]:
    """Names of every registered objective."""
    return _OBJECTIVES.available()


def defaults(name: str) -> dict[str, Any]:
    return _OBJECTIVES.defaults(name)


def get(name: str, **params):
    """Build objective `name`; unknown parameters are refused, missing ones take their defaults."""
    cls, dflt = _OBJECTIVES.lookup(name)
    unknown = set(params) - set(dflt)
    if unknown:
        allowed = ", ".join(sorted(dflt)) or "none"
        raise ValueError(f"objective {name!r} has no parameter {', '.join(sorted(unknown))} (allowed: {allowed})")
    merged = dict(dflt)
    for key, value in params.items():
        try:
            merged[key] = type(dflt[key])(value) if dflt[key] is not None else value
        except (TypeError, ValueError):
            raise ValueError(
                f"objective {name!r}: parameter {key}={value!r} is not a {type(dflt[key]).__name__}"
            ) from None
    return cls(params=merged)


def _coerce(text: str):
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text


def parse(spec: str):
    """`name` or `name:key=value,key=value` -> objective (values typed as the defaults are)."""
    name, _, rest = spec.strip().partition(":")
    params = {}
    for part in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, value = part.partition("=")
        if not eq:
            raise ValueError(f"objective spec {spec!r}: expected key=value, got {part!r}")
        params[key.strip()] = _coerce(value.strip())
    return get(name, **params)
