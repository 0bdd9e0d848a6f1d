"""Configurations the docs promise, run for real: the default `diagnose run` (its teachers and objectives),
self:summary and its cache, contrastive examples that never show the scored rollout, and the vLLM engine
through `diagnose run`."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

import diagnose
from diagnose.pipeline import RunConfig
from diagnose.tables import config_label, read_table
from diagnose.teachers.at_nodes import context_inputs
from diagnose.teachers.summaries import summarize

SMALL = dict(questions=1, rollouts=2, max_new_tokens=24, budget=18, seed=0)


def test_run_and_estimator_share_one_set_of_defaults():
    """RunConfig takes the default of every setting it shares with EstimateConfig from there: the estimate a
    default `diagnose run` makes is EstimateConfig()'s, so the library and the CLI cannot drift apart."""
    from diagnose.estimate import EstimateConfig

    assert RunConfig().estimate_config() == EstimateConfig()


def test_a_budget_that_buys_no_node_is_refused_up_front():
    with pytest.raises(diagnose.errors.DiagnoseError, match="buys no node"):
        RunConfig(budget=16).validate()  # default teachers: 1 + 2 + 2 x 3 = 9 candidates x 2 continuations = 18
    RunConfig(budget=18).validate()
    # adaptive: node selection spends the budget less its reserve (half), so one node needs twice as much
    with pytest.raises(diagnose.errors.DiagnoseError, match="buys no node.*adaptive"):
        RunConfig(budget=35, allocation="adaptive").validate()
    RunConfig(budget=36, allocation="adaptive").validate()


def test_contrastive_examples_never_show_the_scored_rollout():
    q = SimpleNamespace(prompt="2+2?", answer="4", solution=None, meta={})
    rollouts = [SimpleNamespace(text=f"r{i}", correct=c) for i, c in enumerate([True, False, True, False])]
    for i, scored in enumerate(rollouts):
        inputs = context_inputs(q, rollouts, i, None)
        assert inputs.correct_example != scored.text and inputs.incorrect_example != scored.text
        assert inputs.correct_example in ("r0", "r2") and inputs.incorrect_example in ("r1", "r3")
    # one rollout of each verdict: the scored one's own verdict has no other example left
    two = rollouts[:2]
    assert context_inputs(q, two, 0, None).correct_example is None
    assert context_inputs(q, two, 1, None).incorrect_example is None


@pytest.mark.slow
def test_default_run_configuration_end_to_end(tmp_path, embedded_model_path):
    """RunConfig's default teachers and objectives (what `make demo` runs), on one question."""
    cfg = RunConfig()
    res = diagnose.run(out=str(tmp_path / "run"), progress=False, **{**SMALL, "budget": cfg.budget})
    al = read_table(tmp_path / "run", "alignment")
    expected = {config_label(t, o.label) for t in cfg.teachers for o in map(diagnose.objectives.parse, cfg.objectives)}
    assert set(al["config"]) == expected
    assert set(res.summary["config"]) == expected
    assert (tmp_path / "run" / "report.html").stat().st_size > 1_000_000


@pytest.mark.slow
def test_summary_context_and_its_cache(tmp_path, hf_engine):
    sols = ["Add 3 and 4 to get 7, then double it: 14.", "Multiply 6 by 7: 42."]
    first = summarize(hf_engine, sols, tmp_path / "s", seed=0, max_new_tokens=16)
    assert len(first) == 2 and all(first) and len(list((tmp_path / "s").glob("*.json"))) == 2

    class NoGeneration:  # a cached summary needs no engine call
        model_id, tokenizer = hf_engine.model_id, hf_engine.tokenizer

        def sample(self, *a, **k):
            raise AssertionError("summary regenerated instead of read from the cache")

    assert summarize(NoGeneration(), sols, tmp_path / "s", seed=0, max_new_tokens=16) == first
    res = diagnose.run(
        out=str(tmp_path / "run"), progress=False, teachers=["self:summary"], objectives=["rkl"], **SMALL
    )
    assert list((tmp_path / "run" / "cache" / "summaries").glob("*.json"))
    assert set(res.alignment["teacher"]) == {"self:summary"}


