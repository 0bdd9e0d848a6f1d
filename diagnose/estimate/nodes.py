"""Node selection under one global budget: which prefixes (rollout, position) get targeted continuations.

A node's cost comes from `cost_fn(rollout, position)` in budget units (continuations, or tokens). Strategies:

- `windows` (default): windows of width 1, 2, 4, 8, ... over positions from the start of the response; each
  window gets an equal share of the budget and nodes are drawn at random inside it (round-robin over
  rollouts).
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
    """Nodes whose total cost fits `budget` (None: no limit, `every` only), sorted."""
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
    anchor = {"windows": "start", "refine": "start", "windows_end": "end", "uniform": None}[strategy]
    rng = random.Random(seed)
    pools = {w: [n for n in pool if n not in excluded] for w, pool in _windows(lengths, anchor).items()}
    pools = {w: _interleave(pool, rng) for w, pool in sorted(pools.items()) if pool}
    # Water-filling: windows that cannot spend an equal share give the rest to the others.
    full_cost = {w: sum(cost_fn(n.rollout, n.position) for n in pool) for w, pool in pools.items()}
    remaining, chosen = float(budget), []
    order = sorted(pools, key=lambda w: full_cost[w])
    for i, w in enumerate(order):
        share = remaining / (len(order) - i)
        spent = 0.0
        for n in pools[w]:
            c = cost_fn(n.rollout, n.position)
            if spent + c <= share + 1e-9:
                chosen.append(n)
                spent += c
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


def design_weights(
    nodes: Sequence[Node], lengths: Sequence[int], strategy: str = "windows", groups: Sequence | None = None
) -> list[float]:
    """Tokens each selected node stands for (the inverse of its inclusion probability), per rollout set.

    Node selection is not uniform over positions: under `windows` the first positions are always taken and
    late ones rarely, so an unweighted mean over nodes is a mean over early tokens. Within a stratum (one
    rollout's positions in one window) the chosen positions are a uniformly random subset (the shuffle inside
    the rollout; every node of a pass costs the same), so conditionally on the count c chosen among its m
    positions each stands for m / c tokens (post-stratification). Rollouts with no node in a window are
    represented by the other rollouts of the same question in that window (their tokens are exchangeable):
    the window's weights are scaled by its tokens over the tokens of its represented strata (only among
    rollouts of the same `groups[r]`, e.g. the same verdict, so that per-group figures weight their own
    tokens). Windows with no
    node at all are not represented; `token_coverage` reports the share of tokens that are.

    Sum over nodes of weight x value is then a (Horvitz-Thompson, post-stratified) estimate of the sum over
    every token of every rollout, and ratios of such sums estimate per-token averages. `every` gives weight
    1; `uniform` has one window; `refine` is stratified by the `windows` windows (its bisection nodes are
    chosen by V-hat, not at random: the weights are then an approximation).
    """
    if strategy == "every":
        return [1.0] * len(nodes)
    anchor = {"windows": "start", "refine": "start", "windows_end": "end", "uniform": None}.get(strategy, "start")

    def window(r: int, t: int) -> int:
        return 0 if anchor is None else window_index(t, lengths[r], anchor)

    tokens: dict[tuple[int, int], int] = {}
    for r, length in enumerate(lengths):
        for t in range(length):
            key = (r, window(r, t))
            tokens[key] = tokens.get(key, 0) + 1
    chosen: dict[tuple[int, int], int] = {}
    for n in nodes:
        key = (n.rollout, window(n.rollout, n.position))
        chosen[key] = chosen.get(key, 0) + 1
    group = (lambda r: None) if groups is None else (lambda r: groups[r])  # noqa: E731
    total_w: dict[tuple, int] = {}
    covered_w: dict[tuple, int] = {}
    for (r, w), m in tokens.items():
        gw = (group(r), w)
        total_w[gw] = total_w.get(gw, 0) + m
        if chosen.get((r, w)):
            covered_w[gw] = covered_w.get(gw, 0) + m
    out = []
    for n in nodes:
        key = (n.rollout, window(n.rollout, n.position))
        gw = (group(n.rollout), key[1])
        out.append(tokens[key] / chosen[key] * total_w[gw] / covered_w[gw])
    return out


def token_coverage(weights: Sequence[float], lengths: Sequence[int]) -> float:
    """Share of the rollouts' tokens that the selected nodes represent (1 when every window has a node)."""
    total = sum(lengths)
    return float(sum(weights)) / total if total else float("nan")
