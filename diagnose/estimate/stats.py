r"""Honest statistics for estimated alignment: bias-corrected cosines, bootstrap intervals, degenerate flags.

Everything works on per-node quantities restricted to the candidate set C (padded [N, K] arrays), so it
plugs into fused kernels that return O(1) numbers per node: the cosine needs <d, g*> = sum_C d_k g*_k,
|g*|^2, |d|^2 (full vocabulary) and |d_C|^2 (on C). Student probabilities p_k, success counts s_k and
continuation counts n_k per candidate are the only estimation inputs.

Bias of |g*-hat|^2 (derivation). Write pi_k = p_k / p(C) (the student's distribution renormalised on C),
V = sum_C pi_k Q_k and g_i = p_i (Q_i - V) for i in C. Then g = A Q with A_ik = p_i (delta_ik - pi_k): g* is
linear in Q, and V's own noise is carried by the -pi_k column. With Q-hat = Q + e, e_k independent (separate
continuations per candidate), E e_k = 0, Var e_k = sigma_k^2 = Q_k (1 - Q_k) / n_k:

    <d, g-hat>     is unbiased for <d, g>            (linear in Q-hat);
    E |g-hat|^2  = |g|^2 + sum_k sigma_k^2 (A^T A)_kk,
    (A^T A)_kk   = sum_i A_ik^2 = p_k^2 (1 - pi_k)^2 + pi_k^2 sum_{i != k} p_i^2
                 = p_k^2 (1 - 2 pi_k) + pi_k^2 S2,      S2 = sum_{i in C} p_i^2.

The first part, p_k^2 sigma_k^2, is the noise of Q-hat_k itself; the rest is V-hat's noise (shared by all
entries). Since E[Q-hat (1 - Q-hat)] = Q (1 - Q)(1 - 1/n), s_k^2 = Q-hat_k (1 - Q-hat_k) / (n_k - 1) is
unbiased for sigma_k^2 (n_k >= 2; a candidate with one outcome has no variance estimate and contributes no
correction). Hence the noise term N = sum_k w_k s_k^2, w_k = p_k^2 (1 - 2 pi_k) + pi_k^2 S2, and

    |g|^2-corrected = |g-hat|^2 - N          (unbiased),
    cos-corrected   = <d, g-hat> / sqrt(|g|^2-corrected |d|^2), clipped to [-1, 1]; null (NaN) where
                      |g|^2-corrected <= 0 (the noise eats the signal: unresolved).

The raw cosine is dragged toward 0 because |g-hat|^2 is inflated by N; the corrected one removes that first
order bias (it is still a ratio, so not exactly unbiased). The free rollout sample for the observed token is
one of its n_k outcomes: it is an unbiased draw of Q(u, observed).

Intervals: a (binomial) bootstrap over continuations. Each replicate redraws every candidate's n_k outcomes
from a lightly smoothed Q~_k = (s_k + a) / (n_k + 2a) (a = `prior`, 0.5 by default; a = 0 is the plain
resampling of each candidate's outcomes, which collapses to zero width at Q-hat in {0, 1}) and recomputes
the corrected cosine; the interval is the replicates' percentile interval. We compared, on simulated nodes
with known Q (uniform Q, and high-Q nodes where the raw cosine is dragged hardest toward 0): percentile
intervals of corrected replicates covered at or above nominal on average from n = 4 to 64 continuations
per candidate; percentile intervals of raw replicates, basic (pivot) intervals and Jeffreys-posterior
intervals undercovered badly on high-Q nodes. Teacher advantage TA = sum_C (q_k - p_k)(Q_k - V) is linear in
Q-hat (unbiased) and gets the percentile interval of its replicates.

Trade-off, measured: the corrected cosine has less bias than the raw one where the signal is comparable to
the noise (high Q), but a larger spread at small n, and it is unresolved (null) where the noise estimate
eats |g-hat|^2; both are reported. Neither is consistent for a MEAN over nodes at a fixed number of
continuations (each node's ratio keeps its own bias); `pooled_alignment` is, and is what groups compare.

Degenerate node: g*-hat = 0 (all Q-hat equal on C, or |C| < 2) or d = 0 relative to its scale: the cosine
is undefined, reported as 0 and flagged. Effective node count (`effective_nodes`, the only definition):
Kish's n_eff = (sum_n a_n)^2 / sum_n a_n^2 with a_n = w_n max(|g_n|^2-corrected, 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from ..alignment import safe_cosine
from ..ideal import EPS, sparse_ideal  # the one g* (float64, on the candidates)


def f64(x) -> torch.Tensor:
    """x as a float64 tensor (a read-only numpy array is copied first)."""
    if isinstance(x, np.ndarray) and not x.flags.writeable:  # e.g. pandas columns: torch warns on those
        x = np.array(x, dtype=np.float64)
    return torch.as_tensor(x, dtype=torch.float64)


def _np64(x) -> np.ndarray:
    """float64 numpy array from a tensor (any device, grad or not), array, Series or list."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
    return np.asarray(x, dtype=np.float64)


