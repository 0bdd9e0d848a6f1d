"""`diagnose validate`: the training wiring on the real embedded model (weights move, the applied update is the
objective's autograd gradient through the model, tables and report section are written, resume), the ideal
arm's direction against exact g* on the exact engine, grpo kept out of the rank correlation, and the run's
alignment replicates read for it. The statistics themselves (rho, its p-value and interval, the fixed-set gain
interval) are tested on synthetic numbers in test_validate_stats.py."""

from __future__ import annotations

import re
import shutil
from dataclasses import fields

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from diagnose import engines, objectives
from diagnose.cli import app
from diagnose.engines.base import SamplingParams
from diagnose.errors import DiagnoseError
from diagnose.estimate import EstimateConfig, EstimateQuestion
from diagnose.estimate.generate import Generator
from diagnose.estimate.rollouts import sample_rollouts
from diagnose.pipeline import RunConfig, Runner
from diagnose.tables import read_metadata, read_table
from diagnose.validate import ValidateConfig, Validation, validate
from diagnose.validate.arms import IdealDirections, StepBatch

SMALL = dict(steps=2, batch=2, eval_questions=4, eval_samples=2, seeds=1, progress=False)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, embedded_model_path):
    """A finished diagnosis of the embedded student: one teacher, two objectives, and the GRPO direction
    (`grpo_ref`, no teacher): three configurations."""
    out = tmp_path_factory.mktemp("validate") / "run"
    cfg = RunConfig.from_sources(None, dict(
        task="arithmetic", temperature=0.7, max_new_tokens=16, questions=2, rollouts=2, budget=20,
        continuations=1, top_k=2, teachers=["self:answer"], objectives=["rkl", "fkl", "grpo_ref"], out=str(out),
        progress=False,
    ))
    Runner(cfg).run()
    return out


@pytest.fixture(scope="module")
def validated(run_dir):
    """The CI-sized validation: 2 steps on 4 training questions (2 per step) for 2 arms, one seed."""
    result = validate(run_dir, configs=["self:answer|rkl"], references=["control"], **SMALL)
    return run_dir, result


def test_validation_writes_tables_and_report(validated):
    run_dir, result = validated
    rows = read_table(run_dir, "validation")
    assert sorted(rows["arm"]) == ["control", "self:answer|rkl"]
    assert (rows["weight_change"] > 0).all()  # training moved the weights in both arms
    assert (rows["positions_trained"] > 0).all() and (rows["teacher_tokens"] > 0).all()
    samples = read_table(run_dir, "validation_samples")
    assert len(samples) == 3 * 4 * 2  # start + 2 arms, 4 held-out questions x 2 samples
    for _, r in rows.iterrows():
        mine = samples[(samples["arm"] == r["arm"]) & (samples["seed"] == r["seed"])]
        assert r["pass_after"] == pytest.approx(mine["correct"].mean())
        start = samples[samples["arm"] == "start"]["correct"].mean()
        assert r["pass_before"] == pytest.approx(start)
        assert r["gain_ci_low"] <= r["gain"] <= r["gain_ci_high"]
    config_row = rows[rows["arm"] == "self:answer|rkl"].iloc[0]
    summary = read_table(run_dir, "summary")
    mean = summary[(summary["config"] == "self:answer|rkl") & (summary["metric"] == "cos_full")]["mean"].iloc[0]
    assert config_row["alignment"] == pytest.approx(mean)
    assert np.isnan(rows[rows["arm"] == "control"]["alignment"].iloc[0])
    arms = read_table(run_dir, "validation_arms")
    meta = read_metadata(run_dir, "validation_arms")["validation"]
    assert set(arms["verdict"]) <= {"gain", "loss", "within noise"}
    assert meta["n"] == 1 and np.isnan(meta["spearman"])  # one configuration: no rank correlation claimed
    assert np.isnan(meta["spearman_p"]) and meta["configs"] == ["self:answer|rkl"] and meta["grpo"] is None
    assert "estimands" in meta and "fixed held-out" in meta["estimands"]["gain"]
    assert "questions not resampled" in meta["resampling"]
    html = (run_dir / "report.html").read_text()
    assert 'id="validation"' in html and "fig-validation" in html
    assert "no rank correlation" in html and "Ranking among distillation configurations: ρ undefined" in html
    text = result.describe()
    assert "pass@1" in text and "ranking among distillation configurations: rho undefined" in text
    assert not re.search(r"rho = [+-]?\d", text)  # undefined: never a number


