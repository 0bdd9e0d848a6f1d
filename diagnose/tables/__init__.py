"""The run tables: Parquet schemas (one row layout for every layer), atomic per-shard writes, reads, resume,
and the stored summary. Imports nothing of ours above errors and atomic writes, so every layer can use it.

    >>> from diagnose import tables
    >>> tables.write_table(run_dir, "alignment", df, shard="00003", metadata=tables.standard_metadata(...))
    >>> tables.read_table(run_dir, "alignment"); tables.read_summary(run_dir).table
"""

from .io import (
    completed_shards,
    has_table,
    read_arrow,
    read_metadata,
    read_table,
    standard_metadata,
    validate,
    write_table,
)
from .schema import (
    BANDS,
    KEYS,
    METRICS,
    PROXIES,
    RANGES,
    SCHEMA_VERSION,
    SCHEMAS,
    config_label,
    describe_markdown,
    difficulty_band,
    schema,
)
from .summary import ESTIMANDS, Summary, read_summary, verdict_note

__all__ = [
    "BANDS", "ESTIMANDS", "KEYS", "METRICS", "PROXIES", "RANGES", "SCHEMAS", "SCHEMA_VERSION", "Summary",
    "completed_shards", "config_label", "describe_markdown", "difficulty_band", "has_table", "read_arrow",
    "read_metadata", "read_summary", "read_table", "schema", "standard_metadata", "validate", "verdict_note",
    "write_table",
]
