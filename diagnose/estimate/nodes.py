"""Node selection under one global budget: which prefixes (rollout, position) get targeted continuations.

A node's cost comes from `cost_fn(rollout, position)` in budget units (continuations, or tokens). Strategies:

- `windows` (default): windows of width 1, 2, 4, 8, ... over positions from the start of the response; each
  window gets an equal share of the budget and nodes are drawn at random inside it (round-robin over
  rollouts). Every node of a window is planned at the window's largest cost (in tokens the cost falls with
  the position), so the number a window takes depends on its share only, never on which positions were
  drawn: within a rollout's part of a window the chosen positions are a uniformly random subset, which is
  what `design_weights` assumes.
  A window that cannot spend its share (too few positions) passes the rest on to the windows still open,
  so the whole budget is spent unless every position is taken. The number of windows grows like log T but
  their total share stays B: cost is set by the budget, not by rollout length.
- `windows_end`: the same windows anchored at the answer end (width 1 = the last token).
- `uniform`: one window over all positions.
- `every`: every position of every rollout (small problems; refuses a budget it would exceed).
- `refine`: `windows` on part of the budget, then `refine_nodes` bisects the gaps between neighbouring nodes
  whose V-hat differ most (the end of a rollout counts as a node with value = its verdict).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

from ..errors import DiagnoseError

STRATEGIES = ("windows", "windows_end", "uniform", "every", "refine")


@dataclass(frozen=True, order=True)
class Node:
    """A prefix of rollout `rollout` (index into the rollout list) before its response token `position`."""

    rollout: int
    position: int


def window_index(position: int, length: int, anchor: str = "start") -> int:
    """Window of a position: widths 1, 2, 4, ... counted from the start (or from the last token)."""
    offset = position if anchor == "start" else length - 1 - position
    return (offset + 1).bit_length() - 1


def _windows(lengths: Sequence[int], anchor: str | None) -> dict[int, list[Node]]:
    pools: dict[int, list[Node]] = {}
    for r, length in enumerate(lengths):
        for t in range(length):
            w = 0 if anchor is None else window_index(t, length, anchor)
            pools.setdefault(w, []).append(Node(r, t))
    return pools


def _interleave(pool: list[Node], rng: random.Random) -> list[Node]:
    """Random order that visits rollouts round-robin (each rollout's k-th node before any (k+1)-th)."""
    by_r: dict[int, list[Node]] = {}
    for n in pool:
        by_r.setdefault(n.rollout, []).append(n)
    keyed = []
    for nodes in by_r.values():
        rng.shuffle(nodes)
        keyed.extend((rank, rng.random(), n) for rank, n in enumerate(nodes))
    return [n for _, _, n in sorted(keyed)]


def select_nodes(
    lengths: Sequence[int],
    budget: float | None,
    cost_fn: Callable[[int, int], float],
    strategy: str = "windows",
    seed: int = 0,
    exclude: Iterable[Node] = (),
) -> list[Node]:
    """Nodes whose total cost fits `budget` (None: no limit, `every` only), sorted.

    Rule (windowed strategies): each window's pool (positions not in `exclude`) is put in a random order that
    visits rollouts round-robin; windows, cheapest in total first, get share = budget left / windows left
    and take the first floor(share / c_w) nodes of their order (all of them if fewer), c_w being the largest
    `cost_fn` over the whole window (excluded nodes included, so c_w does not depend on earlier passes); the
    share minus what the taken nodes cost (`cost_fn`) goes to the windows after it. A rollout's part of a
    window (m positions) thus gets a count c that does not depend on which of its positions were drawn (only
    on earlier windows' draws), and a uniformly random c-subset of them: each position is picked with
    probability c / m given c (`inclusion_probs`). With a constant `cost_fn` (budgets in continuations) this
    is the plain greedy fill, as before.
    """
    if strategy not in STRATEGIES:
        raise DiagnoseError(f"unknown node strategy {strategy!r}; available: {', '.join(STRATEGIES)}")
    excluded = set(exclude)
    if strategy == "every":
        nodes = [
            Node(r, t)
            for r, length in enumerate(lengths)
            for t in range(length)
            if Node(r, t) not in excluded
        ]
        total = sum(cost_fn(n.rollout, n.position) for n in nodes)
        if budget is not None and total > budget * (1 + 1e-9):
            raise DiagnoseError(
                f"every-position selection costs {total:.0f} but the budget is {budget:.0f}; "
                "raise the budget or use windows"
            )
        return nodes
    if budget is None:
        raise DiagnoseError(f"node strategy {strategy!r} needs a budget")
    anchor = _anchor(strategy)
    rng = random.Random(seed)
    windows = _windows(lengths, anchor)
    # One planned cost per window, its most expensive position: a greedy fill at each node's own cost would
    # skip expensive (early) positions once the share runs low and keep taking cheap late ones, so in tokens
    # late positions would be picked several times as often as design_weights assumes.
    plan = {w: max(cost_fn(n.rollout, n.position) for n in pool) for w, pool in windows.items()}
    pools = {w: [n for n in pool if n not in excluded] for w, pool in windows.items()}
    pools = {w: _interleave(pool, rng) for w, pool in sorted(pools.items()) if pool}
    # Water-filling: windows that cannot spend an equal share give the rest to the others.
    full_cost = {w: sum(plan[w] for _ in pool) for w, pool in pools.items()}
    remaining, chosen = float(budget), []
    order = sorted(pools, key=lambda w: full_cost[w])
    for i, w in enumerate(order):
        share = remaining / (len(order) - i)
        planned, spent, c = 0.0, 0.0, plan[w]
        for n in pools[w]:
            if planned + c > share + 1e-9:
                break
            chosen.append(n)
            planned += c
            spent += cost_fn(n.rollout, n.position)
        remaining -= spent
    return sorted(chosen)


def refine_nodes(
    lengths: Sequence[int],
    values: Mapping[Node, float],
    final_values: Sequence[float],
    budget: float,
    cost_fn: Callable[[int, int], float],
    exclude: Iterable[Node] = (),
) -> list[Node]:
    """New nodes at the midpoints of the gaps with the largest |V-hat jump| between neighbouring nodes.

    `values` holds V-hat at estimated nodes; `final_values[r]` is rollout r's verdict (its value after the
    last token). Gaps without an untested interior position are skipped; spends at most `budget`.
    """
    taken = set(values) | set(exclude)
    by_r: dict[int, list[tuple[int, float]]] = {}
    for n, v in values.items():
        by_r.setdefault(n.rollout, []).append((n.position, float(v)))
    gaps = []
    for r, pts in by_r.items():
        pts = sorted(pts) + [(lengths[r], float(final_values[r]))]
        for (a, va), (b, vb) in zip(pts, pts[1:], strict=False):
            inner = [t for t in range(a + 1, b) if Node(r, t) not in taken]
            if inner:
                mid = min(inner, key=lambda t: abs(t - (a + b) / 2))
                gaps.append((-abs(vb - va), -(b - a), r, mid))
    chosen, spent = [], 0.0
    for _, _, r, t in sorted(gaps):
        c = cost_fn(r, t)
        if spent + c <= budget + 1e-9:
            chosen.append(Node(r, t))
            spent += c
    return sorted(chosen)


class DesignWeights(list):
    """`design_weights`' answer: a list of weights (the tokens each node stands for) that also carries each
    node's inclusion probability in `inclusion` (same order); callers that only want weights see a list."""

    def __init__(self, weights: Sequence[float] = (), inclusion: Sequence[float] = ()):
        super().__init__(weights)
        self.inclusion = list(inclusion)


def _anchor(strategy: str) -> str | None:
    return {"windows": "start", "refine": "start", "windows_end": "end", "uniform": None}.get(strategy, "start")


def design_weights(
    nodes: Sequence[Node], lengths: Sequence[int], strategy: str = "windows", groups: Sequence | None = None
) -> DesignWeights:
    """Tokens each selected node stands for, per rollout set, with (`.inclusion`) `inclusion_probs`.

    Node selection is not uniform over positions: under `windows` the first positions are always taken and
    late ones rarely, so an unweighted mean over nodes is a mean over early tokens. Within a stratum (one
    rollout's positions in one window) the chosen positions are a uniformly random subset (see
    `select_nodes`), so conditionally on the count c chosen among its m positions each stands for m / c
    tokens (post-stratification). Rollouts with no node in a window are represented by the other rollouts of
    the same question in that window (their tokens are exchangeable): the window's weights are scaled by its
    tokens over the tokens of its represented strata (only among rollouts of the same `groups[r]`, e.g. the
    same verdict, so that per-group figures weight their own tokens). A weight is therefore that rescaling
    over the inclusion probability, not 1 / inclusion. Windows with no node at all are not represented;
    `token_coverage` reports the share of tokens that are.

    Sum over nodes of weight x value is then a (Horvitz-Thompson, post-stratified) estimate of the sum over
    every token of every rollout, and ratios of such sums estimate per-token averages. `every` gives weight
    1; `uniform` has one window; `refine` is stratified by the `windows` windows (its bisection nodes are
    chosen by V-hat, not at random: the weights are then an approximation).
    """
    return DesignWeights(_token_weights(nodes, lengths, strategy, groups), inclusion_probs(nodes, lengths, strategy))


def _strata(nodes: Sequence[Node], lengths: Sequence[int], strategy: str):
    """(each node's stratum (rollout, window), positions per stratum, nodes chosen per stratum)."""
    anchor = _anchor(strategy)

    def window(r: int, t: int) -> int:
        return 0 if anchor is None else window_index(t, lengths[r], anchor)

    tokens: dict[tuple[int, int], int] = {}
    for r, length in enumerate(lengths):
        for t in range(length):
            key = (r, window(r, t))
            tokens[key] = tokens.get(key, 0) + 1
    keys = [(n.rollout, window(n.rollout, n.position)) for n in nodes]
    chosen: dict[tuple[int, int], int] = {}
    for key in keys:
        chosen[key] = chosen.get(key, 0) + 1
    return keys, tokens, chosen


def inclusion_probs(nodes: Sequence[Node], lengths: Sequence[int], strategy: str = "windows") -> list[float]:
    """Probability that selection picks each node's position: c / m, for c nodes chosen among the m positions
    of its stratum (rollout x window), in (0, 1].

    `select_nodes` takes a uniformly random c-subset of a stratum, with c independent of which positions
    were drawn, so c / m is exactly P(picked | c) and its mean over seeds is the position's selection
    frequency. Over several passes (`Estimator.select`, each excluding the nodes already chosen; c counts
    them all) a later pass's count depends a little on what the earlier nodes cost: c / m is then a close
    approximation. `refine`'s bisection nodes are not random (V-hat picks them): their c / m, in the
    `windows` strata, is only an approximation. `every`: 1.
    """
    if strategy == "every":
        return [1.0 for _ in nodes]
    keys, tokens, chosen = _strata(nodes, lengths, strategy)
    return [chosen[key] / tokens[key] for key in keys]


def _token_weights(
    nodes: Sequence[Node], lengths: Sequence[int], strategy: str, groups: Sequence | None
) -> list[float]:
    """`design_weights`' weights (post-stratified, rescaled to every token of the window and group)."""
    if strategy == "every":
        return [1.0] * len(nodes)
    keys, tokens, chosen = _strata(nodes, lengths, strategy)
    group = (lambda r: None) if groups is None else (lambda r: groups[r])  # noqa: E731
    total_w: dict[tuple, int] = {}
    covered_w: dict[tuple, int] = {}
    for (r, w), m in tokens.items():
        gw = (group(r), w)
        total_w[gw] = total_w.get(gw, 0) + m
        if chosen.get((r, w)):
            covered_w[gw] = covered_w.get(gw, 0) + m
    out = []
    for key in keys:
        gw = (group(key[0]), key[1])
        out.append(tokens[key] / chosen[key] * total_w[gw] / covered_w[gw])
    return out


def token_coverage(weights: Sequence[float], lengths: Sequence[int]) -> float:
    """Share of the rollouts' tokens that the selected nodes represent (1 when every window has a node)."""
    total = sum(lengths)
    return float(sum(weights)) / total if total else float("nan")
