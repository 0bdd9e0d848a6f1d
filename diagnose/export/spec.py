"""The neutral description of a diagnosed configuration, read from a run directory.

`read_run(run_dir)` gathers what every exporter needs: the run's settings (config.toml), each configuration's
alignment (the summary table) and the recommendation with its "clear" flag (the summary's metadata, as
`diagnose.tables.read_summary` returns it; a run without a summary yet gets one computed and not written, as
`diagnose.load` does). `RunView.choose`
picks the configuration to export: the one named, else the recommended one (or the highest, with a warning,
when the evidence does not separate it from the runner-up). A `TrainingSpec` is that configuration with
everything a trainer is told: student, teacher and its context, objective and its parameters, sampling
temperature, the teacher's temperature, top_p, max_new_tokens, and where it came from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DiagnoseError

# Every context builder filled with its own placeholders: a self-distillation teacher's messages as a template.
PLACEHOLDERS = dict(
    question="{question}", answer="{answer}", solution="{solution}", summary="{summary}",
    correct_example="{correct_example}", incorrect_example="{incorrect_example}",
)


def _number(value) -> float | None:
    """A finite float, or None (NaN, null and missing all read as None)."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def fmt(value, digits: int = 3) -> str:
    value = _number(value)
    return "n/a" if value is None else f"{value:.{digits}f}"


@dataclass(frozen=True)
class Standing:
    """One configuration's alignment in the run (the summary's `mean`, its interval and rank)."""

    label: str
    teacher: str
    objective: str
    mean: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    rank: int | None = None
    n_nodes: int = 0

    @property
    def resolved(self) -> bool:
        return self.mean is not None

    def describe(self) -> str:
        if not self.resolved:
            return "alignment unresolved (no signal)"
        return f"alignment {fmt(self.mean)} [{fmt(self.ci_low)}, {fmt(self.ci_high)}]"


@dataclass
class RunView:
    """A finished (or partly finished) run directory, as exporters see it."""

    run_dir: Path
    config: Any  # diagnose.pipeline.RunConfig
    metric: str
    recommendation: dict[str, Any]  # the summary's recommendation for `metric`: overall, bands, no_signal
    standings: dict[str, Standing]  # by label, best rank first, unresolved last
    level: float = 0.95

    def standing(self, label: str) -> Standing:
        if label not in self.standings:
            raise DiagnoseError(
                f"{self.run_dir} has no configuration {label!r}; its configurations: {', '.join(self.standings)}"
            )
        return self.standings[label]

    def spec(self, label: str, chosen: str = "requested") -> TrainingSpec:
        """The TrainingSpec of configuration `label` of this run."""
        from .. import objectives
        from ..teachers import parse_teacher

        standing = self.standing(label)
        try:
            objective = objectives.parse(standing.objective)
        except (KeyError, ValueError) as err:
            raise DiagnoseError(f"configuration {label!r}: {str(err).strip(chr(39) + chr(34))}") from None
        return TrainingSpec(self, standing, parse_teacher(standing.teacher), objective, chosen)

    def choose(self, label: str | None = None) -> tuple[TrainingSpec, list[str]]:
        """(the configuration to export, warnings). `label` picks one; else the recommended one, or the highest
        with a warning when the run has no clear winner."""
        if label is not None:
            spec = self.spec(label.strip(), "requested")
            notes = [] if spec.standing.resolved else [
                f"{spec.label} has no resolved alignment in this run (no signal): the diagnosis says nothing about it"
            ]
            return spec, notes
        overall = self.recommendation.get("overall") or {}
        if not overall.get("config"):
            raise DiagnoseError(
                f"no configuration of {self.run_dir} has a defined alignment ({self.metric}), so none is recommended; "
                "pass --config TEACHER|OBJECTIVE to export one anyway"
            )
        if overall.get("clear"):
            return self.spec(overall["config"], "recommended"), []
        spec = self.spec(overall["config"], "highest")
        if overall.get("runner_up"):
            why = (
                f"its margin over the runner-up {overall['runner_up']} is {fmt(overall.get('margin'))} "
                f"[{fmt(overall.get('margin_ci_low'))}, {fmt(overall.get('margin_ci_high'))}]"
                + (f" ({overall['note']})" if overall.get("note") else "")
            )
        else:
            why = overall.get("note") or "no other configuration is ranked"
        return spec, [
            f"no clear winner: {spec.label} has the highest alignment, {fmt(spec.standing.mean)} "
            f"[{fmt(spec.standing.ci_low)}, {fmt(spec.standing.ci_high)}], but {why}; exporting it anyway "
            "(docs/training.md, 'Reading the diagnosis before launching')"
        ]


