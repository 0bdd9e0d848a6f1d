"""The task registry: name -> Task class with default options; specs like `gsm8k:path=/x/test.jsonl`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import DiagnoseError
from ..registry import Registry

FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".pq")
_TASKS = Registry("task", DiagnoseError, hint=" (or a data file path)")


def register(name: str, **defaults):
    """Class decorator: register a Task subclass under `name` with its options and their defaults
    (a default of None means a string option with no default, such as a file path)."""
    return _TASKS.register(name, **defaults)


def available() -> list[str]:
    """Names of every registered task."""
    return _TASKS.available()


def defaults(name: str) -> dict[str, Any]:
    """Options of task `name` and their defaults."""
    return _TASKS.defaults(name)


def _coerce(name: str, key: str, value, default):
    if default is None or isinstance(value, type(default)) and not isinstance(value, bool):
        return value
    try:
        if isinstance(default, bool):
            text = str(value).strip().lower()
            if text not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError
            return text in ("1", "true", "yes")
        return type(default)(value)
    except (TypeError, ValueError):
        raise DiagnoseError(
            f"task {name!r}: option {key}={value} is not a {type(default).__name__}"
        ) from None


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """`name` or `name:key=value,key=value` -> (name, options as strings); a bare data-file path becomes
    ("file", {"path": spec})."""
    spec = spec.strip()
    if not spec:
        raise DiagnoseError("empty task spec; available: " + ", ".join(available()))
    name, sep, rest = spec.partition(":")
    if name not in _TASKS and (
        not sep or "=" not in rest.split(",")[0]
    ) and (spec.lower().endswith(FILE_SUFFIXES) or Path(spec).is_file()):
        return "file", {"path": spec}
    options: dict[str, str] = {}
    for part in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, value = part.partition("=")
        if not eq or not key.strip():
            raise DiagnoseError(f"task spec {spec!r}: expected key=value, got {part!r}")
        options[key.strip()] = value.strip()
    return name.strip(), options


def _guess_style(path: str) -> str:
    """A bare data-file path: MATH-style when it has a `problem` column, GSM8K-style when its `answer`
    ends with "#### <number>", else a plain question/answer file."""
    from .rows import read_rows

    rows = read_rows(path)
    first = rows[0].data if rows else {}
    if "problem" in first:
        return "math"
    if "question" in first and "####" in str(first.get("answer", "")):
        return "gsm8k"
    return "file"


def get(spec: str, **options):
    """Build a task from a spec (`arithmetic`, `countdown:count=3`, `gsm8k:path=x.jsonl`, `file:path=...`,
    or a bare data-file path); keyword options override the spec's. Unknown names or options raise
    DiagnoseError listing what exists."""
    name, parsed = parse_spec(spec)
    if name == "file" and "path" in parsed and ":" not in spec.strip() and not options:  # a bare path
        name = _guess_style(parsed["path"])
    parsed.update(options)
    cls, dflt = _TASKS.lookup(name)
    unknown = set(parsed) - set(dflt)
    if unknown:
        allowed = ", ".join(sorted(dflt)) or "none"
        raise DiagnoseError(f"task {name!r} has no option {', '.join(sorted(unknown))} (options: {allowed})")
    merged = dict(dflt)
    for key, value in parsed.items():
        merged[key] = _coerce(name, key, value, dflt[key])
    return cls(**merged)
