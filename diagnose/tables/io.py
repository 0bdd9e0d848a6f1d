"""Parquet tables of a run directory: validation, atomic per-shard writes, reads and resume.

Layout: `<run_dir>/<table>/part-<shard>.parquet`. A shard is written to a hidden temporary file in the same
folder, fsynced, then renamed over its final name (os.replace; see diagnose.atomic), so a killed writer leaves
either the old complete shard or the new one, never a partial file; readers skip the hidden temporaries.
"""

from __future__ import annotations

import json
import os
from importlib import metadata as _md
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .. import atomic
from ..errors import DiagnoseError
from .schema import KEYS, META_KEY, RANGES, SCHEMA_VERSION, SHARD_RE, VALUE_CHOICES, schema


def standard_metadata(models=None, seeds=None, config_hash=None, **extra) -> dict[str, Any]:
    """Run metadata for write_table: package versions (diagnose, torch, transformers, ...) + what is given."""
    versions = {}
    for pkg in ("diagnose", "torch", "transformers", "pyarrow", "pandas"):
        try:
            versions[pkg] = _md.version(pkg)
        except _md.PackageNotFoundError:
            versions[pkg] = None
    return {
        "versions": versions,
        "models": models or {},
        "seeds": seeds or {},
        "config_hash": config_hash,
        **extra,
    }


# ---------------------------------------------------------------- validation


def validate(name: str, df: pd.DataFrame) -> pa.Table:
    """Check `df` against table `name`'s schema and convert it; raise DiagnoseError naming the bad column."""
    sch = schema(name)
    if not isinstance(df, pd.DataFrame):
        raise DiagnoseError(f"table {name}: expected a pandas DataFrame, got {type(df).__name__}")
    cols = list(df.columns)
    unknown = [c for c in cols if c not in sch.names]
    if unknown:
        raise DiagnoseError(
            f"table {name}: unknown column(s) {', '.join(map(str, unknown))}; "
            f"the schema has {', '.join(sch.names)}"
        )
    missing = [f.name for f in sch if f.name not in cols and not f.nullable]
    if missing:
        raise DiagnoseError(f"table {name}: missing column(s) {', '.join(missing)}")
    arrays = []
    for field in sch:
        if field.name not in cols:
            arrays.append(pa.nulls(len(df), field.type))
            continue
        series = df[field.name]
        try:
            arr = pa.array(series, type=field.type, from_pandas=True)
        except (pa.ArrowException, TypeError, ValueError, OverflowError) as err:
            example = series.iloc[0] if len(series) else None
            raise DiagnoseError(
                f"table {name}: column {field.name!r} must be {field.type} "
                f"(got dtype {series.dtype}, e.g. {example!r}): {err}"
            ) from None
        if not field.nullable and arr.null_count:
            raise DiagnoseError(
                f"table {name}: column {field.name!r} has {arr.null_count} missing value(s) "
                "but may not be null"
            )
        arrays.append(arr)
    table = pa.Table.from_arrays(arrays, schema=sch)
    _check_values(name, table)
    _check_keys(name, df)
    return table


def _check_values(name: str, table: pa.Table) -> None:
    for col, (lo, hi) in RANGES.get(name, {}).items():
        values = table.column(col).to_numpy(zero_copy_only=False).astype(float)
        values = values[~np.isnan(values)]
        bad = values[(values < lo - 1e-4) | (values > hi + 1e-4)]
        if bad.size:
            raise DiagnoseError(
                f"table {name}: column {col!r} must lie in [{lo}, {hi}], "
                f"found {bad.size} value(s) outside, e.g. {bad[0]!r}"
            )
    for (tname, col), allowed in VALUE_CHOICES.items():
        if tname == name:
            bad = set(table.column(col).to_pylist()) - set(allowed)
            if bad:
                raise DiagnoseError(
                    f"table {name}: column {col!r} takes {', '.join(allowed)}; "
                    f"found {', '.join(sorted(map(str, bad)))}"
                )


