"""The interactive offline HTML report of a run directory (`report.html`): plotly.js is inlined, nothing is
fetched from the network.

Shows the bottom line (recommended configuration overall and per difficulty band, headroom), what alignment
means, the run's cost, the ranking of configurations with intervals, correct vs incorrect rollouts,
questions by pass rate, a configurations x position heatmap, a rollout explorer (text coloured by the
chosen configuration's alignment, hover details, per-node heatmap, candidate tokens), and proxies vs
alignment with rank correlations.
"""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd
from plotly.offline import get_plotlyjs

from .. import atomic
from ..errors import DiagnoseError
from ..tables import Summary, has_table, read_metadata, read_summary, read_table, verdict_note
from ..tables.summary import no_summary
from .assets import CSS, JS
from .explorer import explorer_data
from .sections import (
    _header,
    _section_bottom_line,
    _section_correctness,
    _section_cost,
    _section_difficulty,
    _section_explorer,
    _section_metadata,
    _section_positions,
    _section_proxies,
    _section_ranking,
)
from .style import FONT, METRIC_NAMES, PALETTE, json_script, plot_div
from .validation import section_validation


def load_tables(run_dir) -> dict[str, pd.DataFrame | None]:
    run_dir = Path(run_dir)
    out = {}
    for name in ("rollouts", "nodes", "candidates", "alignment"):
        out[name] = read_table(run_dir, name) if has_table(run_dir, name) else None
    for name in ("rollouts", "alignment"):
        if out[name] is None:
            raise DiagnoseError(f"{run_dir} has no {name} table: nothing to report")
    return out


# One function per section of the page, in page order; render_report joins them.


def _page(run_dir: Path, body: str, data: dict) -> str:
    """The whole document: head with the inlined CSS and plotly.js, the body, the explorer's data, the script."""
    return (
        f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>diagnose report · {html.escape(run_dir.resolve().name)}</title><style>{CSS}</style>"
        f"<script type='text/javascript'>{get_plotlyjs()}</script></head><body>{body}"
        f"<script type='application/json' id='diagnose-data'>{json_script(data)}</script>"
        f"<script type='text/javascript'>{JS}</script></body></html>"
    )


def render_report(
    run_dir,
    out=None,
    metric: str = "cos_full",
    max_rollouts: int = 60,
    tables=None,
    summary: Summary | None = None,
) -> Path:
    """Write the offline interactive report of a run directory (default `<run_dir>/report.html`).

    Returns the report's path."""
    run_dir = Path(run_dir)
    if metric not in METRIC_NAMES:
        raise DiagnoseError(f"metric must be one of {', '.join(METRIC_NAMES)}, got {metric!r}")
    tables = tables or load_tables(run_dir)
    if summary is None:
        if not has_table(run_dir, "summary"):
            raise DiagnoseError(no_summary(run_dir))
        summary = read_summary(run_dir)
    meta_table = next((n for n in ("summary", "alignment") if has_table(run_dir, n)), None)
    meta = read_metadata(run_dir, meta_table) if meta_table else {}
    other = next((m for m in METRIC_NAMES if m != metric), None)
    s_all = summary.table
    s = s_all[s_all["metric"] == metric].sort_values("rank").reset_index(drop=True)
    if s.empty:
        raise DiagnoseError(f"the summary has no rows for metric {metric}")
    s_other = s_all[s_all["metric"] == other] if other else None
    configs = list(s["config"])
    rollouts, alignment = tables["rollouts"], tables["alignment"]
    a = alignment.merge(
        rollouts[["question_id", "rollout_idx", "n_tokens"]], on=["question_id", "rollout_idx"]
    )
    valid = a[~a["degenerate"].astype(bool)]
    best = (summary.recommendation.get(metric, {}).get("overall") or {}).get("config", configs[0])
    data = {
        "configs": configs,
        "default_config": configs.index(best) if best in configs else 0,
        "palette": PALETTE,
        "font": FONT,
        "rollouts": explorer_data(
            rollouts, tables["nodes"], tables["candidates"], alignment, configs, max_rollouts
        ),
    }
    unit = summary.settings.get(
        "resampling", "questions with replacement, each with all of its rollouts (question-cluster bootstrap)"
    )
    sections = [
        _section_bottom_line(summary, metric, other, unit, verdict_note(rollouts["correct"], rollouts["question_id"])),
        _section_cost(run_dir, tables, meta),
        _section_ranking(s, s_other, metric, unit),
        _section_correctness(s),
        _section_difficulty(s, rollouts, alignment, best, metric),
        _section_positions(valid, configs, metric),
        _section_explorer(data, configs, len(rollouts)),
        _section_proxies(s, valid, configs, metric, summary),
        section_validation(run_dir, plot_div),
        _section_metadata(meta, run_dir),
    ]
    parts = [_header(run_dir, meta, configs, metric), "<main>", *sections, "</main>", '<div id="tooltip"></div>']
    body = "\n" + "\n".join(parts) + "\n"
    out = Path(out) if out is not None else run_dir / "report.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(out, _page(run_dir, body, data), encoding="utf-8")
    return out
