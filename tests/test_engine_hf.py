"""hf-engine specifics. On the real embedded model (slow): seeds repeat, samples do not depend on batching,
chunked scoring is exact, and the expanded prefix cache gives the same next-token logits as recomputing
prefix + forced token from scratch. On the CPU without a model (fast): the counter-based draw."""

from __future__ import annotations

import math
from unittest.mock import patch

import numpy as np
import pytest
import torch
from engine_checks import recomputation_error

import diagnose.engines.hf as hf_module
from diagnose.engines import Continuation, SamplingParams, render_prompt
from diagnose.engines.hf import _select_rows
from diagnose.engines.hidden_cache import HiddenCache
from diagnose.engines.sampling import draw, processed_logprobs, request_key, row_key, sample_key, uniforms


@pytest.fixture(scope="module")
def prompt(hf_engine):
    return render_prompt(hf_engine.tokenizer, "List three fruits.")


@pytest.mark.slow
def test_same_seed_same_output(hf_engine, prompt):
    params = SamplingParams(max_new_tokens=12, seed=3)
    a = hf_engine.sample([prompt, prompt[:-2]], 3, params)
    b = hf_engine.sample([prompt, prompt[:-2]], 3, params)
    c = hf_engine.sample([prompt, prompt[:-2]], 3, SamplingParams(max_new_tokens=12, seed=4))
    ids = lambda out: [s.token_ids for row in out for s in row]  # noqa: E731
    assert ids(a) == ids(b)
    assert [s.logprobs for row in a for s in row] == [s.logprobs for row in b for s in row]
    assert ids(a) != ids(c)


@pytest.mark.slow
def test_chunked_scoring_equals_one_pass(hf_engine, prompt):
    seqs = [prompt + list(range(1000, 1090)), prompt[:20]]
    positions = [[1, 7, 16, 17, 40, len(seqs[0]) - 1, len(seqs[0])], [3, 20]]
    old, kept = hf_engine.score_chunk, hf_engine.score_cache
    try:
        hf_engine.score_cache = None  # the chunked path itself, not sequences remembered by the first call
        hf_engine.score_chunk = 16
        chunked = hf_engine.score(seqs, positions)
        hf_engine.score_chunk = 10_000
        whole = hf_engine.score(seqs, positions)
    finally:
        hf_engine.score_chunk, hf_engine.score_cache = old, kept
    with torch.inference_mode():
        direct = hf_engine.model(torch.tensor([seqs[0]])).logits[0].float()
    for c, w in zip(chunked, whole, strict=False):
        assert c.logits.shape == w.logits.shape
        assert torch.allclose(c.logits, w.logits, atol=1e-4, rtol=0)
    assert torch.allclose(whole[0].logits, direct[[t - 1 for t in positions[0]]], atol=1e-4, rtol=0)


@pytest.mark.slow
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


# ---------------------------------------------------------------- counter-based sampling on the real model


def _ids(out):
    return [[s.token_ids for s in row] for row in out]


def _assert_same_but_near_ties(engine, a, b, requests, params):
    """Same tokens, log-probs equal up to float32 noise, except that a sample may part ways where its draw is
    a near-tie: the batch composition moves float32 logits in the last bits (~1e-6; CPUs with other vector
    units round differently), so a uniform within that distance of a CDF boundary can pick the neighbour.
    At the first differing token the test recomputes the row's
    distribution and uniform and checks the draw was within 1e-5 of the boundary between the two tokens;
    only one such sample is tolerated per comparison."""
    ties = 0
    for (prefix, forced), row_a, row_b in zip(requests, a, b, strict=True):
        for j, (x, y) in enumerate(zip(row_a, row_b, strict=True)):
            if x.token_ids == y.token_ids:
                assert x.finish_reason == y.finish_reason
                assert np.allclose(x.logprobs, y.logprobs, atol=1e-4, rtol=0)
                continue
            pairs = enumerate(zip(x.token_ids, y.token_ids, strict=False))
            t = next((i for i, (tx, ty) in pairs if tx != ty), None)
            assert t is not None, f"sample {j}: same tokens, one stops earlier ({x.finish_reason}, {y.finish_reason})"
            key = sample_key(request_key(params.seed, prefix, -1 if forced is None else forced), j)
            u = float(uniforms([key], t)[0])
            with torch.inference_mode():
                logits = engine.model(torch.tensor([list(prefix) + list(x.token_ids[:t])])).logits[0, -1]
            p = processed_logprobs(logits[None], params.temperature, params.top_p)[0].double().exp()
            cdf = p.cumsum(-1)
            lo, hi = sorted((x.token_ids[t], y.token_ids[t]))
            gap = (cdf[lo:hi] - u * cdf[-1]).abs().min().item()
            assert gap < 1e-5, f"sample {j} differs at token {t} where the draw was {gap:.2e} from a tie"
            ties += 1
    assert ties <= 1, f"{ties} samples differ: more than rare near-ties"


