"""The `summary` table: per configuration, mean alignment with bootstrap intervals, overall and split by
rollout correctness and question difficulty, rollout-level cosine, effective node count, proxy rank
correlations; plus the run-level recommendation (best configuration overall and per band) and the headroom
of picking the best configuration per token.

Degenerate nodes (cosine undefined) are left out of every mean. Intervals are percentile bootstrap intervals,
resampling nodes (default) or whole rollouts (`cluster="rollout"`, wider: nodes of a rollout share its fate).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..alignment import safe_cosine
from ..errors import DiagnoseError
from .tables import BANDS, METRICS, PROXIES, has_table, read_metadata, read_table, write_table

NODE_KEY = ["question_id", "rollout_idx", "position"]
ROLLOUT_KEY = ["question_id", "rollout_idx"]
SPLITS = ("correct", "incorrect") + BANDS
_MAX_CELLS = 20_000_000  # bootstrap index matrix cells per chunk (bounds memory)
EXACT_LIMIT = 20_000  # above this many resampling units, a normal interval replaces resampling


@dataclass
class Summary:
    """The summary table plus run-level conclusions (stored as the summary table's metadata)."""

    table: pd.DataFrame
    recommendation: dict[str, Any] = field(
        default_factory=dict
    )  # metric -> {"overall": {...}, "bands": {...}}
    headroom: dict[str, Any] = field(default_factory=dict)  # metric -> {...}
    proxy_pooled: dict[str, Any] = field(default_factory=dict)  # metric -> {proxy: rho}
    settings: dict[str, Any] = field(default_factory=dict)

    def to_metadata(self) -> dict[str, Any]:
        return {
            "recommendation": self.recommendation,
            "headroom": self.headroom,
            "proxy_pooled": self.proxy_pooled,
            "settings": self.settings,
        }

    @classmethod
    def from_metadata(cls, table: pd.DataFrame, meta: dict[str, Any]) -> Summary:
        s = meta.get("summary", {})
        return cls(
            table=table,
            recommendation=s.get("recommendation", {}),
            headroom=s.get("headroom", {}),
            proxy_pooled=s.get("proxy_pooled", {}),
            settings=s.get("settings", {}),
        )


# ---------------------------------------------------------------- statistics


def spearman(x, y) -> float:
    """Spearman rank correlation (average ranks for ties, then Pearson); NaN if n < 3 or constant."""
    return float(rank_correlations(pd.DataFrame({"x": np.asarray(x, dtype=float)}), y)["x"])


def rank_correlations(proxies: pd.DataFrame, y) -> pd.Series:
    """Spearman rho of every column of `proxies` with `y` (pandas ranks, then Pearson; y is ranked once).

    Rows with a missing value are dropped pairwise; NaN where fewer than 3 pairs remain or a side is constant.
    """
    y = pd.Series(np.asarray(y, dtype=float), index=proxies.index)
    out = {}
    ry_all = y.rank()
    for name in proxies.columns:
        x = pd.Series(np.asarray(proxies[name], dtype=float), index=proxies.index)
        ok = x.notna() & y.notna()
        if ok.sum() < 3:
            out[name] = float("nan")
            continue
        rx = x[ok].rank().to_numpy()
        ry = ry_all[ok].to_numpy() if ok.all() else y[ok].rank().to_numpy()
        rx, ry = rx - rx.mean(), ry - ry.mean()
        denom = np.sqrt((rx * rx).sum() * (ry * ry).sum())
        out[name] = float((rx * ry).sum() / denom) if denom > 0 else float("nan")
    return pd.Series(out, dtype=float)


def bootstrap_mean(
    values,
    rng: np.random.Generator,
    n_boot: int = 1000,
    level: float = 0.95,
    clusters=None,
    exact_limit: int = EXACT_LIMIT,
):
    """(mean, ci_low, ci_high) of `values` by percentile bootstrap; resamples whole clusters if given.

    Above `exact_limit` resampling units the bootstrap distribution of a mean is normal to within
    O(1/sqrt(n)), so the interval is mean +- z * sd / sqrt(n) (ratio estimator's delta method for clusters)
    instead of resampling. Returns nan for no values, and a nan interval for fewer than 2 units.
    """
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(v.mean())
    if clusters is not None:
        codes, _ = pd.factorize(np.asarray(clusters))
        sums = np.bincount(codes, weights=v)
        counts = np.bincount(codes).astype(float)
    else:
        sums, counts = v, None
    m = sums.size
    if m < 2 or n_boot <= 0:
        return mean, float("nan"), float("nan")
    alpha = (1 - level) / 2
    if m > exact_limit:
        if counts is None:
            se = v.std(ddof=1) / np.sqrt(m)
        else:  # ratio estimator sum/count over clusters
            resid = sums - mean * counts
            se = np.sqrt((resid**2).sum() * m / (m - 1)) / counts.sum()
        z = NormalDist().inv_cdf(1 - alpha)
        return mean, mean - z * float(se), mean + z * float(se)
    stats = np.empty(n_boot)
    chunk = max(1, _MAX_CELLS // m)
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        idx = rng.integers(0, m, size=(b, m), dtype=np.int32 if m < 2**31 else np.int64)
        if counts is None:
            stats[start : start + b] = sums[idx].mean(1)
        else:
            stats[start : start + b] = sums[idx].sum(1) / counts[idx].sum(1)
    lo, hi = np.quantile(stats, [alpha, 1 - alpha])
    return mean, float(lo), float(hi)


# ---------------------------------------------------------------- the summary


def _prepare(alignment: pd.DataFrame, rollouts: pd.DataFrame, nodes: pd.DataFrame | None) -> pd.DataFrame:
    need = {"correct", "pass_rate", "difficulty"}
    if not need <= set(rollouts.columns):
        raise DiagnoseError(f"rollouts table lacks {', '.join(sorted(need - set(rollouts.columns)))}")
    df = alignment.merge(
        rollouts[ROLLOUT_KEY + sorted(need)], on=ROLLOUT_KEY, how="left", validate="many_to_one"
    )
    if df["correct"].isna().any():
        missing = df.loc[df["correct"].isna(), ROLLOUT_KEY].iloc[0].to_dict()
        raise DiagnoseError(
            f"alignment rows refer to a rollout missing from the rollouts table, e.g. {missing}"
        )
    if nodes is not None and {"g_sq", "g_sq_unbiased"} <= set(nodes.columns):
        df = df.merge(
            nodes[NODE_KEY + ["g_sq", "g_sq_unbiased"]], on=NODE_KEY, how="left", validate="many_to_one"
        )
    else:
        df["g_sq"] = np.nan
        df["g_sq_unbiased"] = np.nan
    df["correct"] = df["correct"].astype(bool)
    df["_rollout"] = df["question_id"].astype(str) + "#" + df["rollout_idx"].astype(str)
    df["_node"] = df["_rollout"] + "@" + df["position"].astype(str)
    # Bias-corrected cosines on both supports: dot / sqrt(|g*|^2 corrected * |d|^2), where that is > 0.
    unb = df["g_sq_unbiased"].to_numpy(dtype=float)
    for metric, dsq in (("cos_full", "d_sq"), ("cos_support", "d_sq_support")):
        with np.errstate(invalid="ignore", divide="ignore"):
            bc = np.clip(df["dot"].to_numpy(float) / np.sqrt(unb * df[dsq].to_numpy(float)), -1, 1)
        bc = np.where((unb > 0) & ~df["degenerate"].to_numpy(bool), bc, np.nan)
        df[f"_bc_{metric}"] = bc
    if "cos_bias_corrected" in df and df["cos_bias_corrected"].notna().any():
        df["_bc_cos_full"] = df["cos_bias_corrected"].astype(float)  # the pipeline's own correction wins
    return df


def _split_mask(df: pd.DataFrame, split: str) -> np.ndarray:
    if split == "correct":
        return df["correct"].to_numpy(bool)
    if split == "incorrect":
        return ~df["correct"].to_numpy(bool)
    return (df["difficulty"] == split).to_numpy(bool)


def _rollout_level(group: pd.DataFrame, dsq: str) -> np.ndarray:
    """Per-rollout cosines of one configuration (degenerate rollouts dropped).

    The same quantity as alignment.rollout_cosine(dot, g_sq, d_sq, weight) on each rollout's nodes (tested),
    computed for all rollouts at once from per-rollout sums with the same alignment.safe_cosine.
    """
    if group["g_sq"].isna().any():  # no nodes table (|g*|^2 unknown): no rollout-level cosine
        return np.array([])
    w = group["weight"].to_numpy(float)
    parts = pd.DataFrame(
        {
            "r": group["_rollout"].to_numpy(),
            "dot": w * group["dot"].to_numpy(float),
            "g_sq": group["g_sq"].to_numpy(float),
            "d_sq": w * w * group[dsq].to_numpy(float),
        }
    )
    sums = parts.groupby("r", sort=True)[["dot", "g_sq", "d_sq"]].sum()
    dot, g_sq, d_sq = (torch.tensor(sums[c].to_numpy(), dtype=torch.float64) for c in ("dot", "g_sq", "d_sq"))
    cos, deg = safe_cosine(dot, g_sq, d_sq)
    return cos.numpy()[~deg.numpy()]


def _row(group: pd.DataFrame, metric: str, rng, n_boot: int, level: float, cluster: str) -> dict[str, Any]:
    ok = group[~group["degenerate"].to_numpy(bool)]
    v = ok[metric].to_numpy(float)
    clusters = ok["_rollout"].to_numpy() if cluster == "rollout" else None
    mean, lo, hi = bootstrap_mean(v, rng, n_boot, level, clusters)
    first = group.iloc[0]
    row: dict[str, Any] = dict(
        config=first["config"],
        teacher=first["teacher"],
        objective=first["objective"],
        metric=metric,
        n_nodes=len(ok),
        n_degenerate=int(len(group) - len(ok)),
        mean=mean,
        ci_low=lo,
        ci_high=hi,
        frac_positive=float((v > 0).mean()) if v.size else float("nan"),
    )
    share = (ok["g_sq_unbiased"] / ok["g_sq"]).clip(0, 1)
    row["n_effective"] = float(share.sum()) if share.notna().any() else float(len(ok))
    bc = ok[f"_bc_{metric}"].dropna()
    row["mean_bias_corrected"] = float(bc.mean()) if len(bc) else float("nan")
    for split in SPLITS:
        mask = _split_mask(ok, split)
        m, l, h = bootstrap_mean(v[mask], rng, n_boot, level, None if clusters is None else clusters[mask])
        row.update(
            {f"mean_{split}": m, f"ci_low_{split}": l, f"ci_high_{split}": h, f"n_{split}": int(mask.sum())}
        )
    rc = _rollout_level(group, "d_sq" if metric == "cos_full" else "d_sq_support")
    row["rollout_cos"], row["rollout_cos_ci_low"], row["rollout_cos_ci_high"] = bootstrap_mean(
        rc, rng, n_boot, level
    )
    row["n_rollouts"] = int(rc.size)
    row["teacher_advantage"], row["ta_ci_low"], row["ta_ci_high"] = bootstrap_mean(
        ok["teacher_advantage"].to_numpy(float), rng, n_boot, level, clusters
    )
    names = [name for name in PROXIES + ("teacher_advantage",) if name in ok]
    rho = rank_correlations(ok[names], v) if len(names) else pd.Series(dtype=float)
    for name in PROXIES + ("teacher_advantage",):
        row[f"rho_{name}"] = float(rho.get(name, float("nan")))
    return row


def _best(
    table: pd.DataFrame, wide: pd.DataFrame, split: str | None, rng, n_boot, level
) -> dict[str, Any] | None:
    """Best configuration by mean (within a band if `split`), its interval and its paired margin over #2."""
    col = "mean" if split is None else f"mean_{split}"
    lo_col, hi_col, n_col = (
        ("ci_low", "ci_high", "n_nodes")
        if split is None
        else (f"ci_low_{split}", f"ci_high_{split}", f"n_{split}")
    )
    ranked = table.dropna(subset=[col]).sort_values([col, lo_col], ascending=False)
    if ranked.empty:
        return None
    top = ranked.iloc[0]
    out = {
        "config": top["config"],
        "mean": _num(top[col]),
        "ci_low": _num(top[lo_col]),
        "ci_high": _num(top[hi_col]),
        "n_nodes": int(top[n_col]),
    }
    if len(ranked) > 1:
        second = ranked.iloc[1]
        sub = wide if split is None else wide[wide["_split_" + split]]
        diff = (sub[top["config"]] - sub[second["config"]]).dropna().to_numpy(float)
        m, lo, hi = bootstrap_mean(diff, rng, n_boot, level)
        out.update(
            {
                "runner_up": second["config"],
                "runner_up_mean": _num(second[col]),
                "margin": _num(m),
                "margin_ci_low": _num(lo),
                "margin_ci_high": _num(hi),
                "margin_n": int(diff.size),
                "clear": bool(lo > 0),
            }
        )
    return out


def _num(x):
    x = float(x)
    return None if np.isnan(x) else x


def _headroom(wide: pd.DataFrame, configs: list[str], best: str, rng, n_boot, level) -> dict[str, Any]:
    """Mean of the per-node best cosine over configurations minus the best single configuration's mean."""
    full = wide[configs].dropna()
    if full.empty or best not in full:
        return {}
    values = full.to_numpy(float)
    oracle = values.max(1)
    single = full[best].to_numpy(float)
    om, olo, ohi = bootstrap_mean(oracle, rng, n_boot, level)
    gain, glo, ghi = bootstrap_mean(oracle - single, rng, n_boot, level)
    winners = pd.Series(np.asarray(configs)[values.argmax(1)]).value_counts(normalize=True)
    return {
        "best_config": best,
        "best_mean": _num(single.mean()),
        "oracle_mean": _num(om),
        "oracle_ci_low": _num(olo),
        "oracle_ci_high": _num(ohi),
        "headroom": _num(gain),
        "headroom_ci_low": _num(glo),
        "headroom_ci_high": _num(ghi),
        "n_nodes": int(len(full)),
        "winner_share": {k: float(v) for k, v in winners.head(5).items()},
        "note": "per-node maximum of noisy estimates: optimistic (selection bias)",
    }


def summarize(
    alignment: pd.DataFrame,
    rollouts: pd.DataFrame,
    nodes: pd.DataFrame | None = None,
    metrics=METRICS,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    cluster: str = "node",
) -> Summary:
    """Compute the summary table and the run-level recommendation and headroom from the run's tables."""
    if cluster not in ("node", "rollout"):
        raise DiagnoseError(f"cluster must be 'node' or 'rollout', got {cluster!r}")
    if alignment.empty:
        raise DiagnoseError("the alignment table is empty: nothing to summarise")
    rng = np.random.default_rng(seed)
    df = _prepare(alignment, rollouts, nodes)
    rows, recommendation, headroom, pooled = [], {}, {}, {}
    for metric in metrics:
        table = pd.DataFrame(
            [_row(g, metric, rng, n_boot, level, cluster) for _, g in df.groupby("config", sort=True)]
        )
        order = table.sort_values(["mean", "ci_low"], ascending=False, na_position="last").index
        table.loc[order, "rank"] = np.arange(1, len(table) + 1)
        rows.append(table)
        valid = df[~df["degenerate"].to_numpy(bool)]
        wide = valid.pivot(index="_node", columns="config", values=metric)
        node_info = valid.drop_duplicates("_node").set_index("_node")
        for split in SPLITS:
            wide["_split_" + split] = _split_mask(node_info, split)[node_info.index.get_indexer(wide.index)]
        rec = {"overall": _best(table, wide, None, rng, n_boot, level), "bands": {}}
        for band in BANDS:
            best = _best(table, wide, band, rng, n_boot, level)
            if best is not None:
                rec["bands"][band] = best
        recommendation[metric] = rec
        if rec["overall"] is not None:
            headroom[metric] = _headroom(
                wide, sorted(df["config"].unique()), rec["overall"]["config"], rng, n_boot, level
            )
        names = [name for name in PROXIES + ("teacher_advantage",) if name in valid]
        pooled[metric] = {k: _num(x) for k, x in rank_correlations(valid[names], valid[metric]).items()}
    out = pd.concat(rows, ignore_index=True)
    out["rank"] = out["rank"].astype("int32")
    settings = {
        "n_boot": n_boot,
        "seed": seed,
        "level": level,
        "cluster": cluster,
        "metrics": list(metrics),
        "exact_limit": EXACT_LIMIT,
    }
    return Summary(
        table=out, recommendation=recommendation, headroom=headroom, proxy_pooled=pooled, settings=settings
    )


def summarize_run(run_dir, **kw) -> Summary:
    """summarize() on the tables of a run directory (nodes is optional)."""
    nodes = read_table(run_dir, "nodes") if has_table(run_dir, "nodes") else None
    return summarize(read_table(run_dir, "alignment"), read_table(run_dir, "rollouts"), nodes, **kw)


def write_summary(run_dir, metadata: dict | None = None, **kw) -> Summary:
    """Compute the summary of a run directory and write it as the `summary` table (one shard)."""
    summary = summarize_run(run_dir, **kw)
    meta = dict(read_metadata(run_dir, "alignment"))
    meta.pop("table", None)
    meta.update(metadata or {})
    meta["summary"] = summary.to_metadata()
    write_table(run_dir, "summary", summary.table, shard="0", metadata=meta)
    return summary


def read_summary(run_dir) -> Summary:
    """The stored summary of a run directory (table and run-level conclusions)."""
    return Summary.from_metadata(read_table(run_dir, "summary"), read_metadata(run_dir, "summary"))
