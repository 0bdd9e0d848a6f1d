"""The interactive offline HTML report of a run directory (`report.html`): plotly.js is inlined, nothing is
fetched from the network.

Shows the bottom line (recommended configuration overall and per difficulty band, headroom), what alignment
means, the run's cost, the ranking of configurations with intervals, correct vs incorrect rollouts,
questions by pass rate, a configurations x position heatmap, a rollout explorer (text coloured by the
chosen configuration's alignment, hover details, per-node heatmap, candidate tokens), and proxies vs
alignment with rank correlations.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import diverging
from plotly.offline import get_plotlyjs

from .. import atomic
from ..errors import DiagnoseError
from .assets import CSS, JS
from .summary import Summary, read_summary, summarize_run
from .tables import BANDS, PROXIES, has_table, read_metadata, read_table
from .validation import section_validation

PALETTE = list(diverging.RdBu)  # red (negative) -> white (0) -> blue (positive)
COLORSCALE = [[i / (len(PALETTE) - 1), c] for i, c in enumerate(PALETTE)]
PLOT_CONFIG = {"displaylogo": False, "responsive": True}
SPLIT_COLOURS = {
    "correct": "#0072B2",
    "incorrect": "#E69F00",
    "hard": "#D55E00",
    "medium": "#CC79A7",
    "easy": "#009E73",
}
METRIC_NAMES = {
    "cos_full": "cos(g*, d), d over the whole vocabulary",
    "cos_support": "cos(g*, d), d restricted to the candidate tokens",
}
PROXY_NAMES = {
    "kl_pq": "KL(p‖q)",
    "kl_qp": "KL(q‖p)",
    "js": "Jensen–Shannon",
    "tv": "total variation",
    "cos_pq": "cos(p, q)",
    "entropy_student": "student entropy",
    "entropy_teacher": "teacher entropy",
    "teacher_advantage": "teacher advantage (needs Q̂)",
}
_LOG_PROXIES = {"kl_pq", "kl_qp", "js"}
FONT = dict(
    family="system-ui, -apple-system, Segoe UI, Roboto, Helvetica, Arial, sans-serif",
    size=13,
    color="#1d232a",
)


def _layout(**kw) -> dict:
    base = dict(
        template="plotly_white",
        font=FONT,
        margin=dict(l=10, r=20, t=50, b=50),
        title=dict(font=dict(size=15), x=0, xanchor="left"),
    )
    base.update(kw)
    return base


def _div(fig: go.Figure, div_id: str) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id, config=PLOT_CONFIG)


def _f(x, d=3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.{d}f}"


def _ci(lo, hi, d=3) -> str:
    return (
        f"[{_f(lo, d)}, {_f(hi, d)}]"
        if lo is not None and hi is not None and not (isinstance(lo, float) and math.isnan(lo))
        else "[–]"
    )


def _err(df: pd.DataFrame, mean: str, lo: str, hi: str) -> dict:
    m, lo_, hi_ = (df[c].astype(float).to_numpy() for c in (mean, lo, hi))
    return dict(
        type="data",
        symmetric=False,
        array=np.nan_to_num(hi_ - m).tolist(),
        arrayminus=np.nan_to_num(m - lo_).tolist(),
        thickness=1.4,
        width=4,
    )


def _cell_text(z: np.ndarray) -> list[list[str]]:
    """Heatmap cell labels: the value to 2 decimals, blank where missing."""
    return [["" if np.isnan(v) else f"{v:.2f}" for v in row] for row in np.asarray(z, dtype=float)]


def _zero_line(fig: go.Figure) -> None:
    fig.add_vline(x=0, line=dict(color="#555", width=1, dash="dot"))


# ---------------------------------------------------------------- figures


def fig_ranking(s: pd.DataFrame, other: pd.DataFrame | None, metric: str) -> go.Figure:
    """Per-config mean alignment with 95% intervals, beside the other support and the rollout-level cosine."""
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=s["mean"],
            y=s["config"],
            mode="markers",
            name=f"alignment ({metric})",
            orientation="h",
            error_x=_err(s, "mean", "ci_low", "ci_high"),
            marker=dict(size=10, color="#2166ac"),
            customdata=np.stack([s["ci_low"], s["ci_high"], s["n_nodes"], s["rank"]], -1),
            hovertemplate="%{y}<br>rank %{customdata[3]}: mean %{x:.3f} "
            "[%{customdata[0]:.3f}, %{customdata[1]:.3f}]"
            "<br>%{customdata[2]} nodes<extra></extra>",
        )
    )
    if other is not None and len(other):
        o = other.set_index("config").loc[s["config"]].reset_index()
        fig.add_trace(
            go.Scatter(
                x=o["mean"],
                y=o["config"],
                mode="markers",
                name=f"alignment ({o['metric'].iloc[0]})",
                orientation="h",
                error_x=_err(o, "mean", "ci_low", "ci_high"),
                marker=dict(size=8, symbol="diamond-open", color="#7f7f7f"),
                hovertemplate="%{y}<br>" + o["metric"].iloc[0] + " %{x:.3f}<extra></extra>",
            )
        )
    if s["rollout_cos"].notna().any():
        fig.add_trace(
            go.Scatter(
                x=s["rollout_cos"],
                y=s["config"],
                mode="markers",
                name="rollout-level cosine (raw, per rollout)",
                orientation="h",
                error_x=_err(s, "rollout_cos", "rollout_cos_ci_low", "rollout_cos_ci_high"),
                marker=dict(size=9, symbol="square-open", color="#b2182b"),
                hovertemplate="%{y}<br>rollout-level cosine %{x:.3f} (raw, mean over rollouts, not token-weighted)"
                "<extra></extra>",
            )
        )
    _zero_line(fig)
    fig.update_layout(
        **_layout(
            title=dict(
                text="Ranking of configurations: alignment with 95% intervals (questions resampled)",
                font=dict(size=15),
                x=0,
                xanchor="left",
            ),
            height=130 + 30 * len(s),
            scattermode="group",
            scattergap=0.5,
            legend=dict(orientation="h", y=-0.12 - 3.0 / max(len(s), 3) * 0.1, x=0),
            xaxis=dict(title=dict(text="alignment (cosine with the ideal gradient g*)"), zeroline=False),
            yaxis=dict(autorange="reversed", automargin=True, title=None),
        )
    )
    return fig


def fig_splits(s: pd.DataFrame, splits, title: str, names=None, figure: str = "mean") -> go.Figure:
    """One marker per configuration and split: `figure` "mean" (noise-consistent alignment, columns mean_<split>,
    ci_low_<split>) or "mean_per_token" (the raw per-node cosine, mean_per_token_<split>, ...)."""
    fig = go.Figure()
    lo, hi = ("ci_low", "ci_high") if figure == "mean" else (f"{figure}_ci_low", f"{figure}_ci_high")
    for split in splits:
        label = (names or {}).get(split, split)
        fig.add_trace(
            go.Scatter(
                x=s[f"{figure}_{split}"],
                y=s["config"],
                mode="markers",
                name=label,
                orientation="h",
                error_x=_err(s, f"{figure}_{split}", f"{lo}_{split}", f"{hi}_{split}"),
                marker=dict(size=9, color=SPLIT_COLOURS[split]),
                customdata=s[f"n_{split}"],
                hovertemplate="%{y}<br>" + label + ": %{x:.3f} (%{customdata} nodes)<extra></extra>",
            )
        )
    _zero_line(fig)
    fig.update_layout(
        **_layout(
            title=dict(text=title, font=dict(size=15), x=0, xanchor="left"),
            height=150 + (18 + 11 * len(splits)) * len(s),
            scattermode="group",
            scattergap=0.25,
            legend=dict(orientation="h", y=1.0, yanchor="bottom", x=0),
            margin=dict(l=10, r=20, t=80, b=50),
            xaxis=dict(title=dict(text="alignment (95% interval)"), zeroline=False),
            yaxis=dict(autorange="reversed", automargin=True),
        )
    )
    return fig


def fig_pass_rates(rollouts: pd.DataFrame) -> go.Figure:
    q = rollouts.groupby("question_id").agg(pass_rate=("pass_rate", "first"), band=("difficulty", "first"))
    fig = go.Figure()
    for band in BANDS:
        sub = q[q["band"] == band]
        counts = sub["pass_rate"].round(3).value_counts().sort_index()
        fig.add_trace(
            go.Bar(
                x=counts.index,
                y=counts.values,
                name=f"{band} ({len(sub)} questions)",
                marker_color=SPLIT_COLOURS[band],
                width=0.03,
                hovertemplate="pass rate %{x:.2f}: %{y} questions<extra>" + band + "</extra>",
            )
        )
    fig.update_layout(
        **_layout(
            title=dict(
                text="Questions by pass rate (fraction of their rollouts that are correct)",
                font=dict(size=15),
                x=0,
                xanchor="left",
            ),
            height=340,
            barmode="stack",
            legend=dict(orientation="h", y=1.0, yanchor="bottom", x=0, traceorder="normal"),
            margin=dict(l=10, r=20, t=80, b=50),
            xaxis=dict(title=dict(text="question pass rate"), range=[-0.05, 1.05]),
            yaxis=dict(title=dict(text="questions"), rangemode="tozero"),
        )
    )
    return fig


def _position_bins(pos: np.ndarray, length: np.ndarray):
    rel = np.minimum((pos / np.maximum(length, 1) * 10).astype(int), 9)
    rel_labels = [f"{10 * i}–{10 * (i + 1)}%" for i in range(10)]
    geo = np.floor(np.log2(pos + 1)).astype(int)
    geo_labels = [f"{2**i - 1}–{2 ** (i + 1) - 2}" for i in range(int(geo.max()) + 1)] if len(geo) else []
    return rel, rel_labels, geo, geo_labels


def fig_position_heatmap(a: pd.DataFrame, configs: list[str], metric: str) -> go.Figure:
    """Configurations x token position: mean alignment per relative-position decile (or geometric window)."""
    rel, rel_labels, geo, geo_labels = _position_bins(a["position"].to_numpy(), a["n_tokens"].to_numpy())
    fig = go.Figure()
    ranges = []
    for i, (bins, labels) in enumerate(((rel, rel_labels), (geo, geo_labels))):
        frame = pd.DataFrame({"config": a["config"].to_numpy(), "bin": bins, "v": a[metric].to_numpy(float)})
        agg = frame.groupby(["config", "bin"])["v"].agg(["mean", "count"])
        z = agg["mean"].unstack("bin").reindex(index=configs, columns=range(len(labels)))
        n = agg["count"].unstack("bin").reindex(index=configs, columns=range(len(labels))).fillna(0)
        zmax = float(np.nanquantile(np.abs(z.to_numpy()), 0.98)) if np.isfinite(z.to_numpy()).any() else 1.0
        ranges.append(max(0.1, math.ceil(zmax * 10) / 10))
        fig.add_trace(
            go.Heatmap(
                z=z.to_numpy(),
                x=labels,
                y=configs,
                zmid=0,
                zmin=-ranges[-1],
                zmax=ranges[-1],
                colorscale=COLORSCALE,
                customdata=n.to_numpy(),
                xgap=1,
                ygap=1,
                visible=i == 0,
                text=_cell_text(z.to_numpy()),
                texttemplate="%{text}",
                textfont=dict(size=10),
                colorbar=dict(title=dict(text="mean cos", side="right"), thickness=12),
                hovertemplate="%{y}<br>position %{x}<br>mean %{z:.3f} over %{customdata} nodes"
                "<extra></extra>",
            )
        )
    titles = [
        "relative position in the response (deciles)",
        "token position (geometric windows, as nodes are drawn)",
    ]
    fig.update_layout(
        **_layout(
            title=dict(
                text="Mean per-node cosine by configuration and token position",
                font=dict(size=15),
                x=0,
                xanchor="left",
            ),
            height=170 + 28 * len(configs),
            plot_bgcolor="#d9d9d9",
            margin=dict(l=10, r=20, t=90, b=60),
            xaxis=dict(title=dict(text=titles[0]), showgrid=False),
            yaxis=dict(autorange="reversed", automargin=True),
            updatemenus=[
                dict(
                    type="buttons",
                    direction="right",
                    x=0,
                    y=1.0,
                    xanchor="left",
                    yanchor="bottom",
                    pad=dict(t=4, b=4),
                    showactive=True,
                    buttons=[
                        dict(
                            label="relative position",
                            method="update",
                            args=[{"visible": [True, False]}, {"xaxis.title.text": titles[0]}],
                        ),
                        dict(
                            label="absolute position",
                            method="update",
                            args=[{"visible": [False, True]}, {"xaxis.title.text": titles[1]}],
                        ),
                    ],
                )
            ],
        )
    )
    return fig


def fig_proxy_scatter(
    a: pd.DataFrame, configs: list[str], metric: str, pooled: dict, max_points=3000, seed=0
) -> go.Figure:
    """Alignment against each proxy (buttons switch the proxy), one colour per configuration."""
    if len(a) > max_points:
        a = a.sample(max_points, random_state=seed)
    proxies = [p for p in PROXIES + ("teacher_advantage",) if p in a]
    teachers = list(dict.fromkeys(c.split("|", 1)[0] for c in configs))
    objectives_ = list(dict.fromkeys(c.split("|", 1)[-1] for c in configs))
    palette = ["#4477AA", "#EE6677", "#228833", "#CCBB44", "#66CCEE", "#AA3377", "#BBBBBB", "#000000"]
    symbols = ["circle", "triangle-up", "square", "diamond", "x", "cross", "star", "hexagon"]
    fig = go.Figure()
    for config in configs:
        teacher, _, objective = config.partition("|")
        sub = a[a["config"] == config]
        fig.add_trace(
            go.Scatter(
                x=sub[proxies[0]],
                y=sub[metric],
                mode="markers",
                name=config,
                legendgroup=teacher,
                marker=dict(
                    size=6,
                    opacity=0.6,
                    color=palette[teachers.index(teacher) % len(palette)],
                    symbol=symbols[objectives_.index(objective) % len(symbols)],
                ),
                hovertemplate=config + "<br>proxy %{x:.3g}<br>alignment %{y:.3f}<extra></extra>",
            )
        )

    def title(p):
        rho = pooled.get(p)
        return f"Alignment vs {PROXY_NAMES.get(p, p)} (Spearman ρ pooled over configurations: {_f(rho, 2)})"

    buttons = [
        dict(
            label=PROXY_NAMES.get(p, p),
            method="update",
            args=[
                {"x": [a.loc[a["config"] == c, p].tolist() for c in configs]},
                {
                    "title.text": title(p),
                    "xaxis.title.text": PROXY_NAMES.get(p, p),
                    "xaxis.type": "log" if p in _LOG_PROXIES else "linear",
                },
            ],
        )
        for p in proxies
    ]
    fig.update_layout(
        **_layout(
            title=dict(text=title(proxies[0]), font=dict(size=15), x=0, xanchor="left"),
            height=560,
            margin=dict(l=10, r=20, t=110, b=50),
            xaxis=dict(
                title=dict(text=PROXY_NAMES.get(proxies[0], proxies[0])),
                type="log" if proxies[0] in _LOG_PROXIES else "linear",
            ),
            yaxis=dict(title=dict(text=f"alignment ({metric})"), range=[-1.05, 1.05]),
            legend=dict(font=dict(size=11)),
            updatemenus=[
                dict(
                    type="dropdown",
                    x=0,
                    y=1.0,
                    xanchor="left",
                    yanchor="bottom",
                    pad=dict(b=6),
                    buttons=buttons,
                    showactive=True,
                )
            ],
        )
    )
    return fig


def fig_rho(s: pd.DataFrame, pooled: dict) -> go.Figure:
    proxies = [p for p in PROXIES + ("teacher_advantage",) if f"rho_{p}" in s]
    z = s[[f"rho_{p}" for p in proxies]].to_numpy(float)
    rows = list(s["config"])
    z = np.vstack([z, [[pooled.get(p) if pooled.get(p) is not None else np.nan for p in proxies]]])
    rows.append("pooled (all configurations)")
    names = [PROXY_NAMES.get(p, p) for p in proxies]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=names,
            y=rows,
            zmid=0,
            zmin=-1,
            zmax=1,
            colorscale=COLORSCALE,
            xgap=1,
            ygap=1,
            text=_cell_text(z),
            texttemplate="%{text}",
            textfont=dict(size=10),
            colorbar=dict(title=dict(text="ρ", side="right"), thickness=12),
            hovertemplate="%{y}<br>%{x}: ρ = %{z:.3f}<extra></extra>",
        )
    )
    fig.update_layout(
        **_layout(
            title=dict(
                text="Spearman rank correlation of each proxy with alignment, per configuration",
                font=dict(size=15),
                x=0,
                xanchor="left",
            ),
            height=190 + 26 * len(rows),
            plot_bgcolor="#d9d9d9",
            margin=dict(l=10, r=20, t=50, b=90),
            xaxis=dict(tickangle=-30, showgrid=False),
            yaxis=dict(autorange="reversed", automargin=True),
        )
    )
    return fig


# ---------------------------------------------------------------- explorer data


def _num(x, d=4):
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) or math.isinf(x) else round(x, d)


def _pick_rollouts(rollouts: pd.DataFrame, max_rollouts: int) -> pd.DataFrame:
    """Up to max_rollouts rollouts, alternating correct and incorrect ones, in question order."""
    r = rollouts.sort_values(["question_id", "rollout_idx"])
    if len(r) <= max_rollouts:
        return r
    good, bad = r[r["correct"]], r[~r["correct"]]
    k_bad = min(len(bad), max_rollouts // 2)
    k_good = min(len(good), max_rollouts - k_bad)
    k_bad = min(len(bad), max_rollouts - k_good)
    pick = pd.concat(
        [
            good.iloc[np.linspace(0, len(good) - 1, k_good).astype(int)] if k_good else good.iloc[:0],
            bad.iloc[np.linspace(0, len(bad) - 1, k_bad).astype(int)] if k_bad else bad.iloc[:0],
        ]
    )
    return pick.sort_values(["question_id", "rollout_idx"])


def explorer_data(rollouts, nodes, candidates, alignment, configs, max_rollouts=60) -> list[dict[str, Any]]:
    """Per-rollout data for the explorer (tokens, nodes, candidates, per-config cosines), JSON-ready."""
    picked = _pick_rollouts(rollouts, max_rollouts)
    keys = set(zip(picked["question_id"], picked["rollout_idx"], strict=True))

    def subset(df):
        if df is None:
            return {}
        mask = [k in keys for k in zip(df["question_id"], df["rollout_idx"], strict=True)]
        return dict(
            tuple(df[np.asarray(mask, dtype=bool)].groupby(["question_id", "rollout_idx"], sort=False))
        )

    a_by, n_by, c_by = subset(alignment), subset(nodes), subset(candidates)
    cidx = {c: i for i, c in enumerate(configs)}
    out = []
    for r in picked.itertuples(index=False):
        key = (r.question_id, r.rollout_idx)
        a = a_by.get(key)
        nd = n_by.get(key)
        if nd is not None:
            nd = nd.sort_values("position")
            pos = nd["position"].astype(int).tolist()
            v = [_num(x) for x in nd["v_hat"]]
            deg = [bool(x) for x in nd["degenerate"]]
        else:
            pos = sorted(set(a["position"].astype(int))) if a is not None else []
            v = [None] * len(pos)
            deg = [bool(a[a["position"] == p]["degenerate"].all()) for p in pos]
        at = {p: i for i, p in enumerate(pos)}
        cand = [[] for _ in pos]
        qobs, sobs, nobs = [None] * len(pos), [0] * len(pos), [0] * len(pos)
        c = c_by.get(key)
        if c is not None:
            for row in c.sort_values(["position", "p"], ascending=[True, False]).itertuples(index=False):
                i = at.get(int(row.position))
                if i is None:
                    continue
                cand[i].append(
                    [
                        row.token,
                        _num(row.p),
                        _num(row.q_hat),
                        int(row.successes),
                        int(row.n),
                        bool(row.observed),
                        None if pd.isna(row.source) else str(row.source),
                    ]
                )
                if row.observed:
                    qobs[i], sobs[i], nobs[i] = _num(row.q_hat), int(row.successes), int(row.n)
        per_cfg = {}
        if a is not None:
            for config, g in a.groupby("config", sort=False):
                g = g.set_index("position").reindex(pos)
                per_cfg[str(cidx[config])] = {
                    k: [_num(x) for x in g[col]]
                    for k, col in (
                        ("f", "cos_full"),
                        ("fl", "cos_full_ci_low"),
                        ("fh", "cos_full_ci_high"),
                        ("s", "cos_support"),
                        ("sl", "cos_support_ci_low"),
                        ("sh", "cos_support_ci_high"),
                        ("q", "q_token"),
                        ("ta", "teacher_advantage"),
                    )
                }
        tokens = [str(t) for t in r.tokens]
        lp = [_num(x) for x in r.student_logprobs]
        out.append(
            dict(
                qid=str(r.question_id),
                idx=int(r.rollout_idx),
                correct=bool(r.correct),
                pass_rate=_num(r.pass_rate),
                band=str(r.difficulty),
                prompt=str(r.prompt),
                tokens=tokens,
                lp=lp,
                node_at={str(p): i for p, i in at.items()},
                nodes=dict(pos=pos, v=v, deg=deg, cand=cand, qobs=qobs, sobs=sobs, nobs=nobs),
                cfg=per_cfg,
            )
        )
    return out


def _json_script(obj) -> str:
    text = json.dumps(obj, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


# ---------------------------------------------------------------- page sections


def _silence(rec: dict) -> str:
    if not rec.get("no_signal"):
        return ""
    items = "; ".join(f"<code>{html.escape(x.split(': ')[0])}</code>: {html.escape(x.split(': ', 1)[1])}"
                      for x in rec["no_signal"])
    return (
        "<p class='warn'><b>No signal</b> (the teacher differs from the student by no more than rounding of the "
        f"logits; never ranked or recommended): {items}.</p>"
    )


def _bottom_line(summary: Summary, metric: str, other: str | None) -> str:
    rec = summary.recommendation.get(metric, {})
    overall = rec.get("overall")
    if not overall:
        return _silence(rec) + (
            "<p>No configuration has a defined alignment: every node is degenerate, the noise of Q̂ leaves "
            "no signal, or the nodes table (|g*|² and node weights) is missing.</p>"
        )
    e = html.escape
    lines = [
        f"<div class='rec'>{'Recommended' if overall.get('clear') else 'Highest'} configuration: "
        f"<code>{e(overall['config'])}</code> — alignment "
        f"<b>{_f(overall['mean'])}</b> {_ci(overall['ci_low'], overall['ci_high'])} over "
        f"{overall['n_nodes']} live nodes of {overall.get('n_questions', '?')} questions.</div>"
    ]
    if overall.get("runner_up"):
        verdict = (
            "<span class='ok'>clearly ahead</span>"
            if overall.get("clear")
            else "<span class='warn'>no clear winner: the evidence does not separate it from the runner-up "
            + (
                f"({e(overall['note'])})"
                if overall.get("note")
                else "(the interval of the margin includes 0)"
            )
            + "</span>"
        )
        lines.append(
            f"<p>Versus the runner-up <code>{e(overall['runner_up'])}</code>: margin "
            f"{_f(overall['margin'])} {_ci(overall['margin_ci_low'], overall['margin_ci_high'])} "
            f"(paired, resampling {overall['margin_n']} questions and their rollouts): {verdict}.</p>"
        )
    if rec.get("no_signal"):
        lines.append(_silence(rec))
    rows = []
    for band in BANDS:
        b = rec.get("bands", {}).get(band)
        if not b:
            rows.append(f"<tr><td>{band}</td><td colspan=4 class='muted'>no questions in this band</td></tr>")
            continue
        margin = (
            (
                f"{_f(b.get('margin'))} {_ci(b.get('margin_ci_low'), b.get('margin_ci_high'))} over "
                f"<code>{e(b['runner_up'])}</code>"
            )
            if b.get("runner_up")
            else "–"
        )
        rows.append(
            f"<tr><td>{band}</td><td><code>{e(b['config'])}</code></td><td class='num'>{_f(b['mean'])} "
            f"{_ci(b['ci_low'], b['ci_high'])}</td><td class='num'>{b['n_nodes']}</td><td>{margin}</td></tr>"
        )
    lines.append(
        "<table class='t'><tr><th>question difficulty</th><th>best configuration</th>"
        "<th>alignment [95%]</th><th>nodes</th><th>margin over runner-up [95%]</th></tr>"
        + "".join(rows)
        + "</table>"
    )
    hr = summary.headroom.get(metric)
    if hr:
        lines.append(
            "<p><b>Headroom.</b> Choosing the configuration separately at every token would reach an "
            f"alignment of {_f(hr['oracle_mean'])} {_ci(hr['oracle_ci_low'], hr['oracle_ci_high'])} against "
            f"{_f(hr['best_mean'])} for <code>{e(hr['best_config'])}</code> alone: headroom "
            f"<b>{_f(hr['headroom'])}</b> {_ci(hr['headroom_ci_low'], hr['headroom_ci_high'])} over "
            f"{hr['n_nodes']} nodes where every ranked configuration has a direction. "
            + (
                "<span class='muted'>Cross-fitted: each token's choice is made on one half of its "
                "continuations and scored on the other, so the maximum over noisy estimates does not inflate "
                "it; it is what a choice made on half the evidence gains.</span>"
                if hr.get("cross_fitted")
                else "<span class='muted'>In-sample per-token maximum (this run stored no continuation "
                "halves): optimistic under noise, so no interval is given.</span>"
            )
            + (
                " Configurations most often best per token: "
                + ", ".join(
                    f"<code>{e(k)}</code> {100 * v:.0f}%"
                    for k, v in sorted(hr["winner_share"].items(), key=lambda kv: -kv[1])
                )
                + "."
                if hr.get("winner_share")
                else ""
            )
            + "</p>"
        )
    if other and summary.recommendation.get(other, {}).get("overall"):
        o = summary.recommendation[other]["overall"]
        lines.append(
            f"<p class='muted'>On the other support ({other}) the best is <code>{e(o['config'])}</code>: "
            f"{_f(o['mean'])} {_ci(o['ci_low'], o['ci_high'])}.</p>"
        )
    return "\n".join(lines)


_LEGEND = """
<div class="legend-box"><b>What alignment means.</b> At every selected token (a <i>node</i>) of a student
rollout,
two updates of the student's logits are compared. The <b>ideal</b> update g* = p ⊙ (Q − V) is the one
that most
raises the chance of a correct final answer; Q̂<sub>k</sub> (the success rate after forcing token k) and
V̂ are
estimated from targeted continuations. The <b>distillation</b> update d = −∂L/∂z is what the objective L
(teacher × objective = one configuration) does to the logits. <b>Alignment = cos(g*, d)</b>: +1 means a small
distillation step moves the student exactly toward success, 0 unrelated, −1 toward failure. Colours: <span
style="color:#b2182b;font-weight:600">red = harmful</span>, white = 0, <span
style="color:#2166ac;font-weight:600">blue
= helpful</span>. <i>cos_full</i> takes d over the whole vocabulary, <i>cos_support</i> only over the
candidate
tokens where Q was estimated. <b>What each figure estimates.</b> A configuration's <i>alignment</i> (ranking,
splits, bottom line) is the cosine between the ideal gradient over all tokens of the group and its per-token
directions scaled to unit length, with every node weighted by the tokens it stands for and |g*|² corrected
for the noise of Q̂, so it neither favours early tokens nor shrinks where |g*| is small; its 95% interval
resamples {unit}. Per-token cosines carry their own interval (over continuations);
degenerate nodes (all Q̂ equal, so g* = 0) have no cosine.</div>
"""


_COST_LABELS = {  # cost.json key -> label, in the order shown (other keys follow, named after themselves)
    "elapsed_s": "wall time",
    "engine_s": "engine time",  # one card per stage: "engine time: <stage>"
    "question_seconds_sum": "question time, summed",
    "wall_time_s": "question time, summed",  # older runs: this was the per-question sum, never wall time
    "invocations": "invocations",
    "rollouts": "student rollouts",
    "rollouts_cached": "rollouts from cache",
    "generated_tokens": "rollout tokens",
    "continuations": "continuations",
    "continuations_generated": "continuations generated",
    "continuations_cached": "continuations from cache",
    "continuation_tokens": "continuation tokens",
    "continuation_tokens_generated": "continuation tokens generated",
    "teacher_tokens": "teacher-scored tokens",
    "questions": "questions in the run",
    "device": "device",
}
_STAGE_ORDER = ("rollouts", "scoring", "continuations", "param_space")  # the pipeline's order
_STAGE_LABELS = {"param_space": "param-space gradients"}
_SECONDS = {"elapsed_s", "question_seconds_sum", "wall_time_s"}


def _duration(seconds: float) -> str:
    """A span of time: one decimal under a minute, else H:MM:SS."""
    seconds = float(seconds)
    return f"{seconds:.1f} s" if seconds < 60 else str(_dt.timedelta(seconds=round(seconds)))


def _cost_note(cost: dict) -> str:
    if not cost:
        return "<p class='muted'>No cost.json in the run directory: only table sizes are shown.</p>"
    parts = []
    if "elapsed_s" in cost:
        parts.append(
            "<b>Wall time</b>: clock time of the <code>diagnose run</code> invocations that worked on this run, "
            "from start (model loading included) to cost.json; resumes add up, the gaps between them do not, and "
            "<code>--shard</code> processes running side by side count once."
        )
    if isinstance(cost.get("engine_s"), dict):
        parts.append(
            "<b>Engine time</b>: busy seconds inside engine calls, per stage. Questions in flight share calls "
            "(each gets its share); Ray workers or shards run calls side by side, so these can add up to more "
            "than the wall time."
        )
    if "question_seconds_sum" in cost or "wall_time_s" in cost:
        parts.append(
            "<b>Question time, summed</b>: each question's time from start to result, added up; questions in "
            "flight overlap, so it can exceed the wall time."
            + (" This run predates wall-time recording: its elapsed time is unknown."
               if "elapsed_s" not in cost and "wall_time_s" in cost else "")
        )
    if "continuations_cached" in cost:
        parts.append(
            "<b>Continuations</b> = generated by the engine + read from the cache (written by an interrupted "
            "earlier invocation, a run sharing the cache folder, or an identical prefix earlier in the question)."
        )
    return "<p class='muted'>" + " ".join(parts) + "</p>" if parts else ""


def _cost_section(run_dir: Path, tables: dict, meta: dict) -> str:
    cost = {}
    path = run_dir / "cost.json"
    if path.is_file():
        try:
            cost = json.loads(path.read_text())
        except ValueError:
            cost = {}
    cost = cost or meta.get("cost", {}) or {}
    if not isinstance(cost, dict):
        cost = {}

    def card(shown: str, label: str) -> str:
        return f"<div class='card'><div class='v'>{shown}</div><div class='k'>{html.escape(label)}</div></div>"

    cards = []
    order = [k for k in _COST_LABELS if k in cost] + [k for k in cost if k not in _COST_LABELS]
    for key in order:
        value = cost[key]
        if key == "nodes":  # shown below, from the nodes table
            continue
        if key == "engine_s" and isinstance(value, dict):
            stages = sorted(value, key=lambda k: (_STAGE_ORDER.index(k) if k in _STAGE_ORDER else 99, k))
            for stage, seconds in ((k, value[k]) for k in stages):
                if isinstance(seconds, (int, float)):
                    name = _STAGE_LABELS.get(stage, stage.replace("_", " "))
                    cards.append(card(_duration(seconds), f"engine time: {name}"))
            continue
        if key in _SECONDS and isinstance(value, (int, float)):
            shown = _duration(value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            shown = f"{value:,.0f}" if float(value).is_integer() else f"{value:,.2f}"
        else:
            shown = html.escape(str(value))
        cards.append(card(shown, _COST_LABELS.get(key, key.replace("_", " "))))
    a, n = tables["alignment"], tables.get("nodes")
    derived = {
        "questions": tables["rollouts"]["question_id"].nunique(),
        "nodes": len(n) if n is not None else a.groupby(["question_id", "rollout_idx", "position"]).ngroups,
        "configurations": a["config"].nunique(),
        "node × configuration scores": len(a),
    }
    for key, value in derived.items():
        cards.append(f"<div class='card'><div class='v'>{value:,}</div><div class='k'>{key}</div></div>")
    return "<div class='cards'>" + "".join(cards) + "</div>" + _cost_note(cost)


def _questions_table(rollouts: pd.DataFrame, a: pd.DataFrame, config: str, metric: str, limit=200) -> str:
    ok = a[(a["config"] == config) & ~a["degenerate"]]
    mean = ok.groupby("question_id")[metric].mean()
    q = rollouts.groupby("question_id").agg(
        pass_rate=("pass_rate", "first"),
        band=("difficulty", "first"),
        rollouts=("correct", "size"),
        correct=("correct", "sum"),
        prompt=("prompt", "first"),
    )
    q["mean"] = mean
    q = q.sort_values(["pass_rate", "mean"])
    rows = []
    for qid, r in q.head(limit).iterrows():
        prompt = html.escape(str(r["prompt"]), quote=True)
        rows.append(
            f"<tr><td title='{prompt}'>{html.escape(str(qid))}</td><td class='num'>{r['pass_rate']:.2f}</td>"
            f"<td>{r['band']}</td><td class='num'>{int(r['correct'])}/{int(r['rollouts'])}</td>"
            f"<td class='num'>{_f(r['mean'])}</td></tr>"
        )
    more = f"<p class='muted'>First {limit} of {len(q)} questions.</p>" if len(q) > limit else ""
    return (
        f"<p class='muted'>Mean alignment under <code>{html.escape(config)}</code>; hover a question id "
        "for its "
        "prompt.</p><table class='t'><tr><th>question</th><th>pass rate</th><th>band</th><th>correct</th>"
        "<th>mean alignment</th></tr>" + "".join(rows) + "</table>" + more
    )


def _flat(value, prefix="") -> str:
    """Nested metadata as 'a.b = value' lines (HTML-escaped)."""
    if isinstance(value, dict):
        return "<br>".join(_flat(v, f"{prefix}{k}.") for k, v in sorted(value.items())) or html.escape(
            prefix[:-1]
        )
    text = value if isinstance(value, str) else json.dumps(value)
    return (
        f"<span class='muted'>{html.escape(prefix[:-1])}</span> = {html.escape(text)}"
        if prefix
        else html.escape(text)
    )


def _meta_section(meta: dict, run_dir: Path) -> str:
    e = html.escape
    rows = []
    for key in ("models", "seeds", "versions", "config_hash"):
        if key in meta and meta[key] not in (None, {}, []):
            rows.append(f"<tr><th>{key}</th><td class='wrap'>{_flat(meta[key])}</td></tr>")
    settings = meta.get("summary", {}).get("settings")
    if settings:
        rows.append(f"<tr><th>summary settings</th><td class='wrap'>{_flat(settings)}</td></tr>")
    cfg = run_dir / "config.toml"
    cfg_html = (
        (
            f"<details><summary>config.toml (the resolved configuration; rerun with it)</summary>"
            f"<pre class='cfg'>{e(cfg.read_text())}</pre></details>"
        )
        if cfg.is_file()
        else ""
    )
    return "<table class='t'>" + "".join(rows) + "</table>" + cfg_html


# ---------------------------------------------------------------- the page


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


def _header(run_dir: Path, meta: dict, configs: list[str], metric: str) -> str:
    """The page header: run, student, sampling and teacher temperature, number of configurations, metric, when
    generated."""
    e = html.escape
    models = meta.get("models", {})
    student = models.get("student", "?") if isinstance(models, dict) else "?"
    title = "diagnose · on-policy distillation alignment report"
    now = _dt.datetime.now(_dt.timezone.utc)
    temps = ""
    if "temperature" in meta:  # runs before the teacher was scored at the sampling temperature lack the second
        temps = f" · temperature {e(str(meta['temperature']))}"
        if "teacher_temperature" in meta:
            temps += f" (teacher scored at {e(str(meta['teacher_temperature']))})"
    return f"""<header class="top"><div class="inner"><h1>{title}</h1>
