"""The `summary` table: per configuration, its alignment with intervals, overall and split by rollout
correctness and question difficulty, the correct-minus-incorrect difference, the per-token mean cosine,
rollout-level cosine, effective node count, proxy rank correlations; plus the run-level recommendation (best
configuration overall and per band, and whether it is clearly ahead) and the headroom of picking the best
configuration per token.

What each figure estimates (ESTIMANDS below, also stored in the summary's metadata):

- `mean` (and mean_<split>): the configuration's alignment over the group's tokens where it has a direction,
  estimated by `diagnose.estimate.stats.pooled_alignment`: cos between the ideal gradient and the
  configuration's per-token directions scaled to unit length, both concatenated over the group's LIVE tokens
  (d != 0 and not no_signal), i.e. E[|g*| cos(g*, d) | live] / sqrt(E[|g*|^2 | live]). A row without a
  direction (no_signal, or d = 0 as for grpo_ref on a question whose rollouts all agree) leaves the
  numerator and both denominators, so a teacher silent at a fraction f of a group's nodes is not scaled by
  sqrt(1 - f) there. Nodes are weighted by the tokens they stand for (their `weight`: the inverse of the
  probability that node selection picks them, scaled for rollouts a window missed) and |g*|^2 is
  noise-corrected, so the estimate is consistent as questions grow at ANY number of continuations: noise
  does not shrink it toward 0, and groups whose |g*| differ (correct vs incorrect rollouts) compare fairly.
  NaN (unresolved) where no row is live or the noise leaves no signal; such a configuration gets a null
  `rank` and is never recommended.
- `mean_per_token`: the token-weighted mean of the per-node cosine estimates over nodes where it is defined
  (and the direction has a signal); descriptive only (noise pulls each per-node cosine toward 0, more where
  |g*| is small).
- Every interval and margin is a bootstrap that resamples the independent units, questions, each with all
  of its rollouts and nodes (the question-cluster bootstrap: nodes of one rollout share its fate, rollouts
  of one question its difficulty): bias-corrected percentile ends, widened about the estimate for few
  questions (`small_sample_factor`: sqrt(G/(G-1)) t_{G-1}/z). One set of replicate weights is shared by all
  configurations, so margins between configurations are paired.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ..errors import DiagnoseError
from ..tables import BANDS, METRICS, PROXIES, has_table, read_metadata, read_table, write_table
from ..tables.summary import ESTIMANDS, Summary
from .resample import COSINE, DIFFERENCE, Resampler, bootstrap_interval, pooled_columns, ratio
from .stats import effective_nodes, rank_correlations, rollout_cosine

NODE_KEY = ["question_id", "rollout_idx", "position"]
ROLLOUT_KEY = ["question_id", "rollout_idx"]
SPLITS = ("correct", "incorrect") + BANDS
MIN_CLEAR_QUESTIONS = 2  # fewer questions: no interval across questions, never 'clear'


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
    node_cols = [c for c in ("g_sq", "g_sq_unbiased", "weight", "negligible") if nodes is not None and c in nodes]
    if node_cols:
        extra = nodes[NODE_KEY + node_cols].rename(columns={"weight": "node_weight"})
        df = df.merge(extra, on=NODE_KEY, how="left", validate="many_to_one")
    if "no_signal" not in df:
        df["no_signal"] = False
    df["no_signal"] = df["no_signal"].fillna(False).astype(bool)
    for col, fill in (("g_sq", np.nan), ("g_sq_unbiased", np.nan), ("node_weight", 1.0), ("negligible", False)):
        if col not in df:
            df[col] = fill
    df["node_weight"] = df["node_weight"].astype(float).fillna(1.0)
    df["negligible"] = df["negligible"].fillna(False).astype(bool)
    df["correct"] = df["correct"].astype(bool)
    df["_rollout"] = df["question_id"].astype(str) + "#" + df["rollout_idx"].astype(str)
    df["_node"] = df["_rollout"] + "@" + df["position"].astype(str)
    noise = (df["g_sq"] - df["g_sq_unbiased"]).astype(float)
    df["_noise"] = noise.fillna(0.0)
    df["_g_known"] = df["g_sq"].notna()
    silent = df["no_signal"].to_numpy(bool)
    for metric, dsq, bc in (
        ("cos_full", "d_sq", "cos_bias_corrected"),
        ("cos_support", "d_sq_support", "cos_support_bias_corrected"),
    ):
        # live: the configuration has a direction here (d != 0 and not no_signal). Every pooled sum (A, B and
        # U) runs over live rows only; the estimator zeroes d at no_signal rows, but the flag decides.
        d_sq = df[dsq].to_numpy(float)
        live = (d_sq > 0) & ~silent
        with np.errstate(invalid="ignore", divide="ignore"):
            df[f"_unit_{metric}"] = np.where(live, df["dot"].to_numpy(float) / np.sqrt(np.where(live, d_sq, 1)), 0)
        df[f"_live_{metric}"] = live.astype(float)
        df[f"_bc_{metric}"] = df[bc].astype(float) if bc in df else np.nan
    # a per-node cosine counts in per-token means where it is defined and resolvable, and has a signal
    df["_use"] = ~df["degenerate"].to_numpy(bool) & ~df["negligible"].to_numpy(bool) & ~silent
    return df


def _split_mask(df: pd.DataFrame, split: str) -> np.ndarray:
    if split == "correct":
        return df["correct"].to_numpy(bool)
    if split == "incorrect":
        return ~df["correct"].to_numpy(bool)
    return (df["difficulty"] == split).to_numpy(bool)


def _rollout_level(group: pd.DataFrame, dsq: str, keys: bool = False):
    """Per-rollout cosines of one configuration (degenerate rollouts dropped): the table's columns passed to
    diagnose.estimate.stats.rollout_cosine, the one implementation. With keys=True also returns the rollout
    labels of the kept values.
    """
    if group["g_sq"].isna().any():  # no nodes table (|g*|^2 unknown): no rollout-level cosine
        return (np.array([]), np.array([])) if keys else np.array([])
    per = rollout_cosine(
        group["dot"].to_numpy(float),
        group["g_sq"].to_numpy(float),
        group[dsq].to_numpy(float),
        rollouts=group["_rollout"].to_numpy(),
        weights=group["weight"].to_numpy(float),
    )
    keep = ~per["degenerate"].to_numpy(bool)
    if keys:
        return per["cos"].to_numpy()[keep], per.index.to_numpy()[keep]
    return per["cos"].to_numpy()[keep]


class _Config:
    """Per-rollout sums of one configuration and metric, and its replicate statistics."""

    def __init__(self, group: pd.DataFrame, metric: str, res: Resampler, level: float, split_masks: dict):
        self.group, self.metric, self.res, self.level = group, metric, res, level
        w = group["node_weight"].to_numpy(float)
        use = group["_use"].to_numpy(bool)
        cos = group[metric].to_numpy(float)
        bc = group[f"_bc_{metric}"].to_numpy(float)
        bc_ok = use & np.isfinite(bc)
        ta = group["teacher_advantage"].to_numpy(float)
        live = group[f"_live_{metric}"].to_numpy(float) > 0
        g_corr = group["g_sq"].to_numpy(float) - group["_noise"].to_numpy(float)  # noise-corrected |g*|^2
        cols = np.stack(
            [
                w * group[f"_unit_{metric}"].to_numpy(float),  # A (0 where not live)
                np.where(live, w * g_corr, 0.0),  # B: |g*|^2 of the live rows only
                np.where(live, w, 0.0),  # U
                np.where(use, w * cos, 0.0),
                np.where(use, w, 0.0),
                np.where(bc_ok, w * np.nan_to_num(bc), 0.0),
                np.where(bc_ok, w, 0.0),
                np.where(use & (cos > 0), w, 0.0),
                w * np.nan_to_num(ta),
                w,
            ],
            -1,
        )
        self.cols = res.columns(group)
        self.values = cols
        self.point, self.reps = {}, {}
        for split, mask in [("all", None)] + list(split_masks.items()):
            v = cols if mask is None else np.where(mask[:, None], cols, 0.0)
            self.point[split], self.reps[split] = res.sums(self.cols, v)

    def pooled(self, split="all"):
        """(point estimate, replicates); an unresolved replicate (B <= 0) counts as the far end sign(A)."""
        return float(pooled_columns(self.point[split][:3])), pooled_columns(self.reps[split][:, :3], "sign")

    def per_token(self, split="all", num=3, den=4):
        return float(ratio(self.point[split][num], self.point[split][den])), ratio(
            self.reps[split][:, num], self.reps[split][:, den]
        )


def _row(group: pd.DataFrame, metric: str, res: Resampler, level: float) -> tuple[dict[str, Any], _Config]:
    split_masks = {split: _split_mask(group, split) for split in SPLITS}
    cfg = _Config(group, metric, res, level, split_masks)
    use = group["_use"].to_numpy(bool)
    first = group.iloc[0]
    mean, reps = cfg.pooled()
    k = res.factor(level)
    lo, hi = bootstrap_interval(reps, level, mean, k, COSINE)
    row: dict[str, Any] = dict(
        config=first["config"],
        teacher=first["teacher"],
        objective=first["objective"],
        metric=metric,
        n_nodes=int(use.sum()),
        n_degenerate=int((group["degenerate"].to_numpy(bool) & ~group["no_signal"].to_numpy(bool)).sum()),
        n_no_signal=int(group["no_signal"].to_numpy(bool).sum()),
        n_negligible=int((group["negligible"].to_numpy(bool) & ~group["degenerate"].to_numpy(bool)).sum()),
        mean=mean,
        ci_low=lo,
        ci_high=hi,
    )
    pt, pt_reps = cfg.per_token()
    row["mean_per_token"] = pt
    row["mean_per_token_ci_low"], row["mean_per_token_ci_high"] = bootstrap_interval(pt_reps, level, pt, k, COSINE)
    row["frac_positive"] = float(ratio(cfg.point["all"][7], cfg.point["all"][4]))
    row["mean_bias_corrected"] = float(ratio(cfg.point["all"][5], cfg.point["all"][6]))
    if group["_g_known"].all():
        eff = effective_nodes(
            group["g_sq"].to_numpy(float),
            group["_noise"].to_numpy(float),
            group["degenerate"].to_numpy(bool) | group["no_signal"].to_numpy(bool),
            group["node_weight"].to_numpy(float),
        )
        row["n_effective"] = float(eff["effective_nodes"])
    else:
        row["n_effective"] = float("nan")
    for split in SPLITS:
        m, r = cfg.pooled(split)
        lo_s, hi_s = bootstrap_interval(r, level, m, k, COSINE)
        row.update(
            {
                f"mean_{split}": m,
                f"ci_low_{split}": lo_s,
                f"ci_high_{split}": hi_s,
                f"n_{split}": int((use & split_masks[split]).sum()),
            }
        )
    # the paper-style split (raw per-node cosines), beside the noise-consistent one, so a reader can see when a
    # correct-vs-incorrect difference is an artefact of |g*| being smaller (noisier) on correct rollouts
    (pc, pcr), (pi, pir) = cfg.per_token("correct"), cfg.per_token("incorrect")
    for split, m, r in (("correct", pc, pcr), ("incorrect", pi, pir)):
        row[f"mean_per_token_{split}"] = m
        row[f"mean_per_token_ci_low_{split}"], row[f"mean_per_token_ci_high_{split}"] = bootstrap_interval(
            r, level, m, k, COSINE)
    row["diff_per_token"] = pc - pi
    row["diff_per_token_ci_low"], row["diff_per_token_ci_high"] = bootstrap_interval(
        pcr - pir, level, pc - pi, k, DIFFERENCE)
    (mc, rc), (mi, ri) = cfg.pooled("correct"), cfg.pooled("incorrect")
    row["diff_correct_incorrect"] = mc - mi
    row["diff_ci_low"], row["diff_ci_high"] = bootstrap_interval(rc - ri, level, mc - mi, k, DIFFERENCE)
    rcos, rkeys = _rollout_level(group, "d_sq" if metric == "cos_full" else "d_sq_support", keys=True)
    if rcos.size:
        first_rows = group.drop_duplicates("_rollout").set_index("_rollout").loc[rkeys]
        cols = res.columns(first_rows.reset_index())
        p_sum, r_sum = res.sums(cols, np.stack([rcos, np.ones_like(rcos)], -1))
        row["rollout_cos"] = float(ratio(p_sum[0], p_sum[1]))
        row["rollout_cos_ci_low"], row["rollout_cos_ci_high"] = bootstrap_interval(
            ratio(r_sum[:, 0], r_sum[:, 1]), level, row["rollout_cos"], k, COSINE)
    else:
        row["rollout_cos"] = row["rollout_cos_ci_low"] = row["rollout_cos_ci_high"] = float("nan")
    row["n_rollouts"] = int(rcos.size)
    ta, ta_reps = cfg.per_token(num=8, den=9)
    row["teacher_advantage"] = ta
    row["ta_ci_low"], row["ta_ci_high"] = bootstrap_interval(ta_reps, level, ta, k)
    ok = group[use]
    v = ok[metric].to_numpy(float)
    names = [name for name in PROXIES + ("teacher_advantage",) if name in ok]
    rho = rank_correlations(ok[names], v) if len(names) else pd.Series(dtype=float)
    for name in PROXIES + ("teacher_advantage",):
        row[f"rho_{name}"] = float(rho.get(name, float("nan")))
    return row, cfg


def _best(table: pd.DataFrame, configs: dict, split: str | None, res: Resampler, level) -> dict[str, Any] | None:
    """Best configuration by `mean` (within a band if `split`), its interval and its paired margin over #2."""
    col = "mean" if split is None else f"mean_{split}"
    lo_col, hi_col, n_col = (
        ("ci_low", "ci_high", "n_nodes")
        if split is None
        else (f"ci_low_{split}", f"ci_high_{split}", f"n_{split}")
    )
    ranked = table.dropna(subset=[col, "mean"])  # an unresolved configuration is never recommended
    ranked = ranked[~_mostly_silent(ranked)].sort_values([col, lo_col], ascending=False)
    if ranked.empty:
        return None
    top = ranked.iloc[0]
    out = {
        "config": top["config"],
        "mean": _num(top[col]),
        "ci_low": _num(top[lo_col]),
        "ci_high": _num(top[hi_col]),
        "n_nodes": int(top[n_col]),
        "n_questions": int(res.n_questions),
    }
    if len(ranked) > 1:
        second = ranked.iloc[1]
        key = "all" if split is None else split
        m1, r1 = configs[top["config"]].pooled(key)
        m2, r2 = configs[second["config"]].pooled(key)
        lo, hi = bootstrap_interval(r1 - r2, level, m1 - m2, res.factor(level), DIFFERENCE)
        enough = res.n_questions >= MIN_CLEAR_QUESTIONS
        out.update(
            {
                "runner_up": second["config"],
                "runner_up_mean": _num(second[col]),
                "margin": _num(m1 - m2),
                "margin_ci_low": _num(lo),
                "margin_ci_high": _num(hi),
                "margin_n": int(res.n_questions),
                "clear": bool(enough and np.isfinite(lo) and lo > 0),
            }
        )
        if not enough:
            out["note"] = f"{res.n_questions} question(s): too few to call a winner"
    return out


