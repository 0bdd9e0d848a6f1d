"""The frontier plan (diagnose.estimate.frontier): questions whose rollouts all agree are estimated with
probability `frontier`, weighted up by its inverse, and their budget goes to the questions with both verdicts.

Checked on the exact engine, whose Q is known: the Horvitz-Thompson sums the pooled alignment is made of stay
unbiased for their value over every token of every rollout (and without the inverse weight they are not);
at the run's defaults the pooled alignment lands on the population value as it does with every question
estimated; the real run records the plan and spends the freed budget on the questions with both verdicts."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
from fixtures_run import SHARPER, exact_run

from diagnose import engines
from diagnose.errors import DiagnoseError
from diagnose.estimate import Estimator
from diagnose.estimate.frontier import coin, plan_budgets
from diagnose.estimate.summary import summarize
from diagnose.estimate.truth import (
    concat_inputs,
    exact_questions,
    exact_result,
    informed_teacher,
    population_truth,
    run_per_question,
)
from diagnose.pipeline.config import RunConfig
from diagnose.pipeline.frontier import PLAN_FILE
from diagnose.tables import read_table


def test_plan_keeps_every_mixed_question_and_a_fair_share_of_the_rest():
    ids = [f"q{i}" for i in range(4000)]
    verdicts = [[True, False, True, False] if i % 2 else ([True] * 4 if i % 4 == 0 else [False] * 4)
                for i in range(4000)]
    plans = plan_budgets(verdicts, ids, 40, 0.25, seed=3)
    mixed = [p for p in plans if p.mixed]
    agreeing = [p for p in plans if not p.mixed]
    assert len(mixed) == 2000 and all(p.inclusion == 1.0 and p.budget > 40 for p in mixed)
    kept = [i for i, p in enumerate(plans) if not p.mixed and p.budget > 0]
    assert len(kept) == 500  # ceil(0.25 x 2000), each agreeing question with inclusion probability 500 / 2000
    assert all(p.inclusion == 0.25 and p.budget in (0.0, 40.0) for p in agreeing)
    # a uniformly random subset: as many all-correct as all-wrong questions, up to sampling error
    all_correct = sum(i % 4 == 0 for i in kept)
    assert abs(all_correct - 250) <= 4 * math.sqrt(500 * 0.25)
    assert sum(p.budget for p in plans) == pytest.approx(40 * 4000)  # the freed budget moves, none is lost
    # the coins depend on the seed and the question only
    assert plan_budgets(verdicts, ids, 40, 0.25, seed=3) == plans
    assert plan_budgets(verdicts, ids, 40, 0.25, seed=4) != plans
    assert coin(3, "q1") == coin(3, "q1") != coin(3, "q2")


def test_plan_caps_a_question_and_spends_nothing_extra_without_a_frontier():
    ids = ["a", "b", "c", "d"]
    one_mixed = plan_budgets([[True, False], [True, True], [True, True], [False, False]], ids, 10, 0.5, seed=0)
    assert one_mixed[0].budget == 20.0  # at most budget / frontier, though more was freed
    # strata: all correct (2 questions: 1 estimated, standing for both) and all wrong (1: estimated)
    assert sum(p.budget > 0 for p in one_mixed[1:3]) == 1 and one_mixed[3].budget == 10.0
    assert one_mixed[1].inclusion == 0.5 and one_mixed[1].weight == 2.0 and one_mixed[3].weight == 1.0
    skewed = plan_budgets([[True, True]] * 2, ["a", "b"], 10, 0.5, seed=0, tokens=[30, 10])
    kept = next(i for i, p in enumerate(skewed) if p.budget > 0)
    assert skewed[kept].weight == pytest.approx(40 / [30, 10][kept])  # the stratum's tokens over the kept one's
    none_mixed = plan_budgets([[True, True]] * 4, ids, 10, 0.5, seed=0)
    assert sorted(p.budget for p in none_mixed) == [0.0, 0.0, 10.0, 10.0]  # nothing extra without a frontier
    single = plan_budgets([[False, False]], ["a"], 10, 0.25, seed=0)
    assert single[0].budget == 10.0 and single[0].inclusion == 1.0  # at least one agreeing question
    every = plan_budgets([[True, True]] * 4, ids, 10, 1.0, seed=0)
    assert all(p.budget == 10.0 and p.inclusion == 1.0 for p in every)


def _sums(results, teacher: str) -> np.ndarray:
    """(A, B, U) of the pooled alignment (stats.pooled_alignment) of one configuration, from the result frames:
    A = sum w <g, d>/|d|, B = sum w |g|^2, U = sum w over the rows where the direction is live."""
    frames = concat_inputs(results)
    al, nodes = frames["alignment"], frames["nodes"]
    al = al[al["config"] == f"{teacher}|fkl"].merge(
        nodes[["question_id", "rollout_idx", "position", "weight", "g_sq_unbiased"]],
        on=["question_id", "rollout_idx", "position"], suffixes=("_row", ""),
    )
    live = (al["d_sq"] > 0) & ~al["no_signal"]
    w = al["weight"].where(live, 0.0)
    dot_unit = al["dot"] / np.sqrt(al["d_sq"].where(live, 1.0))
    return np.array([(w * dot_unit).sum(), (w * al["g_sq_unbiased"]).sum(), w.sum()])


@pytest.fixture(scope="module")
def exact_setup():
    eng = engines.load("exact", "exact", seed=1, horizon=12)
    cfg = RunConfig().estimate_config()
    cfg.n_boot = 10
    teachers = {"informed": informed_teacher(eng)}
    return eng, cfg, teachers


def test_inverse_inclusion_weights_keep_the_sums_unbiased(exact_setup):
    """Every node of every rollout (nodes = every, so only the coins are random): over 200 coin seeds the
    frontier-weighted sums A, B, U (ratio weights: a stratum's tokens over its estimated questions') average
    within 4 SE of their value over all questions; with the weight left out, U is far off (so the check can
    fail)."""
    eng, cfg, teachers = exact_setup
    cfg = dataclasses.replace(cfg, nodes="every")
    qs = exact_questions(eng, 30, seed=11)
    pop = population_truth(eng, qs, teachers, ["fkl"], cfg)
    truth = _sums(pop, "informed")
    verdicts = [[bool(r.correct) for r in res.rollouts] for res in pop]
    agreeing = sum(len(set(v)) == 1 for v in verdicts)
    assert 5 <= agreeing <= 25, verdicts  # both kinds of question, or the plan has nothing to do
    per_q = [_sums([res], "informed") for res in pop]
    tokens = [sum(len(r.token_ids) for r in res.rollouts) for res in pop]
    reps, naive = [], []
    for seed in range(200):
        plans = plan_budgets(verdicts, [q.id for q in qs], cfg.budget, 0.25, seed, tokens)
        kept = [(s, p) for s, p in zip(per_q, plans, strict=True) if p.budget > 0]
        reps.append(sum(s * p.weight for s, p in kept))
        naive.append(sum(s for s, _ in kept))
    reps, naive = np.array(reps), np.array(naive)
    se = reps.std(0, ddof=1) / math.sqrt(len(reps))
    assert np.all(np.abs(reps.mean(0) - truth) <= 4 * se + 1e-9 * np.abs(truth)), (reps.mean(0), truth, se)
    naive_se = naive.std(0, ddof=1) / math.sqrt(len(naive))
    assert abs(naive.mean(0)[2] - truth[2]) > 6 * naive_se[2]
    # the same through the estimator itself: question_weight multiplies the design weights
    plans = plan_budgets(verdicts, [q.id for q in qs], cfg.budget, 0.25, 0)
    q0 = next(i for i, p in enumerate(plans) if not p.mixed and p.budget > 0)
    est = Estimator(eng, [qs[q0]], teachers, ["fkl"], dataclasses.replace(cfg, question_weight=3.5))
    est.run()
    assert _sums([exact_result(est)], "informed") == pytest.approx(3.5 * per_q[q0])


def test_the_pooled_alignment_lands_on_the_population_value_at_the_defaults(exact_setup):
    """RunConfig's defaults (budget 40, windows, 2 continuations) with the plan on (frontier 0.25): the exact-Q
    pooled alignment of 24 questions, averaged over 16 seeds (coins and node selection), is as close to the
    value over every token of their rollouts as it is with every question estimated (frontier 1)."""
    eng, cfg, teachers = exact_setup
    frontier = 0.25
    qs = exact_questions(eng, 24, seed=12)
    pop = population_truth(eng, qs, teachers, ["fkl"], cfg)
    truth = summarize(**concat_inputs(pop), n_boot=0, metrics=("cos_full",)).table.iloc[0]["mean"]
    means = {}
    for f in (frontier, 1.0):
        vals = []
        for seed in range(16):
            runs = run_per_question(eng, qs, teachers, ["fkl"], dataclasses.replace(cfg, seed=0), frontier=f,
                                    plan_seed=seed, selection_seed=seed)
            exact = [exact_result(est) for est, _ in runs]
            vals.append(summarize(**concat_inputs(exact), n_boot=0, metrics=("cos_full",)).table.iloc[0]["mean"])
        means[f] = (float(np.mean(vals)), float(np.std(vals, ddof=1) / math.sqrt(len(vals))))
    for f, (m, se) in means.items():
        assert abs(m - truth) <= 4 * se + 0.03, (f, m, se, truth)


def test_the_interval_covers_the_population_value_with_the_plan_on(exact_setup):
    """The CLI defaults with --frontier 0.25 on 16 questions: the 95% interval of the alignment covers the
    exact population value in >= 92% of 100 seeded runs (the question-cluster bootstrap resamples every
    question, skipped ones too) and stays useful (median width <= 0.6)."""
    eng, cfg, teachers = exact_setup
    pop = population_truth(eng, exact_questions(eng, 400, seed=7), teachers, ["fkl"], cfg)
    truth = summarize(**concat_inputs(pop), n_boot=0, metrics=("cos_full",)).table.iloc[0]["mean"]
    hits, widths = 0, []
    for seed in range(100):
        runs = run_per_question(eng, exact_questions(eng, 16, seed=3000 + seed), teachers, ["fkl"], cfg, 0.25)
        row = summarize(**concat_inputs([r for _, r in runs]), n_boot=300, seed=seed, metrics=("cos_full",))
        row = row.table.iloc[0]
        hits += bool(row["ci_low"] <= truth <= row["ci_high"])
        widths.append(row["ci_high"] - row["ci_low"])
    assert hits >= 92 and float(np.median(widths)) <= 0.6, (hits, np.median(widths))


def test_a_run_records_its_plan_and_spends_the_freed_budget_on_live_nodes(tmp_path):
    """The real pipeline on the exact engine: frontier.json holds the verdicts, skipped questions keep their
    rollouts and have no nodes, and the budget they free buys the mixed questions more nodes."""
    common = dict(teachers=[SHARPER], objectives=["rkl"], questions=16, budget=40, seed=2)
    on = exact_run(tmp_path / "on", **common, frontier=0.25)
    off = exact_run(tmp_path / "off", **common)  # the default: every question at its budget
    plan = json.loads((on / PLAN_FILE).read_text())["questions"]
    assert len(plan) == 16 and not (off / PLAN_FILE).exists()
    cost_on, cost_off = (json.loads((d / "cost.json").read_text()) for d in (on, off))
    assert cost_on["budget"] <= cost_off["budget"] + 1e-9 == 16 * 40 + 1e-9
    assert cost_on["rollouts"] == cost_off["rollouts"] == 16 * 4
    nodes = read_table(on, "nodes")
    rollouts = read_table(on, "rollouts")
    agreeing = rollouts.groupby("question_id")["correct"].nunique() == 1
    with_nodes = set(nodes["question_id"])
    assert set(agreeing[~agreeing].index) <= with_nodes  # every mixed question is estimated
    skipped = set(agreeing[agreeing].index) - with_nodes
    assert skipped, "no question was skipped: the plan did nothing here"
    all_correct = rollouts.groupby("question_id")["correct"].all()
    for stratum in (agreeing & all_correct, agreeing & ~all_correct):
        m = int(stratum.sum())
        k = math.ceil(0.25 * m)
        kept = [q for q in stratum[stratum].index if q in with_nodes]
        assert len(kept) == k
        for q in kept:  # estimated agreeing questions are weighted up by about m / k
            share = nodes[nodes["question_id"] == q]["inclusion_prob"]
            assert (share <= k / m + 1e-12).all() and share.max() > 0
    # the freed budget went to the mixed questions: more nodes each than at frontier 1 (whether that buys more
    # live nodes per token depends on agreeing questions being dead, as on a real model's hard questions;
    # benchmarks/frontier.py measures it there; on this engine they are as live as the others)
    nodes_off = read_table(off, "nodes")
    mixed = list(agreeing[~agreeing].index)
    per_q = lambda n: n[n["question_id"].isin(mixed)].groupby("question_id").size().mean()  # noqa: E731
    assert per_q(nodes) > per_q(nodes_off)
    # resuming reads the same plan back; a changed frontier is another config
    assert RunConfig.load(on).frontier == 0.25
    before = (on / PLAN_FILE).read_text()
    exact_run(on, **common, frontier=0.25)
    assert (on / PLAN_FILE).read_text() == before
    with pytest.raises(DiagnoseError, match="frontier"):
        exact_run(on, **common, frontier=0.5)
    assert RunConfig.load(off).frontier == 1.0 and "frontier" not in RunConfig.load(off).identity()
    # a config.toml without the key (a run made before it existed) reads as the default: no plan
    (off / "config.toml").write_text("\n".join(
        line for line in (off / "config.toml").read_text().splitlines() if not line.startswith("frontier")
    ) + "\n")
    assert RunConfig.load(off).frontier == 1.0


def test_a_student_that_solves_nothing_or_everything_is_told_what_to_change():
    from diagnose.tables import verdict_note

    none = verdict_note([False] * 16, ["q"] * 16)
    assert "solved none of its 16 rollouts" in none and "easier" in none
    every = verdict_note([True] * 8)
    assert "solved all 8" in every and "harder" in every
    few = verdict_note([False] * 36 + [True, False, False, False], [f"q{i // 4}" for i in range(40)])
    assert "only 1 of 10 questions have both verdicts" in few and "easier" in few
    assert verdict_note([True, False] * 8, [f"q{i // 4}" for i in range(16)]) is None


def test_plan_reports_the_calibration_verdicts_and_the_frontier(tmp_path):
    """`diagnose plan` on the exact engine: the calibration sample's pass rate, its questions with both
    verdicts, and the estimated frontier plan are in the bill."""
    from diagnose.pipeline.plan import plan

    cfg = RunConfig.from_sources(None, {"student": "exact", "engine": "exact", "task": "digitsum",
                                        "max_new_tokens": 8, "teachers": [SHARPER], "objectives": ["rkl"],
                                        "questions": 12, "frontier": 0.25, "out": str(tmp_path / "never"),
                                        "progress": False})
    bill = plan(cfg, progress=False)
    c = bill.calibration
    assert 0 <= c["pass_rate"] <= 1 and 0 <= c["mixed_questions"] <= c["prompts"]
    text = bill.describe()
    assert "student on the calibration sample: pass rate" in text and "frontier plan (estimated" in text
    budgets = bill.work["planned_budgets"]
    assert len(budgets) == 12 and sum(budgets) <= 12 * cfg.budget + 1e-9
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_an_identical_teacher_stays_silent_with_the_plan_on(tmp_path, temperature):
    """--frontier 0.25 through the real pipeline: the student as its own teacher has no signal at any node of
    any estimated question (weighted up or not), is never ranked, and the bottom line names no configuration."""
    out = exact_run(tmp_path / "self", teachers=["model=exact"], objectives=["rkl", "fkl", "jsd:beta=0.5"],
                    questions=16, budget=40, seed=2, frontier=0.25, temperature=temperature)
    assert (out / PLAN_FILE).exists()
    al = read_table(out, "alignment")
    nodes = read_table(out, "nodes")
    # the plan did something: some question was skipped, so the estimated agreeing ones are weighted up
    assert len(al) > 0 and nodes["question_id"].nunique() < read_table(out, "rollouts")["question_id"].nunique()
    assert al["no_signal"].all() and (al["d_sq"] == 0).all()
    summary = read_table(out, "summary")
    assert summary["rank"].isna().all() and summary["mean"].isna().all()
    from diagnose.report import load

    assert "no configuration has a defined alignment" in load(out).describe()
