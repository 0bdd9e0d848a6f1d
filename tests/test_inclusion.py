"""Node inclusion probabilities under token budgets: what is stored is what selection does.

In tokens a node's cost falls with its position (max_new_tokens - t per continuation). A greedy fill at each
node's own cost skipped expensive early positions and kept taking cheap late ones, so inside a window late
positions were picked several times as often as the post-stratified design weights assume; and the stored
`inclusion_prob` was 1 / weight, which carries the cross-rollout rescaling. These tests compare stored
probabilities with selection frequencies over seeds (benchmarks/inclusion.py measures the same at scale).
"""

import math

import numpy as np
import pytest

from diagnose import engines
from diagnose.estimate import EstimateConfig, Estimator
from diagnose.estimate.nodes import design_weights, select_nodes, window_index
from diagnose.estimate.truth import exact_questions

M = 64  # max_new_tokens
LENGTHS = (64,) * 8 + (45,) * 8 + (23,) * 8  # realistic lengths up to the limit, 8 exchangeable of each
PER_NODE = 72  # continuations per node (9 nominal candidates x 8)
BUDGET = PER_NODE * M * 80  # tokens: 80 nodes at the largest bound


def token_cost(r: int, t: int) -> float:
    return PER_NODE * max(1, M - t)


def _frequencies(select, seeds: int):
    """(share of seeds picking each position, mean stored probability of each position) per length class,
    and a z-score of where chosen positions sit inside their strata.

    A position's stored probability in a seed is the `inclusion_prob` of the chosen nodes of its stratum
    (rollout x window; they must agree), 0 when none was chosen. The z-score sums, over seeds and partly
    chosen strata, the chosen positions' mean offset in the stratum minus its center, over its standard
    deviation under a uniformly random subset: ~N(0, 1) if selection is uniform within strata, large and
    positive if it favours late (cheap) positions."""
    hit = [np.zeros(n) for n in LENGTHS]
    stored = [np.zeros(n) for n in LENGTHS]
    skew = var = 0.0
    for seed in range(seeds):
        nodes = select(seed)
        probs = design_weights(nodes, LENGTHS, "windows").inclusion
        assert len(probs) == len(nodes) and all(0.0 < p <= 1.0 for p in probs)
        per_stratum, positions = {}, {}
        for n, p in zip(nodes, probs, strict=True):
            hit[n.rollout][n.position] += 1
            key = (n.rollout, window_index(n.position, LENGTHS[n.rollout]))
            assert per_stratum.setdefault(key, p) == p
            positions.setdefault(key, []).append(n.position)
        for r, n in enumerate(LENGTHS):
            stored[r] += [per_stratum.get((r, window_index(t, n)), 0.0) for t in range(n)]
        for (r, w), chosen in positions.items():
            first, m = 2**w - 1, min(2 ** (w + 1) - 1, LENGTHS[r]) - (2**w - 1)  # the stratum's positions
            c = len(chosen)
            if c < m:
                skew += sum(t - first for t in chosen) / c - (m - 1) / 2
                var += (m * m - 1) / 12 * (m - c) / (c * (m - 1))
    out = {}
    for n in sorted(set(LENGTHS)):
        rs = [r for r, m in enumerate(LENGTHS) if m == n]
        out[n] = (sum(hit[r] for r in rs) / (seeds * len(rs)), sum(stored[r] for r in rs) / (seeds * len(rs)))
    return out, skew / math.sqrt(var)


def _assert_match(result, tol=0.10):
    """Stored vs empirical within `tol` relative, per length x window x half of the window (halves of
    windows with at least 8 positions: early against late positions, where a cost-driven fill differs), and
    no drift toward late positions inside strata (|z| < 4; a greedy fill at each node's own cost gives 6-9)."""
    freqs, z = result
    assert abs(z) < 4, f"chosen positions drift inside their strata: z = {z:.1f}"
    checked = 0
    for n, (emp, sto) in freqs.items():
        bins = {}
        for t in range(n):
            w = window_index(t, n)
            members = [u for u in range(n) if window_index(u, n) == w]
            half = 2 * members.index(t) // len(members) if len(members) >= 8 else 0
            bins.setdefault((w, half), []).append(t)
        for (w, half), ts in bins.items():
            e, s = emp[ts].mean(), sto[ts].mean()
            assert e > 0.05, (n, w, half, e)  # the setting keeps every bin well sampled
            assert abs(s - e) <= tol * e, f"length {n} window {w} half {half}: stored {s:.4f} empirical {e:.4f}"
            checked += 1
    assert checked >= 20