def noise_weights(p: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """w_k = (A^T A)_kk = p_k^2 (1 - 2 pi_k) + pi_k^2 S2: how Var(Q-hat_k) inflates E|g*-hat|^2."""
    p = torch.where(mask, f64(p), 0.0)
    pi = p / p.sum(-1, keepdim=True).clamp_min(EPS)
    s2 = (p * p).sum(-1, keepdim=True)
    return torch.where(mask, p * p * (1 - 2 * pi) + pi * pi * s2, 0.0)


def q_variance(successes: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Unbiased Var(Q-hat) per candidate: Q-hat (1 - Q-hat) / (n - 1); 0 where n < 2."""
    s, n = f64(successes), f64(counts)
    q = s / n.clamp_min(1)
    return torch.where(n >= 2, q * (1 - q) / (n - 1).clamp_min(1), 0.0)


def noise_term(p, successes, counts, mask) -> torch.Tensor:
    """Unbiased estimate of E|g*-hat|^2 - |g*|^2 per node."""
    return (noise_weights(p, mask) * q_variance(successes, counts)).sum(-1)


# |g-hat|^2 - N within this share of |g-hat|^2 is float64 round-off of an exact 0: the noise estimate equals
# |g-hat|^2 exactly where each candidate's Q-hat can take only the values that make it so (two continuations
# per candidate and one success between them, say), and whether the difference then came out +3e-18 or
# -3e-18 decided if a node's corrected cosine was +-1 or unresolved (seen on the embedded model).
ROUNDOFF = 1e-12


def unbiased_g_sq(g_sq, noise) -> torch.Tensor:
    """|g-hat|^2 - N (unbiased for |g*|^2), exactly 0 where the two agree to float64 round-off (ROUNDOFF)."""
    g_sq, noise = f64(g_sq), f64(noise)
    gc = g_sq - noise
    return torch.where(gc.abs() <= ROUNDOFF * g_sq.abs(), 0.0, gc)


def corrected_cosine(dot, g_sq, noise, d_sq, unresolved: str = "nan"):
    """(raw cosine, bias-corrected cosine, degenerate flag) from per-node sums.

    Degenerate (g-hat = 0 or d = 0): both cosines 0 and flagged. Where the noise estimate eats |g-hat|^2
    (corrected |g*|^2 <= 0) the corrected cosine is unresolved: NaN (`unresolved="nan"`, what every table
    reports), or sign(<d, g-hat>) (`"sign"`, the far end, used only inside bootstrap replicates so that an
    unresolvable replicate widens the interval instead of vanishing from it).
    """
    dot, g_sq, noise, d_sq = f64(dot), f64(g_sq), f64(noise), f64(d_sq)
    # Zero means zero: g*-hat is set exactly to 0 where all Q-hat are equal (ideal_degenerate) and d where it
    # vanishes relative to its scale, so no absolute epsilon is needed (on peaked rows |g*|^2 ~ 1e-20 is real).
    degenerate = (g_sq <= 0) | (d_sq <= 0)
    norms = torch.where(degenerate, 1.0, g_sq.clamp_min(0).sqrt() * d_sq.clamp_min(0).sqrt())
    raw = torch.where(degenerate, 0.0, dot / norms)
    gc = unbiased_g_sq(g_sq, noise)
    resolved = gc > 0
    denom = torch.where(resolved & ~degenerate, gc.clamp_min(0).sqrt() * d_sq.clamp_min(0).sqrt(), 1.0)
    fill = torch.sign(dot) if unresolved == "sign" else torch.full_like(dot, float("nan"))
    corr = torch.where(resolved, dot / denom, fill)
    corr = torch.where(degenerate, 0.0, corr)
    return raw.clamp(-1, 1), corr.clamp(-1, 1), degenerate


def ideal_degenerate(successes, counts, mask, p=None) -> torch.Tensor:
    """Nodes whose g*-hat is exactly zero: fewer than two candidates with outcomes (and student mass), or
    every such candidate with the same Q-hat (compared as exact fractions, not after rounding)."""
    s, n = f64(successes), f64(counts)
    live = mask & (n > 0)
    if p is not None:
        live = live & (f64(p) > 0)
    q = torch.where(live, s / n.clamp_min(1), float("nan"))
    hi = torch.where(live, q, -1.0).amax(-1)
    lo = torch.where(live, q, 2.0).amin(-1)
    # s_i n_j == s_j n_i is the exact test; Q-hat values are ratios of small integers, so float64 division
    # is exact enough to compare (distinct fractions with denominators < 2^26 differ by > 2^-52).
    return (live.sum(-1) < 2) | (hi == lo)


@dataclass
class NodeScores:
    """Per-node scores for one direction d (one teacher x objective) estimated from continuation outcomes:
    raw and bias-corrected cosines with bootstrap intervals, and TA; every field is [N]. (The fused kernels'
    per-node sums are diagnose.kernels.NodeStats, a different thing.)"""

    dot: torch.Tensor  # <d, g*-hat>
    g_sq: torch.Tensor  # |g*-hat|^2
    noise: torch.Tensor  # unbiased E|g*-hat|^2 - |g*|^2
    d_sq_full: torch.Tensor
    d_sq_support: torch.Tensor
    cos_full: torch.Tensor  # raw
    cos_support: torch.Tensor
    cos_full_corrected: torch.Tensor
    cos_support_corrected: torch.Tensor
    cos_full_lo: torch.Tensor
    cos_full_hi: torch.Tensor
    cos_support_lo: torch.Tensor
    cos_support_hi: torch.Tensor
    degenerate: torch.Tensor
    ta: torch.Tensor | None = None
    ta_lo: torch.Tensor | None = None
    ta_hi: torch.Tensor | None = None
    # <d, g*-hat> from each half of the continuations (`halves`): independent, each unbiased for <d, g*>; NaN
    # where a candidate has no continuation in that half. The summary's headroom chooses on one, scores on the other.
    dot_half0: torch.Tensor | None = None
    dot_half1: torch.Tensor | None = None


def bootstrap_q(successes, counts, mask, n_boot: int = 1000, prior: float = 0.5, seed: int = 0):
    """Replicates of Q-hat [B, N, K]: every candidate's n_k outcomes redrawn from Q~ = (s + a) / (n + 2a)."""
    s, n = f64(successes).numpy(), f64(counts).numpy()
    q_t = np.where(n > 0, (s + prior) / np.maximum(n + 2 * prior, EPS), 0.5)
    rng = np.random.default_rng(int(seed))
    draws = rng.binomial(n.astype(np.int64), np.broadcast_to(q_t, (int(n_boot),) + q_t.shape))
    return torch.from_numpy(draws.astype(np.float64)), torch.from_numpy(n)


def node_scores_many(
    p: torch.Tensor,
    successes: torch.Tensor,
    counts: torch.Tensor,
    mask: torch.Tensor,
    directions: Sequence[tuple],
    n_boot: int = 1000,
    level: float = 0.95,
    prior: float = 0.5,
    seed: int = 0,
    chunk: int = 128,
    halves: tuple | None = None,
) -> list[NodeScores]:
    """`node_scores` for several directions sharing one set of replicates.

    Each direction is (d, d_sq_full, teacher_p or None[, d_zero]): d_zero [N] flags nodes where d vanishes
    relative to its scale (diagnose.kernels' relative rule); without it d is zero where |d|^2 is.
    `halves` = (successes, counts) of each of two disjoint halves of the continuations ([N, K] each, see
    `split_halves`): each direction's `dot_half0` / `dot_half1` then hold <d, g*-hat> from each half alone.
    """
    p = torch.where(mask, f64(p), 0.0)
    s, n = f64(successes), f64(counts)
    q_hat = s / n.clamp_min(1)
    g, v = sparse_ideal(p, q_hat, mask)
    g_zero = ideal_degenerate(s, n, mask, p)
    g = torch.where(g_zero[:, None], 0.0, g)  # exactly zero, not round-off
    noise = noise_term(p, s, n, mask)
    alpha = (1 - level) / 2
    half_g = [] if halves is None else [_half_ideal(p, hs, hn, mask) for hs, hn in halves]
    outs = []
    for spec in directions:
        d, d_sq_full, tp = spec[:3]
        d_zero = spec[3] if len(spec) > 3 and spec[3] is not None else None
        d = torch.where(mask, f64(d), 0.0)
        d_sq_full, d_sq_support = f64(d_sq_full), (d * d).sum(-1)
        if d_zero is not None:
            d_zero = torch.as_tensor(d_zero, dtype=torch.bool)
            d = torch.where(d_zero[:, None], 0.0, d)
            d_sq_full = torch.where(d_zero, 0.0, d_sq_full)
            d_sq_support = torch.where(d_zero, 0.0, d_sq_support)
        dot, g_sq = (d * g).sum(-1), (g * g).sum(-1)
        cos_f, cos_fc, deg_f = corrected_cosine(dot, g_sq, noise, d_sq_full)
        cos_s, cos_sc, deg_s = corrected_cosine(dot, g_sq, noise, d_sq_support)
        ta = None
        if tp is not None:
            tq = torch.where(mask, f64(tp), 0.0)
            ta = ((tq - p) * torch.where(mask, q_hat - v[:, None], 0.0)).sum(-1)
        outs.append(
            NodeScores(
                dot=dot,
                g_sq=g_sq,
                noise=noise,
                d_sq_full=d_sq_full,
                d_sq_support=d_sq_support,
                cos_full=cos_f,
                cos_support=cos_s,
                cos_full_corrected=cos_fc,
                cos_support_corrected=cos_sc,
                cos_full_lo=torch.empty_like(dot),
                cos_full_hi=torch.empty_like(dot),
                cos_support_lo=torch.empty_like(dot),
                cos_support_hi=torch.empty_like(dot),
                degenerate=deg_f | deg_s | g_zero,
                ta=ta,
                ta_lo=None if ta is None else torch.empty_like(dot),
                ta_hi=None if ta is None else torch.empty_like(dot),
                dot_half0=(d * half_g[0]).sum(-1) if half_g else None,
                dot_half1=(d * half_g[1]).sum(-1) if half_g else None,
            )
        )
    for a in range(0, p.shape[0], chunk):
        sl = slice(a, a + chunk)
        draws, nc = bootstrap_q(s[sl], n[sl], mask[sl], n_boot, prior, seed + a)
        pc, mc = p[sl].expand_as(draws), mask[sl].expand_as(draws)
        q_b = draws / nc.clamp_min(1)
        g_b, v_b = sparse_ideal(pc, q_b, mc)
        gsq_b = (g_b * g_b).sum(-1)
        noise_b = (noise_weights(p[sl], mask[sl]) * q_variance(draws, nc)).sum(-1)
        for spec, st in zip(directions, outs, strict=False):
            d, tp = spec[0], spec[2]
            dc = torch.where(mask[sl], f64(d[sl]), 0.0)
            dot_b = (dc * g_b).sum(-1)
            for tag, dsq in (("full", st.d_sq_full[sl]), ("support", st.d_sq_support[sl])):
                _, rep, _ = corrected_cosine(dot_b, gsq_b, noise_b, dsq, unresolved="sign")
                getattr(st, f"cos_{tag}_lo")[sl] = torch.quantile(rep, alpha, dim=0)
                getattr(st, f"cos_{tag}_hi")[sl] = torch.quantile(rep, 1 - alpha, dim=0)
            if tp is not None:
                tq = torch.where(mask[sl], f64(tp[sl]), 0.0)
                ta_b = ((tq - p[sl]) * torch.where(mc, q_b - v_b[..., None], 0.0)).sum(-1)
                st.ta_lo[sl] = torch.quantile(ta_b, alpha, dim=0)
                st.ta_hi[sl] = torch.quantile(ta_b, 1 - alpha, dim=0)
    return outs


def split_halves(outcomes: Sequence[Sequence[Sequence[int]]], width: int) -> tuple:
    """Two disjoint halves of each candidate's continuations, by index parity: ((s0, n0), (s1, n1)), each [N, width].

    `outcomes[i][k]` lists the 0/1 outcomes of candidate k at node i in continuation-index order. Continuations
    are independent draws whose number did not depend on their own outcomes, so the halves are independent
    estimates of the same Q, which is what cross-fitting needs (choose on one, score on the other)."""
    out = []
    for parity in (0, 1):
        s = torch.zeros(len(outcomes), width, dtype=torch.float64)
        n = torch.zeros(len(outcomes), width, dtype=torch.float64)
        for i, node in enumerate(outcomes):
            for k, o in enumerate(node):
                half = o[parity::2]
                s[i, k], n[i, k] = sum(half), len(half)
        out.append((s, n))
    return tuple(out)


def _half_ideal(p, s, n, mask) -> torch.Tensor:
    """g*-hat from one half's Q-hat; NaN rows where a candidate of the node has no continuation in the half
    (g*-hat is linear in Q-hat only on the full candidate set, which is what keeps <d, g*-hat> unbiased)."""
    s, n = f64(s), f64(n)
    g, _ = sparse_ideal(p, s / n.clamp_min(1), mask)
    complete = ~(mask & (n <= 0)).any(-1)
    return torch.where(complete[:, None], g, float("nan"))


def node_scores(p, successes, counts, mask, d, d_sq_full, teacher_p=None, **kw) -> NodeScores:
    """Point estimates (raw and corrected cosines, TA) with bootstrap intervals for each node.

    p, successes, counts, d, teacher_p: [N, K] on the candidates (mask [N, K]); d_sq_full [N] = |d|^2 over
    the whole vocabulary; teacher_p holds the teacher's probabilities on the candidates (for TA).
    """
    return node_scores_many(p, successes, counts, mask, [(d, d_sq_full, teacher_p)], **kw)[0]


def effective_nodes(g_sq, noise, degenerate, weights=None) -> dict[str, float]:
    """The one effective node count: Kish's (sum a)^2 / sum a^2 with a_n = w_n max(|g_n|^2 - noise_n, 0).

    a_n is node n's share of the pooled signal (w_n: tokens it stands for, 1 by default): nodes whose signal
    is within noise count for nothing, and one dominant node counts as one. `informative` counts the nodes
    with a positive corrected |g*|^2 that are not degenerate.
    """
    g_sq, noise = f64(g_sq), f64(noise)
    w = torch.ones_like(g_sq) if weights is None else f64(weights)
    silent = torch.tensor(np.asarray(degenerate, dtype=bool))  # a copy: the input may be a read-only array
    a = torch.where(silent, 0.0, w * (g_sq - noise).clamp_min(0.0))
    total = float(a.sum())
    n_eff = total * total / float((a * a).sum()) if total > 0 else 0.0
    return {"effective_nodes": n_eff, "informative_nodes": int((a > 0).sum()), "nodes": int(a.numel())}


def pooled_alignment(dot_unit, g_sq, noise, live, weights=None):
    """Noise-consistent alignment of a group of nodes over the nodes where the direction is live:
    cos(concat sqrt(w) g*, concat sqrt(w) u) over those nodes, u = d / |d|.

    live = 1 where the configuration has a direction (d != 0 and not no_signal), 0 elsewhere; dot_unit =
    <g*-hat, d> / |d| per node (0 where not live). Every sum runs over live nodes only: with A = sum w live
    dot_unit (unbiased: linear in Q-hat), B = sum w live (|g-hat|^2 - noise) (unbiased for sum_live w |g*|^2)
    and U = sum w live, the estimate A / sqrt(B U) converges to

        E_w[|g*| cos(g*, d) | live] / sqrt(E_w[|g*|^2 | live])

    as nodes grow, whatever the number of continuations per candidate: noise does not shrink it, so groups
    whose |g*| differ (correct vs incorrect rollouts, Q near 1) compare fairly, and a direction that is
    silent at some nodes is scored on the nodes where it has one (a node without a direction leaves the
    numerator and both denominators, so silence at a fraction f of nodes does not scale it by sqrt(1 - f)).
    NaN when B <= 0 or U = 0. Works on the last axis (batches of replicates allowed).
    """
    dot_unit, g_sq, noise, live = (f64(x) for x in (dot_unit, g_sq, noise, live))
    w = torch.ones_like(dot_unit) if weights is None else f64(weights)
    on = live != 0
    a = torch.where(on, w * dot_unit, 0.0).sum(-1)
    b = torch.where(on, w * (g_sq - noise), 0.0).sum(-1)
    u = torch.where(on, w, 0.0).sum(-1)
    return torch.from_numpy(np.asarray(pooled_from_sums(a.numpy(), b.numpy(), u.numpy()), dtype=np.float64))


def pooled_from_sums(a, b, u, unresolved: str = "nan"):
    """`pooled_alignment` from its sums A, B, U over live nodes (numpy arrays of any matching shape): A / sqrt(B U).

    Where U = 0 (no direction anywhere) it is NaN. Where B <= 0 (the noise leaves no signal) it is
    unresolved: NaN (`unresolved="nan"`, point estimates), or sign(A) (`"sign"`, the far end, for bootstrap
    replicates, so that thin evidence widens the interval instead of vanishing from it), as
    `corrected_cosine` does per node. The summary calls this on per-rollout sums and their replicates."""
    a, b, u = (np.asarray(x, dtype=np.float64) for x in (a, b, u))
    ok = (b > 0) & (u > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.clip(a / np.sqrt(np.where(ok, b * u, np.nan)), -1.0, 1.0)
    fill = np.sign(a) if unresolved == "sign" else np.full_like(a, np.nan)
    return np.where(ok, out, np.where(u > 0, fill, np.nan))


def rollout_cosine(dot, g_sq, d_sq, rollouts=None, weights=None, noise=None) -> pd.DataFrame:
    """Rollout-level cosine: cos(concatenated g*, concatenated w d) over each rollout's nodes, raw and corrected.

    The one implementation (the estimator's rollout scores and the summary's `rollout_cos` call it). Per-node
    inputs, each [N]: dot = <g*_n, d_n>, g_sq = |g*_n|^2, d_sq = |d_n|^2, `noise` = the noise term of |g*_n|^2
    (0 if None); weights w_n scale d_n (1 if None); `rollouts` labels each node's rollout (all one rollout if
    None). Per rollout, with A = sum w dot, B = sum g_sq, D = sum w^2 d_sq and N = sum noise (pandas sums):

        cos           = A / sqrt(B D)          (diagnose.alignment.safe_cosine: 0 and degenerate where
                                                 sqrt(B D) <= 1e-20),
        cos_corrected = A / sqrt((B - N) D)    (`corrected_cosine`: NaN where B - N <= 0), 0 where degenerate.

    Returns a DataFrame indexed by rollout label (sorted) with columns cos, cos_corrected, degenerate.
    """
    dot, g_sq, d_sq = (_np64(x) for x in (dot, g_sq, d_sq))
    w = np.ones_like(dot) if weights is None else _np64(weights)
    parts = pd.DataFrame(
        {
            "r": np.zeros(len(dot), dtype=np.int64) if rollouts is None else np.asarray(rollouts),
            "dot": w * dot,
            "g_sq": g_sq,
            "d_sq": w * w * d_sq,
            "noise": np.zeros_like(dot) if noise is None else _np64(noise),
        }
    )
    sums = parts.groupby("r", sort=True)[["dot", "g_sq", "d_sq", "noise"]].sum()
    a, b, d, n = (torch.tensor(sums[c].to_numpy(), dtype=torch.float64) for c in ("dot", "g_sq", "d_sq", "noise"))
    cos, degenerate = safe_cosine(a, b, d)
    _, corrected, _ = corrected_cosine(a, b, n, d)
    corrected = torch.where(degenerate, 0.0, corrected)
    return pd.DataFrame(
        {"cos": cos.numpy(), "cos_corrected": corrected.numpy(), "degenerate": degenerate.numpy()},
        index=sums.index,
    )


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
