"""Hand-off to training: a diagnosed configuration as a trainer's ready-to-use settings.

    >>> from diagnose import export
    >>> export.available()                       # trl, trl-distill, swift, verl, nemo-rl, json
    >>> done = export.export("reports/mine", "trl")   # the recommended configuration -> reports/mine/trl_gkd.yaml
    >>> done.path, done.warnings

`diagnose export RUN_DIR --to TRAINER [--config TEACHER|OBJECTIVE] [--out FILE]` on the command line. A
configuration the trainer cannot express (an objective it lacks, a self-distillation context it cannot build)
is one DiagnoseError line naming the closest configuration of the run that it can, and nothing is written.
docs/training.md has the mapping, objective by objective and trainer by trainer.

Add an exporter with `register(name, "package.module:Class")`, a subclass of `diagnose.export.base.Exporter`.
"""

from __future__ import annotations

from pathlib import Path

from .. import atomic
from ..errors import DiagnoseError
from ..registry import Registry
from .base import Exporter, Unsupported
from .spec import Exported, RunView, TrainingSpec, read_run

_EXPORTERS = Registry("trainer", sort=False)
_EXPORTERS.add("trl", "diagnose.export.trl:TRLExporter", doc="TRL GKDTrainer: GKDConfig arguments (YAML)")
_EXPORTERS.add(
    "trl-distill", "diagnose.export.trl:TRLDistillationExporter",
    doc="TRL DistillationTrainer: DistillationConfig arguments (YAML)",
)
_EXPORTERS.add("swift", "diagnose.export.swift:SwiftExporter", doc="ms-swift `swift rlhf` flags (shell script)")
_EXPORTERS.add("verl", "diagnose.export.verl:VerlExporter", doc="verl on-policy distillation config section (YAML)")
_EXPORTERS.add("nemo-rl", "diagnose.export.nemo_rl:NemoRLExporter", doc="NeMo-RL distillation overrides (YAML)")
_EXPORTERS.add("json", "diagnose.export.neutral:JSONExporter", doc="a neutral description of the configuration")


def register(name: str, target, doc: str = "") -> None:
    """Add an exporter: `target` an Exporter subclass or its "package.module:Class" import path."""
    _EXPORTERS.add(name, target, doc=doc)


def available() -> list[str]:
    """The registered exporters, in registration order."""
    return _EXPORTERS.available()


def get(name: str) -> Exporter:
    """A new instance of exporter `name` (an unknown name is one DiagnoseError line listing the known)."""
    return _EXPORTERS.get(name)()


def export(run_dir, to: str, config: str | None = None, out=None, metric: str = "cos_full") -> Exported:
    """Write the trainer settings of one configuration of `run_dir` (default: the recommended one, or the
    highest with a warning when there is no clear winner) to `out` (default: a file in `run_dir` named after
    the trainer), atomically. Raises DiagnoseError (one line) on bad input or an inexpressible configuration,
    before anything is written."""
    exporter = get(to)
    view = read_run(run_dir, metric)
    spec, notes = view.choose(config)
    try:
        settings = exporter.settings(spec)
    except Unsupported as why:
        raise DiagnoseError(exporter.refusal(spec, why)) from None
    warnings = notes + exporter.warnings(spec)
    text = exporter.render(spec, settings, warnings)
    path = Path(out).expanduser() if out is not None else view.run_dir / exporter.filename
    _write(path, text)
    return Exported(path, spec, exporter.title, warnings)


def _write(path: Path, text: str) -> None:
    if path.is_dir():
        raise DiagnoseError(f"--out {path} is a directory; give a file name")
    if not path.parent.is_dir():
        raise DiagnoseError(f"cannot write {path}: {path.parent} is not a directory")
    try:
        atomic.write_text(path, text, encoding="utf-8")
    except OSError as err:
        raise DiagnoseError(f"cannot write {path}: {err.strerror or err}") from None


__all__ = [
    "Exported", "Exporter", "RunView", "TrainingSpec", "Unsupported", "available", "export", "get", "read_run",
    "register",
]
