"""Every closed-form direction d = -dL/dz equals torch.autograd of its loss as written."""

from __future__ import annotations

import pytest
import torch

from diagnose import objectives

ALL_NAMES = [
    "rkl", "fkl", "jsd", "rkl_sampled", "rkl_baselined", "rkl_topk", "rkl_topk_unnorm",
    "fkl_topk", "k1_loss", "k3_loss", "fkl_clipped", "grpo_ref",
]  # fmt: skip


# ---- the losses as practitioners write them (autograd differentiates these) ----


def _lsm(x):
    return torch.log_softmax(x, -1)


def _kl(logp, logq):
    return (logp.exp() * (logp - logq)).sum(-1)


def _topk_mask(x, k):
    idx = x.detach().topk(min(k, x.shape[-1]), -1).indices
    return torch.zeros_like(x, dtype=torch.bool).scatter_(-1, idx, True)


def _restrict(x, mask):
    return x.masked_fill(~mask, float("-inf"))


def _masked_kl(logp, logq, mask):
    """KL summed over `mask` only (entries off it are exactly zero-probability under p)."""
    lp, lq = logp.masked_fill(~mask, 0.0), logq.masked_fill(~mask, 0.0)  # no -inf - -inf in the graph
    terms = lp.exp() * (lp - lq)
    return torch.where(mask, terms, torch.zeros_like(terms)).sum(-1)


def loss_as_written(name, params, z, zt, tokens, advantages=None):
    """Per-node losses [N] for objective `name`; z requires grad, zt and tokens are constants."""
    logp, logq = _lsm(z), _lsm(zt)
    a = tokens[:, None]
    if name == "rkl":
        return _kl(logp, logq)
    if name == "fkl":
        return _kl(logq, logp)
    if name == "jsd":
        beta = params["beta"]
        if beta == 0:
            return _kl(logq, logp)
        if beta == 1:
            return _kl(logp, logq)
        # log m by log-sum-exp, as TRL's GKD trainer writes it
        logm = torch.logaddexp(logq + torch.log(torch.tensor(beta)), logp + torch.log(torch.tensor(1 - beta)))
        return beta * _kl(logq, logm) + (1 - beta) * _kl(logp, logm)
    if name in ("rkl_sampled", "rkl_baselined"):
        l_a = (logp - logq).gather(-1, a)[:, 0]
        adv = -l_a
        if name == "rkl_baselined":
            adv = -(l_a - _kl(logp, logq))
        return -(adv.detach() * logp.gather(-1, a)[:, 0])
    if name == "rkl_topk":
        s = _support(z, zt, params)
        return _masked_kl(_lsm(_restrict(z, s)), _lsm(_restrict(zt, s)), s)
    if name == "rkl_topk_unnorm":
        s = _support(z, zt, params)
        return _masked_kl(logp, logq, s)
    if name == "fkl_topk":
        s = _topk_mask(zt, params["k"])
        logq_s = _lsm(_restrict(zt, s))
        return _masked_kl(logq_s, logp, s)
    if name == "k1_loss":
        return (logp - logq).gather(-1, a)[:, 0]
    if name == "k3_loss":
        log_r = (logq - logp).gather(-1, a)[:, 0]
        return log_r.exp() - 1 - log_r
    if name == "fkl_clipped":
        return torch.clamp(logq.exp() * (logq - logp), max=params["clip"]).sum(-1)
    if name == "grpo_ref":
        return -(advantages * logp.gather(-1, a)[:, 0])
    raise KeyError(name)


def _support(z, zt, params):
    k, support = params["k"], params["support"]
    if support == "student":
        return _topk_mask(z, k)
    if support == "teacher":
        return _topk_mask(zt, k)
    return _topk_mask(z, k) | _topk_mask(zt, k)


def autograd_direction(name, params, z, zt, tokens, advantages=None):
    dtype = torch.float64 if z.dtype == torch.float64 else torch.float32
    z = z.detach().to(dtype).requires_grad_(True)
    loss = loss_as_written(name, params, z, zt.to(dtype), tokens, advantages).sum()
    (grad,) = torch.autograd.grad(loss, z)
    return -grad


def closed_form(obj, z, zt, tokens, advantages=None):
    if obj.name == "grpo_ref":
        return obj.direction(z, None, tokens, advantages=advantages)
    return obj.direction(z, zt, tokens)


