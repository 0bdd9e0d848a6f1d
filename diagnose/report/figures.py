"""The report's plotly figures: ranking, splits, pass rates, the position heatmap, proxies and their rank
correlations. Each takes the summary rows or tables it draws and returns a go.Figure."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from ..tables import BANDS, PROXIES
from .style import (
    COLORSCALE,
    LOG_PROXIES,
    PROXY_NAMES,
    SPLIT_COLOURS,
    base_layout,
    cell_text,
    error_bars,
    fmt,
    zero_line,
)


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
            error_x=error_bars(s, "mean", "ci_low", "ci_high"),
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
                error_x=error_bars(o, "mean", "ci_low", "ci_high"),
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
                error_x=error_bars(s, "rollout_cos", "rollout_cos_ci_low", "rollout_cos_ci_high"),
                marker=dict(size=9, symbol="square-open", color="#b2182b"),
                hovertemplate="%{y}<br>rollout-level cosine %{x:.3f} (raw, mean over rollouts, not token-weighted)"
                "<extra></extra>",
            )
        )
    zero_line(fig)
    fig.update_layout(
        **base_layout(
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
                error_x=error_bars(s, f"{figure}_{split}", f"{lo}_{split}", f"{hi}_{split}"),
                marker=dict(size=9, color=SPLIT_COLOURS[split]),
                customdata=s[f"n_{split}"],
                hovertemplate="%{y}<br>" + label + ": %{x:.3f} (%{customdata} nodes)<extra></extra>",
            )
        )
    zero_line(fig)
    fig.update_layout(
        **base_layout(
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
        **base_layout(
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
                text=cell_text(z.to_numpy()),
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
        **base_layout(
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
        return f"Alignment vs {PROXY_NAMES.get(p, p)} (Spearman ρ pooled over configurations: {fmt(rho, 2)})"

    buttons = [
        dict(
            label=PROXY_NAMES.get(p, p),
            method="update",
            args=[
                {"x": [a.loc[a["config"] == c, p].tolist() for c in configs]},
                {
                    "title.text": title(p),
                    "xaxis.title.text": PROXY_NAMES.get(p, p),
                    "xaxis.type": "log" if p in LOG_PROXIES else "linear",
                },
            ],
        )
        for p in proxies
    ]
    fig.update_layout(
        **base_layout(
            title=dict(text=title(proxies[0]), font=dict(size=15), x=0, xanchor="left"),
            height=560,
            margin=dict(l=10, r=20, t=110, b=50),
            xaxis=dict(
                title=dict(text=PROXY_NAMES.get(proxies[0], proxies[0])),
                type="log" if proxies[0] in LOG_PROXIES else "linear",
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
            text=cell_text(z),
            texttemplate="%{text}",
            textfont=dict(size=10),
            colorbar=dict(title=dict(text="ρ", side="right"), thickness=12),
            hovertemplate="%{y}<br>%{x}: ρ = %{z:.3f}<extra></extra>",
        )
    )
    fig.update_layout(
        **base_layout(
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
