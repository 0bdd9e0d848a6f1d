"""Benchmark: is a node's stored `inclusion_prob` the probability that selection picks its position? Token
budgets, where a node's cost bound falls with its position (max_new_tokens - t per continuation).

Setting: 24 rollouts (8 each of 64, 45 and 23 response tokens), max_new_tokens 64, 9 nominal candidates x 8
continuations per node, a budget of 80 nodes at the largest bound, the `windows` strategy, node costs from
`Estimator.cost` itself (so the benchmark follows the pipeline's cost bound). Over `seeds` seeds:

- one pass: `select_nodes` on the whole budget, stored probabilities from `design_weights` (its
  `.inclusion`, what `node_records` writes; 1 / weight on code from before it existed);
- passes: `Estimator.select`'s loop in tokens (round 1: up to 4 passes at the bound, each excluding the nodes
  already chosen and charging their actual candidate sets; round 2: up to 4 more, planned with the forecast
  calibrated on round 1's spend), simulated with random candidate-set sizes and continuation lengths that
  follow the rollout's own remaining length.

A position's stored probability in a seed is the `inclusion_prob` of the chosen nodes of its stratum (rollout
x window; all equal there), 0 when none was chosen; its mean over seeds is compared with the share of seeds
that picked the position. Rollouts of one length are exchangeable, so positions are pooled over them, and
(against binomial noise) over halves of a window (early / late positions; windows under 8 positions whole):
`inclusion_error` is the largest |stored - empirical| / empirical over those bins and both schemes (goal:
well under 0.10; `noise_rel_se` is the largest relative standard error of a bin). `per_position_error` is
the same per single position (noisier). Also reported: the same for `windows_end` and `uniform` (one pass),
whether every stored probability lies in (0, 1], the share of the budget one pass plans
(`planned_budget_share`) and the simulated loop spends (`spent_budget_share`).

Run: .venv/bin/python benchmarks/inclusion.py [--seeds N]   (last line: JSON)
"""

from __future__ import annotations

import json
import math
import sys
import time
from types import SimpleNamespace

import numpy as np

from diagnose import engines
from diagnose.estimate import EstimateConfig, Estimator
from diagnose.estimate.nodes import design_weights, select_nodes, window_index

MAX_NEW_TOKENS = 64
LENGTHS = (64,) * 8 + (45,) * 8 + (23,) * 8
BUDGET = 9 * 8 * 64 * 80  # tokens: 80 nodes at the largest bound
PASSES = 4  # Estimator.select's passes per round


def estimator_cost(lengths=LENGTHS, max_new_tokens: int = MAX_NEW_TOKENS):
    """`Estimator.cost` for rollouts of `lengths` tokens (a token budget, 9 nominal candidates x 8)."""
    eng = engines.load("exact", "exact", seed=1, horizon=max_new_tokens)
    cfg = EstimateConfig(
        budget_unit="tokens", budget=BUDGET, max_new_tokens=max_new_tokens, k_student=4, k_teacher=4, continuations=8
    )
    est = Estimator(eng, [], {"t": lambda rollouts, nodes: None}, ["rkl"], cfg)
    est.rollouts = [SimpleNamespace(token_ids=[0] * n) for n in lengths]
    return est.cost


def stored_probs(nodes, lengths, strategy):
    """What node_records stores as `inclusion_prob` for each node (1 / weight before DesignWeights existed)."""
    w = design_weights(nodes, lengths, strategy)
    inc = getattr(w, "inclusion", None)
    return list(inc) if inc is not None else [1.0 / x for x in w]


def _anchor(strategy):
    return {"windows": "start", "windows_end": "end"}.get(strategy)


def _mean_remaining(lengths):
    """Budget.mean_remaining: per position t, the mean of L - t over the rollouts longer than t."""
    out = []
    for t in range(max(lengths)):
        rest = [n - t for n in lengths if n > t]
        out.append(sum(rest) / len(rest))
    return out


def _multipass(lengths, cost, seed, rng):
    """Estimator.select's loop in tokens (round 1 at the bound, round 2 at the calibrated forecast), with
    random actual candidate sets and continuation lengths that follow the rollout's own remaining length."""
    chosen: set = set()
    spent, passes, k = 0.0, 0, None
    remaining = _mean_remaining(lengths)

    def node_cost(r, t, cands=9):  # 8 continuations per candidate
        if k is None:
            return cost(r, t) * cands / 9
        return 8 * cands * max(1.0, min(MAX_NEW_TOKENS - t, k * remaining[t]))

    for _ in range(2):
        new_round, planned = [], 0.0
        for _ in range(PASSES):
            nodes = select_nodes(
                lengths, BUDGET - spent - planned, node_cost, "windows", seed=seed * 100 + passes, exclude=chosen
            )
            passes += 1
            if not nodes:
                break
            chosen.update(nodes)
            cands = rng.integers(3, 10, size=len(nodes))  # actual candidates of the 9 nominal
            planned += sum(node_cost(n.rollout, n.position, c) for n, c in zip(nodes, cands, strict=True))
            new_round += list(zip(nodes, cands, strict=True))
        used = 0.0
        for n, c in new_round:  # continuations end near the rollout's own end, never past max_new_tokens - t
            bound = MAX_NEW_TOKENS - n.position
            mean = max(1.0, lengths[n.rollout] - n.position)
            used += float(np.clip(rng.normal(mean, 0.3 * mean + 2, size=8 * c), 1, bound).round().sum())
        spent += used
        if k is not None:
            break
        k = 1.0
        forecast = sum(node_cost(n.rollout, n.position, c) for n, c in new_round)
        k = max(1.0, used) / forecast if forecast > 0 else 1.0
    return sorted(chosen), spent


