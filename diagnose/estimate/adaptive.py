r"""Adaptive allocation of continuations: a pilot plans, fresh continuations estimate.

Why a pilot. If the number of continuations a candidate gets depends on outcomes that are then averaged into
its Q-hat, Q-hat is biased (stopping once a node looks resolved keeps lucky runs short), and more questions do
not remove it. So the outcomes that decide the allocation (the pilot: the first `adaptive_initial`
continuations per candidate, `NodeEstimate.pilot`) are never averaged into Q-hat. `allocate` plans from the
pilot alone, in one go, how many fresh estimation continuations each candidate gets, and Q-hat uses only
those: given the plan (a function of the pilot) they are iid Bernoulli(Q_k), so Q-hat, <d, g-hat> and the
noise-corrected |g|^2 are unbiased. The pilot is spent but not used for estimation.

The plan. Every candidate gets `ESTIMATION_FLOOR` = 2 estimation continuations (the least the unbiased noise
term needs). Nodes `finished` on the pilot (structurally degenerate, or |g*| confidently below
`g_tolerance`) get no more. The rest of the budget goes `step` at a time to the unfinished node with the
fewest planned continuations per candidate (equal shares across nodes), on its candidate with the largest
drop of the predicted noise of g-hat, w_k sigma~_k^2 (1/n_k - 1/(n_k + step)), with w_k = (A^T A)_kk
(stats.noise_weights: ~ p_k^2, known without any outcome) and sigma~_k^2 from the pilot's smoothed
Q~ = (s + 1) / (n + 2). So n_k ~ sqrt(w_k) sigma~_k: candidates with small p_k, where uniform allocation
wastes most, get little. With `target_half_width` a node stops once its predicted interval (below) at the
planned counts meets it.

Measured (benchmarks/estimator.py, exact model): the old sequential design, re-planned every round on the
outcomes it estimated from, was biased. Ranking nodes by the pilot's predicted width starved nodes whose
two-sample pilot looked resolved (3-4x worse than uniform on the worst nodes), and the delta-method J of a
two-sample pilot chose candidates no better than w_k; hence equal node shares and the g-hat noise. The pilot
cannot size a node either: with a target, realized widths scatter widely around it.

Predicted intervals (targets, `half_widths`) use the delta method, per node and direction d: theta =
cos(g*, d_C) (the support cosine; the full one is the same times the constant |d_C|/|d|), g* = A Q with
A_ik = p_i (delta_ik - pi_k) (see stats). The sensitivity is J = A^T u, u = d / (|g||d_C|) - theta g /
|g|^2, i.e. J_k = p_k u_k - pi_k sum_i p_i u_i, and Var(theta-hat) ~ sum_k J_k^2 sigma_k^2 / n_k with
sigma_k^2 from Q~, so that a candidate with all-equal outcomes still looks uncertain. |g|^2 is the
bias-corrected one, floored at its noise level, where the cosine cannot be resolved anyway.
"""

from __future__ import annotations

import heapq

import numpy as np
import torch

from .stats import EPS, f64, noise_term, noise_weights, sparse_ideal


def sensitivities(p, successes, counts, mask, d) -> tuple[torch.Tensor, torch.Tensor]:
    """(J [N, K], sigma^2 [N, K]): d theta / d Q_k and the smoothed per-outcome variance Q~ (1 - Q~)."""
    p, d = torch.where(mask, f64(p), 0.0), torch.where(mask, f64(d), 0.0)
    s, n = f64(successes), f64(counts)
    q_hat = s / n.clamp_min(1)
    q_s = (s + 1) / (n + 2)
    g, _ = sparse_ideal(p, q_hat, mask)
    # Bias-corrected |g|^2 (stats), floored at its noise level: at small n a spuriously large |g-hat| would
    # otherwise promise a narrow interval; below the noise the cosine cannot be resolved anyway.
    floor = noise_term(p, q_s * n, n, mask) + 1e-12
    g_sq = torch.maximum((g * g).sum(-1) - noise_term(p, s, n, mask), floor)
    d_norm = (d * d).sum(-1).clamp_min(EPS).sqrt()
    theta = (d * g).sum(-1) / (g_sq.sqrt() * d_norm)
    u = d / (g_sq.sqrt() * d_norm)[:, None] - theta[:, None] * g / g_sq[:, None]
    pi = p / p.sum(-1, keepdim=True).clamp_min(EPS)
    jac = torch.where(mask, p * u - pi * (p * u).sum(-1, keepdim=True), 0.0)
    return jac, torch.where(mask, q_s * (1 - q_s), 0.0)