def _check_keys(name: str, df: pd.DataFrame) -> None:
    dup = df.duplicated(KEYS[name], keep=False)
    if dup.any():
        example = df.loc[dup, KEYS[name]].iloc[0].to_dict()
        raise DiagnoseError(f"table {name}: {int(dup.sum())} rows share a key {KEYS[name]}, e.g. {example}")


# ---------------------------------------------------------------- writing


def _table_dir(run_dir, name: str) -> Path:
    schema(name)
    return Path(run_dir) / name


def _shard_path(run_dir, name: str, shard) -> Path:
    shard = str(shard)
    if not SHARD_RE.match(shard):
        raise DiagnoseError(f"shard id {shard!r}: use letters, digits, '_', '.', '-' (not starting with '.')")
    return _table_dir(run_dir, name) / f"part-{shard}.parquet"


def _fsync(fd: int) -> None:
    """Flush a shard's temporary. Looked up at each write: a test replaces it to kill a writer before the rename."""
    os.fsync(fd)


def write_table(run_dir, name: str, df: pd.DataFrame, shard="0", metadata: dict | None = None) -> Path:
    """Validate `df` and write it as shard `shard` of table `name`, atomically; returns the shard's path.

    `metadata` (JSON-serialisable: versions, models, seeds, config hash; see standard_metadata) is stored in
    the Parquet schema metadata. Rewriting a shard replaces it atomically.
    """
    table = validate(name, df)
    meta = {**(metadata or {}), "table": name, "schema_version": SCHEMA_VERSION}
    try:
        blob = json.dumps(meta, default=_json_default, sort_keys=True).encode()
    except TypeError as err:
        raise DiagnoseError(f"table {name}: metadata is not JSON-serialisable: {err}") from None
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), META_KEY: blob})
    final = _shard_path(run_dir, name, shard)
    final.parent.mkdir(parents=True, exist_ok=True)
    with atomic.replacing(final, fsync=_fsync) as tmp, open(tmp, "wb") as fh:
        pq.write_table(table, fh, compression="zstd")
    return final


def _json_default(obj):
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        return obj.item()
    if isinstance(obj, (Path,)):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


# ---------------------------------------------------------------- reading


def _shard_files(run_dir, name: str) -> list[Path]:
    folder = _table_dir(run_dir, name)
    if not folder.is_dir():
        return []
    # Temporaries are hidden (".part-...tmp"): the glob never matches them.
    return sorted(p for p in folder.glob("part-*.parquet") if p.is_file())


def completed_shards(run_dir, name: str) -> list[str]:
    """Shard ids of `name` that were completely written (for resuming a killed run)."""
    return [p.name[len("part-") : -len(".parquet")] for p in _shard_files(run_dir, name)]


def has_table(run_dir, name: str) -> bool:
    return bool(_shard_files(run_dir, name))


def read_arrow(run_dir, name: str) -> pa.Table:
    """All complete shards of `name` concatenated (shard order), as an Arrow table without run metadata."""
    files = _shard_files(run_dir, name)
    if not files:
        raise DiagnoseError(
            f"no table {name!r} in {run_dir} (expected {Path(run_dir) / name}/part-*.parquet)"
        )
    parts = []
    for path in files:
        try:
            t = pq.read_table(path)
        except (pa.ArrowException, OSError) as err:
            raise DiagnoseError(f"cannot read {path}: {err}") from None
        parts.append(t.replace_schema_metadata(None))
    try:
        return pa.concat_tables(parts, promote_options="default")
    except pa.ArrowException as err:
        raise DiagnoseError(f"table {name}: shards have incompatible schemas: {err}") from None


def read_table(run_dir, name: str) -> pd.DataFrame:
    """All complete shards of table `name` as one DataFrame (a killed writer's temporaries are ignored)."""
    return read_arrow(run_dir, name).to_pandas()


def read_metadata(run_dir, name: str) -> dict[str, Any]:
    """The run metadata stored with `name` (from its most recently written shard)."""
    files = _shard_files(run_dir, name)
    if not files:
        raise DiagnoseError(f"no table {name!r} in {run_dir}")
    latest = max(files, key=lambda p: p.stat().st_mtime_ns)
    raw = (pq.read_schema(latest).metadata or {}).get(META_KEY)
    return json.loads(raw) if raw else {}