def test_validation_resumes_without_training_again(validated, monkeypatch):
    run_dir, result = validated
    before = read_table(run_dir, "validation_arms")

    def no_training(*a, **k):
        raise AssertionError("a finished arm was trained again")

    monkeypatch.setattr(Validation, "train", no_training)
    again = validate(run_dir, configs=["self:answer|rkl"], references=["control"], **SMALL)
    pd.testing.assert_frame_equal(again.table, before, check_exact=True)
    with pytest.raises(DiagnoseError, match="differs in: lr"):
        validate(run_dir, configs=["self:answer|rkl"], references=["control"], lr=3e-4, **SMALL)


def test_grpo_arm_takes_the_alignment_the_run_measured(tmp_path, run_dir):
    """A run that scored grpo_ref measures the alignment of the very direction the grpo arm trains on: that
    arm carries it and appears once, but it is RL on the rollouts' verdicts, not distillation: it stays out of
    the rank correlation and is reported beside it (here 2 distillation configurations + grpo: rho undefined,
    where the old rule counted 3 arms and gave a number), and is drawn as its own point; the control stays a
    band."""
    run = tmp_path / "run"
    shutil.copytree(run_dir, run, ignore=shutil.ignore_patterns("validation*"))
    summary = read_table(run, "summary")
    measured = summary[(summary["config"] == "-|grpo_ref") & (summary["metric"] == "cos_full")]["mean"].iloc[0]
    v = Validation(run, ValidateConfig(configs=["-|grpo_ref", "self:answer|fkl"], **SMALL))
    assert [(a.label, a.kind) for a in v.arms] == [("grpo", "grpo"), ("self:answer|fkl", "config"),
                                                   ("ideal", "ideal"), ("control", "control")]
    assert v.arms[0].alignment == pytest.approx(measured) and v.arms[0].objective == "grpo_ref"
    assert (v.arms[-1].teacher, v.arms[-1].objective) == ("self:answer", "fkl")  # the control shuffles a teacher
    result = validate(run, references=["control"], **SMALL)
    arms = result.table
    assert sorted(arms["arm"]) == ["control", "grpo", "self:answer|fkl", "self:answer|rkl"]
    assert np.isfinite(arms[arms["arm"] == "grpo"]["alignment"].iloc[0])
    meta = read_metadata(run, "validation_arms")["validation"]
    assert meta["n"] == 2 and np.isnan(meta["spearman"]) and "no rank correlation" in meta["note"]
    assert meta["configs"] == ["self:answer|fkl", "self:answer|rkl"]
    assert meta["grpo"]["alignment"] == pytest.approx(measured)
    assert meta["grpo"]["gain"] == pytest.approx(arms[arms["arm"] == "grpo"]["gain"].iloc[0])
    assert "beside it, grpo" in result.describe()
    # the ranking test's summary (benchmarks/validate.py prints it): consistent with the table and metadata
    rs = result.ranking_summary()
    assert rs["distill_configs"] == 2 and rs["arms"] == 4 and np.isnan(rs["ideal_gain"])
    dist = arms[arms["kind"] == "config"].sort_values("arm")
    (l1, h1), (l2, h2) = dist[["alignment_ci_low", "alignment_ci_high"]].to_numpy()
    assert rs["separated_pairs"] == int(h1 < l2 or h2 < l1)
    assert rs["control_gain"] == pytest.approx(arms[arms["arm"] == "control"]["gain"].iloc[0])
    assert rs["grpo_gain"] == pytest.approx(meta["grpo"]["gain"])
    assert np.isnan(rs["spearman_distill"]) and np.isnan(rs["perm_p"]) and len(rs["spearman_distill_ci"]) == 2
    assert set(rs) >= {"distill_configs", "separated_pairs", "spearman_distill", "spearman_distill_ci", "perm_p",
                       "ideal_gain", "control_gain", "arms"}
    from diagnose.report.validation import fig_validation

    fig = fig_validation(arms)
    assert sorted(fig.data[0].text) == ["self:answer|fkl", "self:answer|rkl"]  # the distillation configurations
    assert list(fig.data[1].text) == ["grpo"] and len(fig.data) == 2


def test_alignment_replicates_come_from_the_runs_tables(run_dir):
    """The rank correlation's alignment replicates: the run's question-cluster replicates of each distillation
    configuration's summary `mean` (NaN for grpo, ideal and control, which are not in it), centred on it."""
    v = Validation(run_dir, ValidateConfig(n_boot=200, **SMALL))
    reps = v.alignment_replicates()
    kinds = [a.kind for a in v.arms]
    assert reps.shape == (200, len(v.arms)) and not v.alignment_stale
    for k, arm in enumerate(v.arms):
        if kinds[k] == "config":
            assert np.isfinite(reps[:, k]).all() and reps[:, k].std() > 0
            lo, hi = np.quantile(reps[:, k], [0.01, 0.99])
            assert lo <= arm.alignment <= hi
        else:
            assert np.isnan(reps[:, k]).all()


