"""The objective registry: name -> factory with default parameters; specs like `jsd:beta=0.5`."""

from __future__ import annotations

from typing import Any

from ..registry import Registry

_OBJECTIVES = Registry("objective", word="parameter")


def register(name: str, **defaults):
    """Class decorator: register an Objective subclass under `name` with its default parameters."""
    return _OBJECTIVES.register(name, **defaults)


def available() -> list[str]:
    """Names of every registered objective."""
    return _OBJECTIVES.available()


def defaults(name: str) -> dict[str, Any]:
    return _OBJECTIVES.defaults(name)


def get(name: str, **params):
    """Build objective `name`; unknown parameters are refused, missing ones take their defaults, given ones
    are typed as the defaults are. Errors: diagnose.registry.UnknownName (a KeyError) for an unknown name,
    SpecError (a ValueError) for an unknown or mistyped parameter."""
    cls = _OBJECTIVES.get(name)
    return cls(params=_OBJECTIVES.options(name, params))


def parse(spec: str):
    """`name` or `name:key=value,key=value` -> objective (values typed as the defaults are)."""
    name, params = _OBJECTIVES.parse(spec)
    return get(name, **params)
