"""A name -> (class, default options) registry, shared by the things users extend (objectives, tasks)."""

from __future__ import annotations

from typing import Any


class Registry:
    """`register(name, **defaults)` decorates a class; `lookup(name)` raises `error` listing what exists."""

    def __init__(self, kind: str, error: type[Exception] = KeyError, hint: str = ""):
        self.kind, self.error, self.hint = kind, error, hint
        self.entries: dict[str, tuple[type, dict[str, Any]]] = {}

    def register(self, name: str, **defaults):
        def wrap(cls):
            if name in self.entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            cls.name = name
            self.entries[name] = (cls, dict(defaults))
            return cls

        return wrap

    def available(self) -> list[str]:
        return sorted(self.entries)

    def defaults(self, name: str) -> dict[str, Any]:
        return dict(self.lookup(name)[1])

    def lookup(self, name: str) -> tuple[type, dict[str, Any]]:
        if name not in self.entries:
            raise self.error(f"unknown {self.kind} {name!r}; available: {', '.join(self.available())}{self.hint}")
        return self.entries[name]

    def __contains__(self, name: str) -> bool:
        return name in self.entries
