"""Both engines on the real embedded model: distributions agree, sampling follows them, forced tokens lead,
shared-prefix continuations equal recomputation, stop strings stop, seeds repeat, chunked scoring is exact."""

from __future__ import annotations

import math

import pytest
import torch
from engine_checks import recomputation_error, rescored
from scipy.stats import chisquare

from diagnose.engines import Continuation, Engine, SamplingParams, precision, render_prompt
from diagnose.engines.base import check_protocol

pytestmark = pytest.mark.slow

ENGINES = ["hf_engine", "vllm_engine"]
# Both engines run float32 here; differences come from kernels and summation order only.
LOGPROB_TOL = 2e-3

QUESTIONS = [
    "What is 3 + 4? Answer with a number.",
    "Name a colour of the sky.",
    "Write the word cat backwards.",
]


@pytest.fixture(params=ENGINES)
def engine(request):
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="module")
def prompts(hf_engine):
    return [render_prompt(hf_engine.tokenizer, q) for q in QUESTIONS]


def test_engines_declare_the_protocol(hf_engine, vllm_engine):
    """Every attribute the protocol declares is set, with its meaning: the precision the logits are computed
    in (the embedded checkpoint is float32 on both), where, the in-process torch model (hf only)."""
    for engine in (hf_engine, vllm_engine):
        assert isinstance(engine, Engine)
        check_protocol(engine, engine.name)
        assert engine.dtype == torch.float32 and precision(engine) == "float32"
        assert engine.device == "cpu"
        assert engine.max_model_len >= 2048
    assert isinstance(hf_engine.model, torch.nn.Module) and vllm_engine.model is None


def _logp_at(engine, seq, t):
    """Full next-token log-probs of the engine at position t of seq."""
    s = engine.score([seq], [[t]], topk=None)[0]
    return torch.log_softmax(s.logits.float(), dim=-1)[0]


def test_render_prompt_applies_chat_template(hf_engine, prompts):
    text = hf_engine.tokenizer.decode(prompts[0])
    assert text.startswith("<|im_start|>system") and text.endswith("<|im_start|>assistant\n")
    assert "3 + 4" in text


def test_engines_agree_on_next_token_distribution(hf_engine, vllm_engine, prompts):
    """Top-20 log-probs of vLLM equal hf's at the same positions (prompt ends and inside a response)."""
    seqs = [p + hf_engine.tokenizer.encode(" The answer is 7. It is a small number.") for p in prompts]
    positions = [[len(p), len(p) + 3, len(s) - 1, len(s)] for p, s in zip(prompts, seqs, strict=False)]
    ref = hf_engine.score(seqs, positions, topk=None)
    got = vllm_engine.score(seqs, positions, topk=20)
    for r, g in zip(ref, got, strict=False):
        logp = torch.log_softmax(r.logits, dim=-1)
        assert g.topk_ids.shape == (4, 20)
        err = (logp.gather(1, g.topk_ids) - g.topk_logprobs).abs().max().item()
        assert err < LOGPROB_TOL, err
        # the same most likely token, unless the top two are tied within tolerance
        top2 = logp.topk(2, dim=-1)
        untied = (top2.values[:, 0] - top2.values[:, 1]) > LOGPROB_TOL
        assert torch.equal(top2.indices[untied, 0], g.topk_ids[untied, 0])


def test_token_logprobs_match_full_scores(engine, prompts):
    """Requested ids' log-probs (ragged lists, NaN padded) equal the full distribution's entries."""
    seq = prompts[0] + [28, 29, 30]
    positions = [len(prompts[0]), len(seq)]
    ids = [[28, 504, 2], [7]]
    s = engine.score([seq], [positions], topk=5, token_ids=[ids])[0]
    full = torch.stack([_logp_at(engine, seq, t) for t in positions])
    assert torch.allclose(s.token_logprobs[0], full[0, ids[0]], atol=LOGPROB_TOL)
    assert abs(s.token_logprobs[1, 0] - full[1, 7]) < LOGPROB_TOL and math.isnan(s.token_logprobs[1, 1])
    assert torch.allclose(s.topk_logprobs, full.topk(5, dim=-1).values, atol=LOGPROB_TOL)


