"""`diagnose validate`'s statistics, on synthetic numbers (fast, no model): the rank correlation is among the
distillation configurations only (grpo beside it), its permutation p-value is exact, its interval carries the
alignment's uncertainty, and the gain's interval is for pass@1 on the fixed held-out set (training seeds and
samples resampled, not questions)."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from diagnose.estimate.stats import spearman
from diagnose.validate.stats import Replicates, interval, permutation_p, rank_correlation, ranking


def _arms(alignment, gains, kinds, labels=None):
    n = len(gains)
    gains = np.asarray(gains, dtype=float)
    alignment = np.asarray(alignment, dtype=float)
    return pd.DataFrame({
        "arm": labels or [f"a{i}" for i in range(n)], "kind": kinds, "alignment": alignment, "gain": gains,
        "gain_ci_low": gains - 0.05, "gain_ci_high": gains + 0.05, "alignment_ci_low": alignment - 0.1,
        "alignment_ci_high": alignment + 0.1, "verdict": "within noise",
    })


def test_rho_is_among_distillation_configurations_only_with_an_exact_p():
    """grpo (the highest alignment and gain: RL on the verdicts) is reported beside rho, not in it. Four
    configurations in reversed order give rho = -1 however far grpo stands out; in perfect order, rho = +1 with
    the exact one-sided p = 1/24 (one of the 24 orderings of the gains reaches it)."""
    kinds = ["grpo", "config", "config", "config", "config", "ideal", "control"]
    labels = ["grpo", "t:a|fkl", "t:a|rkl", "t:b|fkl", "t:b|rkl", "ideal", "control"]
    align = [0.20, 0.01, 0.02, 0.03, 0.04, np.nan, np.nan]
    reps = np.zeros((50, 7))
    reversed_gains = [0.06, -0.05, -0.06, -0.07, -0.08, 0.13, -0.08]
    out = ranking(_arms(align, reversed_gains, kinds, labels), reps + reversed_gains, level=0.95)
    assert out["n"] == 4 and out["configs"] == ["t:a|fkl", "t:a|rkl", "t:b|fkl", "t:b|rkl"]
    assert out["spearman"] == pytest.approx(-1.0)  # with grpo in it, rho over 5 arms would be +0.1
    assert out["spearman_p"] == pytest.approx(1.0)
    assert out["grpo"]["arm"] == "grpo" and out["grpo"]["gain"] == pytest.approx(0.06)
    assert out["grpo"]["alignment"] == pytest.approx(0.20) and out["grpo"]["gain_ci"] == pytest.approx([0.01, 0.11])

    ordered = [0.06, -0.08, -0.07, -0.06, -0.05, 0.13, -0.08]
    out = ranking(_arms(align, ordered, kinds, labels), reps + ordered, level=0.95)
    assert out["spearman"] == pytest.approx(1.0)
    assert out["spearman_p"] == pytest.approx(1 / 24, abs=1e-12) and "exact over all 24" in out["p_method"]

    # grpo and two configurations: 3 arms with an alignment, but only 2 distillation configurations: undefined
    three = _arms([0.2, 0.01, 0.05], [0.06, -0.09, -0.05], ["grpo", "config", "config"])
    out = ranking(three, np.zeros((20, 3)), level=0.95)
    assert out["n"] == 2 and np.isnan(out["spearman"]) and np.isnan(out["spearman_p"])
    assert np.isnan(out["spearman_ci"]).all() and "no rank correlation" in out["note"]
    assert out["grpo"]["gain"] == pytest.approx(0.06)


def test_permutation_p_is_the_exact_share_of_orderings():
    """Against brute force over every ordering (ties included), and the random-ordering estimate above 8."""
    rng = np.random.default_rng(3)
    for n in (3, 4, 5):
        x = rng.normal(size=n)
        g = np.round(rng.normal(size=n), 0)  # ties in the gains, as gains on a 1/512 grid have
        observed = spearman(x, g)
        brute = np.mean([spearman(x, g[list(p)]) >= observed - 1e-9 for p in itertools.permutations(range(n))])
        p, how = permutation_p(x, g)
        assert p == pytest.approx(brute, abs=1e-12) and "exact" in how, (n, p, brute)
    assert permutation_p(np.arange(5.0), np.arange(5.0))[0] == pytest.approx(1 / 120)
    p, how = permutation_p(np.arange(10.0), np.arange(10.0))  # 10! orderings: random ones
    assert p < 3e-4 and "random" in how
    assert np.isnan(permutation_p(np.arange(4.0), np.zeros(4))[0])  # constant gains: no rho, no p


def test_rho_interval_carries_the_alignments_uncertainty():
    """Resampled jointly with the gains, alignments whose replicates overlap widen rho's interval; held at
    their point estimates (alignment_reps=None, or replicates that never move) they do not."""
    rng = np.random.default_rng(0)
    x = np.array([0.0, 0.1, 0.2, 0.3, 0.4])
    gains = np.array([-0.08, -0.04, 0.0, 0.04, 0.08])
    gain_reps = gains + rng.normal(0, 0.01, size=(400, 5))
    held = rank_correlation(x, gains, gain_reps, None, 0.95)
    fixed = rank_correlation(x, gains, gain_reps, np.broadcast_to(x, (400, 5)), 0.95)
    assert held["spearman_ci"] == fixed["spearman_ci"] and "held at their point estimates" in held["note"]
    assert held["spearman_ci"][0] > 0.5 and "excludes 0" in held["note"]
    align_reps = x + rng.normal(0, 0.15, size=(400, 5))
    joint = rank_correlation(x, gains, gain_reps, align_reps, 0.95)
    assert joint["spearman"] == held["spearman"] == pytest.approx(1.0)  # the statistic: point estimates
    width = lambda r: r["spearman_ci"][1] - r["spearman_ci"][0]  # noqa: E731
    assert width(joint) > width(held) + 0.5 and joint["alignment_resampled"], (joint, held)
    # through `ranking`: a grpo arm first (its columns ignored), the configurations' replicates carried along
    table = _arms(np.r_[0.5, x], np.r_[0.1, gains], ["grpo"] + ["config"] * 5)
    out = ranking(table, np.c_[np.zeros(400), gain_reps], np.c_[np.ones(400), align_reps], 0.95)
    assert out["spearman_ci"] == joint["spearman_ci"] and out["alignment_resampled"]


def test_gain_interval_is_for_the_fixed_held_out_set():
    """A fixed held-out set (per-question pass rates before, and the per-question effect of training, fixed);
    only the training seeds and the held-out samples are random. The fixed-set interval covers the fixed-set
    gain E_seeds[mean_q p_after] - mean_q p_before at about its level and is narrower than resampling
    questions, which adds the spread of the per-question effects (not noise for a fixed set) and over-covers."""
    rng = np.random.default_rng(7)
    Q, J, S, level, trials = 48, 4, 4, 0.8, 150
    p = rng.beta(2, 3, size=Q)
    effect = rng.normal(0.05, 0.15, size=Q)  # training helps some questions and hurts others

    def p_after(seeds):
        return np.clip(p + effect + rng.normal(0, 0.02, (seeds, 1)) + rng.normal(0, 0.05, (seeds, Q)), 0, 1)

    truth = p_after(20_000).mean() - p.mean()
    draws = []
    for _ in range(trials):
        u = rng.random((Q, J))  # common random numbers: sample j draws the same numbers before and after
        draws.append((u < p[:, None], u[None] < p_after(S)[:, :, None]))
    hits, widths = {}, {}
    for questions in (False, True):  # the default (the validation's) first, then the population bootstrap
        hits[questions], widths[questions] = 0, []
        for k, (before, after) in enumerate(draws):
            rep = Replicates(S, Q, J, n_boot=200, seed=k, **({"resample_questions": True} if questions else {}))
            gain = rep.pass_rate(after[None])[:, 0] - rep.pass_rate(before[None], resample_seeds=False)
            lo, hi = interval(gain, level)
            hits[questions] += lo <= truth <= hi
            widths[questions].append(hi - lo)
        if not questions:
            assert 0.72 <= hits[False] / trials <= 0.88, hits[False] / trials
    assert hits[True] / trials >= 0.9, hits[True] / trials
    assert np.mean(widths[False]) < 0.8 * np.mean(widths[True]), (np.mean(widths[False]), np.mean(widths[True]))


def test_replicates_are_paired_and_rescaled():
    """Identical arms differ by exactly 0 in every replicate; an arm equal to the starting weights gains exactly 0;
    the sample part's bootstrap variance is the unbiased one (sqrt(J/(J-1)) rescaling), not (J-1)/J of it."""
    rng = np.random.default_rng(1)
    Q, J, S = 30, 4, 3
    before = rng.random((Q, J)) < 0.4
    arm = rng.random((S, Q, J)) < 0.5
    rep = Replicates(S, Q, J, n_boot=4000, seed=0)
    r = rep.pass_rate(np.stack([arm, arm, np.broadcast_to(before, (S, Q, J))]))  # [B, 3]
    b = rep.pass_rate(before[None], resample_seeds=False)
    assert np.all(r[:, 0] == r[:, 1]) and np.allclose(r[:, 2], b)
    unbiased = before.astype(float).var(axis=1, ddof=1).sum() / (J * Q * Q)
    assert b.var() == pytest.approx(unbiased, rel=0.1)
    assert (b == before.mean()).mean() < 0.5  # the before's interval is not degenerate
    one = Replicates(1, Q, J, n_boot=50, seed=0)  # one seed: no seed part, the interval is conditional on it
    assert np.allclose(one.pass_rate(arm[:1]), one.pass_rate(arm[:1], resample_seeds=False))


