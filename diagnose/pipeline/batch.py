"""`diagnose batch GRID.toml`: students × tasks runs (each with every teacher and objective of the grid),
then one comparison table and report across them.

Grid file: lists `students`, `tasks`, `teachers` (and optionally `objectives`), an `out` directory, and any
other run setting (questions, rollouts, budget, seed, ...), shared by every run.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from .. import atomic
from ..errors import DiagnoseError
from .config import RunConfig, load_toml
from .rundir import write_atomic
from .runner import Runner


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")[:60] or "x"


def grid_configs(grid_path: str | Path) -> tuple[Path, list[RunConfig]]:
    grid = load_toml(grid_path)
    students = grid.pop("students", None) or [grid.pop("student", "embedded")]
    task_list = grid.pop("tasks", None) or [grid.pop("task", "arithmetic")]
    out = Path(grid.pop("out", "reports/batch"))
    configs = []
    for student in students:
        for task in task_list:
            values = {**grid, "student": student, "task": task, "out": str(out / f"{_slug(student)}__{_slug(task)}")}
            configs.append(RunConfig.from_sources(None, values))
    if not configs:
        raise DiagnoseError(f"{grid_path}: the grid is empty")
    return out, configs


def run_batch(grid_path: str | Path, progress: bool = True) -> Path | None:
    """Run every cell of the grid (each resumable; the grid's scale-out keys, such as `workers` or `shard`,
    apply to each cell in turn) and write comparison.parquet + comparison.html. None when this is one
    `shard` of several and some cell still waits for its siblings (the last shard writes the comparison)."""
    out, configs = grid_configs(grid_path)
    frames = []
    for cfg in configs:
        cfg.progress = progress
        result = Runner(cfg).run()
        if result is None:
            frames = None
            continue
        if frames is None:
            continue
        s = result.summary.copy()
        s.insert(0, "task", cfg.task)
        s.insert(0, "student", cfg.student)
        frames.append(s)
    if frames is None:
        return None
    table = pd.concat(frames, ignore_index=True)
    out.mkdir(parents=True, exist_ok=True)
    with atomic.replacing(out / "comparison.parquet") as tmp:
        table.to_parquet(tmp, index=False)
    write_atomic(out / "comparison.html", comparison_html(table))
    return out / "comparison.html"


def comparison_html(table: pd.DataFrame, metric: str = "cos_full") -> str:
    import plotly.graph_objects as go

    t = table[table["metric"] == metric] if "metric" in table else table
    t = t.assign(run=t["student"] + " · " + t["task"])
    pivot = t.pivot_table(index="config", columns="run", values="mean")
    fig = go.Figure(
        go.Heatmap(
            z=pivot.values,
            x=list(pivot.columns),
            y=list(pivot.index),
            colorscale="RdBu",
            zmid=0,
            colorbar={"title": "mean cos"},
        )
    )
    fig.update_layout(title=f"Mean alignment ({metric}) per configuration and run", height=200 + 22 * len(pivot))
    best = t.sort_values("mean", ascending=False).groupby("run").head(1)[["run", "config", "mean", "ci_low", "ci_high"]]
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>diagnose batch comparison</title></head><body>"
        "<h1>diagnose: batch comparison</h1><p>Alignment = cosine between the distillation update and the ideal "
        "per-token gradient (positive: a small distillation step raises the chance of success).</p>"
        + fig.to_html(include_plotlyjs=True, full_html=False)
        + "<h2>Best configuration per run</h2>"
        + best.to_html(index=False, float_format=lambda x: f"{x:+.3f}")
        + "</body></html>"
    )