<div class="sub">run <b>{e(run_dir.resolve().name)}</b> · student {e(str(student))}{temps} ·
{len(configs)} configurations · metric {e(metric)} ({e(METRIC_NAMES[metric])}) ·
generated {now:%Y-%m-%d %H:%M} UTC</div>
</div></header>"""


def _section_bottom_line(summary: Summary, metric: str, other: str | None, unit: str) -> str:
    """Bottom line: the recommendation overall and per difficulty band, headroom, and what alignment means."""
    return f"""<section class="bottomline" id="bottom-line"><h2>Bottom line</h2>
{_bottom_line(summary, metric, other)}
{_LEGEND.replace("{unit}", unit)}
</section>"""


def _section_cost(run_dir: Path, tables: dict, meta: dict) -> str:
    """Cost of this run: rollouts, tokens and time spent, and the size of what was scored."""
    return f"""<section id="cost"><h2>Cost of this run</h2>
<p class="caption">Time, rollouts, continuations and tokens spent (from cost.json), and the size of what was scored.</p>
{_cost_section(run_dir, tables, meta)}
</section>"""


def _section_ranking(s: pd.DataFrame, s_other: pd.DataFrame | None, metric: str, unit: str) -> str:
    """Ranking of configurations with their intervals (and the other support, and the rollout cosine)."""
    return f"""<section id="ranking"><h2>Ranking of configurations</h2>
