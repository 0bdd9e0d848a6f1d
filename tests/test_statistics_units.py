"""Unit checks of the statistics that the mutation run (tests/mutants.py, docs/testing.md) found untested:
each test here kills a named mutant that survived the rest of the fast suite."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from fixtures_run import FLATTER, SHARPER, exact_run

from diagnose import tables as T
from diagnose.estimate import node_scores, rollout_cosine, select_nodes
from diagnose.estimate.nodes import design_weights, token_coverage
from diagnose.estimate.resample import Resampler, small_sample_factor
from diagnose.estimate.resample import bootstrap_interval as _interval
from diagnose.estimate.summary import summarize


# kills stats.degenerate_absolute_epsilon
def test_peaked_node_with_tiny_g_star_is_scored_not_degenerate():
    """|g*|^2 ~ 1e-20 on a peaked row is real signal (no absolute epsilon): d = g* scores cosine 1."""
    p = torch.tensor([[1 - 2e-10, 1e-10, 1e-10]], dtype=torch.float64)
    s = torch.tensor([[4.0, 0.0, 0.0]], dtype=torch.float64)
    c = torch.full((1, 3), 4.0, dtype=torch.float64)
    mask = torch.ones(1, 3, dtype=torch.bool)
    v = (p * s / c).sum(-1, keepdim=True) / p.sum(-1, keepdim=True)
    g = p * (s / c - v)
    assert 0 < float((g * g).sum()) < 1e-18
    st = node_scores(p, s, c, mask, g, (g * g).sum(-1), n_boot=20)
    assert not bool(st.degenerate[0])
    assert float(st.cos_full[0]) == pytest.approx(1.0) and float(st.cos_full_corrected[0]) == pytest.approx(1.0)


# kills stats.ta_point_p_minus_q
def test_teacher_advantage_point_estimate():
    gen = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(5, 4, generator=gen), -1).double()
    tp = torch.softmax(torch.randn(5, 4, generator=gen), -1).double()
    q = torch.rand(5, 4, generator=gen).double()
    mask = torch.ones(5, 4, dtype=torch.bool)
    d = torch.randn(5, 4, generator=gen).double()
    st = node_scores(p, q, torch.ones_like(q), mask, d, (d * d).sum(-1), teacher_p=tp, n_boot=10)
    v = (p * q).sum(-1, keepdim=True)
    torch.testing.assert_close(st.ta, ((tp - p) * (q - v)).sum(-1))


# kills stats.rollout_weights_not_squared
def test_rollout_cosine_is_the_cosine_of_the_concatenation():
    """Per rollout: cos(concatenated g*, concatenated w d) from per-node sums, and its noise-corrected form;
    degenerate (0) where g* vanishes, unresolved (NaN) where the noise eats |g*|^2."""
    gen = torch.Generator().manual_seed(0)
    g = torch.randn(11, 5, generator=gen, dtype=torch.float64)
    d = torch.randn(11, 5, generator=gen, dtype=torch.float64)
    g[9:] = 0.0  # rollout "d": no signal
    w = 0.5 + torch.rand(11, generator=gen, dtype=torch.float64)
    noise = 0.1 * torch.rand(11, generator=gen, dtype=torch.float64)
    noise[2] = noise[5] = noise[7] = 1e3  # rollout "c": noise above |g*|^2
    rollouts = ["b", "a", "c", "b", "a", "c", "b", "c", "a", "d", "d"]
    got = rollout_cosine((g * d).sum(-1), (g * g).sum(-1), (d * d).sum(-1), rollouts=rollouts, weights=w, noise=noise)
    assert list(got.index) == ["a", "b", "c", "d"]
    for r in "ab":
        m = torch.tensor([x == r for x in rollouts])
        gc, dc = g[m].flatten(), (w[m, None] * d[m]).flatten()
        assert got.loc[r, "cos"] == pytest.approx(float(gc @ dc / (gc.norm() * dc.norm())), rel=1e-12)
        corrected = gc @ dc / ((gc @ gc - noise[m].sum()).sqrt() * dc.norm())
        assert got.loc[r, "cos_corrected"] == pytest.approx(float(corrected), rel=1e-12)
    assert np.isfinite(got.loc["c", "cos"]) and np.isnan(got.loc["c", "cos_corrected"])
    assert list(got["degenerate"]) == [False, False, False, True]
    assert got.loc["d", "cos"] == 0.0 and got.loc["d", "cos_corrected"] == 0.0


# kills nodes.design_weights_no_window_rescale
def test_design_weights_cover_every_token_when_some_rollouts_miss_a_window():
    lengths = [200, 150, 90, 60]
    for seed in range(20):
        nodes = select_nodes(lengths, 20, lambda r, t: 1.0, "windows", seed=seed)
        w = design_weights(nodes, lengths, "windows")
        assert token_coverage(w, lengths) == pytest.approx(1.0)


# kills summary.resample_rollouts_ignoring_questions, summary.two_stage_bootstrap
def test_resampler_draws_whole_questions():
    """The question-cluster bootstrap: questions with replacement, each with all of its rollouts, so every rollout
    of a question carries that question's copy count (no second stage inside the question: that counted the
    within-question variance twice)."""
    rollouts = pd.DataFrame(
        {"question_id": np.repeat([f"q{i}" for i in range(6)], 4), "rollout_idx": np.tile(range(4), 6)}
    )
    res = Resampler(rollouts, 4000, seed=0)
    w = res.weights.reshape(4000, 6, 4)
    assert np.all(w == w[:, :, :1])  # a drawn question brings all of its rollouts, once per copy
    per_q = w[:, :, 0]
    assert np.all(per_q.sum(1) == 6)
    # a question's copy count is multinomial(6, 1/6): variance 5/6
    assert per_q.var(0).mean() == pytest.approx(5 / 6, rel=0.1)


# kills summary.clear_ignores_min_questions
def test_one_question_is_never_a_clear_winner(tmp_path):
    """One exact-engine question with 16 rollouts and a large budget; the sharpened and flattened student
    (tests/fixtures_run.py) point in opposite rkl directions, so their margin is twice the alignment of either
    and the rollouts of this one question separate them."""
    run = exact_run(
        tmp_path / "r", teachers=[SHARPER, FLATTER], objectives=["rkl"], questions=1, rollouts=16, budget=600
    )
    tabs = {n: T.read_table(run, n) for n in ("rollouts", "nodes", "alignment")}
    rec = summarize(tabs["alignment"], tabs["rollouts"], tabs["nodes"], n_boot=300, seed=1).recommendation
    top = rec["cos_full"]["overall"]
    assert top["margin_ci_low"] > 0  # the evidence inside the question separates them ...
    assert top["clear"] is False and "too few" in top["note"]  # ... but one question is not a population


# kills summary.interval_alpha_not_halved
def test_interval_is_the_central_percentile_interval():
    lo, hi = _interval(np.linspace(0.0, 1.0, 100_001), 0.95)
    assert (lo, hi) == pytest.approx((0.025, 0.975), abs=1e-6)
    lo, hi = _interval(np.linspace(0.0, 1.0, 100_001), 0.80)
    assert (lo, hi) == pytest.approx((0.10, 0.90), abs=1e-6)


def test_small_sample_factor_is_the_cluster_robust_rule():
    stats = pytest.importorskip("scipy.stats")
    for g in (2, 5, 16, 64):
        want = np.sqrt(g / (g - 1)) * stats.t.ppf(0.975, g - 1) / stats.norm.ppf(0.975)
        assert small_sample_factor(g, 0.95) == pytest.approx(want, rel=1e-12)
    assert small_sample_factor(16, 0.95) == pytest.approx(1.123, abs=1e-3)
    assert small_sample_factor(100_000, 0.95) == pytest.approx(1.0, abs=1e-4) and small_sample_factor(1, 0.95) == 1.0
    assert small_sample_factor(16, 0.80) < small_sample_factor(16, 0.95)  # t's tails matter more further out


def test_interval_with_an_estimate_is_bias_corrected_and_widened():
    stats = pytest.importorskip("scipy.stats")
    reps = np.linspace(-1.0, 1.0, 200_001) * 0.3  # symmetric about the estimate 0: z0 = 0, plain percentiles
    lo, hi = _interval(reps, 0.95, 0.0, 1.0)
    assert (lo, hi) == pytest.approx((-0.285, 0.285), abs=1e-5)
    lo2, hi2 = _interval(reps, 0.95, 0.0, 1.25)  # widened about the estimate
    assert (lo2, hi2) == pytest.approx((1.25 * lo, 1.25 * hi), abs=1e-9)
    # replicates that sit above the estimate (a ratio estimator's upward bias) move the interval down
    shifted = reps + 0.1
    lo3, hi3 = _interval(shifted, 0.95, 0.0, 1.0)
    z0 = stats.norm.ppf(np.mean(shifted < 0))
    want = np.quantile(shifted, stats.norm.cdf([2 * z0 - 1.959964, 2 * z0 + 1.959964]))
    assert (lo3, hi3) == pytest.approx(tuple(want), abs=1e-4) and hi3 < 0.285 + 0.1 and lo3 < -0.285 + 0.1
    # it always holds its estimate, and stays inside the bounds given
    lo4, hi4 = _interval(np.full(1000, 0.5), 0.95, 0.2, 1.1)
    assert lo4 <= 0.2 <= hi4
    lo5, hi5 = _interval(np.linspace(0.8, 1.0, 1001), 0.95, 0.95, 3.0, (-1.0, 1.0))
    assert hi5 == 1.0 and lo5 < 0.8
    # mirrored replicates and estimate give the mirrored interval
    a = _interval(shifted, 0.95, 0.03, 1.12)
    b = _interval(-shifted, 0.95, -0.03, 1.12)
    assert a == pytest.approx((-b[1], -b[0]), abs=1e-12)


# kills summary.small_sample_factor_dropped, summary.interval_not_bias_corrected
def test_summary_intervals_are_the_corrected_rule_on_a_real_run(tmp_path):
    """On an exact-engine run, every configuration's `ci_low`/`ci_high` is the bias-corrected percentile
    interval of its question-cluster replicates (the very replicates alignment_replicates returns), widened
    about `mean` by small_sample_factor(questions)."""
    from diagnose.estimate.summary import alignment_replicates

    run = exact_run(tmp_path / "r", teachers=[SHARPER, FLATTER], objectives=["rkl", "fkl"], questions=5,
                    rollouts=4, budget=60)
    tabs = {n: T.read_table(run, n) for n in ("rollouts", "nodes", "alignment")}
    table = summarize(tabs["alignment"], tabs["rollouts"], tabs["nodes"], n_boot=400, seed=3).table
    points, reps = alignment_replicates(tabs["alignment"], tabs["rollouts"], tabs["nodes"], "cos_full", 400, 3)
    factor = small_sample_factor(5, 0.95)
    assert factor > 1.3  # 5 questions: t_4 is far from normal
    rows = table[table["metric"] == "cos_full"].set_index("config")
    checked = 0
    for config, row in rows.iterrows():
        if not np.isfinite(row["ci_low"]):
            continue
        want = _interval(reps[config].to_numpy(), 0.95, float(points[config]), factor, (-1.0, 1.0))
        plain = _interval(reps[config].to_numpy(), 0.95)
        assert (row["ci_low"], row["ci_high"]) == pytest.approx(want, abs=1e-6)  # stored in float32
        assert want[1] - want[0] > plain[1] - plain[0] or want[1] == 1.0 or want[0] == -1.0
        checked += 1
    assert checked >= 2


def test_a_noise_estimate_equal_to_g_hat_squared_is_unresolved_whatever_the_round_off():
    """With two continuations per candidate (the CLI default) a node whose only varying candidate has 1 success
    of 2 has noise estimate N = |g-hat|^2 exactly; float64 leaves |g-hat|^2 - N at 0 or +-2e-18 by the luck of
    summation order, and a positive remainder used to make the corrected cosine +-1. Every such node must be
    unresolved (NaN), with g_sq_unbiased exactly 0; a node with real excess signal still resolves."""
    from diagnose.estimate.stats import corrected_cosine, noise_term, sparse_ideal, unbiased_g_sq

    gen = torch.Generator().manual_seed(0)
    ties, leftovers = 0, 0
    for _ in range(400):
        k = int(torch.randint(2, 5, (1,), generator=gen))
        p = torch.rand(1, k + 1, generator=gen, dtype=torch.float64)
        p = p / p.sum()
        mask = torch.tensor([[True] * k + [False]])
        n = torch.tensor([[2.0] * k + [0.0]], dtype=torch.float64)
        s = torch.cat([torch.randint(0, 3, (1, k), generator=gen).double(), torch.zeros(1, 1, dtype=torch.float64)], 1)
        g, _ = sparse_ideal(p, torch.where(mask, s / n.clamp_min(1), 0.0), mask)
        g_sq, noise = (g * g).sum(-1), noise_term(p, s, n, mask)
        if not (g_sq > 0 and (g_sq - noise).abs() <= 1e-12 * g_sq):
            continue
        ties += 1
        leftovers += bool(g_sq - noise != 0)
        d = g + 0.3 * torch.rand(g.shape, generator=gen, dtype=torch.float64)
        _, corrected, degenerate = corrected_cosine((d * g).sum(-1), g_sq, noise, (d * d).sum(-1))
        assert not degenerate and torch.isnan(corrected).all(), (s, float(g_sq - noise), corrected)
        assert float(unbiased_g_sq(g_sq, noise)) == 0.0
    assert ties > 20 and leftovers > 10  # the round-off case is exercised, not only exact zeros
    _, resolved, _ = corrected_cosine(torch.tensor([0.01]), torch.tensor([0.02]), torch.tensor([0.02 * (1 - 1e-6)]),
                                      torch.tensor([1.0]))
    assert torch.isfinite(resolved).all()
