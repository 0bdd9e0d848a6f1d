"""Teacher specs, context builders, payload densification; engine-backed checks live in test_teachers_model.py."""

from __future__ import annotations

import pytest
import torch

from diagnose import objectives, teachers
from diagnose.errors import DiagnoseError
from diagnose.teachers import ContextInputs, build_messages, parse_teacher


@pytest.mark.parametrize(
    "spec,model,context",
    [
        ("self", "self", "none"),
        ("self:answer", "self", "answer"),
        ("self:solution", "self", "solution"),
        ("self:summary", "self", "summary"),
        ("self:contrastive", "self", "contrastive"),
        ("self:system=Check every step: twice.", "self", "system=Check every step: twice."),
        ("self:template=/tmp/t.txt", "self", "template=/tmp/t.txt"),
        ("model=Qwen/Qwen3-8B", "Qwen/Qwen3-8B", "none"),
        ("model=/models/big:answer", "/models/big", "answer"),
        ("model=/models/big:system=Be brief", "/models/big", "system=Be brief"),
    ],
)
def test_spec_round_trip(spec, model, context):
    cfg = parse_teacher(spec)
    assert (cfg.model, cfg.context) == (model, context)
    assert parse_teacher(cfg.label) == cfg


def test_toml_tables():
    assert parse_teacher({"model": "self", "context": "answer"}) == parse_teacher("self:answer")
    assert parse_teacher({"spec": "model=x:solution"}).model == "x"
    with pytest.raises(DiagnoseError, match="unknown keys"):
        parse_teacher({"model": "self", "ctx": "answer"})


@pytest.mark.parametrize("spec", ["self:hint", "teacher", "self:system=", "model="])
def test_bad_specs_are_one_line_errors(spec):
    with pytest.raises(DiagnoseError) as err:
        parse_teacher(spec)
    assert "\n" not in str(err.value)


def test_every_context_is_listed():
    listed = teachers.available()
    for name in ("answer", "solution", "summary", "contrastive", "system=<text>", "template=<path>"):
        assert name in listed


INPUTS = ContextInputs(
    question="What is 6 * 7? End with 'Answer: <number>'.",
    answer="42",
    solution="6 * 7 = 42. " * 60,  # a long solution: must never be truncated
    summary="Multiply six by seven.",
    correct_example="6*7 = 42. Answer: 42",
    incorrect_example="6*7 = 48. Answer: 48",
)


def test_contexts_carry_their_privileged_information_untruncated(tmp_path):
    def text(ctx):
        return "\n".join(m["content"] for m in build_messages(ctx, INPUTS))

    assert "42" in text("answer") and INPUTS.question in text("answer")
    assert INPUTS.solution in text("solution")
    assert INPUTS.summary in text("summary")
    assert INPUTS.correct_example in text("contrastive") and INPUTS.incorrect_example in text("contrastive")
    sys_msgs = build_messages("system=Think carefully.", INPUTS)
    assert sys_msgs[0] == {"role": "system", "content": "Think carefully."}
    assert sys_msgs[1]["content"] == INPUTS.question
    tpl = tmp_path / "t.txt"
    tpl.write_text("Q: {question}\nKnown answer: {answer}\nWorked: {solution}")
    assert text(f"template={tpl}") == f"Q: {INPUTS.question}\nKnown answer: 42\nWorked: {INPUTS.solution}"
    assert text("none") == INPUTS.question


def test_context_errors(tmp_path):
    with pytest.raises(DiagnoseError, match="reference solution"):
        build_messages("solution", ContextInputs(question="q", answer="1"))
    with pytest.raises(DiagnoseError, match="not found"):
        build_messages(f"template={tmp_path / 'missing.txt'}", INPUTS)
    bad = tmp_path / "bad.txt"
    bad.write_text("{question} {hint}")
    with pytest.raises(DiagnoseError, match="placeholder"):
        build_messages(f"template={bad}", INPUTS)


def test_densified_topk_keeps_known_probabilities_exact():
    g = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(4, 50, generator=g)
    logp = torch.log_softmax(logits, -1)
    top = logp.topk(5, -1)
    extra_ids = torch.tensor([[0, 1]] * 4)
    dense = teachers.densify(top.indices, top.values, 50, extra_ids, logp.gather(1, extra_ids))
    # rows are proper distributions, and every known entry keeps its exact log-prob
    torch.testing.assert_close(dense.exp().sum(-1), torch.ones(4))
    torch.testing.assert_close(dense.gather(1, top.indices), top.values)
    torch.testing.assert_close(dense.gather(1, extra_ids), logp.gather(1, extra_ids))
    # so a sampled-token objective sees the exact teacher log-prob: same direction as with full logits
    student = torch.randn(4, 50, generator=g)
    tokens = torch.tensor([0, 1, 0, 1])
    obj = objectives.get("rkl_sampled")
    torch.testing.assert_close(obj.direction(student, dense, tokens), obj.direction(student, logits, tokens))


def test_payload_follows_objectives():
    assert teachers.payload_for([objectives.get("rkl_sampled"), objectives.get("rkl_topk")]) == "topk"
    assert teachers.payload_for([objectives.get("rkl_sampled"), objectives.get("fkl")]) == "logits"