def _frequencies(strategy, seeds, multipass=False, lengths=LENGTHS):
    cost = estimator_cost(lengths)
    anchor = _anchor(strategy)
    hit = [np.zeros(n) for n in lengths]
    stored = [np.zeros(n) for n in lengths]
    lo, hi, planned = math.inf, -math.inf, []
    rng = np.random.default_rng(0)
    for seed in range(seeds):
        if multipass:
            nodes, spent = _multipass(lengths, cost, seed, rng)
            planned.append(spent / BUDGET)
        else:
            nodes = select_nodes(lengths, BUDGET, cost, strategy, seed=seed)
            planned.append(sum(cost(n.rollout, n.position) for n in nodes) / BUDGET)
        probs = stored_probs(nodes, lengths, strategy)
        lo, hi = min(lo, *probs), max(hi, *probs)
        by_stratum = {}
        for n, p in zip(nodes, probs, strict=True):
            hit[n.rollout][n.position] += 1
            by_stratum[(n.rollout, _window(n.position, lengths[n.rollout], anchor))] = p
        for r, n in enumerate(lengths):
            stored[r] += [by_stratum.get((r, _window(t, n, anchor)), 0.0) for t in range(n)]
    return hit, stored, (lo, hi), planned


def _window(t, length, anchor):
    return 0 if anchor is None else window_index(t, length, anchor)


def _errors(hit, stored, seeds, strategy, lengths=LENGTHS):
    """(largest relative error over bins, its bin, largest relative standard error, per-position error)."""
    anchor = _anchor(strategy)
    worst, where, noise, per_pos = 0.0, None, 0.0, 0.0
    for n in sorted(set(lengths)):
        rs = [r for r, m in enumerate(lengths) if m == n]
        emp = sum(hit[r] for r in rs) / (seeds * len(rs))
        sto = sum(stored[r] for r in rs) / (seeds * len(rs))
        bins: dict = {}
        for t in range(n):
            w = _window(t, n, anchor)
            members = [u for u in range(n) if _window(u, n, anchor) == w]
            half = 2 * members.index(t) // len(members) if len(members) >= 8 else 0
            bins.setdefault((w, half), []).append(t)
        for key, ts in bins.items():
            e, s = emp[ts].mean(), sto[ts].mean()
            trials = seeds * len(rs) * len(ts)
            se = math.sqrt(max(e * (1 - e), 1e-12) / trials) / max(e, 1e-12)
            rel = abs(s - e) / max(e, 1.0 / trials)
            noise = max(noise, se)
            if rel > worst:
                worst, where = (
                    rel,
                    {"length": n, "window": key[0], "half": key[1], "stored": float(s), "empirical": float(e)},
                )
        ok = emp > 0
        per_pos = max(per_pos, float((abs(sto[ok] - emp[ok]) / emp[ok]).max()))
    return float(worst), where, float(noise), per_pos


def inclusion_error(seeds: int = 400) -> dict:
    """Largest relative error of stored vs empirical inclusion (token budgets), with details."""
    start = time.time()
    out = {"seeds": seeds, "lengths": list(LENGTHS), "max_new_tokens": MAX_NEW_TOKENS, "budget": BUDGET}
    schemes = {
        "windows": ("windows", False),
        "windows_passes": ("windows", True),
        "windows_end": ("windows_end", False),
        "uniform": ("uniform", False),
    }
    in_range = True
    for name, (strategy, multipass) in schemes.items():
        hit, stored, (lo, hi), planned = _frequencies(strategy, seeds, multipass)
        err, where, noise, per_pos = _errors(hit, stored, seeds, strategy)
        in_range &= 0.0 < lo and hi <= 1.0 + 1e-12
        out[name] = {
            "error": err,
            "worst_bin": where,
            "noise_rel_se": noise,
            "per_position_error": per_pos,
            "stored_min": lo,
            "stored_max": hi,
        }
        if planned:
            out[name]["spent_budget_share" if multipass else "planned_budget_share"] = float(np.mean(planned))
    out["inclusion_error"] = max(out["windows"]["error"], out["windows_passes"]["error"])
    out["noise_rel_se"] = max(out["windows"]["noise_rel_se"], out["windows_passes"]["noise_rel_se"])
    out["probabilities_in_range"] = bool(in_range)
    out["seconds"] = time.time() - start
    return out


def main() -> None:
    seeds = int(sys.argv[sys.argv.index("--seeds") + 1]) if "--seeds" in sys.argv else 400
    res = inclusion_error(seeds)
    for name in ("windows", "windows_passes", "windows_end", "uniform"):
        r = res[name]
        print(
            f"{name:15s} error {r['error']:.3f} (noise {r['noise_rel_se']:.3f})"
            f" per-position {r['per_position_error']:.3f}"
            f" stored in [{r['stored_min']:.4f}, {r['stored_max']:.4f}] worst {r['worst_bin']}"
        )
    print(json.dumps(res, default=float))


if __name__ == "__main__":
    main()
