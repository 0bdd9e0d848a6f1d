"""The report's "Does alignment predict training?" section, drawn from the tables `diagnose validate` writes:
alignment (x) against the change in held-out pass@1 (y) per arm the run measured, the other reference arms as
bands, the rank correlation with its interval, and a plain statement when the changes are within noise."""

from __future__ import annotations

import html
import math
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from .tables import has_table, read_metadata, read_table

REFERENCE_STYLE = {"ideal": "#1a9850", "grpo": "#4575b4", "control": "#d73027"}


def _num(x, d=3, sign=True) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:+.{d}f}" if sign else f"{x:.{d}f}"


def fig_validation(arms: pd.DataFrame) -> go.Figure:
    """Arms whose alignment the run measured (configurations, and grpo when the run scored grpo_ref): alignment
    vs gain with both intervals; the other reference arms: their gain as a shaded band."""
    fig = go.Figure()
    measured = np.isfinite(arms["alignment"].to_numpy(float))
    cfg = arms[measured]
    if len(cfg):
        fig.add_trace(
            go.Scatter(
                x=cfg["alignment"], y=cfg["gain"], mode="markers+text", text=cfg["arm"], textposition="top center",
                name="configurations",
                marker=dict(size=10, color="#333"),
                error_y=dict(type="data", symmetric=False, array=(cfg["gain_ci_high"] - cfg["gain"]).tolist(),
                             arrayminus=(cfg["gain"] - cfg["gain_ci_low"]).tolist()),
                error_x=dict(type="data", symmetric=False,
                             array=np.nan_to_num(cfg["alignment_ci_high"] - cfg["alignment"]).tolist(),
                             arrayminus=np.nan_to_num(cfg["alignment"] - cfg["alignment_ci_low"]).tolist()),
                hovertemplate="%{text}<br>alignment %{x:.3f}<br>gain %{y:+.3f}<extra></extra>",
            )
        )
    for _, r in arms[~measured].iterrows():
        color = REFERENCE_STYLE.get(r["kind"], "#777")
        fig.add_hrect(y0=r["gain_ci_low"], y1=r["gain_ci_high"], fillcolor=color, opacity=0.12, line_width=0)
        fig.add_hline(y=r["gain"], line=dict(color=color, dash="dash"),
                      annotation_text=f"{r['arm']} {r['gain']:+.3f}", annotation_position="right")
    fig.add_hline(y=0, line=dict(color="#555", width=1, dash="dot"))
    fig.update_layout(
        template="plotly_white", height=420, margin=dict(l=10, r=120, t=50, b=50), showlegend=False,
        title=dict(text="Alignment of each configuration against its change in held-out pass@1", x=0),
        xaxis_title="alignment (the run's summary mean)", yaxis_title="change in pass@1 after training",
    )
    return fig


def _arm_rows(arms: pd.DataFrame) -> str:
    e = html.escape
    rows = "".join(
        f"<tr><td>{e(str(r['arm']))}</td><td>{e(str(r['kind']))}</td><td>{_num(r['alignment'])}</td>"
        f"<td>{_num(r['pass_after'], sign=False)}</td><td>{_num(r['gain'])} [{_num(r['gain_ci_low'])}, "
        f"{_num(r['gain_ci_high'])}]</td><td>{e(str(r['verdict']))}</td></tr>"
        for _, r in arms.sort_values("gain", ascending=False).iterrows()
    )
    return (f"<table class='summary'><thead><tr><th>arm</th><th>kind</th><th>alignment</th><th>pass@1 after</th>"
            f"<th>gain [interval]</th><th>verdict</th></tr></thead><tbody>{rows}</tbody></table>")


def statements(arms: pd.DataFrame, conclusions: dict) -> list[str]:
    """The section's plain-language conclusions (also what a reader of the tables should take away)."""
    out = []
    lo, hi = conclusions.get("spearman_ci", [float("nan")] * 2)
    out.append(
        f"Rank correlation of alignment with gain over {conclusions.get('n', 0)} arms the run measured: ρ = "
        f"{_num(conclusions.get('spearman'), 2)} [{_num(lo, 2)}, {_num(hi, 2)}]; {conclusions.get('note', '')}."
    )
    noise = arms["verdict"] == "within noise"
    if noise.all():
        out.append("Every arm's change in pass@1 is within noise: at this size the training check cannot tell the "
                   "arms apart. More steps, seeds or held-out samples would.")
    elif noise.any():
        out.append(f"{int(noise.sum())} of {len(arms)} arms changed pass@1 within noise.")
    ivc = conclusions.get("ideal_vs_control")
    if ivc:
        a, b = ivc["ci"]
        word = {"gain": "ahead of", "loss": "behind"}.get(ivc["verdict"], "not distinguishable from")
        out.append(f"The ideal arm is {word} the shuffled-teacher control: difference {_num(ivc['difference'])} "
                   f"[{_num(a)}, {_num(b)}].")
    return out


def section_validation(run_dir: Path, div) -> str:
    """The HTML section, or '' when the run has not been validated (`div` renders a figure)."""
    if not has_table(run_dir, "validation_arms"):
        return ""
    arms = read_table(run_dir, "validation_arms")
    meta = read_metadata(run_dir, "validation_arms").get("validation", {})
    settings = meta.get("settings", {})
    said = "".join(f"<li>{html.escape(s)}</li>" for s in statements(arms, meta))
    caption = (
        f"Each configuration trained the student from the same weights for {settings.get('steps', '?')} on-policy "
        f"steps (learning rate {settings.get('lr', '?')}, {settings.get('batch', '?')} questions per step, "
        f"{settings.get('seeds', '?')} training seed(s)); beside them the ideal direction (estimated g*), GRPO "
        f"on the task reward (a point when the run scored grpo_ref) and a control teacher with shuffled "
        f"vocabulary. y: change in pass@1 on "
        f"{settings.get('eval_questions', '?')} held-out questions × {settings.get('eval_samples', '?')} samples, "
        "with 95% bootstrap intervals over seeds, then questions, then samples (paired across arms)."
    )
    return f"""<section id="validation"><h2>Does alignment predict training?</h2>
<p class="caption">{html.escape(caption)}</p>
<ul class="statements">{said}</ul>
{div(fig_validation(arms), "fig-validation")}
<details><summary>Arms (click to open)</summary>{_arm_rows(arms)}</details>
</section>"""