def test_update_is_the_objectives_autograd_gradient(run_dir):
    """On one batch of on-policy rollouts, the parameter gradient the arm applies (logits.backward(-d)) equals
    autograd of the objective's loss as written (mean over tokens), through the model: rkl against the
    self:answer teacher, and GRPO's -A log p_a."""
    v = Validation(run_dir, ValidateConfig(**SMALL))
    v.load()
    policy = v.policy
    questions = v.train_questions[:2]
    rollouts = sample_rollouts(Generator(v.engine, v.sampling(3)), v.estimate_questions(questions), 2)
    batch = StepBatch(rollouts, questions, step=0, seed=3)
    index = [i for i, r in enumerate(rollouts) if r.token_ids]
    positions = [list(range(len(rollouts[i].token_ids))) for i in index]
    seqs = [rollouts[i].prompt_ids + rollouts[i].token_ids for i in index]
    absolute = [[len(rollouts[i].prompt_ids) + t for t in p] for i, p in zip(index, positions, strict=True)]
    n = sum(len(p) for p in positions)
    tokens = torch.tensor([rollouts[i].token_ids[t] for i, p in zip(index, positions, strict=True) for t in p])

    # The training logits are the ones the diagnosis scores: engine.score at the same positions, / T.
    with torch.no_grad():
        z = policy.logits(seqs, absolute)
    scored = torch.cat([s.logits for s in v.engine.score(seqs, absolute)]) / v.run_cfg.temperature
    assert torch.allclose(z, scored, atol=2e-4, rtol=1e-4)

    def grads(loss_fn):
        policy.reset()
        with torch.enable_grad():
            loss_fn(policy.logits(seqs, absolute)).backward()
        return torch.cat([p.grad.flatten() for p in policy.parameters])

    arm = next(a for a in v.arms if a.label == "self:answer|rkl")
    dirs = v.directions(arm)
    dirs.prepare(batch)
    teacher = dirs.teacher_logits(batch, index, positions)
    applied = grads(lambda z: -(z * dirs.direction(batch, index, positions, z.detach())).sum() / n)

    def rkl(z):  # KL(p || q) per token as written, mean over tokens
        logp, logq = torch.log_softmax(z, -1), torch.log_softmax(teacher, -1)
        return (logp.exp() * (logp - logq)).sum(-1).mean()

    expected = grads(rkl)
    assert applied.abs().max() > 0
    rel = float((applied - expected).norm() / expected.norm())
    assert rel < 1e-3, rel  # float32 rounding of the closed form against autograd (measured 1.6e-4)
    fkl = objectives.parse("fkl")  # a different objective's update is far from rkl's: the check discriminates
    wrong = grads(lambda z: -(z * fkl.direction(z.detach(), teacher)).sum() / n)
    assert float((wrong - expected).norm() / expected.norm()) > 0.05

    grpo = v.directions(next(a for a in v.arms if a.kind == "grpo"))
    rollouts[index[0]].correct = not rollouts[index[0]].correct  # a group with both verdicts: A != 0
    adv = batch.advantages()
    a = torch.tensor([adv[i] for i, p in zip(index, positions, strict=True) for _ in p])
    applied = grads(lambda z: -(z * grpo.direction(batch, index, positions, z.detach())).sum() / n)
    expected = grads(lambda z: -(a * torch.log_softmax(z, -1)[torch.arange(n), tokens]).mean())
    rel = float((applied - expected).norm() / expected.norm())
    assert expected.norm() > 0 and rel < 1e-3, rel
    policy.reset()
    assert policy.distance() == 0