def structural(p, mask) -> torch.Tensor:
    """Nodes whose g* is zero whatever Q is (< 2 candidates with student mass)."""
    return (mask & (f64(p) > 1e-12)).sum(-1) < 2


def g_upper(p, successes, counts, mask, z: float = 1.96) -> torch.Tensor:
    """An upper confidence bound on |g*| per node: |g-hat| + z sqrt(sum_k w_k sigma~_k^2 / n_k)"""
    p, s, n = torch.where(mask, f64(p), 0.0), f64(successes), f64(counts)
    g, _ = sparse_ideal(p, s / n.clamp_min(1), mask)
    q_s = (s + 1) / (n + 2)
    spread = torch.where(mask, noise_weights(p, mask) * q_s * (1 - q_s) / n.clamp_min(1), 0.0).sum(-1)
    return (g * g).sum(-1).sqrt() + z * spread.clamp_min(0).sqrt()


def finished(p, successes, counts, mask, g_tolerance: float = 0.01, z: float = 1.96) -> torch.Tensor:
    """Nodes that need no more continuations: structurally degenerate, or |g*| confidently below g_tolerance
    (the cosine of a vanishing gradient is undefined and the node weighs nothing at rollout level)."""
    return structural(p, mask) | (g_upper(p, successes, counts, mask, z) < g_tolerance)


def predicted_variance(jac, sigma2, counts, mask) -> torch.Tensor:
    """Delta-method Var(theta-hat) per node."""
    n = f64(counts).clamp_min(1)
    return torch.where(mask, jac**2 * sigma2 / n, 0.0).sum(-1)


def half_widths(p, successes, counts, mask, directions, z: float = 1.96) -> torch.Tensor:
    """Predicted interval half-width per node: the worst over the directions (list of d [N, K]).

    Structurally degenerate nodes (see `structural`) get 0: they are flagged, not estimated.
    """
    out = []
    for d in directions:
        jac, sig = sensitivities(p, successes, counts, mask, d)
        out.append(z * predicted_variance(jac, sig, counts, mask).sqrt())
    if not out:
        return torch.zeros(p.shape[0], dtype=torch.float64)
    return torch.where(structural(p, mask), 0.0, torch.stack(out).amax(0))


ESTIMATION_FLOOR = 2  # estimation continuations every candidate gets, whatever the pilot says