def _ranks(table: pd.DataFrame) -> pd.Series:
    """Rank of each configuration by `mean` (1 = best, ties by ci_low; mostly silent ones after the rest);
    null where `mean` is unresolved (NaN): such a configuration is never ranked, so it never stands first."""
    resolved = table["mean"].notna().to_numpy(bool)
    key = table["mean"].where(~_mostly_silent(table))  # mostly silent configurations rank last
    order = table.assign(_key=key)[resolved].sort_values(["_key", "ci_low"], ascending=False, na_position="last").index
    rank = pd.Series(pd.NA, index=table.index, dtype="Int32")
    rank.loc[order] = np.arange(1, len(order) + 1)
    return rank


def _mostly_silent(table: pd.DataFrame) -> np.ndarray:
    """Configurations with no signal at more than half of their nodes: never ranked first or recommended."""
    total = table["n_nodes"] + table["n_degenerate"] + table["n_no_signal"]
    return (table["n_no_signal"] > 0.5 * total).to_numpy(bool)


def _silent(table: pd.DataFrame) -> list[str]:
    """'config: no signal at k of n nodes' for the configurations that are mostly silent."""
    out = []
    for _, r in table[_mostly_silent(table)].iterrows():
        total = int(r["n_nodes"] + r["n_degenerate"] + r["n_no_signal"])
        out.append(f"{r['config']}: no signal at {int(r['n_no_signal'])} of {total} nodes")
    return out


