"""The task registry: name -> Task class with default options; specs like `gsm8k:path=/x/test.jsonl`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..registry import Registry

FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".pq")
_TASKS = Registry("task", hint=" (or a data file path)")


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


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """`name` or `name:key=value,key=value` -> (name, options as strings); a bare data-file path becomes
    ("file", {"path": spec})."""
    spec = spec.strip()
    name, sep, rest = spec.partition(":")
    if spec and name not in _TASKS and (
        not sep or "=" not in rest.split(",")[0]
    ) and (spec.lower().endswith(FILE_SUFFIXES) or Path(spec).is_file()):
        return "file", {"path": spec}
    return _TASKS.parse(spec)


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
    cls = _TASKS.get(name)
    return cls(**_TASKS.options(name, parsed))