def test_ideal_arm_direction_converges_to_exact_g_star():
    """The ideal arm's d at its nodes, with many continuations, is exact g* = p (Q - V) on the candidates."""
    eng = engines.load("exact", "exact", seed=1)
    texts = ("21", "3", "12", "0")
    qs = [EstimateQuestion(id=f"q{i}", prompt_ids=eng.prompt(t), verify=eng.verifier(eng.prompt(t)))
          for i, t in enumerate(texts)]
    ecfg = EstimateConfig(rollouts_per_question=2, continuations=400, budget=4e4, k_student=3, k_teacher=0,
                          max_new_tokens=6)
    gen = Generator(eng, SamplingParams(max_new_tokens=6, seed=5))
    rollouts = sample_rollouts(gen, qs, 2)
    batch = StepBatch(rollouts, [None] * len(qs), step=0, seed=5)
    ideal = IdealDirections(eng, ecfg, lambda b: qs)
    ideal.prepare(batch)
    positions = ideal.positions(batch)
    index = [i for i, p in enumerate(positions) if p]
    pos = [positions[i] for i in index]
    z = torch.cat([eng.score([rollouts[i].prompt_ids + rollouts[i].token_ids],
                             [[len(rollouts[i].prompt_ids) + t for t in p]])[0].logits.float()
                   for i, p in zip(index, pos, strict=True)])
    d = ideal.direction(batch, index, pos, z)
    truth = torch.zeros_like(d, dtype=torch.float64)
    row = 0
    for i, p in zip(index, pos, strict=True):
        for t in p:
            ro = rollouts[i]
            q, _ = eng.exact_values(ro.prompt_ids + ro.token_ids[:t], max_new_tokens=6)
            ids = torch.tensor(ideal.rows[(i, t)][0])
            probs = torch.softmax(z[row].double(), -1)[ids]
            qv = q[ids].double()
            truth[row, ids] = probs * (qv - (probs * qv).sum() / probs.sum())
            row += 1
    assert row >= 8
    off = torch.ones_like(d, dtype=torch.bool)
    row = 0
    for i, p in zip(index, pos, strict=True):
        for t in p:
            off[row, torch.tensor(ideal.rows[(i, t)][0])] = False
            row += 1
    assert not d[off].any()  # nothing off the candidates: Q := V there, so g* = 0
    cos = torch.nn.functional.cosine_similarity(d.double().flatten(), truth.flatten(), dim=0)
    assert cos > 0.97, float(cos)


def test_cli_refuses_bad_input_in_one_line(tmp_path, run_dir):
    cli = CliRunner()
    (tmp_path / "typo.toml").write_text("stpes = 3\n")
    cases = [
        ([str(tmp_path / "nothing")], "not a run directory"),
        ([str(run_dir), "--config", str(tmp_path / "typo.toml")], "unknown validate keys: stpes"),
        ([str(run_dir), "--reference", "bogus"], "unknown reference arm"),
        ([str(run_dir), "--steps", "0"], "--steps must be >= 1"),
        ([str(run_dir), "--arm", "self:answer|jsd"], "is not in the run"),
    ]
    for args, message in cases:
        res = cli.invoke(app, ["validate", *args])
        assert res.exit_code == 1, res.output
        lines = [line for line in res.output.splitlines() if line.strip()]
        assert len(lines) == 1 and message in lines[0] and "Traceback" not in res.output, res.output
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.toml").write_text((run_dir / "config.toml").read_text())
    res = cli.invoke(app, ["validate", str(unfinished)])
    assert res.exit_code == 1 and "not a finished run" in res.output
    assert not (unfinished / "validation.json").exists() and sorted(p.name for p in unfinished.iterdir()) == [
        "config.toml"
    ]
    # every ValidateConfig key has its generated flag (as every RunConfig key has one on `run`), defaults shown
    help_text = cli.invoke(app, ["validate", "--help"], env={"COLUMNS": "200"}).output
    for f in fields(ValidateConfig):
        if f.metadata.get("cli", True):
            assert "--" + f.metadata.get("flag", f.name).replace("_", "-") in help_text, f.name
    assert re.search(r"--max-grad-norm\s.*\(default 1\.0\)", help_text)
    # a student that cannot be loaded: one line, and the run directory gains nothing
    moved = tmp_path / "moved"
    shutil.copytree(run_dir, moved, ignore=shutil.ignore_patterns("validation*"))
    config = moved / "config.toml"
    config.write_text(re.sub(r'student = ".*"', 'student = "/nonexistent/student"', config.read_text()))
    before = sorted(p.name for p in moved.iterdir())
    res = cli.invoke(app, ["validate", str(moved), "-q"])
    assert res.exit_code == 1 and "/nonexistent/student" in res.output and "Traceback" not in res.output
    assert sorted(p.name for p in moved.iterdir()) == before


def test_validation_section_renders_in_headless_chromium(validated):
    """The report's validation figure draws in a real browser, with no script error and no network request."""
    from test_report import CHROMIUM, CHROMIUM_ARGS, _browser_or_skip

    sync_api = _browser_or_skip()
    run_dir, _ = validated
    problems, requests = [], []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("request", lambda req: requests.append(req.url))
            page.goto((run_dir / "report.html").as_uri())
            page.wait_for_selector("#fig-validation .main-svg .scatterlayer", timeout=30_000)
            assert page.locator("#fig-validation .scatterlayer .point").count() == 1  # one configuration
            text = page.locator("#validation").inner_text()
            assert "Does alignment predict training?" in text and "control" in text
        finally:
            browser.close()
    assert not problems, problems
    assert all(u.startswith(("file:", "data:", "blob:", "about:")) for u in requests), requests