<p class="caption">Alignment of each configuration (teacher | objective; pooled over all tokens, token-weighted,
noise-corrected), best first, with 95% bootstrap
intervals over {unit}. Grey diamonds: the same on the other support; red squares: the rollout-level cosine (g* and d
concatenated over all nodes of a rollout, averaged over rollouts).</p>
{_div(fig_ranking(s, s_other, metric), "fig-ranking")}
</section>"""


def _section_correctness(s: pd.DataFrame) -> str:
    """Alignment on correct versus incorrect rollouts."""
    fig = fig_splits(
        s,
        ("correct", "incorrect"),
        "Alignment on correct and on incorrect rollouts",
        {"correct": "correct rollouts", "incorrect": "incorrect rollouts"},
    )
    raw = ""
    if "mean_per_token_correct" in s:  # summaries written before the raw split was stored lack it
        fig_raw = fig_splits(
            s,
            ("correct", "incorrect"),
            "Paper-style: mean raw per-node cosine on correct and on incorrect rollouts",
            {"correct": "correct rollouts (raw)", "incorrect": "incorrect rollouts (raw)"},
            figure="mean_per_token",
        )
        raw = f"""<p class="caption">Below, the paper-style figure: the token-weighted mean of the raw per-node
cosines. Noise pulls each raw cosine toward 0, more where |g*| is small, as on correct rollouts, so a gap here
that the noise-consistent figure above does not show is an artefact of noise, not a difference in
alignment.</p>
{_div(fig_raw, "fig-correctness-raw")}"""
    return f"""<section id="correctness"><h2>Correct versus incorrect rollouts</h2>
