"""The objective registry: name -> factory with default parameters; specs like `jsd:beta=0.5`."""

from __future__ import annotations

from typing import Any

_REGISTRY: dict[str, tuple[type, dict[str, Any]]] = {}


def register(name: str, **defaults):
    """Class decorator: register an Objective subclass under `name` with its default parameters."""

    def wrap(cls):
        if name in _REGISTRY:
            raise ValueError(f"objective {name!r} is registered twice")
        cls.name = name
        _REGISTRY[name] = (cls, dict(defaults))
        return cls

    return wrap


def available() -> list[str]:
    """Names of every registered objective."""
    return sorted(_REGISTRY)


def defaults(name: str) -> dict[str, Any]:
    return dict(_lookup(name)[1])


def _lookup(name: str):
    if name not in _REGISTRY:
        raise KeyError(f"unknown objective {name!r}; available: {', '.join(available())}")
    return _REGISTRY[name]


def get(name: str, **params):
    """Build objective `name`; unknown parameters are refused, missing ones take their defaults."""
    cls, dflt = _lookup(name)
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