def test_first_token_frequencies_follow_the_engine_distribution(engine, prompts):
    """Chi-square goodness of fit of n sampled first tokens against the engine's own p (fixed seed)."""
    n = 400
    prompt = prompts[1]
    samples = engine.sample([prompt], n, SamplingParams(max_new_tokens=1, seed=11))[0]
    assert len(samples) == n and all(len(s.token_ids) == 1 for s in samples)
    p = _logp_at(engine, prompt, len(prompt)).exp().double()
    counts = torch.bincount(torch.tensor([s.token_ids[0] for s in samples]), minlength=p.numel()).double()
    big = (p * n >= 5).nonzero().squeeze(-1)
    assert big.numel() >= 3, "the test needs a spread-out distribution"
    rest = torch.ones_like(p, dtype=torch.bool)
    rest[big] = False
    obs = torch.cat([counts[big], counts[rest].sum().view(1)])
    exp = torch.cat([p[big], p[rest].sum().view(1)]) * n
    stat, pvalue = chisquare(obs.numpy(), exp.numpy() * obs.sum().item() / exp.sum().item())
    assert pvalue > 1e-3, (stat, pvalue)
    # each sample's log-prob is the engine's log-prob of that token
    lp = torch.tensor([s.logprobs[0] for s in samples])
    assert torch.allclose(lp, p.log().float()[[s.token_ids[0] for s in samples]], atol=LOGPROB_TOL)