<p class="caption">Does the signal help on the rollouts that failed (where help is needed) as much as on
those that
succeeded? On correct rollouts Q̂ ≈ 1 at most tokens, so g* is small and noisy there; the alignment shown first
is noise-consistent, so that alone does not make the two groups differ.</p>
{_div(fig, "fig-correctness")}
{raw}
</section>"""


def _section_difficulty(
    s: pd.DataFrame, rollouts: pd.DataFrame, alignment: pd.DataFrame, best: str, metric: str
) -> str:
    """Questions by difficulty: pass rates, the questions table, alignment per difficulty band."""
    questions = _questions_table(rollouts, alignment, best, metric)
    return f"""<section id="difficulty"><h2>Questions by difficulty</h2>
<p class="caption">A question's pass rate is the fraction of its student rollouts that are correct;
bands: hard
(&lt; 1/3), medium, easy (&gt; 2/3).</p>
<div class="grid2"><div>{_div(fig_pass_rates(rollouts), "fig-passrate")}
<details class="qtable"><summary>Questions, hardest first (click to open)</summary>{questions}</details></div>
<div>{_div(fig_splits(s, BANDS, "Alignment by question difficulty"), "fig-bands")}</div></div>
</section>"""


def _section_positions(valid: pd.DataFrame, configs: list[str], metric: str) -> str:
    """The configurations x token positions heatmap."""
    return f"""<section id="positions"><h2>Configurations × token positions</h2>