@pytest.mark.slow
def test_samples_do_not_depend_on_batching(hf_engine, prompt):
    """Sample j of a request is the same alone, beside other requests, and with one row per batch (where no
    row is ever dropped from the cache mid-decode, unlike the shared batches whose rows stop at different
    steps on a stop string)."""
    params = SamplingParams(max_new_tokens=14, seed=21, stop=("\n", "."))
    other = render_prompt(hf_engine.tokenizer, "Name a colour of the sky.")
    a = Continuation(tuple(prompt), 504)
    b = Continuation(tuple(prompt[:-3]), 28)
    c = Continuation(tuple(other), 1348)
    old = hf_engine.batch_size
    try:
        alone = hf_engine.continue_from([a], 4, params)
        shared = hf_engine.continue_from([b, a, c], 4, params)
        sampled_alone = hf_engine.sample([prompt], 4, params)
        sampled_shared = hf_engine.sample([other, prompt], 4, params)
        hf_engine.batch_size = 1
        one_row = hf_engine.continue_from([c, a], 4, params)
        sampled_one_row = hf_engine.sample([prompt], 4, params)
    finally:
        hf_engine.batch_size = old
    same = lambda x, y, req: _assert_same_but_near_ties(  # noqa: E731
        hf_engine, x, y, [(req.prefix, req.token)], params
    )
    same(alone, [shared[1]], a)
    same(alone, [one_row[1]], a)
    same([shared[2]], [one_row[0]], c)
    # free samples: one row per batch takes other kernels than a batch of rows (near-ties may part ways)
    free = [(tuple(prompt), None)]
    _assert_same_but_near_ties(hf_engine, sampled_alone, [sampled_shared[1]], free, params)
    _assert_same_but_near_ties(hf_engine, sampled_alone, sampled_one_row, free, params)
    # fewer continuations of the same request: the first ones are unchanged
    same([alone[0][:2]], hf_engine.continue_from([a], 2, params), a)
    assert any(s.finish_reason == "stop" for row in shared for s in row), "the test wants rows that stop early"


@pytest.mark.slow
def test_each_sample_draws_from_its_own_stream(hf_engine, prompt, monkeypatch):
    """Two prompts under one seed, and samples j=0 and j=1 of one prompt, use different keys (so different
    uniforms at every step); every later step of a row uses the same key and the next step index."""
    calls = []
    real_draw = hf_module.draw

    def spy(logp, keys, step):
        calls.append((list(keys), step))
        return real_draw(logp, keys, step)

    monkeypatch.setattr(hf_module, "draw", spy)
    other = prompt[:-2]
    params = SamplingParams(max_new_tokens=5, seed=3)
    hf_engine.sample([prompt, other], 2, params)
    first_keys, first_step = calls[0]
    want = [row_key(3, prompt, -1, j) for j in range(2)] + [row_key(3, other, -1, j) for j in range(2)]
    assert first_step == 0 and sorted(first_keys) == sorted(want)
    assert len(set(want)) == 4
    assert [step for _, step in calls] == list(range(len(calls)))
    for keys, _ in calls[1:]:
        assert set(keys) <= set(want)
    for step in range(5):
        u = uniforms(want, step)
        assert len(set(u.tolist())) == 4, (step, u)