def test_population_interval_covers_the_population_gain():
    """`resample_questions=True` (questions drawn afresh from a population each trial): seeds, then questions,
    then samples covers the population gain at about its level (the estimand the validation does not use)."""
    rng = np.random.default_rng(0)
    Q, J, level, delta = 48, 4, 0.9, 0.08
    # The population gain E[p_after - p] (Beta(2, 3) has mean 0.4; clipping to [0, 1] makes it a little
    # smaller than delta), by Monte Carlo.
    truth = np.mean(np.clip(rng.beta(2, 3, 400_000) + delta + rng.normal(0, 0.1, 400_000), 0, 1)) - 0.4
    hits, trials = 0, 150
    for k in range(trials):
        p = rng.beta(2, 3, size=Q)
        p_after = np.clip(p + delta + rng.normal(0, 0.1, size=Q), 0, 1)
        u = rng.random((Q, J))
        before, after = u < p[:, None], u < p_after[:, None]  # common random numbers, as validate draws
        rep = Replicates(1, Q, J, n_boot=300, seed=k, resample_questions=True)
        r = rep.pass_rate(np.stack([before[None], after[None]]))
        lo, hi = interval(r[:, 1] - r[:, 0], level)
        hits += lo <= truth <= hi
    assert 0.8 <= hits / trials <= 0.97, hits / trials


def test_separated_pairs_counts_non_overlapping_intervals():
    from diagnose.validate.stats import separated_pairs

    # [0, 1] and [2, 3] separate; [0.5, 2.5] overlaps both; a touching pair does not separate
    assert separated_pairs([0, 2, 0.5], [1, 3, 2.5]) == 1
    assert separated_pairs([0, 1], [1, 2]) == 0
    assert separated_pairs([0, 2, 4], [1, 3, 5]) == 3
    assert separated_pairs([], []) == 0
