"""What a reader sees: the offline HTML report and RunResult (`.show()`, `.save()`), rendered from the run
tables and the summary they are given (diagnose.tables); nothing here computes a statistic.

    >>> from diagnose import report
    >>> report.render_report(run_dir)            # a run whose summary is written (diagnose run, diagnose report)
    >>> res = report.load(run_dir); res.summary; print(res.describe()); res.show()

The HTML report (plotly) loads on first use, so importing this package stays light.
"""

from importlib import import_module

_LAZY = {"RunResult": "result", "load": "result", "render_report": "html"}

__all__ = list(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
