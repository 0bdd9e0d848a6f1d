"""The exact engine speaks the Engine protocol and its Q, V are the true success probabilities."""

import math

import pytest
import torch

from diagnose import engines
from diagnose.engines.base import Continuation, Engine, SamplingParams, render_prompt
from diagnose.errors import DiagnoseError


def make(**kw):
    return engines.load("exact", "exact", **kw)


def test_registry_and_protocol():
    eng = make(seed=3)
    assert isinstance(eng, Engine)
    assert eng.name == "exact" and eng.vocab_size == 7
    prompt = render_prompt(eng.tokenizer, "21=")
    assert prompt == eng.prompt("21") and eng.target(prompt) == 0
    assert eng.tokenizer.decode(prompt) == "21="
    # exact arithmetic: no precision of its own (loaders get "auto"), no torch model, no context limit
    assert eng.dtype is None and engines.precision(eng) == "auto"
    assert eng.device == "cpu" and eng.model is None and eng.max_model_len is None


def test_an_engine_missing_a_protocol_attribute_is_refused_in_one_line():
    """A user-registered back end that sets no `dtype` (nor `model`) fails at load, naming what it lacks,
    not later as an AttributeError deep in a run."""

    class Partial:
        name, vocab_size, tokenizer, device, max_model_len = "partial", 7, None, "cpu", None

        def __init__(self, model, **kw):
            self.model_id = model

        def sample(self, *a):
            return []

        continue_from = score = sample

    engines.register("partial", Partial)
    try:
        with pytest.raises(DiagnoseError, match=r"engine 'partial' .* lacks dtype, model \("):
            engines.load("partial", "m")
    finally:
        engines._ENGINES.entries.pop("partial", None)


def test_sampling_is_deterministic_and_batch_independent():
    eng = make(seed=1)
    a, b = eng.prompt("21"), eng.prompt("3")
    params = SamplingParams(seed=7)
    alone = eng.sample([b], 4, params)[0]
    together = eng.sample([a, b], 4, params)[1]
    assert [s.token_ids for s in alone] == [s.token_ids for s in together]
    other = eng.sample([b], 4, SamplingParams(seed=8))[0]
    assert [s.token_ids for s in other] != [s.token_ids for s in alone]
    for s in alone:
        assert s.finish_reason == "stop" and s.token_ids[-1] == eng.tokenizer.eos_token_id
        assert len(s.logprobs) == len(s.token_ids) and all(lp <= 0 for lp in s.logprobs)
    cont = eng.continue_from([Continuation(tuple(a), 3)], 5, params)[0]
    assert all(c.token_ids[0] == 3 for c in cont)


def test_score_matches_sampling_policy():
    eng = make(seed=1)
    p = eng.prompt("12")
    seq = p + eng.sample([p], 1, SamplingParams())[0][0].token_ids
    pos = list(range(len(p), len(seq)))
    full = eng.score([seq], [pos])[0]
    top = eng.score([seq], [pos], topk=3, token_ids=[[[seq[t]] for t in pos]])[0]
    logp = torch.log_softmax(full.logits, -1)
    assert full.logits.shape == (len(pos), eng.vocab_size)
    assert torch.allclose(top.topk_logprobs[:, 0], logp.max(-1).values, atol=1e-5)
    sample_lp = eng.sample([p], 1, SamplingParams())[0][0].logprobs
    assert torch.allclose(top.token_logprobs[:, 0], torch.tensor(sample_lp, dtype=torch.float32), atol=1e-5)


def test_exact_values_match_monte_carlo():
    eng = make(seed=1)
    p = eng.prompt("21")
    q, v = eng.exact_values(p)
    assert math.isclose(
        v,
        float((torch.softmax(eng.score([p], [[len(p)]])[0].logits[0].double(), -1) * q).sum()),
        rel_tol=1e-6,
    )
    n = 8000
    rollouts = eng.sample([p], n, SamplingParams(seed=5))[0]
    verify = eng.verifier(p)
    mc_v = sum(verify(s.text) for s in rollouts) / n
    assert abs(mc_v - v) < 4 * math.sqrt(v * (1 - v) / n)
    for tok in (0, 2, eng.tokenizer.eos_token_id):
        cont = eng.continue_from([Continuation(tuple(p), tok)], n, SamplingParams(seed=6))[0]
        mc = sum(eng.success(p, c.token_ids) for c in cont) / n
        qk = eng.exact_q(p, tok)
        assert abs(mc - qk) < 4 * math.sqrt(max(qk * (1 - qk), 1e-4) / n) + 1e-3


def test_exact_values_under_a_length_limit_shorter_than_the_horizon():
    """With max_new_tokens M below the horizon, a response is cut at M tokens and judged as it stands; the
    exact tables follow the same policy (checked by Monte Carlo at the root and at a node t = 3, whose
    continuations may run M - 3 more tokens)."""
    eng = make(seed=2, horizon=12, eos_bias=-2.0)
    p = eng.prompt("21")
    m, n = 5, 8000
    _, v = eng.exact_values(p, max_new_tokens=m)
    _, v_free = eng.exact_values(p)
    assert abs(v - v_free) > 0.01  # the limit matters for this model
    rollouts = eng.sample([p], n, SamplingParams(seed=5, max_new_tokens=m))[0]
    assert max(len(s.token_ids) for s in rollouts) == m
    mc = sum(eng.success(p, s.token_ids) for s in rollouts) / n
    assert abs(mc - v) < 4 * math.sqrt(v * (1 - v) / n)
    head = rollouts[0].token_ids[:3]
    for tok in (0, 1, eng.tokenizer.eos_token_id):
        cont = eng.continue_from(
            [Continuation(tuple(p + head), tok)], n, SamplingParams(seed=6, max_new_tokens=m - 3)
        )[0]
        assert max(len(c.token_ids) for c in cont) <= m - 3
        got = sum(eng.success(p, head + c.token_ids) for c in cont) / n
        qk = eng.exact_q(p + head, tok, max_new_tokens=m)
        assert abs(got - qk) < 4 * math.sqrt(max(qk * (1 - qk), 1e-4) / n) + 1e-3


def test_model_spec_options_build_the_same_engine_as_keywords():
    from diagnose.errors import DiagnoseError

    by_spec = engines.load("exact", "exact:seed=2,scale=1.5,horizon=5", dtype="bfloat16")
    by_kw = engines.load("exact", "exact", seed=2, scale=1.5, horizon=5)
    assert by_spec.model_id == by_kw.model_id
    assert (by_spec._table == by_kw._table).all()
    with pytest.raises(DiagnoseError, match="unknown option"):
        engines.load("exact", "exact:sed=2")


def test_digitsum_task_judges_as_the_engine_does():
    """The `digitsum` task (what `diagnose run --engine exact` runs) gives the engine's own verdicts."""
    from diagnose import tasks

    eng = make()
    task = tasks.get("digitsum")
    qs = task.questions(20, seed=1)
    assert len({q.prompt for q in qs}) == 20
    for q in qs:
        ids = eng.prompt(q.prompt)
        verify = eng.verifier(ids)
        for resp in ("", "1", "12", "333", "2.1", "0123"):
            assert task.verify(q, resp) == verify(resp), (q.prompt, resp)