<p class="caption">Mean alignment of each configuration by where the token lies in the response (buttons:
relative
position, or absolute position in geometric windows). Diverging scale centred at 0; grey cells have no
nodes.</p>
{_div(fig_position_heatmap(valid, configs, metric), "heatmap-positions")}
</section>"""


def _section_explorer(data: dict, configs: list[str], n_roll: int) -> str:
    """The rollout explorer: menus, colour bar and the placeholders the page's script fills."""
    e = html.escape
    options_r = "".join(
        f"<option value='{i}'>{e(r['qid'])} #{r['idx']} · "
        f"{'correct' if r['correct'] else 'incorrect'} · pass "
        f"{_f(r['pass_rate'], 2)} ({e(r['band'])}) · {len(r['tokens'])} tokens</option>"
        for i, r in enumerate(data["rollouts"])
    )
    options_c = "".join(
        f"<option value='{i}'{' selected' if i == data['default_config'] else ''}>{i + 1}. {e(c)}</option>"
        for i, c in enumerate(configs)
    )
    shown = (
        f"Showing {len(data['rollouts'])} of {n_roll} rollouts (alternating correct and incorrect)."
        if len(data["rollouts"]) < n_roll
        else f"All {n_roll} rollouts."
    )
    return f"""<section id="explorer"><h2>Rollout explorer</h2>
<p class="caption">Each token of the response is coloured by the chosen configuration's alignment at that
node (nodes
only: tokens without targeted continuations stay uncoloured; hatched = degenerate). Hover a token for p,
q, Q̂, V̂ and
the cosine with its interval; click it for its candidate tokens; click a row of the heatmap to switch
configuration.
{e(shown)}</p>
<div class="controls"><label>Rollout <select id="sel-rollout">{options_r}</select></label>
<label>Configuration <select id="sel-config">{options_c}</select></label>
<span>Support: <label><input type="radio" name="metric" value="full" checked> full vocabulary</label>
<label><input type="radio" name="metric" value="support"> candidates</label></span></div>
<div class="colorbar"><span>−1 (pushes toward failure)</span><div class="bar" id="text-colorbar"></div>
<span>+1 (toward success)</span></div>
<div id="rollout-info" class="muted"></div>
<div id="prompt" class="prompt"></div>
<div id="rollout-text" class="rollout-text"></div>
<div id="candidates" style="margin:10px 0"></div>
<div id="heatmap-rollout"></div>
</section>"""


