r"""Adaptive allocation of continuations: spend them where they shrink the widest alignment intervals.

Delta method, per node and direction d: theta = cos(g*, d_C) (the support cosine; the full one is the same
times the constant |d_C|/|d|), g* = A Q with A_ik = p_i (delta_ik - pi_k) (see stats). The sensitivity is
J = A^T u, u = d / (|g||d_C|) - theta g / |g|^2, i.e. J_k = p_k u_k - pi_k sum_i p_i u_i, and
Var(theta-hat) ~ sum_k J_k^2 sigma_k^2 / n_k with sigma_k^2 from a smoothed Q~ = (s + 1) / (n + 2), so that
a candidate with all-equal outcomes still looks uncertain. |g|^2 is the bias-corrected one, floored at its
noise level, where the cosine cannot be resolved anyway.

Each round hands out `round_size` continuations in steps of `step`: the node whose worst direction has the
widest predicted interval (among nodes still above the target half-width) gets `step` more continuations on
the candidate whose extra samples shrink that variance most, J_k^2 sigma_k^2 (1/n_k - 1/(n_k + step));
the predicted variance is updated and the next step chosen. A node gets at most `growth` times its current
count per round, so the plan is revised as Q-hat sharpens. Candidates with small p_k matter little
(J_k ~ p_k), which is where uniform allocation wastes most.
"""

from __future__ import annotations

import heapq

import torch

from .stats import EPS, _f64, noise_term, noise_weights, sparse_ideal


def sensitivities(p, successes, counts, mask, d) -> tuple[torch.Tensor, torch.Tensor]:
    """(J [N, K], sigma^2 [N, K]): d theta / d Q_k and the smoothed per-outcome variance Q~ (1 - Q~)."""
    p, d = torch.where(mask, _f64(p), 0.0), torch.where(mask, _f64(d), 0.0)
    s, n = _f64(successes), _f64(counts)
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
    return (mask & (_f64(p) > 1e-12)).sum(-1) < 2


def g_upper(p, successes, counts, mask, z: float = 1.96) -> torch.Tensor:
    """An upper confidence bound on |g*| per node: |g-hat| + z sqrt(sum_k w_k sigma~_k^2 / n_k)"""
    p, s, n = torch.where(mask, _f64(p), 0.0), _f64(successes), _f64(counts)
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
    n = _f64(counts).clamp_min(1)
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


def allocate(
    p,
    successes,
    counts,
    mask,
    directions,
    round_size: int,
    step: int = 2,
    target_half_width: float | None = None,
    z: float = 1.96,
    max_per_candidate: int = 1024,
    g_tolerance: float = 0.01,
    growth: float = 1.0,
) -> dict[tuple[int, int], int]:
    """{(node, candidate): extra continuations} for one round (empty when every node meets the target)."""
    counts = _f64(counts)
    jacs, sigs, variances = [], [], []
    for d in directions:
        jac, sig = sensitivities(p, successes, counts, mask, d)
        jacs.append(jac)
        sigs.append(sig)
        variances.append(predicted_variance(jac, sig, counts, mask))
    if not jacs:
        return {}
    # Where the signal is not yet detected (corrected |g|^2 within its noise), the cosine's delta method is
    # meaningless: spend on the candidates that sharpen |g| itself (weights w_k of stats.noise_weights).
    s_, n_ = _f64(successes), counts
    g_hat, _ = sparse_ideal(torch.where(mask, _f64(p), 0.0), s_ / n_.clamp_min(1), mask)
    undetected = (g_hat * g_hat).sum(-1) - noise_term(p, s_, n_, mask) <= noise_term(p, s_, n_, mask)
    w_noise = noise_weights(p, mask)
    jac = torch.stack(jacs)  # [D, N, K]
    sig = torch.stack(sigs)
    var = torch.stack(variances)  # [D, N]
    n = counts.clone()
    target_var = None if target_half_width is None else (target_half_width / z) ** 2
    heap = []
    dead = finished(p, successes, counts, mask, g_tolerance, z)
    for i in range(var.shape[1]):
        v = float(var[:, i].max())
        if not dead[i] and (target_var is None or v > target_var):
            heapq.heappush(heap, (-v, i))
    alloc: dict[tuple[int, int], int] = {}
    given = 0
    # Sensitivities come from the current Q-hat: a node gets at most `growth` x its current count per round,
    # so allocations are re-planned as the estimates sharpen (sequential design, not one blind pour).
    cap = (torch.where(mask, counts, 0.0).sum(-1) * growth).clamp_min(step)
    node_given = torch.zeros(counts.shape[0], dtype=torch.float64)
    while heap and given + step <= round_size:
        _, i = heapq.heappop(heap)
        if node_given[i] + step > cap[i]:
            continue
        worst = int(var[:, i].argmax())
        room = (n[i] + step <= max_per_candidate) & mask[i]
        if not room.any():
            continue
        shrink = 1 / n[i].clamp_min(1) - 1 / (n[i] + step)
        if undetected[i]:
            gain = w_noise[i] * sig[worst, i] * shrink
        else:
            gain = jac[worst, i] ** 2 * sig[worst, i] * shrink
        gain = torch.where(room, gain, -1.0)
        k = int(gain.argmax())
        # Update every direction's predicted variance at node i for the extra samples on k.
        var[:, i] -= jac[:, i, k] ** 2 * sig[:, i, k] * (1 / n[i, k].clamp_min(1) - 1 / (n[i, k] + step))
        n[i, k] += step
        node_given[i] += step
        alloc[(i, k)] = alloc.get((i, k), 0) + step
        given += step
        v = float(var[:, i].max())
        if target_var is None or v > target_var:
            heapq.heappush(heap, (-v, i))
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
    counts = _f64(counts)
    done = torch.zeros(counts.shape[0], dtype=torch.bool) if done is None else done
    order = torch.argsort(_f64(half_width), descending=True).tolist()
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
