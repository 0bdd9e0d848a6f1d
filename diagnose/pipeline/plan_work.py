"""The arithmetic of `diagnose plan`: what a config asks for, given rollout lengths. Counts the budget bounds
are [lo, hi] bounds (`node_bounds`, `continuation_bounds`); `expected_totals` replays the estimator's node
selection on the calibration's rollout lengths for point estimates. No engine is called here (plan.py
measures)."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Sequence

from ..estimate.budget import Budget
from ..estimate.nodes import select_nodes, window_index
from ..estimate.pipeline import REFINE_PASSES
from ..estimate.pipeline import SELECTION_PASSES as MAX_PASSES
from .config import RunConfig

# ---- arithmetic on the config ------------------------------------------------------------------------------


def budget_model(cfg: RunConfig) -> Budget:
    """The estimator's own cost model for this run (what a node's first round costs, what selection may spend)."""
    return Budget(cfg.estimate_config(), len(cfg.teachers))


def node_costs(cfg: RunConfig) -> tuple[int, int]:
    """(fewest, most) continuations a node's first round can cost, by the estimator's Budget: candidate sets
    hold top_k to 1 + top_k + top_k x teachers tokens (they overlap), each candidate gets `continuations`
    (adaptive: its pilot's); the most is what selection reserves."""
    budget = budget_model(cfg)
    return budget.first_round(max(cfg.top_k, 1)), budget.first_round(budget.nominal_candidates)


def node_budget(cfg: RunConfig) -> float:
    """Continuations node selection may spend on first rounds (adaptive keeps a reserve for planned ones)."""
    return budget_model(cfg).node_budget


def _window_remaining(n: int, w: int, anchor: str) -> float:
    """Mean tokens left (L - t, the forced token included) over window w of a rollout of n tokens: offsets
    [2^w - 1, 2^(w+1) - 1) from the anchor, clipped to the rollout."""
    a, b = 2**w - 1, min(2 ** (w + 1) - 1, n)
    mean_offset = (a + b - 1) / 2
    return mean_offset + 1 if anchor == "end" else n - mean_offset


def expected_remaining(length: float, strategy: str = "windows") -> float:
    """Mean tokens left after a node in a rollout of `length` tokens (rounded) when every window gets an equal
    share of nodes and positions are uniform inside a window (a budget large enough for every window)."""
    n = int(round(length))
    if n < 1:
        return 0.0
    if strategy in ("uniform", "every"):
        return (n + 1) / 2
    anchor = "end" if strategy == "windows_end" else "start"
    return sum(_window_remaining(n, w, anchor) for w in range(n.bit_length())) / n.bit_length()


def selection_remaining(cfg: RunConfig, length: float) -> float:
    """Mean tokens left after a node where a first selection pass puts nodes (nodes.select_nodes on `rollouts`
    rollouts of `length` tokens, each node at the most cost): a window whose share buys no node passes it on,
    so a small budget gathers nodes in the widest windows, late in the response."""
    n = int(round(length))
    if n < 1 or cfg.nodes in ("uniform", "every"):
        return expected_remaining(n, cfg.nodes)
    anchor = "end" if cfg.nodes == "windows_end" else "start"
    _, most = node_costs(cfg)
    strategy = "windows_end" if anchor == "end" else "windows"
    chosen = select_nodes([n] * cfg.rollouts, node_budget(cfg), lambda r, t: most, strategy, seed=cfg.seed)
    if not chosen:
        return expected_remaining(n, cfg.nodes)
    windows = [window_index(node.position, n, anchor) for node in chosen]
    return sum(_window_remaining(n, w, anchor) for w in windows) / len(windows)


def node_bounds(cfg: RunConfig, positions: int) -> tuple[int, int]:
    """[lo, hi] nodes of one question: the first pass takes floor(node budget / most cost) nodes (`refine`: of
    its first share), later passes only add; spend never passes the node budget (the budget, less adaptive's
    reserve) and each node costs at least the fewest; at most MAX_PASSES passes (not `refine`) each take at
    most that many. Never beyond `positions`."""
    least, most = node_costs(cfg)
    if cfg.nodes == "every":
        return positions, positions
    share = cfg.estimate_config().refine_fraction if cfg.nodes == "refine" else 1.0
    spend = node_budget(cfg)
    first = math.floor(spend * share + 1e-9) // most
    hi = min(math.floor(spend + 1e-9) // least, positions)
    if cfg.nodes != "refine":
        hi = min(hi, MAX_PASSES * first)
    return min(first, positions), hi


def continuation_bounds(cfg: RunConfig, positions: int) -> tuple[int, int]:
    """[lo, hi] continuations of one question, at most the budget. Selection ends when what is left of the node
    budget buys no node at the most cost (spent > node budget - most cost), after MAX_PASSES passes (each
    adding a node), or when every position is a node: first rounds spend at least the smallest of those three
    (`refine`: its first-pass nodes). Adaptive's planned continuations come on top, up to the budget."""
    least, most = node_costs(cfg)
    adaptive = cfg.allocation == "adaptive"
    if cfg.nodes == "every":  # every position is a node, whatever its first rounds cost
        return least * positions, (max if adaptive else min)(cfg.budget, most * positions)
    first, nodes_hi = node_bounds(cfg, positions)
    # uniform allocation spends only first rounds, at most the nominal cost per node: few positions cap it
    hi = cfg.budget if adaptive else min(cfg.budget, most * nodes_hi)
    if cfg.nodes == "refine":
        return least * first, hi
    spend = math.floor(node_budget(cfg) + 1e-9)
    lo = min(spend - most + 1, least * (first + MAX_PASSES - 1), least * positions)
    return max(lo, 0), hi


def max_passes(cfg: RunConfig, nodes_hi: int) -> int:
    """Selection passes that score rollouts: each adds a node; at most MAX_PASSES (`refine`: plus its own
    REFINE_PASSES), one for `every`."""
    if cfg.nodes == "every":
        return 1
    limit = MAX_PASSES + (REFINE_PASSES if cfg.nodes == "refine" else 0)
    return max(1, min(limit, nodes_hi))


def in_continuations(cfg: RunConfig, length: float) -> RunConfig:
    """The config with a token budget (`--budget-unit tokens`) read as the continuations it buys: the budget
    over the mean tokens a continuation runs (L - t where selection puts nodes). An estimate, not a bound:
    the estimator spends a token budget in expectation (its second round plans on what the first one cost).
    A budget in continuations is returned as it is."""
    if cfg.budget_unit != "tokens":
        return cfg
    as_continuations = replace(cfg, budget_unit="continuations")
    first = replace(as_continuations, budget=max(1, math.floor(cfg.budget / max(1.0, expected_remaining(length)))))
    per_continuation = max(1.0, selection_remaining(first, length))
    return replace(as_continuations, budget=max(1, math.floor(cfg.budget / per_continuation + 1e-9)))


def _planned_bounds(cfg: RunConfig, positions: int, budgets: Sequence[float], length: float) -> tuple[list, list]:
    """[lo, hi] nodes and continuations summed over questions estimated at `budgets` (0: skipped)."""
    nodes, conts = [0, 0], [0, 0]
    for b in budgets:
        if b <= 0:
            continue
        one = in_continuations(replace(cfg, budget=b), length)
        nodes = [x + y for x, y in zip(nodes, node_bounds(one, positions), strict=True)]
        conts = [x + y for x, y in zip(conts, continuation_bounds(one, positions), strict=True)]
    return nodes, conts


# ---- point estimates (the estimator's selection replayed on rollout lengths) ------------------------------

EXPECTED_SEEDS = 8  # selection seeds the point estimate averages over (node positions are random)


def expected_question(cfg: RunConfig, lengths: Sequence[int], candidates: float) -> dict:
    """Point estimate (~) of one question's nodes, continuations and continuation tokens for rollouts of these
    `lengths`: Estimator.select's passes replayed (select_nodes at the most cost, each node then charged
    `candidates` x its per-candidate continuations, as the estimator charges a node's real candidate set),
    each continuation running as far as its rollout had left (L - t: a continuation from a node follows the
    rollout's policy, and the rollout is one draw of it). Averaged over EXPECTED_SEEDS selection seeds.
    Adaptive allocation spends the rest of the budget on planned continuations; a token budget is spent in
    expectation (both as the estimator does)."""
    lengths = [int(n) for n in lengths]
    if not lengths or max(lengths) < 1:
        return {"nodes": 0.0, "continuations": 0.0, "continuation_tokens": 0.0}
    budget = budget_model(cfg)
    per_node = max(1e-9, candidates * budget.per_candidate - (1 if budget.cfg.free_sample else 0))
    if cfg.nodes == "every":
        nodes = [(r, t) for r, n in enumerate(lengths) for t in range(n)]
        left = sum(lengths[r] - t for r, t in nodes) / len(nodes)
        return {"nodes": float(len(nodes)), "continuations": per_node * len(nodes),
                "continuation_tokens": per_node * len(nodes) * left}
    tokens = cfg.budget_unit == "tokens"
    _, most = node_costs(cfg)
    strategy = "windows" if cfg.nodes == "refine" else cfg.nodes
    share = budget.node_budget * (cfg.estimate_config().refine_fraction if cfg.nodes == "refine" else 1.0)
    limit = cfg.max_new_tokens

    def cost(r: int, t: int) -> float:  # the estimator's planning cost: the bound at the nominal candidate set
        return most * max(1, limit - t) if tokens else most

    def charged(r: int, t: int) -> float:  # what a chosen node is charged: its (expected) candidate set
        return per_node * max(1, limit - t) if tokens else per_node

    totals = [0.0, 0.0, 0.0]
    for s in range(EXPECTED_SEEDS):
        chosen: list = []
        planned = 0.0
        for p in range(MAX_PASSES):
            new = select_nodes(lengths, share - planned, cost, strategy, seed=cfg.seed + 1000 * s + p, exclude=chosen)
            if not new:
                break
            chosen += new
            planned += sum(charged(n.rollout, n.position) for n in new)
        if not chosen:
            continue
        left = sum(max(1, lengths[n.rollout] - n.position) for n in chosen) / len(chosen)
        nodes, conts = float(len(chosen)), per_node * len(chosen)
        if tokens:  # round 2 plans on what round 1 really cost: the budget is spent in expectation
            conts = max(conts, cfg.budget / left)
            nodes = conts / per_node
        elif cfg.allocation == "adaptive":  # the reserve goes to planned continuations at the same nodes
            conts = max(conts, math.floor(cfg.budget + 1e-9))
        elif cfg.nodes == "refine":  # bisection passes add nodes until the node budget buys no more
            conts = max(conts, budget.node_budget - per_node / 2)
            nodes = conts / per_node
        totals = [totals[0] + nodes, totals[1] + conts, totals[2] + conts * left]
    names = ("nodes", "continuations", "continuation_tokens")
    return {k: v / EXPECTED_SEEDS for k, v in zip(names, totals, strict=True)}


def expected_totals(cfg: RunConfig, groups: Sequence[Sequence[int]], candidates: float,
                    budgets: Sequence[float] | None = None) -> dict:
    """`expected_question` summed over the run's questions: question i has the rollout lengths groups[i] (the
    calibration's questions, the run's first ones, stand in for the rest in turn) and budget budgets[i]
    (the frontier plan's; 0: skipped; default: every question at --budget)."""
    out = {"nodes": 0.0, "continuations": 0.0, "continuation_tokens": 0.0}
    planned = [cfg.budget] * cfg.questions if budgets is None else list(budgets)
    for i, b in enumerate(planned):
        if b <= 0 or not groups:
            continue
        one = expected_question(replace(cfg, budget=b), groups[i % len(groups)], candidates)
        out = {k: out[k] + one[k] for k in out}
    per = out["continuation_tokens"] / out["continuations"] if out["continuations"] else 0.0
    return {**{k: round(v, 1) for k, v in out.items()}, "candidates_per_node": round(float(candidates), 2),
            "tokens_per_continuation": round(per, 1)}


def expected_work(
    cfg: RunConfig, mean_rollout_tokens: float, mean_prompt_tokens: float = 0.0, budgets: Sequence[float] | None = None,
    lengths: Sequence[Sequence[int]] | None = None, candidates: float | None = None,
) -> dict:
    """What the config asks for, given the mean rollout length L (and prompt length): ranges are [lo, hi];
    the ones named as bounds hold while each question's rollouts have at least rollouts x L positions.
    `budgets`: each question's budget under the frontier plan (0: skipped; default: every question at
    --budget); the per-question figures are those of a question estimated at --budget. `lengths` (the
    calibration's rollout lengths, one list per question) and `candidates` (its mean candidate-set size; default
    the nominal, the most) add `expected`: point estimates of nodes, continuations and continuation tokens
    (`expected_totals`)."""
    q, r, length = cfg.questions, cfg.rollouts, float(mean_rollout_tokens)
    rollouts = q * r
    positions = math.floor(r * length + 1e-9)
    given = cfg
    cfg = in_continuations(cfg, length)  # a token budget as the continuations it buys (then all are estimates)
    least, most = node_costs(cfg)
    nodes = node_bounds(cfg, positions)
    conts = continuation_bounds(cfg, positions)
    planned = [given.budget] * q if budgets is None else budgets
    total_nodes, total_conts = _planned_bounds(given, positions, planned, length)
    remaining = selection_remaining(cfg, length)
    passes = (1, max_passes(cfg, nodes[1]))
    scored_per_pass = rollouts * (mean_prompt_tokens + length)  # one model's pass over every rollout
    teachers = len(cfg.teachers)
    # prefill: each prompt once for its rollouts; each node's prefix once for all its continuations
    prefill = [q * mean_prompt_tokens + n * (mean_prompt_tokens + length - remaining) for n in total_nodes]
    generated = [rollouts * length + c * remaining for c in total_conts]
    scored = [(1 + teachers) * scored_per_pass * p for p in passes]
    return {
        "questions": q,
        "rollouts": rollouts,
        "rollouts_per_question": r,
        "mean_rollout_tokens": length,
        "mean_prompt_tokens": float(mean_prompt_tokens),
        "rollout_tokens": rollouts * length,
        "positions_per_question": positions,
        "budget_unit": given.budget_unit,
        # a token budget: the continuations it buys per question (~; the node and continuation figures are then
        # estimates, not bounds)
        "budget_continuations": cfg.budget,
        "node_cost_continuations": [least, most],
        "nodes_per_question": list(nodes),
        "nodes": total_nodes,
        "continuations_per_question": list(conts),
        "continuations": total_conts,
        "node_selection": cfg.nodes,
        "mean_remaining_tokens": remaining,
        "mean_remaining_tokens_equal_shares": expected_remaining(length, cfg.nodes),
        "continuation_tokens": [c * remaining for c in total_conts],
        "planned_budgets": None if budgets is None else [float(b) for b in budgets],
        "selection_passes": list(passes),
        "teacher_scored_tokens_per_pass": teachers * scored_per_pass,
        "teacher_scored_tokens": [teachers * scored_per_pass * p for p in passes],
        "engine_forward_tokens": [g + p + s for g, p, s in zip(generated, prefill, scored, strict=True)],
        "expected": None if lengths is None else expected_totals(
            replace(given, questions=q), lengths,
            budget_model(cfg).nominal_candidates if candidates is None else candidates, budgets),
    }
