"""Teachers on the real embedded model: privileged context moves probability toward the right answer, and a
teacher with a different tokenizer is refused before any work."""

from __future__ import annotations

import pytest
import torch

from diagnose import tasks
from diagnose.engines.base import render_prompt
from diagnose.errors import DiagnoseError
from diagnose.teachers import ContextInputs, build_messages, check_compatible, score_rollouts


def test_answer_context_raises_probability_of_the_correct_answer(hf_engine):
    """At the answer position, `self:answer` puts more mass than the student on the answer's first token."""
    task = tasks.get("arithmetic")
    questions = task.questions(8, seed=3)
    tok = hf_engine.tokenizer
    gains = []
    for q in questions:
        # SmolLM2 writes "Answer: 56" as "Answer", ":", " ", "5", "6": the answer starts after the space token
        response = tok("Let me compute it step by step.\nAnswer: ", add_special_tokens=False)["input_ids"]
        assert tok.decode(response[-1:]) == " "
        answer_tok = tok(q.answer, add_special_tokens=False)["input_ids"][0]
        pos = [len(response)]  # the first digit of the answer
        student = score_rollouts(hf_engine, [[{"role": "user", "content": q.prompt}]], [response + [answer_tok]], [pos])
        inputs = ContextInputs(question=q.prompt, answer=q.answer, solution=q.solution)
        teacher = score_rollouts(hf_engine, [build_messages("answer", inputs)], [response + [answer_tok]], [pos])
        lp_s = torch.log_softmax(student[0].logits[0], -1)[answer_tok]
        lp_t = torch.log_softmax(teacher[0].logits[0], -1)[answer_tok]
        gains.append(float(lp_t - lp_s))
    assert sum(g > 0 for g in gains) >= 6, gains
    assert sum(gains) / len(gains) > 0.5, gains


def test_teacher_prompt_is_never_truncated(hf_engine):
    """A long context is scored whole: its prompt length reflects every token of the solution."""
    long_solution = "We add the numbers carefully. " * 200
    inputs = ContextInputs(question="What is 2 + 2?", answer="4", solution=long_solution)
    messages = build_messages("solution", inputs)
    n_prompt = len(render_prompt(hf_engine.tokenizer, messages))
    out = score_rollouts(hf_engine, [messages], [[28, 29, 30]], [[0, 2]])
    assert out[0].prompt_len == n_prompt > 1000
    assert out[0].logits.shape == (2, hf_engine.vocab_size)


def test_context_overflowing_the_teacher_window_is_a_clear_error(hf_engine):
    inputs = ContextInputs(question="What is 2 + 2?", answer="4", solution="word " * 9000)
    with pytest.raises(DiagnoseError, match="context window"):
        score_rollouts(hf_engine, [build_messages("solution", inputs)], [[28, 29]], [[0]], teacher_name="self:solution")


@pytest.fixture(scope="module")
def other_tokenizer_model(embedded_model_path, tmp_path_factory):
    """The embedded model's weights with a tokenizer that has two extra tokens and another eos token."""
    from transformers import AutoTokenizer

    out = tmp_path_factory.mktemp("other_tok")
    for f in ("config.json", "model.safetensors", "generation_config.json"):
        src = f"{embedded_model_path}/{f}"
        try:
            (out / f).symlink_to(src)
        except FileNotFoundError:
            pass
    tok = AutoTokenizer.from_pretrained(embedded_model_path)
    tok.add_tokens(["<extra_a>", "<extra_b>"])
    tok.save_pretrained(out)
    return out


def test_tokenizer_mismatch_is_refused_with_what_differs(hf_engine, embedded_model_path, other_tokenizer_model):
    from transformers import AutoTokenizer

    other = AutoTokenizer.from_pretrained(other_tokenizer_model)
    with pytest.raises(DiagnoseError, match="vocabulary size") as err:
        check_compatible(hf_engine.tokenizer, other, "other")
    assert "\n" not in str(err.value)
    # the same tokenizer loaded again is accepted
    check_compatible(hf_engine.tokenizer, AutoTokenizer.from_pretrained(embedded_model_path), "same")
