"""RunResult: a run directory's tables as pandas DataFrames, its conclusions as text, and its report.

>>> from diagnose import report
>>> res = report.load("runs/2026-11-28")
>>> res.summary          # the summary DataFrame (one row per configuration and metric)
>>> print(res.describe())  # the bottom line as text
>>> res.top(5)           # best configurations
>>> res.show()           # the interactive report inline in Jupyter
"""

from __future__ import annotations

import html
import json
import math
import shutil
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import DiagnoseError
from ..tables import BANDS, Summary, has_table, read_metadata, read_summary, read_table, verdict_note
from ..tables.summary import no_summary

_TABLES = ("rollouts", "nodes", "candidates", "alignment")


def fmt(x, d=3) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{d}f}"


class RunResult:
    """The outcome of one `diagnose` run, loaded lazily from its run directory."""

    def __init__(self, run_dir, metric: str = "cos_full", summary: Summary | None = None):
        self.run_dir = Path(run_dir)
        self.metric = metric
        self._given = summary
        if not self.run_dir.is_dir():
            raise DiagnoseError(f"no run directory at {self.run_dir}")
        if not has_table(self.run_dir, "alignment"):
            raise DiagnoseError(f"{self.run_dir} holds no alignment table: is it a diagnose run directory?")

    # -- tables
    def _table(self, name: str) -> pd.DataFrame | None:
        return read_table(self.run_dir, name) if has_table(self.run_dir, name) else None

    @cached_property
    def rollouts(self) -> pd.DataFrame:
        return self._table("rollouts")

    @cached_property
    def nodes(self) -> pd.DataFrame | None:
        return self._table("nodes")

    @cached_property
    def candidates(self) -> pd.DataFrame | None:
        return self._table("candidates")

    @cached_property
    def alignment(self) -> pd.DataFrame:
        return self._table("alignment")

    @cached_property
    def _summary(self) -> Summary:
        if self._given is not None:
            return self._given
        if has_table(self.run_dir, "summary"):
            return read_summary(self.run_dir)
        raise DiagnoseError(no_summary(self.run_dir))

    @property
    def summary(self) -> pd.DataFrame:
        """The summary table (one row per configuration and metric; see docs/tables.md)."""
        return self._summary.table

    @property
    def recommendation(self) -> dict[str, Any]:
        """Best configuration overall and per difficulty band, for the current metric."""
        return self._summary.recommendation.get(self.metric, {})

    @property
    def headroom(self) -> dict[str, Any]:
        return self._summary.headroom.get(self.metric, {})

    @property
    def proxy_correlations(self) -> pd.DataFrame:
        """Spearman rho of each proxy with alignment: one row per configuration plus a 'pooled' row."""
        s = self.summary[self.summary["metric"] == self.metric].set_index("config")
        rho = s[[c for c in s.columns if c.startswith("rho_")]].rename(columns=lambda c: c[4:])
        pooled = pd.DataFrame([self._summary.proxy_pooled.get(self.metric, {})], index=["pooled"])
        return pd.concat([rho, pooled.astype(float)])

    @cached_property
    def metadata(self) -> dict[str, Any]:
        """Run metadata stored with the tables (versions, models, seeds, config hash)."""
        name = "summary" if has_table(self.run_dir, "summary") else "alignment"
        return read_metadata(self.run_dir, name)

    @property
    def cost(self) -> dict[str, Any]:
        path = self.run_dir / "cost.json"
        if path.is_file():
            return json.loads(path.read_text())
        return dict(self.metadata.get("cost", {}))

    # -- text
    def top(self, n: int = 5, metric: str | None = None) -> pd.DataFrame:
        """The n best configurations by alignment (`mean`: pooled, token-weighted, noise-corrected), with
        intervals, the main splits and their difference."""
        metric = metric or self.metric
        s = self.summary[self.summary["metric"] == metric].sort_values("rank")
        cols = [
            "rank",
            "config",
            "mean",
            "ci_low",
            "ci_high",
            "n_nodes",
            "mean_correct",
            "mean_incorrect",
            "diff_correct_incorrect",
            "diff_per_token",  # the raw (paper-style) split beside the noise-consistent one
            "rollout_cos",
        ]
        return s[[c for c in cols if c in s]].head(n).reset_index(drop=True)

    def describe(self) -> str:
        """The bottom line as text: recommendation overall and per band, headroom, top configurations."""
        rec, hr = self.recommendation, self.headroom
        lines = [f"diagnose run {self.run_dir} ({self.metric})"]
        ro = self.rollouts
        note = verdict_note(ro["correct"], ro["question_id"]) if ro is not None and len(ro) else None
        if note:
            lines.append(f"  warning: {note}")
        o = rec.get("overall")
        if not o:
            silent = "".join(f"\n  no signal (never ranked): {x}" for x in rec.get("no_signal", []))
            return "\n".join(lines) + "\n  no configuration has a defined alignment" + silent
        evidence = f"{o['n_nodes']} live nodes of {o.get('n_questions', '?')} questions"
        if not o.get("clear"):
            lines.append(f"  no clear winner: the evidence ({evidence}) does not separate the configurations")
        head = "recommended" if o.get("clear") else "highest point estimate"
        lines.append(
            f"  {head}: {o['config']}  alignment {fmt(o['mean'])} [{fmt(o['ci_low'])}, {fmt(o['ci_high'])}]"
            f" over {evidence}"
        )
        if o.get("runner_up"):
            clear = "clear" if o.get("clear") else f"not clear{': ' + o['note'] if o.get('note') else ''}"
            lines.append(
                f"  vs runner-up {o['runner_up']}: margin {fmt(o['margin'])} "
                f"[{fmt(o['margin_ci_low'])}, {fmt(o['margin_ci_high'])}] ({clear})"
            )
        for item in rec.get("no_signal", []):
            lines.append(f"  no signal (never ranked): {item}")
        for band in BANDS:
            b = rec.get("bands", {}).get(band)
            if b:
                lines.append(
                    f"  {band:>6}: {b['config']}  {fmt(b['mean'])} [{fmt(b['ci_low'])}, {fmt(b['ci_high'])}]"
                    f" ({b['n_nodes']} nodes)"
                )
        if hr:
            lines.append(
                f"  headroom (best config per token, cross-fitted): {fmt(hr['headroom'])} "
                f"[{fmt(hr['headroom_ci_low'])}, {fmt(hr['headroom_ci_high'])}] -> {fmt(hr['oracle_mean'])}"
                if hr.get("cross_fitted")
                else f"  headroom (best config per token, in-sample, optimistic): {fmt(hr['headroom'])} "
                f"-> {fmt(hr['oracle_mean'])}"
            )
        lines.append("")
        lines.append(self.top(10).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        return "\n".join(lines)

    def __repr__(self) -> str:
        o = self.recommendation.get("overall") or {}
        best = f", best={o['config']!r} ({fmt(o.get('mean'))})" if o else ""
        return f"RunResult({str(self.run_dir)!r}{best})"

    def _repr_html_(self) -> str:
        o = self.recommendation.get("overall") or {}
        head = (
            f"<p><b>diagnose run</b> <code>{html.escape(str(self.run_dir))}</code>: "
            f"{'recommended' if o.get('clear') else 'highest (no clear winner)'} "
            f"<code>{html.escape(o.get('config', '–'))}</code>, alignment {fmt(o.get('mean'))} "
            f"[{fmt(o.get('ci_low'))}, {fmt(o.get('ci_high'))}] ({self.metric}). "
            "Call <code>.show()</code> for the "
            "interactive report.</p>"
        )
        return head + self.top(10).to_html(index=False, float_format=lambda v: f"{v:.3f}")

    # -- report
    def report(self, path=None, **kw) -> Path:
        """Render the HTML report (default `<run_dir>/report.html`) and return its path."""
        from .html import render_report

        tables = {name: getattr(self, name) for name in _TABLES}
        return render_report(
            self.run_dir, out=path, metric=self.metric, tables=tables, summary=self._summary, **kw
        )

    def show(self, height: int = 900):
        """Display the interactive report inline (Jupyter); outside IPython, return the report's path."""
        path = self.run_dir / "report.html"
        if not path.is_file():
            path = self.report()
        try:
            from IPython.display import HTML, display
        except ImportError:
            return path
        doc = html.escape(path.read_text(encoding="utf-8"), quote=True)
        display(
            HTML(
                f'<div><iframe srcdoc="{doc}" style="width:100%;height:{int(height)}px;border:0">'
                "</iframe></div>"
            )
        )
        return None

    def save(self, directory) -> Path:
        """Copy the run (tables, cost.json, config.toml) to `directory` and write its report there."""
        dest = Path(directory)
        if dest.resolve() == self.run_dir.resolve():
            raise DiagnoseError("save(): the destination is the run directory itself")
        dest.mkdir(parents=True, exist_ok=True)
        for name in _TABLES + ("summary",):
            src = self.run_dir / name
            if has_table(self.run_dir, name):
                target = dest / name
                if target.exists():
                    shutil.rmtree(target)
                shutil.copytree(src, target, ignore=shutil.ignore_patterns(".*"))  # no stray temporaries
        for extra in ("cost.json", "config.toml"):
            if (self.run_dir / extra).is_file():
                shutil.copy2(self.run_dir / extra, dest / extra)
        if not has_table(dest, "summary"):
            from ..tables import write_table

            meta = dict(read_metadata(self.run_dir, "alignment"))
            meta.pop("table", None)
            meta["summary"] = self._summary.to_metadata()
            write_table(dest, "summary", self.summary, shard="0", metadata=meta)
        from .html import render_report

        tables = {name: getattr(self, name) for name in _TABLES}
        render_report(dest, metric=self.metric, tables=tables, summary=self._summary)
        return dest


def load(run_dir, metric: str = "cos_full", summary: Summary | None = None) -> RunResult:
    """Open a run directory as a RunResult (tables are read on first access). The report renders a stored
    summary or the one given; `diagnose.load` computes one (without writing it) for a run that has none."""
    return RunResult(run_dir, metric=metric, summary=summary)