@dataclass(frozen=True)
class TrainingSpec:
    """One configuration of a run, with the settings a trainer needs."""

    run: RunView
    standing: Standing
    teacher: Any  # diagnose.teachers.TeacherConfig
    objective: Any  # diagnose.objectives.Objective
    chosen: str = "requested"  # recommended | highest | requested

    @property
    def label(self) -> str:
        return self.standing.label

    @property
    def student(self) -> str:
        """The student as the run names it (`embedded`, a Hugging Face id or a path)."""
        return str(self.run.config.student)

    @property
    def student_model(self) -> str:
        """What a trainer loads as the student: `embedded` becomes its local checkpoint folder."""
        from .. import models

        return str(models.embedded_path()) if self.student == models.EMBEDDED else self.student

    @property
    def teacher_model(self) -> str:
        """What a trainer loads as the teacher: the student's own weights for a `self` teacher."""
        return self.student_model if self.teacher.is_self else str(self.teacher.model)

    @property
    def context(self) -> str:
        return str(self.teacher.context)

    @property
    def temperature(self) -> float:
        return float(self.run.config.temperature)

    @property
    def teacher_temperature(self) -> float:
        """The temperature the teacher's logits were divided by (0 in the config means the sampling one)."""
        return float(self.run.config.teacher_temperature or self.run.config.temperature)

    @property
    def top_p(self) -> float:
        return float(self.run.config.top_p)

    @property
    def max_new_tokens(self) -> int:
        return int(self.run.config.max_new_tokens)

    def teacher_messages(self) -> list[dict] | None:
        """The teacher's chat messages as a template (placeholders `{question}`, `{answer}`, ...), or None when
        the teacher sees the student's own prompt."""
        if self.context == "none":
            return None
        from ..teachers.contexts import ContextInputs, build_messages

        return build_messages(self.context, ContextInputs(**PLACEHOLDERS))

    def provenance(self) -> str:
        """How this configuration was chosen, in words."""
        return {
            "recommended": "recommended (clearly ahead of the runner-up)",
            "highest": "highest point estimate (no clear winner)",
        }.get(self.chosen, "chosen with --config")

    def to_dict(self) -> dict[str, Any]:
        """The neutral description (what `diagnose export --to json` writes)."""
        cfg, s = self.run.config, self.standing
        overall = self.run.recommendation.get("overall") or {}
        top = overall.get("config") == self.label
        n_ranked = sum(x.rank is not None for x in self.run.standings.values())
        return {
            "format": "diagnose-training-spec/1",
            "configuration": self.label,
            "chosen": self.chosen,
            "student": {"name": self.student, "model": self.student_model},
            "teacher": {
                "label": str(self.teacher.label),
                "self_distillation": bool(self.teacher.is_self),
                "model": self.teacher_model,
                "context": self.context,
                "messages": self.teacher_messages(),
            },
            "objective": {
                "label": str(self.objective.label),
                "name": str(self.objective.name),
                "params": dict(self.objective.params),
                "needs": str(self.objective.needs),
                "sampled_token": bool(self.objective.sampled),
            },
            "on_policy": True,
            "temperature": self.temperature,
            "teacher_temperature": self.teacher_temperature,
            "top_p": self.top_p,
            "max_new_tokens": self.max_new_tokens,
            "run": {
                "dir": str(self.run.run_dir),
                "config_digest": cfg.digest(),
                "task": str(cfg.task),
                "engine": str(cfg.engine),
                "questions": int(cfg.questions),
                "rollouts": int(cfg.rollouts),
                "seed": int(cfg.seed),
            },
            "alignment": {
                "metric": self.run.metric,
                "mean": s.mean,
                "ci_low": s.ci_low,
                "ci_high": s.ci_high,
                "level": self.run.level,
                "rank": s.rank,
                "of": n_ranked,
                "n_nodes": s.n_nodes,
                "n_questions": overall.get("n_questions"),
                "recommended": bool(top and overall.get("clear")),
                "clear_winner": bool(overall.get("clear")),
                "runner_up": overall.get("runner_up") if top else None,
                "margin": _number(overall.get("margin")) if top else None,
                "margin_ci_low": _number(overall.get("margin_ci_low")) if top else None,
                "margin_ci_high": _number(overall.get("margin_ci_high")) if top else None,
            },
        }


def read_config(run_dir: Path):
    """The RunConfig saved in a run directory's config.toml (not re-validated: the run already was)."""
    from ..pipeline.config import RunConfig

    return RunConfig.load(run_dir)


def read_run(run_dir, metric: str = "cos_full") -> RunView:
    """The run directory `run_dir` as exporters see it (one `error:` line when it is not a run directory)."""
    from .. import report
    from ..estimate.summary import summarize_run
    from ..tables import METRICS, has_table, read_summary

    if metric not in METRICS:
        raise DiagnoseError(f"--metric must be one of {', '.join(METRICS)}, got {metric!r}")
    run_dir = Path(run_dir)
    report.RunResult(run_dir, metric=metric)  # refuses a folder that is not a run directory
    config = read_config(run_dir)
    # the stored summary, or (a run that has none yet) one computed without writing it, as RunResult does
    summary = read_summary(run_dir) if has_table(run_dir, "summary") else summarize_run(run_dir)
    table = summary.table
    rows = table[table["metric"] == metric].copy()
    rows["_order"] = rows["rank"].fillna(float("inf"))
    standings = {}
    for row in rows.sort_values(["_order", "config"]).itertuples(index=False):
        rank = _number(row.rank)
        standings[str(row.config)] = Standing(
            label=str(row.config), teacher=str(row.teacher), objective=str(row.objective),
            mean=_number(row.mean), ci_low=_number(row.ci_low), ci_high=_number(row.ci_high),
            rank=None if rank is None else int(rank), n_nodes=int(row.n_nodes),
        )
    if not standings:
        raise DiagnoseError(f"{run_dir}'s summary has no configuration for metric {metric}")
    level = _number((summary.settings or {}).get("level")) or 0.95
    return RunView(run_dir, config, metric, dict(summary.recommendation.get(metric, {})), standings, level)


@dataclass
class Exported:
    """What `diagnose export` did: the file written, the configuration and the warnings."""

    path: Path
    spec: TrainingSpec
    trainer: str
    warnings: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return (
            f"{self.spec.label}: {self.spec.provenance()}, {self.spec.standing.describe()} "
            f"({self.spec.run.metric}) -> {self.trainer}: wrote {self.path}"
        )
