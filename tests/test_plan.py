"""`diagnose plan` and `diagnose run --dry-run`: the bill's bounds against what real runs do, its remaining-length
formula against brute force, and the command line (prints the bill, creates nothing, one `error:` line)."""

from __future__ import annotations

import json
import math
from statistics import mean

import pytest
from typer.testing import CliRunner

import diagnose
from diagnose import engines
from diagnose.cli import app
from diagnose.estimate import EstimateQuestion, Estimator
from diagnose.estimate.nodes import window_index
from diagnose.pipeline import RunConfig, Runner
from diagnose.pipeline.plan import (
    eta,
    expected_remaining,
    expected_work,
    node_budget,
    node_costs,
    plan,
    selection_remaining,
    split,
)
from diagnose.tables import read_table
from diagnose.teachers import engine_teacher

TINY = dict(
    questions=2,
    rollouts=2,
    max_new_tokens=16,
    budget=12,
    top_k=2,
    continuations=1,
    teachers=["self:answer"],
    objectives=["rkl"],
    seed=0,
)


def _within(value, pair):
    lo, hi = pair
    return lo <= value <= hi


def test_remaining_length_formula_matches_brute_force():
    for strategy, anchor in (("windows", "start"), ("windows_end", "end")):
        for n in range(1, 300):
            by_window: dict[int, list[int]] = {}
            for t in range(n):  # every position, grouped by the selection's own window function
                by_window.setdefault(window_index(t, n, anchor), []).append(n - t)
            brute = mean(mean(left) for left in by_window.values())
            assert expected_remaining(n, strategy) == pytest.approx(brute, rel=1e-12), (strategy, n)
    for n in range(1, 50):
        assert expected_remaining(n, "uniform") == pytest.approx(mean(n - t for t in range(n)))
    assert expected_remaining(0) == 0.0


def test_selection_remaining_follows_where_the_budget_puts_nodes():
    # a budget that buys every position: the mean over all positions, (n + 1) / 2
    for n in (1, 5, 17, 40):
        cfg = RunConfig(rollouts=3, top_k=1, continuations=1, teachers=["self:answer"], budget=10 * 3 * n)
        assert selection_remaining(cfg, n) == pytest.approx((n + 1) / 2)
    # a budget of a few nodes: windows whose share buys none pass it on, nodes land late (less left)
    small = RunConfig(budget=40)  # defaults: a node costs up to 18, six windows at L = 46
    assert selection_remaining(small, 46) < 0.6 * expected_remaining(46)


@pytest.mark.parametrize(
    "rollouts,top_k,continuations,teachers,extra,nodes,allocation",
    [
        (2, 1, 1, 1, 0, "windows", "uniform"),
        (2, 2, 1, 1, 3, "windows", "uniform"),
        (3, 2, 2, 2, 5, "windows", "uniform"),
        (4, 3, 1, 1, 30, "windows", "uniform"),
        (2, 1, 2, 2, 100, "windows", "uniform"),
        (1, 2, 1, 1, 7, "windows", "uniform"),
        (3, 2, 1, 1, 9, "windows_end", "uniform"),
        (3, 2, 1, 1, 9, "uniform", "uniform"),
        (3, 2, 1, 1, 20, "refine", "uniform"),
        (2, 1, 1, 1, 300, "every", "uniform"),
        (2, 2, 2, 1, 3, "windows", "adaptive"),
        (3, 2, 3, 2, 40, "windows", "adaptive"),
        (3, 2, 2, 1, 30, "refine", "adaptive"),
        (2, 1, 2, 1, 20, "every", "adaptive"),
    ],
)
def test_bounds_hold_on_the_exact_engine(rollouts, top_k, continuations, teachers, extra, nodes, allocation):
    """Node and continuation counts of real selections (exact engine: short rollouts, so the position cap is
    exercised too) lie inside expected_work's bounds, for budgets from one nominal node upward; adaptive
    allocation included (its node selection spends the budget less the reserve, then its plan the rest)."""
    eng = engines.load("exact", "exact", seed=1)
    fns = {f"t{i}": engine_teacher(engines.load("exact", "exact", seed=2 + i)) for i in range(teachers)}
    for seed in range(4):
        cfg = RunConfig(
            questions=1, rollouts=rollouts, top_k=top_k, continuations=continuations,
            teachers=["self:answer"] * teachers, seed=seed, max_new_tokens=8, nodes=nodes, allocation=allocation,
        )
        cfg.budget = math.ceil(node_costs(cfg)[1] / (node_budget(cfg) / cfg.budget)) + extra
        prompt = eng.prompt(str(seed))
        est = Estimator(eng, [EstimateQuestion(id="q", prompt_ids=prompt, verify=eng.verifier(prompt))], fns, ["rkl"],
                        cfg.estimate_config())
        est.sample()
        est.select()
        if allocation == "adaptive":
            est.adapt()
        positions = sum(len(r.token_ids) for r in est.rollouts)
        work = expected_work(cfg, positions / rollouts)
        assert work["positions_per_question"] == positions
        assert _within(len(est.estimates), work["nodes_per_question"]), (seed, len(est.estimates), work)
        assert _within(est.spend.continuations, work["continuations_per_question"]), (seed, est.spend, work)


