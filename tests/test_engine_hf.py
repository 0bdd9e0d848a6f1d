"""hf-engine specifics on the real embedded model: seeds repeat, chunked scoring is exact, and the expanded
prefix cache gives the same next-token logits as recomputing prefix + forced token from scratch."""

from __future__ import annotations

import pytest
import torch

from diagnose.engines import SamplingParams, render_prompt
from diagnose.engines.hf import _select_rows

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def prompt(hf_engine):
    return render_prompt(hf_engine.tokenizer, "List three fruits.")


def test_same_seed_same_output(hf_engine, prompt):
    params = SamplingParams(max_new_tokens=12, seed=3)
    a = hf_engine.sample([prompt, prompt[:-2]], 3, params)
    b = hf_engine.sample([prompt, prompt[:-2]], 3, params)
    c = hf_engine.sample([prompt, prompt[:-2]], 3, SamplingParams(max_new_tokens=12, seed=4))
    ids = lambda out: [s.token_ids for row in out for s in row]  # noqa: E731
    assert ids(a) == ids(b)
    assert [s.logprobs for row in a for s in row] == [s.logprobs for row in b for s in row]
    assert ids(a) != ids(c)


def test_chunked_scoring_equals_one_pass(hf_engine, prompt):
    seqs = [prompt + list(range(1000, 1090)), prompt[:20]]
    positions = [[1, 7, 16, 17, 40, len(seqs[0]) - 1, len(seqs[0])], [3, 20]]
    old = hf_engine.score_chunk
    try:
        hf_engine.score_chunk = 16
        chunked = hf_engine.score(seqs, positions)
        hf_engine.score_chunk = 10_000
        whole = hf_engine.score(seqs, positions)
    finally:
        hf_engine.score_chunk = old
    with torch.inference_mode():
        direct = hf_engine.model(torch.tensor([seqs[0]])).logits[0].float()
    for c, w in zip(chunked, whole, strict=False):
        assert c.logits.shape == w.logits.shape
        assert torch.allclose(c.logits, w.logits, atol=1e-4, rtol=0)
    assert torch.allclose(whole[0].logits, direct[[t - 1 for t in positions[0]]], atol=1e-4, rtol=0)


def test_expanded_prefix_cache_equals_recomputation(hf_engine, prompt):
    """Logits of the first free token after a forced one, via the shared (left-padded, expanded) prefix
    cache, equal a from-scratch forward pass over prefix + forced token."""
    eng = hf_engine
    prefixes = [tuple(prompt), tuple(prompt[:-5])]
    forced = [(0, 504), (0, 1348), (1, 28), (0, 504)]
    with torch.inference_mode():
        cache, mask, _ = eng._prefill(list(prefixes))
        index = torch.tensor([g for g, _ in forced])
        rows = _select_rows(cache, index)
        mask = torch.cat([mask.index_select(0, index), mask.new_ones((len(forced), 1))], dim=-1)
        out = eng.model(
            input_ids=torch.tensor([[t] for _, t in forced]),
            attention_mask=mask,
            position_ids=(mask.sum(-1, keepdim=True) - 1),
            past_key_values=rows,
            use_cache=True,
        )
        got = out.logits[:, -1].float()
        for r, (g, t) in enumerate(forced):
            want = eng.model(torch.tensor([list(prefixes[g]) + [t]])).logits[0, -1].float()
            assert torch.allclose(got[r], want, atol=2e-4, rtol=0), (got[r] - want).abs().max()
    # the prefill cache is untouched by the expanded rows' decoding
    assert cache.get_seq_length() == len(prefixes[0])
