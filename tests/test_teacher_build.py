"""`diagnose teachers build` on the real embedded student, at a tiny setting: the checkpoints are ordinary
teachers (they load through the run's teacher path and pass the tokenizer check), their pass@1 and cost are
recorded, the training questions avoid every evaluation question it was given, a second build is a cache hit,
and fine-tuning really moved the weights (on the correct and on the incorrect responses, differently)."""

from __future__ import annotations

import json
import os

import pytest
import torch
from typer.testing import CliRunner

from diagnose import tasks
from diagnose.cli import app
from diagnose.errors import DiagnoseError
from diagnose.pipeline.config import RunConfig
from diagnose.teachers.build import INDEX_FILE, INFO_FILE, BuildConfig, TeacherBuilder, load_ladder
from diagnose.validate import ValidateConfig
from diagnose.validate.runner import evaluation_prompts, question_split

TINY = ["--steps", "1,2", "--incorrect-steps", "1", "--questions", "8", "--rollouts", "2", "--batch", "4",
        "--eval-questions", "4", "--eval-samples", "1", "--quiet"]


@pytest.fixture(scope="module")
def built(tmp_path_factory, embedded_model_path):
    """A tiny ladder built through the CLI for a run config (its questions excluded)."""
    folder = tmp_path_factory.mktemp("teachers")
    run_toml = folder / "run.toml"
    run_toml.write_text('task = "arithmetic"\ntemperature = 0.7\nmax_new_tokens = 16\nquestions = 8\n')
    out = folder / "ladder"
    res = CliRunner().invoke(app, ["teachers", "build", "--for-run", str(run_toml), "--out", str(out), *TINY,
                                   "--json"], env={"OMP_WAIT_POLICY": "PASSIVE"})
    assert res.exit_code == 0, res.output
    return run_toml, out, json.loads(res.stdout.strip().splitlines()[-1])


def test_ladder_is_recorded(built):
    _, out, printed = built
    assert [t["name"] for t in printed] == ["rft-1", "rft-2", "incorrect-1"]
    index = json.loads((out / INDEX_FILE).read_text())
    assert index["settings"]["max_new_tokens"] == 16 and index["settings"]["temperature"] == 0.7  # from the run
    for t in load_ladder(out):
        info = json.loads((out / t.name / INFO_FILE).read_text())
        assert 0.0 <= info["pass_at_1"] <= 1.0 and info["pass_ci"][0] <= info["pass_at_1"] <= info["pass_ci"][1]
        assert info["train_seconds"] > 0 and info["measure_seconds"] > 0
        assert info["student_pass_at_1"] == index["student_pass_at_1"]
    assert index["cost_s"]["total"] > 0 and index["train_samples"]["correct"] >= 2


def test_training_questions_avoid_evaluation_questions(built):
    run_toml, out, _ = built
    run_cfg = RunConfig.from_sources(run_toml, {})
    excluded = set(evaluation_prompts(run_cfg))
    task = tasks.get("arithmetic")
    run_prompts = {q.prompt for q in task.questions(run_cfg.questions, seed=run_cfg.seed)}
    held_out = {q.prompt for q in question_split(task, run_cfg, ValidateConfig())[0]}
    assert run_prompts | held_out == excluded and len(held_out) == ValidateConfig().eval_questions
    index = json.loads((out / INDEX_FILE).read_text())
    assert index["excluded_questions"] == len(excluded)
    ids = set(index["train_questions"]) | set(index["eval_questions"])
    # question ids name the draw; map them back to prompts through the builder's own split
    cfg = BuildConfig(**index["settings"])
    pass_qs, train_qs = TeacherBuilder(cfg, exclude=excluded, out=out).split()
    assert {q.id for q in pass_qs} | {q.id for q in train_qs} == ids
    assert not ({q.prompt for q in train_qs} & excluded) and not ({q.prompt for q in pass_qs} & excluded)
    assert not ({q.prompt for q in train_qs} & {q.prompt for q in pass_qs})


def test_checkpoints_are_teachers_and_weights_moved(built, hf_engine):
    from diagnose.pipeline.teachers import load_teacher_engines
    from diagnose.teachers import parse_teacher

    _, out, _ = built
    ladder = {t.name: t for t in load_ladder(out)}
    # the run's own teacher loader: it checks the tokenizer and the logit width, and raises on a mismatch
    configs = [parse_teacher(ladder[n].spec) for n in ("rft-1", "rft-2", "incorrect-1")]
    loaded = load_teacher_engines(configs, hf_engine, "hf", "float32")
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.inference_mode():
        base = hf_engine.model(input_ids=ids).logits
        moved = {c.model: (loaded[c.model].model(input_ids=ids).logits - base).abs().max().item() for c in configs}
    assert all(v > 1e-4 for v in moved.values()), moved
    assert len(set(moved.values())) == 3, moved


def test_second_build_is_cached_and_other_settings_refused(built):
    run_toml, out, printed = built
    runner = CliRunner()
    res = runner.invoke(app, ["teachers", "build", "--for-run", str(run_toml), "--out", str(out), *TINY, "--json"])
    assert res.exit_code == 0 and "already built" in res.output
    assert json.loads(res.stdout.strip().splitlines()[-1]) == printed
    res = runner.invoke(app, ["teachers", "build", "--for-run", str(run_toml), "--out", str(out), *TINY,
                              "--lr", "1e-3"])
    assert res.exit_code == 1 and res.output.count("\n") == 1 and "other settings" in res.output


def test_bad_input_is_one_line(tmp_path):
    runner = CliRunner()
    for args, words in [(["--steps", "a,b"], "--steps"), (["--task", "nope"], "nope"),
                        (["--steps", "0"], "--steps"), (["--questions", "0"], "--questions")]:
        res = runner.invoke(app, ["teachers", "build", "--out", str(tmp_path / "x"), *args])
        assert res.exit_code == 1, res.output
        assert res.output.startswith("error:") and res.output.count("\n") == 1 and words in res.output
        assert not (tmp_path / "x").exists()
    with pytest.raises(DiagnoseError, match="distinct questions"):
        TeacherBuilder(BuildConfig(questions=400), out=tmp_path / "y").split()
    assert os.listdir(tmp_path) == []
