"""Silent rows leave every denominator of the pooled alignment, and an unresolved configuration gets no rank.

A row is live for a configuration where it has a direction: d != 0 and not `no_signal`. The pooled alignment
is A / sqrt(B U) with A, B and U summed over live rows only, so it is the alignment over the nodes where the
configuration has a direction, E_w[|g*| cos(g*, d) | live] / sqrt(E_w[|g*|^2 | live]). A configuration
silent at a fraction f of nodes therefore reads the same as its live nodes do, not sqrt(1 - f) of that (the
old B over every row). Everything runs on real tables: the pipeline on the exact engine (tests/fixtures_run.py)
and the estimator's exact truth (diagnose.estimate.truth).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from fixtures_run import OTHERS, SHARPER, exact_run

from diagnose import engines
from diagnose import tables as T
from diagnose.estimate.stats import pooled_alignment
from diagnose.estimate.summary import SPLITS, summarize
from diagnose.estimate.truth import concat_inputs, exact_questions, exact_result, run_per_question
from diagnose.pipeline.config import RunConfig
from diagnose.teachers import engine_teacher

NODE = ["question_id", "rollout_idx", "position"]
TEACHER = f"{OTHERS[0]}|rkl"  # an unrelated model: a teacher with a real direction at most nodes
GRPO = "-|grpo_ref"
N_BOOT = 200
# figures that must not see a silent row (rollout_cos and teacher_advantage are defined over every node)
FIGURES = (
    ["mean", "ci_low", "ci_high", "diff_correct_incorrect", "diff_ci_low", "diff_ci_high"]
    + [f"{p}_{s}" for s in SPLITS for p in ("mean", "ci_low", "ci_high", "n")]
    + ["mean_per_token", "mean_per_token_ci_low", "mean_per_token_ci_high", "frac_positive"]
    + [f"mean_per_token{p}_{s}" for s in ("correct", "incorrect") for p in ("", "_ci_low", "_ci_high")]
    + ["diff_per_token", "diff_per_token_ci_low", "diff_per_token_ci_high"]
    + ["mean_bias_corrected", "n_nodes", "n_degenerate", "n_effective"]
)
# what the estimator writes where a direction has no signal: d is zeroed (dot, |d|^2 and every cosine 0)
ZEROED = [
    "dot",
    "d_sq",
    "d_sq_support",
    "cos_full",
    "cos_support",
    "cos_bias_corrected",
    "cos_support_bias_corrected",
    "cos_full_ci_low",
    "cos_full_ci_high",
    "cos_support_ci_low",
    "cos_support_ci_high",
]


@pytest.fixture(scope="module")
def run_tables(tmp_path_factory):
    """A real run on the exact engine: a sharpened student and an unrelated model under rkl, and grpo_ref."""
    run = exact_run(
        tmp_path_factory.mktemp("silent") / "run",
        teachers=[SHARPER, OTHERS[0]],
        objectives=["rkl", "grpo_ref"],
        questions=8,
        rollouts=4,
        budget=80,
        seed=3,
    )
    return {name: T.read_table(run, name) for name in ("alignment", "rollouts", "nodes")}


@pytest.fixture(scope="module")
def truth_tables():
    """The estimator's exact truth (Q-hat := exact Q, no noise) at the nodes of a real estimate."""
    eng = engines.load("exact", "exact", seed=1, horizon=12)
    teacher = engines.load("exact", "exact", seed=2, horizon=12)
    cfg = RunConfig(budget=60).estimate_config()
    cfg.n_boot = 5
    runs = run_per_question(eng, exact_questions(eng, 8, seed=11), {"t": engine_teacher(teacher)}, ["rkl"], cfg)
    return concat_inputs([exact_result(est, n_boot=5) for est, _ in runs])


def _silence(alignment, rollouts, config, frac_correct, frac_incorrect, zeroed=True, seed=0):
    """Mark a fraction of `config`'s rows no_signal, a different fraction on correct and incorrect rollouts.
    zeroed: as the estimator writes them (d zeroed, degenerate); otherwise only the flag is set. Returns the
    new alignment table and the mask of the planted rows."""
    a = alignment.merge(rollouts[["question_id", "rollout_idx", "correct"]], on=NODE[:2], how="left")
    rng = np.random.default_rng(seed)
    draw = rng.random(len(a))
    frac = np.where(a["correct"].to_numpy(bool), frac_correct, frac_incorrect)
    pick = (a["config"] == config).to_numpy() & ~a["no_signal"].to_numpy(bool) & (draw < frac)
    out = alignment.copy()
    out.loc[pick, "no_signal"] = True
    if zeroed:
        out.loc[pick, "degenerate"] = True
        out.loc[pick, [c for c in ZEROED if c in out]] = 0.0
    correct = a["correct"].to_numpy(bool)
    assert pick[correct].sum() and pick[~correct].sum()  # both splits are hit, at different rates
    return out, pick


