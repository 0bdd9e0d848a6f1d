"""Outputs of a run: Parquet tables (schemas, atomic shards), the summary, the offline HTML report, RunResult.

    >>> from diagnose import report
    >>> report.write_table(run_dir, "alignment", df, shard="00003", metadata=report.standard_metadata(...))
    >>> report.write_summary(run_dir); report.render_report(run_dir)
    >>> res = report.load(run_dir); res.summary; print(res.describe()); res.show()

Only the table layer (pandas, pyarrow) is imported eagerly; the summary (torch) and the HTML report (plotly)
load on first use, so writers and resume checks stay light.
"""

from importlib import import_module

from .tables import (
    SCHEMAS,
    completed_shards,
    config_label,
    difficulty_band,
    has_table,
    read_metadata,
    read_table,
    schema,
    standard_metadata,
    validate,
    write_table,
)

_LAZY = {
    "RunResult": "result", "load": "result", "Summary": "summary", "read_summary": "summary",
    "summarize": "summary", "summarize_run": "summary", "write_summary": "summary", "render_report": "html",
}

__all__ = [
    "SCHEMAS", "completed_shards", "config_label", "difficulty_band", "has_table", "read_metadata",
    "read_table",
    "schema", "standard_metadata", "validate", "write_table", *_LAZY,
]


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