# ---------------------------------------------------------------- counter-based draw (fast, no model)


def test_row_keys_are_stable_and_distinct():
    """Keys hash (seed, prefix, forced token, index) with blake2b: the same on every run and platform."""
    assert row_key(7, (1, 2, 3), -1, 0) == 6030356525935891770
    assert uniforms([6030356525935891770], 0)[0] == pytest.approx(0.6861789100772433, abs=0)
    assert row_key(7, [1, 2, 3], -1, 0) == sample_key(request_key(7, (1, 2, 3)), 0)
    keys = {
        row_key(7, (1, 2, 3), -1, 0),
        row_key(7, (1, 2, 3), -1, 1),
        row_key(8, (1, 2, 3), -1, 0),
        row_key(7, (1, 2, 4), -1, 0),
        row_key(7, (1, 2, 3), 5, 0),
    }
    assert len(keys) == 5


def test_uniforms_are_open_and_decorrelated_across_steps():
    keys = [sample_key(request_key(0, (1,)), j) for j in range(20_000)]
    u0, u1 = uniforms(keys, 0), uniforms(keys, 1)
    assert u0.dtype == np.float64 and (u0 > 0).all() and (u0 < 1).all()
    assert abs(u0.mean() - 0.5) < 0.01 and abs(u0.var() - 1 / 12) < 0.005
    assert abs(np.corrcoef(u0, u1)[0, 1]) < 0.05
    assert np.array_equal(uniforms(keys[5:9], 0), u0[5:9])  # a key's uniform ignores the other keys


def _chi_square_critical(df: int, z: float = 3.09) -> float:
    """Upper critical value of chi-square(df) at the normal quantile z (Wilson-Hilferty; z=3.09: p=1e-3)."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def test_counter_draw_follows_the_distribution():
    """Frequencies over 20k keys match p (chi-square), zero-probability tokens never come up, and the
    returned log-probs are those of the chosen tokens."""
    p = torch.tensor([0.3, 0.0, 0.2, 0.15, 0.0, 0.25, 0.1, 0.0])
    logp = torch.log(p)  # -inf where p == 0, as the top-p nucleus leaves them
    n = 20_000
    keys = [sample_key(request_key(11, (1, 2)), j) for j in range(n)]
    positive = p > 0
    df = int(positive.sum()) - 1
    for step in (0, 7):
        ids, lp = draw(logp.expand(n, -1), keys, step)
        assert ids.shape == (n,) and lp.shape == (n,)
        counts = torch.bincount(ids, minlength=p.numel()).double()
        assert counts[~positive].sum() == 0
        exp = p.double()[positive] * n
        stat = float(((counts[positive] - exp) ** 2 / exp).sum())
        assert stat < _chi_square_critical(df), (step, stat, counts.tolist())
        assert torch.equal(lp, logp[ids])
    assert 18.0 < _chi_square_critical(4) < 19.0  # tables: 18.47


def test_counter_draw_edges_and_row_independence():
    """One-hot rows (greedy) always give their token, including mass on the first token followed by zeros;
    a row's draw is the same whatever rows share the batch."""
    v = 6
    onehot = torch.full((3, v), float("-inf"))
    onehot[0, 0] = onehot[1, 5] = onehot[2, 2] = 0.0
    keys = [sample_key(request_key(1, (9,)), j) for j in range(3)]
    for step in range(50):
        ids, lp = draw(onehot, keys, step)
        assert ids.tolist() == [0, 5, 2] and lp.tolist() == [0.0, 0.0, 0.0]
    logp = torch.log_softmax(torch.randn(5, 100, generator=torch.Generator().manual_seed(0)), dim=-1)
    keys = [sample_key(request_key(2, (3,)), j) for j in range(5)]
    together, _ = draw(logp, keys, 4)
    alone = [int(draw(logp[r : r + 1], keys[r : r + 1], 4)[0]) for r in range(5)]
    assert together.tolist() == alone
    reordered, _ = draw(logp[[3, 1]], [keys[3], keys[1]], 4)
    assert reordered.tolist() == [alone[3], alone[1]]
    with pytest.raises(ValueError):
        draw(logp, keys[:2], 0)


