"""The report's look and small formatting helpers shared by its figures and sections."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import diverging

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
LOG_PROXIES = {"kl_pq", "kl_qp", "js"}
FONT = dict(
    family="system-ui, -apple-system, Segoe UI, Roboto, Helvetica, Arial, sans-serif",
    size=13,
    color="#1d232a",
)


def base_layout(**kw) -> dict:
    base = dict(
        template="plotly_white",
        font=FONT,
        margin=dict(l=10, r=20, t=50, b=50),
        title=dict(font=dict(size=15), x=0, xanchor="left"),
    )
    base.update(kw)
    return base


def plot_div(fig: go.Figure, div_id: str) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id, config=PLOT_CONFIG)


def fmt(x, d=3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.{d}f}"


def fmt_ci(lo, hi, d=3) -> str:
    return (
        f"[{fmt(lo, d)}, {fmt(hi, d)}]"
        if lo is not None and hi is not None and not (isinstance(lo, float) and math.isnan(lo))
        else "[–]"
    )


def error_bars(df: pd.DataFrame, mean: str, lo: str, hi: str) -> dict:
    m, lo_, hi_ = (df[c].astype(float).to_numpy() for c in (mean, lo, hi))
    return dict(
        type="data",
        symmetric=False,
        array=np.nan_to_num(hi_ - m).tolist(),
        arrayminus=np.nan_to_num(m - lo_).tolist(),
        thickness=1.4,
        width=4,
    )


def cell_text(z: np.ndarray) -> list[list[str]]:
    """Heatmap cell labels: the value to 2 decimals, blank where missing."""
    return [["" if np.isnan(v) else f"{v:.2f}" for v in row] for row in np.asarray(z, dtype=float)]


def zero_line(fig: go.Figure) -> None:
    fig.add_vline(x=0, line=dict(color="#555", width=1, dash="dot"))


# ---------------------------------------------------------------- figures


def to_num(x, d=4):
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) or math.isinf(x) else round(x, d)


def json_script(obj) -> str:
    text = json.dumps(obj, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


# ---------------------------------------------------------------- page sections
