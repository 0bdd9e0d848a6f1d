"""Read data files (JSONL, JSON array, CSV, Parquet), or a Hugging Face data set, into rows that remember
where they came from.

Every problem is a DiagnoseError with a one-line message naming the file and the line (or row).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

from ..errors import DiagnoseError


@dataclass
class Row:
    data: dict[str, Any]
    where: str  # "line 12" (JSONL/CSV) or "row 12" (Parquet, JSON array), 1-based

    def error(self, path: Path | str, message: str) -> DiagnoseError:
        return DiagnoseError(f"{path}: {self.where}: {message}")

    def text(self, path: Path | str, column: str, required: bool = True) -> str | None:
        """The value of `column` as text; missing or empty -> error (or None when not required)."""
        value = self.data.get(column)
        if value is None or (isinstance(value, float) and value != value) or str(value).strip() == "":
            if not required:
                return None
            have = ", ".join(sorted(map(str, self.data))) or "none"
            raise self.error(path, f"missing column {column!r} (columns: {have})")
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        return str(value)


def read_rows(path: str | Path) -> list[Row]:
    """All rows of a data file, chosen by suffix (.jsonl, .json, .csv, .parquet/.pq)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DiagnoseError(f"{path}: no such data file")
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return _parquet(path)
    if suffix in (".csv", ".tsv"):
        return _csv(path, "\t" if suffix == ".tsv" else ",")
    if suffix == ".json":
        text = path.read_text(encoding="utf-8")
        if text.lstrip().startswith("["):
            return _json_array(path, text)
    return _jsonl(path)


def dataset_rows(dataset: Iterable[dict[str, Any]]) -> list[Row]:
    """The rows of a loaded data set (a `datasets.Dataset`, or any sequence of dicts), numbered "row 1", ...
    like a Parquet file's; the tasks map them exactly as they map a file's rows."""
    return [Row(dict(data), f"row {i}") for i, data in enumerate(dataset, 1)]


@lru_cache(maxsize=None)
def read_dataset(name: str, config: str | None, split: str, columns: str = "") -> tuple[Row, ...]:
    """The rows of a Hugging Face data set split, through `datasets.load_dataset` (from the hub, or from the
    local cache when offline). Loaded once per process. Not available: one DiagnoseError line naming the data
    set, what was tried, and that a data file (with `columns`, when given) can be passed instead."""
    label = describe_dataset(name, config, split)
    try:
        import datasets
    except ImportError:
        message = f"{label} needs the `datasets` package (pip install datasets); or pass path=<file>"
        raise DiagnoseError(message) from None
    try:
        loaded = datasets.load_dataset(name, config, split=split)
    except Exception as err:  # noqa: BLE001 - any failure to get the data (network, cache, format): one line
        instead = (
            f"Pass path=<file> (JSONL/CSV/Parquet{' with columns ' + columns if columns else ''}), or set HF_HOME "
            "to a cache that holds a copy"
        )
        if getattr(datasets.config, "HF_HUB_OFFLINE", False):
            hub = "not asked (HF_HUB_OFFLINE=1)"
        elif isinstance(err, ConnectionError):  # datasets falls back to its cache before raising this
            hub = "unreachable"
        else:
            raise DiagnoseError(f"{label} could not be loaded: {_single_line(err)[:200]}. {instead}") from None
        raise DiagnoseError(
            f"{label} is not available: the Hugging Face hub: {hub}; the local datasets cache "
            f"({datasets.config.HF_DATASETS_CACHE}): no copy. {instead}"
        ) from None
    return tuple(dataset_rows(loaded))


def describe_dataset(name: str, config: str | None, split: str) -> str:
    """`data set openai/gsm8k (config main, split test)`."""
    return f"data set {name} ({f'config {config}, ' if config else ''}split {split})"


def _single_line(message: str) -> str:
    return " ".join(str(message).split())


def _jsonl(path: Path) -> list[Row]:
    rows = []
    with open(path, encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as err:
                raise DiagnoseError(f"{path}: line {lineno}: bad JSON ({_single_line(err.msg)})") from None
            if not isinstance(data, dict):
                kind = type(data).__name__
                raise DiagnoseError(f"{path}: line {lineno}: expected a JSON object, got {kind}")
            rows.append(Row(data, f"line {lineno}"))
    return rows


def _json_array(path: Path, text: str) -> list[Row]:
    try:
        items = json.loads(text)
    except json.JSONDecodeError as err:
        raise DiagnoseError(f"{path}: line {err.lineno}: bad JSON ({_single_line(err.msg)})") from None
    rows = []
    for i, data in enumerate(items, 1):
        if not isinstance(data, dict):
            raise DiagnoseError(f"{path}: row {i}: expected a JSON object, got {type(data).__name__}")
        rows.append(Row(data, f"row {i}"))
    return rows


def _csv(path: Path, delimiter: str) -> list[Row]:
    rows = []
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        if not reader.fieldnames:
            raise DiagnoseError(f"{path}: line 1: no header row")
        try:
            for data in reader:
                where = f"line {reader.line_num}"  # where the row ends
                if None in data:
                    raise DiagnoseError(f"{path}: {where}: more fields than header columns")
                if any(value is None for value in data.values()):
                    raise DiagnoseError(f"{path}: {where}: fewer fields than header columns")
                rows.append(Row(dict(data), where))
        except csv.Error as err:
            raise DiagnoseError(f"{path}: line {reader.line_num}: bad CSV ({_single_line(err)})") from None
    return rows


def _parquet(path: Path) -> list[Row]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises several types for unreadable files
        raise DiagnoseError(f"{path}: not a readable Parquet file ({_single_line(err)})") from None
    return [Row(data, f"row {i}") for i, data in enumerate(table.to_pylist(), 1)]
