"""g* = p ⊙ (Q − V) against autograd of the success probability; cosines, proxies, rollout level."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from diagnose import alignment, objectives
from diagnose.estimate.stats import rollout_cosine
from diagnose.ideal import candidate_mask, ideal_gradient


def _setup(n=5, vocab=30, k=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = 2 * torch.randn(n, vocab, generator=g)
    zt = 2 * torch.randn(n, vocab, generator=g)
    cand = torch.stack([torch.randperm(vocab, generator=g)[:k] for _ in range(n)])
    q = torch.rand(n, k, generator=g)
    return z, zt, cand, q


def test_ideal_gradient_is_autograd_of_success_probability():
    """With Q := V off the candidates, g* is the gradient of J(z) = sum_k softmax(z)_k Q_k (Q held fixed)."""
    z, _, cand, q = _setup()
    star = ideal_gradient(z, cand, q)
    q_full = torch.where(star.candidates, torch.zeros_like(z).scatter(1, cand, q), star.value[:, None])
    zz = z.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad((torch.softmax(zz, -1) * q_full).sum(), zz)
    torch.testing.assert_close(star.g, grad, rtol=1e-5, atol=1e-7)
    # V is the policy's success probability under that completion of Q
    torch.testing.assert_close(star.value, (torch.softmax(z, -1) * q_full).sum(-1))
    assert (star.g[~star.candidates] == 0).all()


def test_ideal_with_padding_and_bf16():
    z, _, cand, q = _setup(n=3, vocab=12, k=4, seed=1)
    cand_padded = torch.cat([cand, torch.full((3, 2), -1)], 1)
    q_padded = torch.cat([q, torch.full((3, 2), 0.77)], 1)
    a = ideal_gradient(z, cand, q)
    b = ideal_gradient(z.bfloat16(), cand_padded, q_padded)
    assert b.g.dtype == torch.float32
    assert torch.equal(candidate_mask(cand_padded, 12), a.candidates)
    a16 = ideal_gradient(z.bfloat16().float(), cand, q)
    torch.testing.assert_close(b.g, a16.g)


def test_one_candidate_and_equal_q_are_degenerate_not_nan():
    z, zt, cand, q = _setup(n=4, vocab=20, k=5, seed=2)
    one = ideal_gradient(z, cand[:, :1], q[:, :1])
    assert (one.g == 0).all()
    torch.testing.assert_close(one.value, q[:, 0])
    equal = ideal_gradient(z, cand, torch.full_like(q, 0.4))
    assert (equal.g == 0).all()
    d = objectives.get("rkl").direction(z, zt)
    for star in (one, equal):
        cos = alignment.cosines(star.g, d, star.candidates)
        assert cos.degenerate.all()
        assert torch.isfinite(cos.full).all() and (cos.full == 0).all() and (cos.support == 0).all()


def test_cosines_full_and_support():
    z, zt, cand, q = _setup(seed=3)
    star = ideal_gradient(z, cand, q)
    d = objectives.get("fkl").direction(z, zt)
    cos = alignment.cosines(star.g, d, star.candidates)
    g64, d64 = star.g.double(), d.double()  # cosines sum in float64
    manual_full = F.cosine_similarity(g64, d64, dim=-1)
    manual_support = F.cosine_similarity(g64, d64 * star.candidates, dim=-1)
    assert cos.full.dtype == torch.float64
    torch.testing.assert_close(cos.full, manual_full)
    torch.testing.assert_close(cos.support, manual_support)
    assert not cos.degenerate.any()
    # restricting d to the support can only raise |cos|: the off-support part of d only adds to its norm
    assert (cos.support.abs() >= cos.full.abs() - 1e-6).all()
    # the ideal direction itself is perfectly aligned; its negation perfectly anti-aligned
    ones = torch.ones(5, dtype=torch.float64)
    torch.testing.assert_close(alignment.cosines(star.g, star.g, star.candidates).full, ones)
    torch.testing.assert_close(alignment.cosines(star.g, -star.g, star.candidates).full, -ones)


def test_teacher_advantage_sign():
    z, zt, cand, q = _setup(seed=4)
    star = ideal_gradient(z, cand, q)
    q_dense = torch.where(star.candidates, torch.zeros_like(z).scatter(1, cand, q), star.value[:, None])
    ta = alignment.teacher_advantage(z, zt, q_dense, star.value)
    p, qt = torch.softmax(z, -1), torch.softmax(zt, -1)
    torch.testing.assert_close(ta, ((qt - p) * (q_dense - star.value[:, None])).sum(-1))
    # a teacher that moves mass onto the best candidate has positive advantage
    best = cand.gather(1, q.argmax(1, keepdim=True))[:, 0]
    oracle = z.clone()
    oracle[torch.arange(5), best] += 5.0
    assert (alignment.teacher_advantage(z, oracle, q_dense, star.value) > 0).all()


def test_proxies_match_library_formulas():
    z, zt, _, _ = _setup(seed=5)
    prox = alignment.proxies(z, zt)
    logp, logq = torch.log_softmax(z, -1), torch.log_softmax(zt, -1)
    p, q = logp.exp(), logq.exp()
    torch.testing.assert_close(prox["kl_pq"], F.kl_div(logq, logp, log_target=True, reduction="none").sum(-1))
    torch.testing.assert_close(prox["kl_qp"], F.kl_div(logp, logq, log_target=True, reduction="none").sum(-1))
    m = 0.5 * (p + q)
    js = 0.5 * (p * (p / m).log()).sum(-1) + 0.5 * (q * (q / m).log()).sum(-1)
    torch.testing.assert_close(prox["js"], js)
    torch.testing.assert_close(prox["tv"], 0.5 * (p - q).abs().sum(-1))
    torch.testing.assert_close(prox["cos_pq"], F.cosine_similarity(p, q, dim=-1))
    torch.testing.assert_close(prox["entropy_student"], torch.distributions.Categorical(logits=z).entropy())
    torch.testing.assert_close(prox["entropy_teacher"], torch.distributions.Categorical(logits=zt).entropy())
    same = alignment.proxies(z, z)
    assert same["kl_pq"].abs().max() < 1e-6 and same["tv"].abs().max() < 1e-6


def test_rollout_cosine_is_cosine_of_concatenation():
    z, zt, cand, q = _setup(n=7, seed=6)
    star = ideal_gradient(z, cand, q)
    d = objectives.get("rkl").direction(z, zt)
    w = torch.rand(7, generator=torch.Generator().manual_seed(7))
    per = rollout_cosine((star.g * d).sum(-1), (star.g**2).sum(-1), (d**2).sum(-1), weights=w)
    concat = F.cosine_similarity(star.g.flatten(), (w[:, None] * d).flatten(), dim=0)
    assert float(per["cos"].iloc[0]) == pytest.approx(float(concat), rel=1e-5, abs=1e-6)
    assert not bool(per["degenerate"].iloc[0])
    # per-node weights leave each node's cosine unchanged
    per_node = alignment.cosines(star.g, w[:, None] * d, star.candidates).full
    torch.testing.assert_close(per_node, alignment.cosines(star.g, d, star.candidates).full)


