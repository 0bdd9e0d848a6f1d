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
    if name == "load":
        from .report import load

        return load
    raise AttributeError(f"module 'diagnose' has no attribute {name!r}")