@pytest.mark.slow
def test_vllm_engine_through_diagnose_run(tmp_path, vllm_engine, monkeypatch):
    """`diagnose run --engine vllm` end to end (the session's vLLM engine stands in for a fresh start-up)."""
    import diagnose.engines as engines

    real = engines.load
    monkeypatch.setattr(
        engines, "load", lambda name, model, **kw: vllm_engine if name == "vllm" else real(name, model, **kw)
    )
    res = diagnose.run(
        out=str(tmp_path / "run"),
        progress=False,
        engine="vllm",
        teachers=["self:answer"],
        objectives=["rkl", "fkl"],
        **SMALL,
    )
    meta = diagnose.tables.read_metadata(tmp_path / "run", "alignment")
    assert meta["engine"] == "vllm"
    assert len(res.alignment) > 0 and len(read_table(tmp_path / "run", "rollouts")) == 2


def test_every_run_key_is_a_flag_and_reaches_the_estimate(tmp_path):
    """The CLI options are generated from RunConfig's fields: every key but `progress` has a flag, and the
    estimate settings given as flags arrive in the EstimateConfig the run uses (an exact-engine run with them
    finishes and records them)."""
    from dataclasses import fields

    from typer.testing import CliRunner

    from diagnose.cli import app, run_option_parameters
    from diagnose.pipeline.rundir import tomllib

    names = {p.name for p in run_option_parameters()}
    for f in fields(RunConfig):
        if f.name != "progress":
            assert f.metadata.get("flag", f.name) in names, f.name
    out = tmp_path / "run"
    res = CliRunner().invoke(app, [
        "run", "--engine", "exact", "--student", "exact", "--task", "digitsum", "--teacher", "model=exact:seed=1",
        "--objective", "rkl", "--questions", "2", "--max-new-tokens", "8", "--budget", "60", "--nodes", "every",
        "--allocation", "adaptive", "--top-p", "0.9", "--temperature", "0.8", "--level", "0.9", "--n-boot", "50",
        "--budget-unit", "tokens", "--out", str(out), "-q",
    ])
    assert res.exit_code == 0, res.output
    cfg = RunConfig(**tomllib.loads((out / "config.toml").read_text()))
    est = cfg.estimate_config()
    assert (est.nodes, est.allocation, est.top_p, est.temperature, est.level, est.n_boot, est.budget_unit) == (
        "every", "adaptive", 0.9, 0.8, 0.9, 50, "tokens"
    )
    assert RunConfig().digest() != cfg.digest()
    bad = CliRunner().invoke(app, ["run", "--allocation", "sometimes", "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 1 and "--allocation must be one of uniform, adaptive" in bad.output
    assert not (tmp_path / "bad").exists()


def test_grpo_reference_arm_in_a_run(tmp_path):
    """`--objective grpo_ref` (the GRPO arm: no teacher) runs beside a teacher's objective: its alignment rows
    have null teacher proxies (there is no teacher distribution), the teacher's rows keep theirs, and the
    summary ranks both."""
    from tests.fixtures_run import OTHERS, exact_run

    out = exact_run(tmp_path / "run", teachers=[OTHERS[0]], objectives=["rkl", "grpo_ref"], questions=2, budget=60)
    al = read_table(out, "alignment")
    grpo = al[al["objective"] == "grpo_ref"]
    teacher = al[al["objective"] == "rkl"]
    assert len(grpo) > 0 and (grpo["teacher"] == "-").all()
    assert grpo[["q_token", "kl_pq", "tv", "entropy_teacher"]].isna().all().all()
    assert teacher[["q_token", "kl_pq", "tv", "entropy_teacher"]].notna().all().all()
    summary = read_table(out, "summary")
    assert {"-|grpo_ref", config_label(OTHERS[0], "rkl")} <= set(summary["config"])