@pytest.mark.parametrize("budget,nodes", [(200, "windows"), (600, "windows"), (600, "windows_end"), (600, "uniform")])
def test_a_token_budget_is_billed_as_the_continuations_it_buys(budget, nodes):
    """--budget-unit tokens: the bill reads the budget as budget / (tokens a continuation runs) continuations
    (estimates, so marked), and its continuation tokens come within 25% of what the estimator spends (exact
    engine, budgets below the position cap; it used to read 600 tokens as 600 continuations)."""
    eng = engines.load("exact", "exact", seed=1)
    fns = {"t0": engine_teacher(engines.load("exact", "exact", seed=2))}
    for seed in range(3):
        cfg = RunConfig(questions=1, rollouts=4, top_k=2, continuations=2, teachers=["self:answer"], seed=seed,
                        max_new_tokens=8, nodes=nodes, budget=budget, budget_unit="tokens")
        prompt = eng.prompt(str(seed))
        est = Estimator(eng, [EstimateQuestion(id="q", prompt_ids=prompt, verify=eng.verifier(prompt))], fns, ["rkl"],
                        cfg.estimate_config())
        est.sample()
        est.select()
        work = expected_work(cfg, sum(len(r.token_ids) for r in est.rollouts) / cfg.rollouts)
        assert work["budget_unit"] == "tokens" and work["budget_continuations"] < budget / 2
        predicted = work["continuation_tokens"][1]
        assert 0.75 <= est.spend.tokens / predicted <= 1.1, (seed, est.spend, work)


def test_bounds_bracket_a_real_run(tmp_path, embedded_model_path):
    out = tmp_path / "run"
    result = diagnose.run(out=str(out), progress=False, **TINY)
    cost = json.loads((out / "cost.json").read_text())
    cfg = RunConfig(**TINY)
    length = cost["generated_tokens"] / cost["rollouts"]
    # each question's budget as the frontier plan set it (cost/qNNNNN.json records it)
    budgets = [json.loads((out / "cost" / f"q{i:05d}.json").read_text())["budget"] for i in range(TINY["questions"])]
    work = expected_work(cfg, length, budgets=budgets)
    assert work["rollouts"] == cost["rollouts"] == len(result.rollouts) == 4
    assert work["rollout_tokens"] == pytest.approx(cost["generated_tokens"])
    nodes = result.nodes
    assert len(nodes) == cost["nodes"]
    assert _within(cost["nodes"], work["nodes"]) and _within(cost["continuations"], work["continuations"]), (
        cost,
        work,
    )
    # per question, with that question's own rollout length
    for i, qid in enumerate(sorted(result.rollouts.question_id.unique())):
        shard = json.loads((out / "cost" / f"q{i:05d}.json").read_text())
        one = RunConfig(**{**TINY, "questions": 1, "budget": shard["budget"]})
        own = expected_work(one, shard["generated_tokens"] / TINY["rollouts"])
        assert _within(int((nodes.question_id == qid).sum()), own["nodes_per_question"])
        assert _within(shard["continuations"], own["continuations_per_question"])
    # continuation tokens are an estimate, not a bound: the right order of magnitude is all that is claimed
    per_continuation = cost["continuation_tokens"] / cost["continuations"]
    assert 0.25 < per_continuation / work["mean_remaining_tokens"] < 4, (per_continuation, work)


def _tiny_toml(tmp_path, **values):
    path = tmp_path / "tiny.toml"
    path.write_text(RunConfig(**{**TINY, "questions": 1, **values}).to_toml())
    return path