def _live(a, metric):
    dsq = a["d_sq" if metric == "cos_full" else "d_sq_support"].to_numpy(float)
    return (dsq > 0) & ~a["no_signal"].to_numpy(bool)


def _pooled_live(a, nodes, metric, mask=None):
    """A / sqrt(B U) per config over its live rows only (pandas, independent of summary.py)."""
    y = a.merge(nodes[NODE + ["g_sq_unbiased", "weight"]].rename(columns={"weight": "w"}), on=NODE)
    if mask is not None:
        y = y[mask(y)]
    y = y[_live(y, metric)]
    dsq = y["d_sq" if metric == "cos_full" else "d_sq_support"]
    y = y.assign(A=y["w"] * y["dot"] / np.sqrt(dsq), B=y["w"] * y["g_sq_unbiased"], U=y["w"])
    g = y.groupby("config")[["A", "B", "U"]].sum()
    return (g["A"] / np.sqrt(g["B"] * g["U"])).where(g["B"] > 0).clip(-1, 1)


def _rows(summary, config):
    t = summary.table
    return t[t["config"] == config].set_index("metric")


def _same(got, want, cols=FIGURES):
    for metric in want.index:
        for col in cols:
            g, w = float(got.loc[metric, col]), float(want.loc[metric, col])
            assert (np.isnan(g) and np.isnan(w)) or abs(g - w) <= 1e-12, (metric, col, g, w)


@pytest.mark.parametrize("zeroed", [True, False], ids=["as-estimated", "flag-only"])
@pytest.mark.parametrize("source", ["run", "truth"])
def test_silent_fraction_equals_live_only(run_tables, truth_tables, source, zeroed):
    """A teacher silent at 60% of correct-rollout and 25% of incorrect-rollout rows: every pooled figure
    (overall, per split, intervals, difference, headroom) equals the one with those rows dropped, and the
    independent live-only pooled figure."""
    tabs = run_tables if source == "run" else truth_tables
    a, r, nodes = tabs["alignment"], tabs["rollouts"], tabs["nodes"]
    config = TEACHER if source == "run" else "t|rkl"
    silent, pick = _silence(a, r, config, 0.6, 0.25, zeroed=zeroed)
    got = summarize(silent, r, nodes, n_boot=N_BOOT, seed=1)
    want = summarize(a[~pick], r, nodes, n_boot=N_BOOT, seed=1)
    _same(_rows(got, config), _rows(want, config))
    assert (_rows(got, config)["n_no_signal"] == _rows(want, config)["n_no_signal"] + int(pick.sum())).all()
    for metric in ("cos_full", "cos_support"):
        row = _rows(got, config).loc[metric]
        live = _pooled_live(silent, nodes, metric)
        assert abs(row["mean"] - live[config]) <= 1e-12
        with_r = silent.merge(r[NODE[:2] + ["correct", "difficulty"]], on=NODE[:2])
        for split, sel in (("correct", True), ("incorrect", False)):
            m = _pooled_live(with_r, nodes, metric, lambda y, s=sel: y["correct"] == s)
            assert abs(row[f"mean_{split}"] - m[config]) <= 1e-12, split
        for band in T.BANDS:
            m = _pooled_live(with_r, nodes, metric, lambda y, b=band: y["difficulty"] == b)
            if config in m.index and np.isfinite(m[config]):
                assert abs(row[f"mean_{band}"] - m[config]) <= 1e-12, band
        assert abs(row["mean"]) > 1e-3  # a real alignment, not a vacuous 0 = 0
    for metric in ("cos_full", "cos_support"):
        h_got, h_want = got.headroom.get(metric, {}), want.headroom.get(metric, {})
        assert h_got.keys() == h_want.keys()
        for k in ("best_mean", "oracle_mean", "headroom", "headroom_ci_low", "headroom_ci_high", "n_nodes"):
            if k in h_want:
                assert h_got[k] == pytest.approx(h_want[k], abs=1e-12, nan_ok=True), k