def _num(x):
    x = float(x)
    return None if np.isnan(x) else x


def _headroom(df: pd.DataFrame, metric: str, best: str, res: Resampler, level, configs=None) -> dict[str, Any]:
    """What choosing the configuration per token would add over the best single one.

    Estimand (the exact headroom), over the nodes where every ranked configuration (`configs`) is live, with
    u_c = d_c / |d_c|, w the token weights and the pooled normalisation of `mean`:

        H = [sum_n w_n max_c <g*_n, u_c> - max_c sum_n w_n <g*_n, u_c>] / sqrt(sum w |g*|^2 sum w).

    Both terms are maxima, and a maximum of noisy estimates is optimistic (a winner's curse: with every
    configuration equally good at every node, the in-sample per-node maximum reads as headroom). So:

    - the point estimate is cross-fitted over continuations: each node's choice is made on one half of its
      candidates' continuations (`dot_half0`) and scored on the other (`dot_half1`), and the other way round,
      averaged; the single best configuration likewise (chosen on one half's pooled numerator, scored on the
      other). Given the choices each half's <d, g*-hat> is unbiased, so with no real per-node winner the
      estimate is unbiased for 0; with one it estimates what choices made on half the evidence gain, which is
      at most H (an imperfect choice gains less);
    - the interval brackets H between two one-sided bounds that hold whatever the noise: below, the
      cross-fitted per-node choice minus the in-sample best single configuration (E[cross-fitted] <= max,
      E[in-sample max] >= max); above, the in-sample per-node maximum minus the cross-fitted single best.
      Its ends are the lower and upper (1 - level) / 2 quantiles of the two bounds' question-cluster bootstrap
      replicates. It covers 0 when there is no per-node winner and H when there is one, and its width says
      how far the evidence is from settling the choice. The scale sqrt(sum w |g*|^2 / sum w) is held at its
      point estimate in replicates (a common factor: it cannot create headroom, and at a few continuations a
      resampled one is often unresolvable).

    Without halves (runs written before they were stored, or exact Q) only the in-sample figure exists: it is
    reported with no interval and flagged."""
    configs = sorted(df["config"].unique() if configs is None else set(configs))
    if best not in configs or len(configs) < 2:
        return {}
    dsq_col = "d_sq" if metric == "cos_full" else "d_sq_support"
    rows = df[df["config"].isin(configs).to_numpy(bool) & (df[f"_live_{metric}"].to_numpy(float) > 0)]
    have_halves = {"dot_half0", "dot_half1"} <= set(rows.columns)
    norm = np.sqrt(rows[dsq_col].to_numpy(float))
    units = {}
    for c in ["dot"] + (["dot_half0", "dot_half1"] if have_halves else []):
        wide = rows.assign(_u=rows[c].to_numpy(float) / norm).pivot(index="_node", columns="config", values="_u")
        units[c] = wide.reindex(columns=configs)
    complete = units["dot"].notna().all(axis=1)
    cross = False
    if have_halves:
        halves_ok = units["dot_half0"].notna().all(axis=1) & units["dot_half1"].notna().all(axis=1)
        cross = bool((complete & halves_ok).any())
        if cross:
            complete = complete & halves_ok
    nodes_used = complete[complete].index
    if not len(nodes_used):
        return {}
    info = rows.drop_duplicates("_node").set_index("_node").loc[nodes_used]
    w = info["node_weight"].to_numpy(float)
    g_corr = info["g_sq"].to_numpy(float) - info["_noise"].to_numpy(float)
    names = np.asarray(configs)
    u = units["dot"].loc[nodes_used].to_numpy(float)  # all continuations
    in_oracle = u.max(1)  # in-sample per-node maximum (biased up)
    in_single = u[:, int((w[:, None] * u).sum(0).argmax())]  # in-sample best single (biased up)
    if cross:
        u0 = units["dot_half0"].loc[nodes_used].to_numpy(float)
        u1 = units["dot_half1"].loc[nodes_used].to_numpy(float)
        c0, c1 = u0.argmax(1), u1.argmax(1)  # chosen on one half ...
        idx = np.arange(len(nodes_used))
        oracle = 0.5 * (u1[idx, c0] + u0[idx, c1])  # ... scored on the other
        b0, b1 = int((w[:, None] * u0).sum(0).argmax()), int((w[:, None] * u1).sum(0).argmax())
        single = 0.5 * (u1[:, b0] + u0[:, b1])
        # a node whose half has every direction at the same value (g*-hat = 0 there) has no winner to report
        strict0, strict1 = np.ptp(u0, axis=1) > 0, np.ptp(u1, axis=1) > 0
        winners = pd.Series(np.concatenate([names[c0[strict0]], names[c1[strict1]]])).value_counts(normalize=True)
    else:
        oracle, single = in_oracle, u[:, configs.index(best)]
        winners = pd.Series(names[u.argmax(1)]).value_counts(normalize=True)
    terms = np.stack([oracle, single, oracle - in_single, in_oracle - single, in_oracle - in_single], -1)
    cols_ = res.columns(info.reset_index())
    p_sum, r_sum = res.sums(cols_, np.concatenate([w[:, None] * terms, (w * g_corr)[:, None], w[:, None]], -1))
    b, tot = p_sum[-2], p_sum[-1]
    scale = np.sqrt(b / tot) if b > 0 and tot > 0 else np.nan  # rms |g*| over these nodes (noise-corrected)
    point = p_sum[:5] / tot / scale
    out = {
        "best_config": best,
        "best_mean": _num(point[1]),
        "oracle_mean": _num(point[0]),
        "headroom": _num(point[0] - point[1]),
        "headroom_in_sample": _num(point[4]),
        "n_nodes": int(len(nodes_used)),
        "cross_fitted": bool(cross),
        "winner_share": {k: float(v) for k, v in winners.head(5).items()},
    }
    if cross and np.isfinite(scale):
        reps = r_sum[:, :5] / np.where(r_sum[:, -1:] > 0, r_sum[:, -1:], np.nan) / scale
        alpha = (1 - level) / 2
        lower, upper = reps[:, 2], reps[:, 3]
        ok = np.isfinite(lower) & np.isfinite(upper)
        lo = float(np.quantile(lower[ok], alpha)) if ok.mean() >= 0.95 else np.nan
        hi = float(np.quantile(upper[ok], 1 - alpha)) if ok.mean() >= 0.95 else np.nan
        olo, ohi = bootstrap_interval(reps[:, 0], level, float(point[0]), res.factor(level), COSINE)
        out.update(
            {
                "oracle_ci_low": _num(olo),
                "oracle_ci_high": _num(ohi),
                "headroom_ci_low": _num(lo),
                "headroom_ci_high": _num(hi),
                "note": "cross-fitted: each token's choice made on one half of the continuations and scored on "
                "the other; the interval runs from a lower bound (cross-fitted choice minus the in-sample best "
                "single configuration) to an upper bound (in-sample per-token maximum minus the cross-fitted "
                "single best)",
            }
        )
    else:
        out.update(
            {
                "oracle_ci_low": None,
                "oracle_ci_high": None,
                "headroom_ci_low": None,
                "headroom_ci_high": None,
                "note": "in-sample per-node maximum (no continuation halves stored, or no resolved signal): "
                "optimistic under noise (selection bias), so no interval is given",
            }
        )
    return out