def test_forced_token_leads_every_continuation(engine, prompts):
    prefix = tuple(prompts[0] + hf_engine_tokens(engine, " The"))
    logp = _logp_at(engine, list(prefix), len(prefix))
    forced = [int(logp.argmax()), int(logp.argsort()[len(logp) // 2]), 42]  # likely, unlikely, arbitrary
    reqs = [Continuation(prefix, t) for t in forced] + [Continuation(tuple(prompts[2]), 330)]
    out = engine.continue_from(reqs, 3, SamplingParams(max_new_tokens=6, seed=5))
    assert len(out) == len(reqs)
    for req, conts in zip(reqs, out, strict=False):
        assert len(conts) == 3
        for c in conts:
            assert c.token_ids[0] == req.token
            assert 1 <= len(c.token_ids) <= 6 and len(c.logprobs) == len(c.token_ids)
    for t, conts in zip(forced, out[:3], strict=False):
        assert abs(conts[0].logprobs[0] - logp[t].item()) < LOGPROB_TOL


def hf_engine_tokens(engine, text):
    return engine.tokenizer.encode(text, add_special_tokens=False)


def test_continuations_equal_recomputation_from_scratch(engine, prompts):
    """Every log-prob along shared-prefix continuations (prefixes of different lengths in one batch)
    equals the log-prob from scoring prefix + continuation from scratch."""
    reqs = [
        Continuation(tuple(prompts[0]), 504),
        Continuation(tuple(prompts[0]), 1348),
        Continuation(tuple(prompts[1] + hf_engine_tokens(engine, " Blue is")), 253),
    ]
    out = engine.continue_from(reqs, 4, SamplingParams(max_new_tokens=8, seed=2))
    n, err = recomputation_error(engine, reqs, out)
    assert n > 3 * 4 and err < LOGPROB_TOL


def test_continuations_with_early_finishers_equal_recomputation(hf_engine, prompts, monkeypatch):
    """One call in which several rows of a batch finish within a few tokens (per-request limits, a stop
    string, eos) while the others run on for many more: the hf engine drops finished rows from its KV cache
    mid-decode once a quarter have finished (hf.py `_decode`). Every row's log-probs, the survivors' after
    the drops included, equal scoring prefix + continuation from scratch. (hf only: vLLM keeps no such
    cache of its own; its continuations are checked above.)"""
    import diagnose.engines.hf as hf

    engine, drops, select = hf_engine, [], hf._select_rows

    def spy(cache, index):
        drops.append(len(index))
        return select(cache, index)

    monkeypatch.setattr(hf, "_select_rows", spy)
    blue = tuple(prompts[1] + hf_engine_tokens(engine, " Blue is"))
    reqs = [  # 5 requests x 5 rows = 25 rows: one decode slice of the hf engine (batch_size 32)
        Continuation(tuple(prompts[0]), 504, max_new_tokens=2),
        Continuation(blue, 253, max_new_tokens=4),
        Continuation(tuple(prompts[2]), 330, max_new_tokens=6),
        Continuation(tuple(prompts[0]), 1348),
        Continuation(blue, 253),
    ]
    m, longest = 5, 40
    out = engine.continue_from(reqs, m, SamplingParams(max_new_tokens=longest, stop=("\n\n",), seed=4))
    lengths = [len(c.token_ids) for conts in out for c in conts]
    for req, conts in zip(reqs, out, strict=True):
        assert len(conts) == m
        for c in conts:
            assert c.token_ids[0] == req.token and len(c.logprobs) == len(c.token_ids)
            assert len(c.token_ids) <= (req.max_new_tokens or longest)
    early = sum(n <= 6 for n in lengths)
    assert early >= len(lengths) / 4, lengths  # enough finish early for the hf engine to drop rows ...
    assert sum(n >= 20 for n in lengths) >= 3, lengths  # ... and others go on for many more tokens
    assert len(drops) >= 2, f"no finished row was dropped from the cache: {drops}"  # drops[0]: the expansion
    seqs, scores = rescored(engine, reqs, out)
    for c, s, seq in zip((c for conts in out for c in conts), scores, seqs, strict=True):
        err = (torch.tensor(c.logprobs) - s.token_logprobs[:, 0]).abs().max().item()
        assert err < LOGPROB_TOL, (err, len(c.token_ids), engine.tokenizer.decode(seq[-len(c.token_ids) :]))


def test_stop_strings_stop_each_row(engine, prompts):
    stops = ("\n", ".", ",")
    params = SamplingParams(max_new_tokens=40, stop=stops, seed=9)
    out = engine.sample(prompts[:2], 6, params)
    stopped = 0
    for samples in out:
        for s in samples:
            if s.finish_reason == "stop" and s.token_ids[-1] not in engine.eos_ids:
                stopped += 1
                assert s.text.endswith(stops), s.text
                before = engine.tokenizer.decode(s.token_ids[:-1])
                assert not any(x in before for x in stops), "a row ran past its first stop string"
            elif s.finish_reason == "length":
                assert len(s.token_ids) == 40
    assert stopped >= 6, "most rows should end on a stop string"


def test_vllm_request_seeds_follow_the_request_not_the_batch(vllm_engine, prompts):
    """On a GPU each vLLM request carries a seed from (seed, prefix, forced token): a continuation is the same
    alone or beside other requests. On the CPU back end (seeded prefix-cache hits kill its worker) the
    engine-level seed is used instead, and no request carries one."""
    from diagnose.engines.sampling import request_key

    params = SamplingParams(max_new_tokens=12, seed=3)
    prefix = tuple(prompts[0])
    if not vllm_engine.per_request_seeds:
        assert vllm_engine._request_seed(params, prefix, 5) is None
        return
    seed = vllm_engine._request_seed(params, prefix, 5)
    assert seed == request_key(3, prefix, 5) >> 34 and seed != vllm_engine._request_seed(params, prefix, 6)
    alone = vllm_engine.continue_from([Continuation(prefix, 5)], 4, params)[0]
    others = [Continuation(tuple(p), 7) for p in prompts[1:]]
    together = vllm_engine.continue_from(others + [Continuation(prefix, 5)], 4, params)[-1]
    assert [s.token_ids for s in together] == [s.token_ids for s in alone]
