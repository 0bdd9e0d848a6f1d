"""One name -> object registry for everything users extend (objectives, tasks, teacher contexts, engines),
one parser for the `name` / `name:key=value,key=value` spec grammar, and one coercion of option values.

An entry is registered by decorator (`@registry.register(name, **defaults)`) or with `registry.add(name,
target)`, where `target` is the object itself or an import path `"package.module:object"` that is imported
on the first lookup (so `vllm` is imported only when the vllm engine is asked for).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import DiagnoseError


class UnknownName(DiagnoseError, KeyError):
    """A name no registry entry has; the message names the kind and the known choices. Also a KeyError, as
    the objective registry has always raised one."""

    def __init__(self, kind: str, name: str, choices: list[str], hint: str = ""):
        self.kind, self.name, self.choices = kind, name, list(choices)
        super().__init__(f"unknown {kind} {name!r}; available: {', '.join(self.choices)}{hint}")

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class SpecError(DiagnoseError, ValueError):
    """A malformed spec, an unknown option or an option value of the wrong type (one line). Also a
    ValueError, as the objective registry has always raised one."""


def _shown(value: Any) -> str:
    return value if isinstance(value, str) and value.isprintable() else repr(value)


def parse_spec(spec: str, kind: str = "spec", choices: list[str] | tuple[str, ...] = ()) -> tuple[str, dict[str, str]]:
    """`name` or `name:key=value,key=value` -> (name, {key: value as a string}); names, keys and values are
    stripped, empty parts between commas are skipped, a repeated key keeps its last value. A part without
    `=`, an empty key or an empty name raises SpecError (listing `choices` for the empty name)."""
    text = str(spec).strip()
    name, _, rest = text.partition(":")
    name = name.strip()
    if not name:
        listed = f"; available: {', '.join(choices)}" if choices else ""
        raise SpecError(f"empty {kind} spec{listed}" if not text else f"{kind} spec {text!r} has no name{listed}")
    options: dict[str, str] = {}
    for part in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, value = part.partition("=")
        if not eq or not key.strip():
            raise SpecError(f"{kind} spec {text!r}: expected key=value, got {part!r}")
        options[key.strip()] = value.strip()
    return name, options


_TRUE, _FALSE = ("1", "true", "yes"), ("0", "false", "no")


def coerce(kind: str, name: str, key: str, value: Any, default: Any, word: str = "option") -> Any:
    """`value` typed as `default` is: bool (1/0, true/false, yes/no), int (an integral float or its text too),
    float or str. A default of None takes any value as given. Failure: a one-line SpecError."""
    if default is None or isinstance(value, type(default)) and not isinstance(value, bool):
        return value
    try:
        if isinstance(default, bool):
            text = str(value).strip().lower()
            if text not in _TRUE + _FALSE:
                raise ValueError
            return text in _TRUE
        if isinstance(default, int):
            number = value
            if isinstance(value, str):
                try:
                    return int(value)
                except ValueError:
                    number = float(value)
            if isinstance(number, float) and not number.is_integer():
                raise ValueError
            return int(number)
        return type(default)(value)
    except (TypeError, ValueError, OverflowError):
        typename = type(default).__name__
        article = "an" if typename[0] in "aeiou" else "a"
        raise SpecError(f"{kind} {name!r}: {word} {key}={_shown(value)} is not {article} {typename}") from None


@dataclass
class Entry:
    """One registered name: its target (an object, or an unresolved "module:object" string), the default
    options, a one-line description and the label listings show (the name unless given)."""

    target: Any
    defaults: dict[str, Any] = field(default_factory=dict)
    doc: str = ""
    label: str = ""


class Registry:
    """Named entries of one kind (`"task"`, `"objective"`, ...). `lookup(name)` raises UnknownName listing
    what exists; `options(name, given)` checks and types a spec's options against the entry's defaults."""

    def __init__(self, kind: str, *, hint: str = "", sort: bool = True, word: str = "option"):
        """`hint` is appended to the unknown-name message; `sort=False` lists entries in registration order;
        `word` is what options are called in messages ("option", "parameter")."""
        self.kind, self.hint, self.sort, self.word = kind, hint, sort, word
        self.entries: dict[str, Entry] = {}

    # ---- registration ------------------------------------------------------------------------------------

    def register(self, name: str, **defaults):
        """Class decorator: register the class under `name` (setting `cls.name`) with its default options."""

        def wrap(cls):
            self.add(name, cls, defaults)
            cls.name = name
            return cls

        return wrap

    def add(self, name: str, target: Any, defaults: dict[str, Any] | None = None, *, doc: str = "",
            label: str = "", replace: bool = False) -> None:
        """Register `target` (an object, or `"package.module:object"` imported on first lookup) under `name`.
        A name registered twice raises ValueError unless `replace`."""
        if not isinstance(name, str) or not name or any(c in name for c in ":,= \t\n"):
            raise ValueError(f"{self.kind} name {name!r}: use a non-empty name without ':', ',', '=' or spaces")
        if name in self.entries and not replace:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        if isinstance(target, str):
            module, sep, attr = target.partition(":")
            if not (module and sep and attr):
                raise ValueError(f"{self.kind} {name!r}: target {target!r} is not 'package.module:object'")
        self.entries[name] = Entry(target, dict(defaults or {}), doc, label or name)

    # ---- queries -----------------------------------------------------------------------------------------

    def available(self) -> list[str]:
        """Registered names (sorted, or in registration order)."""
        return sorted(self.entries) if self.sort else list(self.entries)

    def choices(self) -> list[str]:
        """The labels of `available()`, as messages and listings show them."""
        return [self.entries[name].label for name in self.available()]

    def listing(self) -> Mapping[str, str]:
        """A live read-only mapping label -> doc, in `available()` order."""
        return _Listing(self)

    def unknown(self, name: str) -> UnknownName:
        return UnknownName(self.kind, name, self.choices(), self.hint)

    def entry(self, name: str) -> Entry:
        """The entry of `name`, its target resolved (imported) if it was an import path."""
        if name not in self.entries:
            raise self.unknown(name)
        entry = self.entries[name]
        if isinstance(entry.target, str):
            entry.target = self._resolve(name, entry.target)
        return entry

    def lookup(self, name: str) -> tuple[Any, dict[str, Any]]:
        """(the registered object, a copy of its default options)."""
        entry = self.entry(name)
        return entry.target, dict(entry.defaults)

    def get(self, name: str) -> Any:
        """The registered object of `name`."""
        return self.entry(name).target

    def defaults(self, name: str) -> dict[str, Any]:
        """A copy of the default options of `name` (does not import a lazy target)."""
        if name not in self.entries:
            raise self.unknown(name)
        return dict(self.entries[name].defaults)

    def parse(self, spec: str) -> tuple[str, dict[str, str]]:
        """`parse_spec` for this kind: (name, options as strings); the name is not checked here."""
        return parse_spec(spec, self.kind, self.choices())

    def options(self, name: str, given: Mapping[str, Any]) -> dict[str, Any]:
        """The defaults of `name` updated with `given`, each typed as its default is; an option the entry
        does not have raises SpecError naming the allowed ones."""
        merged = self.defaults(name)
        unknown = set(given) - set(merged)
        if unknown:
            allowed = ", ".join(sorted(merged)) or "none"
            raise SpecError(
                f"{self.kind} {name!r} has no {self.word} {', '.join(sorted(unknown))} (allowed: {allowed})"
            )
        for key, value in given.items():
            merged[key] = coerce(self.kind, name, key, value, merged[key], self.word)
        return merged

    def __contains__(self, name: object) -> bool:
        return name in self.entries

    def _resolve(self, name: str, target: str) -> Any:
        module, _, attr = target.partition(":")
        try:
            obj: Any = importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name and (module == err.name or module.startswith(err.name + ".")):
                raise DiagnoseError(f"{self.kind} {name!r}: cannot import {module} (target {target})") from err
            raise  # a dependency of the module is missing: its own message says which
        for part in attr.split("."):
            if not hasattr(obj, part):
                raise DiagnoseError(f"{self.kind} {name!r}: target {target} does not exist ({part!r} is missing)")
            obj = getattr(obj, part)
        return obj


class _Listing(Mapping):
    def __init__(self, registry: Registry):
        self._registry = registry

    def _docs(self) -> dict[str, str]:
        entries = self._registry.entries
        return {entries[name].label: entries[name].doc for name in self._registry.available()}

    def __getitem__(self, label: str) -> str:
        return self._docs()[label]

    def __iter__(self) -> Iterator[str]:
        return iter(self._docs())

    def __len__(self) -> int:
        return len(self._registry.entries)

    def __repr__(self) -> str:
        return repr(self._docs())