def test_dry_run_prints_the_bill_and_creates_nothing(tmp_path, embedded_model_path):
    out = tmp_path / "never"
    res = CliRunner().invoke(app, ["run", "--dry-run", "--config", str(_tiny_toml(tmp_path)), "--out", str(out), "-q"])
    assert res.exit_code == 0, res.output
    for needle in ("rollout tokens", "nodes", "continuations", "continuation tokens", "teacher-scored tokens",
                   "engine forward tokens", "ETA", "tokens/s", "model load", "not cached"):
        assert needle in res.stdout, (needle, res.stdout)
    assert not out.exists()
    res = CliRunner().invoke(app, ["plan", "--json", "--config", str(_tiny_toml(tmp_path)), "--out", str(out), "-q"])
    assert res.exit_code == 0, res.output
    bill = json.loads(res.stdout)
    assert bill["work"]["rollouts"] == 2 and bill["calibration"]["rows"] == 2 and not bill["calibration"]["cached"]
    lo, hi = bill["eta_s"]
    assert 0 < bill["load_s"] < lo <= hi and math.isfinite(hi)
    assert not out.exists()


def test_plan_with_a_missing_student_is_one_error_line(tmp_path):
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["plan", "--student", "/nonexistent", "--out", str(out)])
    assert res.exit_code == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "/nonexistent" in lines[0], res.stderr
    assert "Traceback" not in res.output and not out.exists()


def test_plan_bills_a_shard_and_splits_over_workers():
    """`--shard i/N` bills the questions whose index is i mod N; `--workers W` divides generation and scoring
    (not the load) by the workers that get questions; the exact engine's plan through the CLI says both."""
    assert split(RunConfig(questions=10, shard="1/3"), 10) == (3, 1)  # questions 1, 4, 7
    assert split(RunConfig(questions=10, workers=4), 10) == (10, 4)
    assert split(RunConfig(questions=3, workers=8), 3) == (3, 3)  # a worker without a question does no work
    assert split(RunConfig(questions=3, ray_address="auto"), 3) == (3, 1)
    work = {"rollout_tokens": 400, "continuation_tokens": [100, 600], "rollouts": 8, "selection_passes": [1, 4]}
    calib = {"tokens_per_s": 50.0, "score_s": {"self": 0.5}}
    one, four = eta(work, calib, 3.0, [], 1), eta(work, calib, 3.0, [], 4)
    assert one["load_s"] == four["load_s"] == 3.0
    assert four["generation_s"] == pytest.approx([g / 4 for g in one["generation_s"]])
    assert four["scoring_s"] == pytest.approx([s / 4 for s in one["scoring_s"]])
    base = ["plan", "--json", "--engine", "exact", "--student", "exact", "--task", "digitsum", "--teacher",
            "model=exact:seed=1", "--objective", "rkl", "--questions", "5", "--max-new-tokens", "8", "--budget", "60",
            "-q"]
    whole = json.loads(CliRunner().invoke(app, base).stdout)
    shard = json.loads(CliRunner().invoke(app, [*base, "--shard", "0/2"]).stdout)
    workers = json.loads(CliRunner().invoke(app, [*base, "--workers", "2"]).stdout)
    assert (whole["work"]["questions"], shard["work"]["questions"], shard["shard"]) == (5, 3, "0/2")
    assert workers["workers"] == 2 and workers["work"] == whole["work"]


EXACT_RUN = dict(engine="exact", student="exact", task="digitsum",
                 teachers=["model=exact:seed=1", "model=exact:seed=2"],
                 objectives=["rkl"], questions=4, rollouts=4, max_new_tokens=8, n_boot=10)


@pytest.mark.parametrize(
    "extra",
    [dict(budget=120), dict(budget=200, allocation="adaptive"), dict(budget=600, budget_unit="tokens"),
     dict(budget=150, nodes="refine"), dict(budget=40, rollouts=2, top_k=1, continuations=3)],
    ids=["uniform", "adaptive", "tokens", "refine", "small"],
)
def test_the_plans_point_estimates_come_near_the_run(tmp_path, extra):
    """`diagnose plan`'s point estimates (work.expected: the estimator's selection replayed on the calibration's
    rollouts, with the candidate-set size it measured) come within 25% of what the run spends, and its
    calibration samples the run's own rollouts (the same lengths, question by question)."""
    cfg = RunConfig(**{**EXACT_RUN, **extra, "out": str(tmp_path / "run"), "progress": False})
    bill = plan(cfg, progress=False)
    assert not (tmp_path / "run").exists()
    Runner(cfg, progress=False).run()
    cost = json.loads((tmp_path / "run" / "cost.json").read_text())
    rollouts = read_table(tmp_path / "run", "rollouts").sort_values(["question_id", "rollout_idx"])
    own = [list(g.n_tokens) for _, g in rollouts.groupby("question_id", sort=True)]
    assert bill.calibration["lengths"] == own
    e = bill.work["expected"]
    for key in ("nodes", "continuations", "continuation_tokens"):
        assert abs(e[key] - cost[key]) <= 0.25 * cost[key], (key, e, cost)