@pytest.mark.slow
def test_per_request_length_limit_cuts_the_same_draws(hf_engine, prompt):
    """A continuation limited to L tokens is the first L tokens of the unlimited one (same key): stopping a
    row at its own limit is exactly what cutting it afterwards gives."""
    params = SamplingParams(max_new_tokens=10, seed=4)
    free = hf_engine.continue_from([Continuation(tuple(prompt), 504)], 3, params)[0]
    cut = hf_engine.continue_from([Continuation(tuple(prompt), 504, max_new_tokens=3)], 3, params)[0]
    for a, b in zip(free, cut, strict=True):
        assert b.token_ids == a.token_ids[:3]
        if len(a.token_ids) > 3:
            assert b.finish_reason == "length"


@pytest.mark.slow
def test_prefixes_sharing_a_stem_continue_as_if_computed_alone(hf_engine, prompt):
    """Node prefixes of one rollout (prompt + its first t tokens) share the prefill of their common stem; an
    unrelated prefix does not. Every continuation log-prob equals scoring prefix + continuation from scratch,
    and each request's samples equal those it gets alone."""
    rollout = hf_engine.sample([prompt], 1, SamplingParams(max_new_tokens=16, seed=4))[0][0].token_ids
    heads = [tuple(prompt) + tuple(rollout[:t]) for t in (0, 3, 7, 12)]
    other = tuple(render_prompt(hf_engine.tokenizer, "Name a colour of the sky."))[-12:]  # shares < 16 tokens
    stems, owner = hf_module._stems(sorted(heads + [other]), hf_engine.min_stem)
    assert len(stems) == 2 and sorted(owner).count(owner[0]) in (1, 4)  # the heads share one stem
    reqs = [Continuation(h, tok) for h in heads for tok in (rollout[len(h) - len(prompt)], 504)]
    reqs.append(Continuation(other, 28))
    params = SamplingParams(max_new_tokens=6, seed=9)
    out = hf_engine.continue_from(reqs, 3, params)
    n, err = recomputation_error(hf_engine, reqs, out)
    assert n >= len(reqs) * 3 and err < 2e-4
    for k in (0, 5, len(reqs) - 1):  # near-ties may part ways (see _assert_same_but_near_ties)
        alone = hf_engine.continue_from([reqs[k]], 3, params)
        _assert_same_but_near_ties(hf_engine, [out[k]], alone, [(reqs[k].prefix, reqs[k].token)], params)


def test_stems_group_shared_starts_and_leave_each_prefix_a_token():
    prefixes = sorted([tuple(range(20)), tuple(range(20)) + (7, 8), tuple(range(18)) + (99,), (5,) * 30, (5,) * 31])
    stems, owner = hf_module._stems(prefixes, 16)
    assert [n for _, n in stems] == [18, 29]
    assert owner == [0, 0, 0, 1, 1]
    for p, o in zip(prefixes, owner, strict=True):
        stem, n = stems[o]
        assert p[:n] == stem and len(p) > n
    assert len(hf_module._stems(prefixes, 25)[0]) == 4  # a longer minimum: only the two (5,)* rows share