def allocate(
    p,
    successes,
    counts,
    mask,
    directions,
    budget: int,
    step: int = 2,
    target_half_width: float | None = None,
    z: float = 1.96,
    max_per_candidate: int = 1024,
    g_tolerance: float = 0.01,
    drawn=None,
    floor: int = ESTIMATION_FLOOR,
) -> dict[tuple[int, int], int]:
    """{(node, candidate): estimation continuations to draw}, planned from the pilot in one go (module doc).

    `successes`, `counts` [N, K] are the pilot's (planning only); `mask` the candidates it covered;
    `directions` the d [N, K] whose predicted intervals a target applies to; `drawn` [N, K] the estimation
    outcomes each candidate already has (default none): the plan tops them up. Every decision reads the pilot
    only, so the plan is independent of the outcomes it will be averaged with. Floors go to whole nodes,
    unfinished ones first, while the budget lasts (a node without them gets no estimation outcome and is
    reported degenerate); then `step` at a time as in the module docstring, at most `max_per_candidate`
    estimation continuations per candidate, until `budget` is planned or every unfinished node meets the
    target.
    """
    counts = f64(counts)
    mask = torch.as_tensor(mask, dtype=torch.bool)
    if budget <= 0:
        return {}
    live = mask.numpy()
    # numpy copies: the greedy takes thousands of tiny steps, where torch's per-op overhead dominates.
    noise = noise_weights(p, mask).numpy()
    q_s = ((f64(successes) + 1) / (counts + 2)).numpy()
    noise = noise * q_s * (1 - q_s)  # w_k sigma~_k^2
    have = np.zeros(live.shape) if drawn is None else f64(drawn).numpy()
    n = np.where(live, np.maximum(have, float(floor)), 0.0)
    if target_half_width is not None and directions:
        terms = []  # J_k^2 sigma~_k^2 per direction [D, N, K]: the predicted variance is sum_k terms / n_k
        for d in directions:
            jac, sig = sensitivities(p, successes, counts, mask, d)
            terms.append((jac**2 * sig).numpy())
        terms = np.stack(terms)
        target_var = (target_half_width / z) ** 2
    else:
        terms, target_var = None, None
    dead = finished(p, successes, counts, mask, g_tolerance, z).tolist()
    sizes = np.maximum(live.sum(-1), 1)

    def open_(i: int) -> bool:  # node i still wants more
        if terms is None:
            return True
        return float((terms[:, i] / np.maximum(n[i], 1.0)).sum(-1).max()) > target_var

    alloc: dict[tuple[int, int], int] = {}
    given = 0
    funded = []
    for i in sorted(range(live.shape[0]), key=lambda i: dead[i]):  # floors: unfinished nodes first
        need = {k: int(n[i, k] - have[i, k]) for k in np.flatnonzero(live[i]).tolist()}
        cost = sum(need.values())
        if not need or given + cost > budget:
            continue
        for k, c in need.items():
            if c > 0:
                alloc[(i, k)] = c
        given += cost
        funded.append(i)
    # Equal shares: the node with the fewest planned continuations per candidate goes next.
    heap = [(n[i].sum() / sizes[i], i) for i in funded if not dead[i] and open_(i)]
    heapq.heapify(heap)
    while heap and given + step <= budget:
        _, i = heapq.heappop(heap)
        room = (n[i] + step <= max_per_candidate) & live[i]
        if not room.any():
            continue
        gain = noise[i] * (1 / np.maximum(n[i], 1.0) - 1 / (n[i] + step))
        k = int(np.where(room, gain, -1.0).argmax())
        n[i, k] += step
        alloc[(i, k)] = alloc.get((i, k), 0) + step
        given += step
        if open_(i):
            heapq.heappush(heap, (n[i].sum() / sizes[i], i))
    return alloc


def uniform_allocate(
    counts,
    mask,
    half_width,
    round_size: int,
    step: int = 1,
    target_half_width: float | None = None,
    max_per_candidate: int = 1024,
    done=None,
) -> dict[tuple[int, int], int]:
    """Baseline: `step` more continuations on every candidate of the nodes still above the target."""
    counts = f64(counts)
    done = torch.zeros(counts.shape[0], dtype=torch.bool) if done is None else done
    order = torch.argsort(f64(half_width), descending=True).tolist()
    alloc, given = {}, 0
    for i in order:
        if bool(done[i]) or (target_half_width is not None and float(half_width[i]) <= target_half_width):
            continue
        ks = [
            k for k in range(mask.shape[1]) if bool(mask[i, k]) and counts[i, k] + step <= max_per_candidate
        ]
        if not ks or given + step * len(ks) > round_size:
            continue
        for k in ks:
            alloc[(i, k)] = step
        given += step * len(ks)
    return alloc