CONFIGS = [
    ("rkl", {}),
    ("fkl", {}),
    ("jsd", {"beta": 0.0}),
    ("jsd", {"beta": 0.1}),
    ("jsd", {"beta": 0.5}),
    ("jsd", {"beta": 0.9}),
    ("jsd", {"beta": 1.0}),
    ("rkl_sampled", {}),
    ("rkl_baselined", {}),
    ("rkl_topk", {"k": 3, "support": "student"}),
    ("rkl_topk", {"k": 3, "support": "teacher"}),
    ("rkl_topk", {"k": 3, "support": "union"}),
    ("rkl_topk_unnorm", {"k": 3, "support": "student"}),
    ("rkl_topk_unnorm", {"k": 4, "support": "union"}),
    ("fkl_topk", {"k": 3}),
    ("k1_loss", {}),
    ("k3_loss", {}),
    ("fkl_clipped", {"clip": 0.05}),
    ("fkl_clipped", {"clip": 100.0}),
    ("grpo_ref", {}),
]


def _inputs(n, vocab, seed, scale=2.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    z = (scale * torch.randn(n, vocab, generator=g)).to(dtype)
    zt = (scale * torch.randn(n, vocab, generator=g)).to(dtype)
    p = torch.softmax(z.float(), -1)
    tokens = torch.multinomial(p, 1, generator=g)[:, 0]
    adv = torch.randn(n, generator=g)
    return z, zt, tokens, adv


def _assert_close(d, ref):
    scale = ref.abs().max().item() + 1e-12
    torch.testing.assert_close(d, ref, rtol=1e-4, atol=2e-6 * scale + 1e-9)


def test_every_name_is_registered():
    assert set(ALL_NAMES) <= set(objectives.available())


@pytest.mark.parametrize("name,params", CONFIGS, ids=lambda x: str(x))
@pytest.mark.parametrize("vocab", [5, 97, 50_000])
def test_closed_form_matches_autograd(name, params, vocab):
    n = 3 if vocab == 50_000 else 6
    z, zt, tokens, adv = _inputs(n, vocab, seed=vocab)
    obj = objectives.get(name, **params)
    d = closed_form(obj, z, zt, tokens, adv)
    assert d.dtype == torch.float32 and d.shape == (n, vocab)
    _assert_close(d, autograd_direction(name, obj.params, z, zt, tokens, adv))


@pytest.mark.parametrize("name,params", CONFIGS, ids=lambda x: str(x))
def test_bf16_input_is_upcast(name, params):
    z, zt, tokens, adv = _inputs(4, 257, seed=1, dtype=torch.bfloat16)
    obj = objectives.get(name, **params)
    d = closed_form(obj, z, zt, tokens, adv)
    assert d.dtype == torch.float32
    _assert_close(d, autograd_direction(name, obj.params, z.float(), zt.float(), tokens, adv))


@pytest.mark.parametrize("name,params", CONFIGS, ids=lambda x: str(x))
def test_extreme_peakedness(name, params):
    """Logit gaps in the hundreds: finite, and as close to float64 autograd as float32 allows."""
    z, zt, tokens, adv = _inputs(4, 64, seed=2, scale=40.0)
    obj = objectives.get(name, **params)
    d = closed_form(obj, z, zt, tokens, adv)
    assert torch.isfinite(d).all()
    ref = autograd_direction(name, obj.params, z.double(), zt.double(), tokens, adv.double())
    torch.testing.assert_close(d.double(), ref, rtol=1e-3, atol=1e-6 + 1e-3 * ref.abs().max().item())


@pytest.mark.parametrize("name,params", CONFIGS, ids=lambda x: str(x))
def test_neg_inf_logits_masked_vocabulary(name, params):
    """Padded vocab entries (-inf in both models) get d = 0 and the rest equals autograd on the live part."""
    n, live, dead = 4, 40, 8
    z, zt, tokens, adv = _inputs(n, live, seed=3)
    pad = torch.full((n, dead), float("-inf"))
    obj = objectives.get(name, **params)
    d = closed_form(obj, torch.cat([z, pad], 1), torch.cat([zt, pad], 1), tokens, adv)
    assert torch.isfinite(d).all()
    assert (d[:, live:] == 0).all()
    _assert_close(d[:, :live], autograd_direction(name, obj.params, z, zt, tokens, adv))


def test_neg_inf_student_only_fkl_is_finite():
    """The student rules out tokens the teacher allows: forward KL's direction is still q - p, finite."""
    z, zt, _, _ = _inputs(3, 10, seed=4)
    z[:, :3] = float("-inf")
    d = objectives.get("fkl").direction(z, zt)
    assert torch.isfinite(d).all()
    torch.testing.assert_close(d[:, :3], torch.softmax(zt, -1)[:, :3])


@pytest.mark.parametrize("name", ["rkl", "fkl", "jsd", "rkl_topk", "fkl_clipped", "rkl_sampled", "k3_loss"])
def test_teacher_equals_student_gives_zero_direction(name):
    z, _, tokens, _ = _inputs(5, 33, seed=5)
    d = objectives.get(name).direction(z, z.clone(), tokens)
    assert d.abs().max().item() < 1e-6


# ---- expectations over the sampled token, by exact enumeration ----


def _enumerate_expectation(obj, z, zt, **kw):
    n, vocab = z.shape
    p = torch.softmax(z.float(), -1)
    total = torch.zeros(n, vocab)
    for a in range(vocab):
        tokens = torch.full((n,), a)
        total += p[:, a : a + 1] * obj.direction(z, zt, tokens, **kw)
    return total


@pytest.mark.parametrize(
    "name,target",
    [("rkl_sampled", "rkl"), ("rkl_baselined", "rkl"), ("k3_loss", "fkl"), ("k1_loss", None)],
)
def test_sampled_expectation_by_enumeration(name, target):
    z, zt, _, _ = _inputs(4, 11, seed=6)
    obj = objectives.get(name)
    expected = _enumerate_expectation(obj, z, zt)
    torch.testing.assert_close(obj.expected_direction(z, zt), expected, rtol=1e-4, atol=1e-6)
    if target is None:
        assert expected.abs().max().item() < 1e-6
    else:
        torch.testing.assert_close(expected, objectives.get(target).direction(z, zt), rtol=1e-4, atol=1e-6)


def test_grpo_ref_with_exact_q_is_the_ideal_gradient():
    from diagnose.ideal import ideal_gradient

    n, vocab = 4, 9
    z, _, _, _ = _inputs(n, vocab, seed=7)
    q = torch.rand(n, vocab, generator=torch.Generator().manual_seed(8))
    p = torch.softmax(z, -1)
    value = (p * q).sum(-1, keepdim=True)
    obj = objectives.get("grpo_ref")
    # one-sample direction with advantage Q_a - V, averaged exactly over a ~ p
    expected = torch.zeros(n, vocab)
    for a in range(vocab):
        tokens = torch.full((n,), a)
        expected += p[:, a : a + 1] * obj.direction(z, None, tokens, advantages=(q[:, a] - value[:, 0]))
    torch.testing.assert_close(obj.expected_direction(z, token_advantages=q - value), expected)
    star = ideal_gradient(z, torch.arange(vocab).expand(n, vocab), q)
    torch.testing.assert_close(expected, star.g, rtol=1e-4, atol=1e-7)


def test_jsd_endpoints_are_fkl_and_rkl():
    z, zt, _, _ = _inputs(3, 20, seed=9)
    jsd0 = objectives.get("jsd", beta=0.0).direction(z, zt)
    jsd1 = objectives.get("jsd", beta=1.0).direction(z, zt)
    torch.testing.assert_close(jsd0, objectives.get("fkl").direction(z, zt))
    torch.testing.assert_close(jsd1, objectives.get("rkl").direction(z, zt))


def test_topk_with_full_vocabulary_support_equals_full_objective():
    z, zt, _, _ = _inputs(3, 12, seed=10)
    full_rkl = objectives.get("rkl").direction(z, zt)
    torch.testing.assert_close(objectives.get("rkl_topk", k=12).direction(z, zt), full_rkl)
    torch.testing.assert_close(objectives.get("rkl_topk_unnorm", k=12).direction(z, zt), full_rkl)
    torch.testing.assert_close(
        objectives.get("fkl_topk", k=12).direction(z, zt), objectives.get("fkl").direction(z, zt)
    )


def test_registry_errors_and_specs():
    with pytest.raises(KeyError, match="unknown objective"):
        objectives.get("nope")
    with pytest.raises(ValueError, match="no parameter"):
        objectives.get("rkl", beta=0.1)
    with pytest.raises(ValueError, match="not a float"):
        objectives.get("jsd", beta="high")
    obj = objectives.parse("rkl_topk:k=5,support=union")
    assert obj.params == {"k": 5, "support": "union"} and obj.label == "rkl_topk:k=5,support=union"
    assert objectives.parse(obj.label).params == obj.params
    with pytest.raises(ValueError, match="support"):
        objectives.get("rkl_topk", support="both").direction(torch.zeros(1, 3), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="beta"):
        objectives.get("jsd", beta=1.5).direction(torch.zeros(1, 3), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="sampled tokens"):
        objectives.get("rkl_sampled").direction(torch.zeros(1, 3), torch.zeros(1, 3))