def summarize(
    alignment: pd.DataFrame,
    rollouts: pd.DataFrame,
    nodes: pd.DataFrame | None = None,
    metrics=METRICS,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    cluster: str = "question",
) -> Summary:
    """Compute the summary table and the run-level recommendation and headroom from the run's tables.

    Intervals resample questions, each with all its rollouts and nodes (`cluster="question"`, the only honest
    choice for nodes that share rollouts and questions; "rollout" and "node" are accepted as aliases of it for
    old callers).
    """
    if cluster not in ("question", "rollout", "node"):
        raise DiagnoseError(f"cluster must be 'question', got {cluster!r}")
    if alignment.empty:
        raise DiagnoseError("the alignment table is empty: nothing to summarise")
    df = _prepare(alignment, rollouts, nodes)
    res = Resampler(rollouts, n_boot, seed)
    rows, recommendation, headroom, pooled = [], {}, {}, {}
    for metric in metrics:
        made = [_row(g, metric, res, level) for _, g in df.groupby("config", sort=True)]
        table = pd.DataFrame([r for r, _ in made])
        configs = {r["config"]: c for r, c in made}
        table["rank"] = _ranks(table)
        rows.append(table)
        rec = {"overall": _best(table, configs, None, res, level), "bands": {}, "no_signal": _silent(table)}
        for band in BANDS:
            best = _best(table, configs, band, res, level)
            if best is not None:
                rec["bands"][band] = best
        recommendation[metric] = rec
        if rec["overall"] is not None:
            ranked = table.loc[table["rank"].notna(), "config"]
            headroom[metric] = _headroom(df, metric, rec["overall"]["config"], res, level, ranked)
        valid = df[df["_use"].to_numpy(bool)]
        names = [name for name in PROXIES + ("teacher_advantage",) if name in valid]
        pooled[metric] = {k: _num(x) for k, x in rank_correlations(valid[names], valid[metric]).items()}
    out = pd.concat(rows, ignore_index=True)
    out["rank"] = out["rank"].astype("Int32")  # null: unresolved, never ranked
    settings = {
        "n_boot": n_boot,
        "seed": seed,
        "level": level,
        "cluster": "question",
        "resampling": "questions with replacement, each with all of its rollouts (question-cluster bootstrap)",
        "n_questions": res.n_questions,
        "metrics": list(metrics),
        "estimands": ESTIMANDS,
    }
    return Summary(
        table=out, recommendation=recommendation, headroom=headroom, proxy_pooled=pooled, settings=settings
    )


def alignment_replicates(
    alignment: pd.DataFrame,
    rollouts: pd.DataFrame,
    nodes: pd.DataFrame | None = None,
    metric: str = "cos_full",
    n_boot: int = 1000,
    seed: int = 0,
) -> tuple[pd.Series, pd.DataFrame]:
    """Each configuration's `mean` and its bootstrap replicates [n_boot, configs], from the same question-cluster
    replicate weights as `summarize` (same n_boot and seed: the same replicates). For callers that carry the
    alignment's uncertainty into a further statistic (validate's rank correlation resamples it jointly with
    the gains). An unresolved replicate counts as the far end sign(A), as in the summary's intervals."""
    df = _prepare(alignment, rollouts, nodes)
    res = Resampler(rollouts, n_boot, seed)
    points, reps = {}, {}
    for config, group in df.groupby("config", sort=True):
        cfg = _Config(group, metric, res, 0.95, {})
        points[config], reps[config] = cfg.pooled()
    return pd.Series(points, dtype=float), pd.DataFrame(reps)


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