def test_token_budget_inclusion_matches_selection():
    """One pass under a token budget: every stored probability in (0, 1], and their means over seeds are
    the selection frequencies (early and late halves of each window alike)."""
    freqs = _frequencies(lambda seed: select_nodes(LENGTHS, BUDGET, token_cost, "windows", seed=seed), 300)
    _assert_match(freqs)


def test_inclusion_holds_over_passes_that_exclude_chosen_nodes():
    """Two passes (the second excluding the first's nodes, as Estimator.select does): the union's stored
    probabilities count both passes and still match the frequencies."""

    def two_passes(seed):
        first = select_nodes(LENGTHS, BUDGET / 2, token_cost, "windows", seed=2 * seed)
        second = select_nodes(LENGTHS, BUDGET / 2, token_cost, "windows", seed=2 * seed + 1, exclude=first)
        assert not set(first) & set(second)
        return sorted(first + second)

    _assert_match(_frequencies(two_passes, 200))


def test_selection_plans_a_window_at_its_largest_cost():
    """The count a window takes follows from its share and its largest cost, never from the positions
    drawn: one window (`uniform`) takes floor(budget / largest cost) nodes in every seed, whatever they cost.
    Under `windows` the taken nodes' real cost is passed on, so the whole selection stays within budget."""
    for seed in range(20):
        nodes = select_nodes(LENGTHS, BUDGET / 4, token_cost, "uniform", seed=seed)
        assert len(nodes) == int(BUDGET / 4 // token_cost(0, 0))
        nodes = select_nodes(LENGTHS, BUDGET, token_cost, "windows", seed=seed)
        assert sum(token_cost(n.rollout, n.position) for n in nodes) <= BUDGET
    # A constant cost (budgets in continuations) is the plain greedy fill: floor(share / cost) per window.
    assert len(select_nodes([40, 10, 3], 30, lambda r, t: 1.0, "windows", seed=0)) == 30


@pytest.fixture(scope="module")
def token_run():
    eng = engines.load("exact", "exact", seed=1, horizon=12)
    cfg = EstimateConfig(
        rollouts_per_question=4,
        budget=700,
        budget_unit="tokens",
        max_new_tokens=12,
        continuations=2,
        k_student=2,
        k_teacher=0,
        n_boot=20,
        seed=3,
    )
    est = Estimator(eng, exact_questions(eng, 2, seed=5), {}, ["rkl"], cfg)
    return est, est.run()


def test_token_cost_bound_is_max_new_tokens_minus_position(token_run):
    """A continuation from position t may run to max_new_tokens - t tokens, whatever the rollout's length."""
    est, _ = token_run
    per_node = est.budget.nominal_candidates * est.budget.per_candidate
    short = [r for r, ro in enumerate(est.rollouts) if len(ro.token_ids) < 12]
    assert short, "the setting needs a rollout that ended before max_new_tokens"
    for r in short:
        for t in range(len(est.rollouts[r].token_ids)):
            assert est.cost(r, t) == per_node * (12 - t)


def test_estimator_records_store_inclusion_probabilities(token_run):
    """End to end (exact engine, token budget): each record's inclusion_prob is c / m of its stratum, a
    probability in (0, 1]; weight x inclusion_prob is the cross-rollout rescaling (>= 1), not 1."""
    est, res = token_run
    assert res.node_records and res.summary["budget_unit"] == "tokens"
    lengths = [len(ro.token_ids) for ro in est.rollouts]
    index = {ro.id: r for r, ro in enumerate(est.rollouts)}
    chosen = {}
    for rec in res.node_records:
        key = (index[rec["rollout_id"]], window_index(rec["position"], rec["length"]))
        chosen[key] = chosen.get(key, 0) + 1
    for rec in res.node_records:
        r = index[rec["rollout_id"]]
        w = window_index(rec["position"], rec["length"])
        m = sum(1 for t in range(lengths[r]) if window_index(t, lengths[r]) == w)
        assert 0.0 < rec["inclusion_prob"] <= 1.0
        assert rec["inclusion_prob"] == pytest.approx(chosen[(r, w)] / m)
        assert rec["weight"] * rec["inclusion_prob"] >= 1.0 - 1e-9
    # The budget leaves some rollouts without a node in some window: there weight != 1 / inclusion_prob.
    assert max(rec["weight"] * rec["inclusion_prob"] for rec in res.node_records) > 1.05