def _section_proxies(s: pd.DataFrame, valid: pd.DataFrame, configs: list[str], metric: str, summary: Summary) -> str:
    """Cheap proxies versus alignment: the scatter and the rank correlations."""
    pooled = summary.proxy_pooled.get(metric, {})
    return f"""<section id="proxies"><h2>Cheap proxies versus alignment</h2>
<p class="caption">Can a cheap teacher–student discrepancy (no rollouts needed) predict alignment? Top:
alignment
against the chosen proxy (menu) at every node (a sample of at most 3000), colour = teacher, symbol =
objective (click
legend entries to hide them). Below: Spearman rank correlations; |ρ| near 0 means the proxy does not rank
nodes by
alignment. The teacher advantage is shown for reference: it is not cheap (it needs Q̂).</p>
{_div(fig_proxy_scatter(valid, configs, metric, pooled), "fig-proxy-scatter")}
{_div(fig_rho(s, pooled), "fig-rho")}
</section>"""


def _section_metadata(meta: dict, run_dir: Path) -> str:
    """Run metadata: models, seeds, versions, summary settings and the resolved config.toml."""
    return f"""<section id="metadata"><h2>Run metadata</h2>{_meta_section(meta, run_dir)}</section>"""


def _page(run_dir: Path, body: str, data: dict) -> str:
    """The whole document: head with the inlined CSS and plotly.js, the body, the explorer's data, the script."""
    return (
        f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>diagnose report · {html.escape(run_dir.resolve().name)}</title><style>{CSS}</style>"
        f"<script type='text/javascript'>{get_plotlyjs()}</script></head><body>{body}"
        f"<script type='application/json' id='diagnose-data'>{_json_script(data)}</script>"
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
        summary = read_summary(run_dir) if has_table(run_dir, "summary") else summarize_run(run_dir)
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
        _section_bottom_line(summary, metric, other, unit),
        _section_cost(run_dir, tables, meta),
        _section_ranking(s, s_other, metric, unit),
        _section_correctness(s),
        _section_difficulty(s, rollouts, alignment, best, metric),
        _section_positions(valid, configs, metric),
        _section_explorer(data, configs, len(rollouts)),
        _section_proxies(s, valid, configs, metric, summary),
        section_validation(run_dir, _div),
        _section_metadata(meta, run_dir),
    ]
    parts = [_header(run_dir, meta, configs, metric), "<main>", *sections, "</main>", '<div id="tooltip"></div>']
    body = "\n" + "\n".join(parts) + "\n"
    out = Path(out) if out is not None else run_dir / "report.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(out, _page(run_dir, body, data), encoding="utf-8")
    return out
