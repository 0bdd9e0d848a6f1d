"""The report's "Does alignment predict training?" section, drawn from the tables `diagnose validate` writes:
alignment (x) against the change in pass@1 on the fixed held-out set (y) per distillation configuration, grpo
beside them (a separate point when the run scored grpo_ref, else a band, like the ideal and control arms), the
rank correlation among the distillation configurations with its interval and p-value, and a plain statement
when the changes are within noise."""

from __future__ import annotations

import html
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from ..tables import has_table, read_metadata, read_table

REFERENCE_STYLE = {"ideal": "#1a9850", "grpo": "#4575b4", "control": "#d73027"}


def to_num(x, d=3, sign=True) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:+.{d}f}" if sign else f"{x:.{d}f}"


def _points(fig: go.Figure, arms: pd.DataFrame, name: str, color: str) -> None:
    fig.add_trace(
        go.Scatter(
            x=arms["alignment"], y=arms["gain"], mode="markers+text", text=arms["arm"], textposition="top center",
            name=name,
            marker=dict(size=10, color=color),
            error_y=dict(type="data", symmetric=False, array=(arms["gain_ci_high"] - arms["gain"]).tolist(),
                         arrayminus=(arms["gain"] - arms["gain_ci_low"]).tolist()),
            error_x=dict(type="data", symmetric=False,
                         array=np.nan_to_num(arms["alignment_ci_high"] - arms["alignment"]).tolist(),
                         arrayminus=np.nan_to_num(arms["alignment"] - arms["alignment_ci_low"]).tolist()),
            hovertemplate="%{text}<br>alignment %{x:.3f}<br>gain %{y:+.3f}<extra></extra>",
        )
    )


def fig_validation(arms: pd.DataFrame) -> go.Figure:
    """Distillation configurations (the arms the rank correlation is over): alignment vs gain with both
    intervals, as the first trace. grpo, when the run scored grpo_ref, is a second trace in its own colour: it
    is RL on the rollouts' verdicts and is not in the correlation. Every other arm (ideal, control, grpo
    without a measured alignment): its gain as a shaded band."""
    fig = go.Figure()
    measured = np.isfinite(arms["alignment"].to_numpy(float))
    dist = measured & (arms["kind"] == "config").to_numpy()
    grpo = measured & (arms["kind"] == "grpo").to_numpy()
    if dist.any():
        _points(fig, arms[dist], "distillation configurations", "#333")
    if grpo.any():
        _points(fig, arms[grpo], "grpo (not in ρ)", REFERENCE_STYLE["grpo"])
    for _, r in arms[~(dist | grpo)].iterrows():
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


def _finite(x) -> bool:
    return x is not None and bool(np.isfinite(x))


def fmt(x, d=2) -> str:
    return f"{x:+.{d}f}" if _finite(x) else "–"


def ranking_sentence(c: dict) -> str:
    """'ranking among distillation configurations: rho = ..., p = ...' in words (undefined: no number).
    Shared by the report and `ValidationResult.describe`."""
    n = int(c.get("n", 0))
    if "configs" not in c:  # written before rho was restricted to distillation configurations
        return (f"rank correlation over the {n} arms the run measured (an older validation: grpo may be in it); "
                "rerun `diagnose validate` with the same settings to re-summarize (it trains nothing)")
    if n < 3 or not _finite(c.get("spearman")):
        return f"ranking among distillation configurations: rho undefined ({c.get('note', '')})"
    lo, hi = c["spearman_ci"]
    return (f"ranking among distillation configurations: rho = {fmt(c['spearman'])} [{fmt(lo)}, {fmt(hi)}], "
            f"p = {c['spearman_p']:.3g} ({n} configurations, grpo, ideal and control not in it; p "
            f"{c['p_method']}): {c['note']}")


def grpo_sentence(c: dict) -> str:
    """grpo beside the ranking: its alignment and gain with their intervals ('' without a grpo arm)."""
    g = c.get("grpo")
    if not g:
        return ""
    align = ("alignment not measured (the run did not score grpo_ref)" if not _finite(g["alignment"]) else
             f"alignment {fmt(g['alignment'], 3)} [{fmt(g['alignment_ci'][0], 3)}, {fmt(g['alignment_ci'][1], 3)}]")
    return (f"beside it, grpo (RL on the rollouts' verdicts, not distillation): {align}, gain {fmt(g['gain'], 3)} "
            f"[{fmt(g['gain_ci'][0], 3)}, {fmt(g['gain_ci'][1], 3)}] ({g['verdict']})")


def _arm_rows(arms: pd.DataFrame) -> str:
    e = html.escape
    rows = "".join(
        f"<tr><td>{e(str(r['arm']))}</td><td>{e(str(r['kind']))}</td><td>{to_num(r['alignment'])}</td>"
        f"<td>{to_num(r['pass_after'], sign=False)}</td><td>{to_num(r['gain'])} [{to_num(r['gain_ci_low'])}, "
        f"{to_num(r['gain_ci_high'])}]</td><td>{e(str(r['verdict']))}</td></tr>"
        for _, r in arms.sort_values("gain", ascending=False).iterrows()
    )
    return (f"<table class='summary'><thead><tr><th>arm</th><th>kind</th><th>alignment</th><th>pass@1 after</th>"
            f"<th>gain [interval]</th><th>verdict</th></tr></thead><tbody>{rows}</tbody></table>")


def statements(arms: pd.DataFrame, conclusions: dict) -> list[str]:
    """The section's plain-language conclusions (also what a reader of the tables should take away)."""
    ranked = re.sub(r"\brho\b", "ρ", ranking_sentence(conclusions))
    out = [ranked[0].upper() + ranked[1:] + "."]
    grpo = grpo_sentence(conclusions)
    if grpo:
        out.append(grpo[0].upper() + grpo[1:] + ".")
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
        out.append(f"The ideal arm is {word} the shuffled-teacher control: difference {to_num(ivc['difference'])} "
                   f"[{to_num(a)}, {to_num(b)}].")
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
        "on the task reward (its own point when the run scored grpo_ref, not in ρ) and a control teacher with "
        f"shuffled vocabulary. y: change in pass@1 on "
        f"{settings.get('eval_questions', '?')} held-out questions × {settings.get('eval_samples', '?')} samples, "
        "for this fixed set of questions: 95% bootstrap intervals resample training seeds and the samples of each "
        "question, not the questions (paired across arms). ρ is over the distillation configurations only, its "
        "interval resampling the run's alignment with the gains."
    )
    return f"""<section id="validation"><h2>Does alignment predict training?</h2>
<p class="caption">{html.escape(caption)}</p>
<ul class="statements">{said}</ul>
{div(fig_validation(arms), "fig-validation")}
<details><summary>Arms (click to open)</summary>{_arm_rows(arms)}</details>
</section>"""
