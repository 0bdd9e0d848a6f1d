"""diagnose: does a distillation signal push the student toward a correct answer, or away from it?

    >>> import diagnose
    >>> result = diagnose.run(task="arithmetic", teachers=["self:answer"], objectives=["rkl", "fkl"])
    >>> result.summary            # pandas DataFrame, one row per configuration
    >>> result.show()             # the interactive report, inline in Jupyter
    >>> diagnose.load("reports/demo")
"""

__version__ = "0.1.0"


def __getattr__(name):
    # `run` and `load` pull in torch and transformers; keep `import diagnose` light.
    if name == "run":
        from .pipeline import run

        return run
    raise AttributeError(f"module 'diagnose' has no attribute {name!r}")


def load(run_dir, metric: str = "cos_full"):
    """Open a run directory as a RunResult; a run without a summary yet (unfinished) gets one computed from its
    tables and not written: loading never modifies a run directory."""
    from .report import load as open_result
    from .tables import has_table

    summary = None
    if not has_table(run_dir, "summary") and has_table(run_dir, "alignment"):
        from .estimate.summary import summarize_run

        summary = summarize_run(run_dir)
    return open_result(run_dir, metric=metric, summary=summary)