@pytest.mark.slow
def test_scoring_sequences_that_share_a_stem_equals_scoring_each_alone(hf_engine, prompt):
    """A question's rollouts (one prompt, different responses) are scored through their shared stem; the
    logits at every asked position equal the plain path's (each sequence run from its first token)."""
    outs = hf_engine.sample([prompt], 3, SamplingParams(max_new_tokens=10, seed=12))[0]
    other = render_prompt(hf_engine.tokenizer, "Name a colour of the sky.")
    seqs = [prompt + o.token_ids for o in outs] + [other + [504, 28]]
    positions = [[len(prompt) + 1, len(prompt) + len(o.token_ids)] for o in outs] + [[len(other) + 1]]
    assert hf_engine._logits_stemmed(seqs, positions) is not None  # the stem path is taken
    old, kept = hf_engine.min_stem, hf_engine.score_cache
    try:
        hf_engine.score_cache = None  # these two paths, not sequences remembered from the first call
        shared = hf_engine.score(seqs, positions)
        hf_engine.min_stem = 10**9  # nothing shares a stem: the plain path
        plain = hf_engine.score(seqs, positions)
    finally:
        hf_engine.min_stem, hf_engine.score_cache = old, kept
    for a, b in zip(shared, plain, strict=True):
        assert a.logits.shape == b.logits.shape
        assert (a.logits - b.logits).abs().max().item() < 2e-3
        assert (a.logits.log_softmax(-1) - b.logits.log_softmax(-1)).abs().max().item() < 2e-4


@pytest.mark.slow
def test_rescoring_from_kept_hidden_states_equals_scoring_afresh(hf_engine, prompt):
    """The score cache: a question's rollouts scored at some positions, then at others (the estimator's next
    selection pass), give the logits the plain path computes; the second call runs no forward pass (its
    sequences are all held); an in-place weight change (validate's optimizer step) forgets them."""
    outs = hf_engine.sample([prompt], 3, SamplingParams(max_new_tokens=12, seed=21))[0]
    seqs = [prompt + o.token_ids for o in outs]
    first = [[len(prompt) + len(o.token_ids)] for o in outs]
    later = [[len(prompt) + 1, len(prompt) + len(o.token_ids) // 2 + 1] for o in outs]
    cache, kept = HiddenCache(1 << 26), hf_engine.score_cache
    try:
        hf_engine.score_cache = cache
        hf_engine.score(seqs, first)
        assert cache.misses == 3 and cache.hits == 0
        decoder = hf_engine.model.get_decoder()
        with patch.object(decoder, "forward", side_effect=AssertionError("a forward pass ran")):
            remembered = hf_engine.score(seqs, later)
        assert cache.hits == 3
        hf_engine.score_cache = None
        afresh = hf_engine.score(seqs, later)
        for a, b in zip(remembered, afresh, strict=True):
            assert a.logits.shape == b.logits.shape
            assert (a.logits.log_softmax(-1) - b.logits.log_softmax(-1)).abs().max().item() < 2e-4
        # weights changed in place: nothing kept is used, the new weights score
        hf_engine.score_cache = cache
        norm = hf_engine.model.get_decoder().norm.weight
        with torch.no_grad():
            norm.mul_(1.5)
        try:
            changed = hf_engine.score(seqs, later)
            assert cache.misses == 6
            hf_engine.score_cache = None
            want = hf_engine.score(seqs, later)
        finally:
            with torch.no_grad():
                norm.div_(1.5)
        for a, b in zip(changed, want, strict=True):
            assert (a.logits.log_softmax(-1) - b.logits.log_softmax(-1)).abs().max().item() < 2e-4
        assert (changed[0].logits - remembered[0].logits).abs().max().item() > 1e-2
    finally:
        hf_engine.score_cache = kept


def test_hidden_cache_is_bounded_by_bytes():
    """Least recently used sequences leave first; one larger than the bound is not kept."""
    cache = HiddenCache(3 * 4 * 8)  # three [1, 8] float32 rows
    for i in range(3):
        cache.put((i,), 0, torch.full((1, 8), float(i)))
    assert cache.covers((0,), [1]) and cache.rows((0,), [1])[0, 0] == 0  # (0,) is now the most recent
    cache.put((3,), 0, torch.zeros(1, 8))
    assert not cache.covers((1,), [1]) and all(cache.covers((k,), [1]) for k in (0, 2, 3))
    cache.put((9,), 0, torch.zeros(4, 8))
    assert not cache.covers((9,), [1]) and cache.covers((0,), [1])
    assert not cache.covers((0, 5), [1]) and not cache.covers((2,), [0])  # unseen; before the offset