def test_pooled_alignment_sums_only_live_nodes(run_tables):
    """stats.pooled_alignment with live = 0 at some nodes equals the same figure over the live nodes only."""
    a, nodes = run_tables["alignment"], run_tables["nodes"]
    extra = nodes[NODE + ["g_sq", "g_sq_unbiased", "weight"]].rename(columns={"weight": "w"})
    y = a[a["config"] == TEACHER].merge(extra, on=NODE)
    live = (y["d_sq"].to_numpy() > 0) & (np.arange(len(y)) % 3 != 0)  # a third of the nodes silent
    unit = np.where(live, y["dot"] / np.sqrt(y["d_sq"].where(y["d_sq"] > 0, 1.0)), 0.0)
    noise = (y["g_sq"] - y["g_sq_unbiased"]).to_numpy()
    args = (unit, y["g_sq"].to_numpy(), noise, live.astype(float))
    every = float(pooled_alignment(*args, weights=y["w"].to_numpy()))
    only = float(pooled_alignment(*(np.asarray(x)[live] for x in args), weights=y["w"].to_numpy()[live]))
    assert np.isfinite(only) and abs(every - only) <= 1e-12
    # live as a boolean tensor, as the estimator's flags come
    flags = torch.as_tensor(live)
    assert abs(float(pooled_alignment(*args[:3], flags, weights=y["w"].to_numpy())) - only) <= 1e-12


@pytest.mark.parametrize("flagged", [True, False], ids=["no_signal", "d=0-unflagged"])
def test_grpo_ref_on_agreeing_questions_equals_live_only(run_tables, flagged):
    """grpo_ref's direction is 0 on questions whose rollouts all agree (advantage 0): those rows leave B as
    well as A and U, flagged no_signal (as the estimator writes them) or only d = 0."""
    a, r, nodes = run_tables["alignment"], run_tables["rollouts"], run_tables["nodes"]
    rate = r.groupby("question_id")["correct"].mean()
    agree = set(rate.index[(rate == 0) | (rate == 1)])
    assert agree and len(agree) < len(rate)  # the run has both kinds of question
    g = a["config"] == GRPO
    on_agree = g & a["question_id"].isin(agree)
    assert (a.loc[on_agree, "d_sq"] == 0).all()  # advantage 0: no direction at all
    if not flagged:
        a = a.copy()
        a.loc[a["d_sq"] == 0, "no_signal"] = False  # d = 0 alone must be enough
    dead = (g & (a["d_sq"] == 0)).to_numpy()
    assert dead.sum() > 0
    got = summarize(a, r, nodes, n_boot=N_BOOT, seed=2)
    want = summarize(a[~dead], r, nodes, n_boot=N_BOOT, seed=2)
    _same(_rows(got, GRPO), _rows(want, GRPO), [c for c in FIGURES if c != "n_degenerate"])
    for metric in ("cos_full", "cos_support"):
        live = _pooled_live(a, nodes, metric)
        assert abs(_rows(got, GRPO).loc[metric, "mean"] - live[GRPO]) <= 1e-12


def test_unresolved_configuration_gets_no_rank(run_tables):
    """A configuration silent at every node has a null mean and a null rank; a real configuration is rank 1,
    the recommendation never names the silent one, and the headroom is taken over the ranked ones."""
    a, r, nodes = run_tables["alignment"], run_tables["rollouts"], run_tables["nodes"]
    silent, _ = _silence(a, r, GRPO, 1.0, 1.0)
    assert silent.loc[silent["config"] == GRPO, "no_signal"].all()
    summ = summarize(silent, r, nodes, n_boot=N_BOOT, seed=3)
    for metric in ("cos_full", "cos_support"):
        t = summ.table[summ.table["metric"] == metric].set_index("config")
        assert np.isnan(t.loc[GRPO, "mean"]) and pd.isna(t.loc[GRPO, "rank"])
        real = t.drop(index=GRPO)
        assert real["mean"].notna().all()
        assert list(real.sort_values("rank").index) == list(real["mean"].sort_values(ascending=False).index)
        assert sorted(real["rank"].astype(int)) == [1, 2]
        rec = summ.recommendation[metric]
        assert rec["overall"]["config"] == real["mean"].idxmax() and rec["overall"]["runner_up"] != GRPO
        assert any(x.startswith(GRPO) for x in rec["no_signal"])
        assert summ.headroom[metric]["n_nodes"] > 0  # the silent configuration does not empty the headroom
    # a small run where nothing is resolved (no nodes table: |g*|^2 unknown): nobody stands at rank 1
    none = summarize(silent, r, None, n_boot=0)
    assert none.table["mean"].isna().all() and none.table["rank"].isna().all()
    assert none.recommendation["cos_full"]["overall"] is None
