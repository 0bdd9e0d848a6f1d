"""Every closed-form direction d = -dL/dz equals torch.autograd of its loss as written, entry by entry.

The objectives compute in float32 whatever the input dtype (docs/math.md: "float32 throughout"), so they are
compared with float64 autograd on the same (float32-representable) logits with a per-element tolerance
(`_assert_elementwise`):

    |d_j - ref_j| <= 1e-5 |ref_j| + 4 (eps32 w_j + eps64 w64_j) L_j + 1e-35

L_j = 1 + |log p_j| + |log q_j| + sum_k (p_k + q_k)(|log p_k| + |log q_k|) is the size of the log-probs that
enter entry j (their float32 rounding is what float32 costs), w_j the weight they enter with: p_j (1 - p_j)
for rkl, jsd (0 < beta) and rkl_topk (p renormalised on the support), so the mode of a peaked row, whose
entry is tiny, must come out accurate to its own size (the mode shift in rkl_from_logprobs); p_j + q_j for
q - p type directions (fkl, fkl_clipped, fkl_topk, jsd beta=0: a difference of two numbers near 1 is not
promised beyond float32 rounding); p_j for rkl_topk_unnorm; (1 + |A|)(p_j + [j = a]) for the sampled-token
directions A (e_a - p) (1 - p_a is a float32 difference). The eps64 term (w64 = p + q, or w for sampled
ones) is the float64 reference's own rounding: autograd of KL as written cancels l_a against KL at a peaked
mode. The 1e-35 floor is float32's underflow (entries below 1e-38 cannot be represented).
"""

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


EPS32 = torch.finfo(torch.float32).eps
EPS64 = torch.finfo(torch.float64).eps
SAMPLED = ("rkl_sampled", "rkl_baselined", "k1_loss", "k3_loss", "grpo_ref")


def _advantage(name, logp, logq, tokens, adv=None):
    """The scalar A of a sampled-token direction A (e_a - p), written out (float64 [N])."""
    a = tokens[:, None]
    l_a = (logp - logq).gather(-1, a)[:, 0]
    if name == "rkl_sampled":
        return -l_a
    if name == "rkl_baselined":
        return -(l_a - (logp.exp() * (logp - logq)).sum(-1))
    if name == "k1_loss":
        return -torch.ones_like(l_a)
    if name == "k3_loss":
        return torch.exp(-l_a) - 1.0
    if name == "grpo_ref":
        return torch.as_tensor(adv, dtype=torch.float64)
    raise KeyError(name)


def _allowance(name, params, z, zt, tokens=None, adv=None):
    """Per-element float32 (and float64 reference) rounding allowance of objective `name` (module docstring)."""
    z, zt = z.double(), zt.double()
    if name == "rkl_topk":  # the direction lives on the support, with both distributions renormalised there
        s = _support(z, zt, params)
        z, zt = _restrict(z, s), _restrict(zt, s)
    logp, logq = _lsm(z), _lsm(zt)
    p, q = logp.exp(), logq.exp()
    mag = logp.clamp_min(-1e4).abs() + logq.clamp_min(-1e4).abs()
    size = 1.0 + mag + ((p + q) * mag).sum(-1, keepdim=True)
    w64 = p + q
    if name in ("rkl", "rkl_topk") or (name == "jsd" and params["beta"] > 0):
        w = p * -torch.expm1(logp)  # p (1 - p), accurate where p is near 1
    elif name in ("fkl", "fkl_clipped", "jsd"):
        w = p + q
    elif name == "fkl_topk":
        w = p + _lsm(_restrict(zt, _topk_mask(zt, params["k"]))).exp()
    elif name == "rkl_topk_unnorm":
        w = p
    elif name in SAMPLED:
        big_a = _advantage(name, logp, logq, tokens, adv)
        w = w64 = (1.0 + big_a.abs())[:, None] * (p + torch.zeros_like(p).scatter_(-1, tokens[:, None], 1.0))
    else:
        raise KeyError(name)
    return EPS32 * w * size + EPS64 * w64 * size


def _assert_elementwise(d, ref, allowance, rtol=1e-5, c=4.0, floor=1e-35):
    """|d - ref| <= rtol |ref| + c allowance + floor at every entry (ref and allowance in float64)."""
    d, ref = d.double(), ref.double()
    assert d.shape == ref.shape == allowance.shape
    err = (d - ref).abs()
    bound = rtol * ref.abs() + c * allowance + floor
    bad = ~(err <= bound)  # NaN counts as bad
    if bad.any():
        ratio = torch.where(bad, err / bound, torch.zeros_like(err)).nan_to_num(nan=float("inf"))
        i, j = divmod(int(ratio.argmax()), d.shape[-1])
        raise AssertionError(
            f"{int(bad.sum())} of {d.numel()} entries off; worst [{i}, {j}]: got {d[i, j].item():.6e}, "
            f"want {ref[i, j].item():.6e}, |err| {err[i, j].item():.3e} > bound {bound[i, j].item():.3e}"
        )


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
    ref = autograd_direction(name, obj.params, z.double(), zt.double(), tokens, adv.double())
    _assert_elementwise(d, ref, _allowance(name, obj.params, z, zt, tokens, adv))


@pytest.mark.parametrize("name,params", CONFIGS, ids=lambda x: str(x))
def test_bf16_input_is_upcast(name, params):
    z, zt, tokens, adv = _inputs(4, 257, seed=1, dtype=torch.bfloat16)
    obj = objectives.get(name, **params)
    d = closed_form(obj, z, zt, tokens, adv)
    assert d.dtype == torch.float32
    z, zt = z.double(), zt.double()  # bf16 values are exact in float64
    ref = autograd_direction(name, obj.params, z, zt, tokens, adv.double())
    _assert_elementwise(d, ref, _allowance(name, obj.params, z, zt, tokens, adv))


@pytest.mark.parametrize("name,params", CONFIGS, ids=lambda x: str(x))
def test_extreme_peakedness(name, params):
    """Logit gaps in the hundreds: finite, and every entry (the tiny ones at a peaked row's mode included) as
    close to float64 autograd as float32 allows (the module docstring's per-element bound)."""
    for vocab, seed in ((5, 5), (64, 2), (97, 97)):
        z, zt, tokens, adv = _inputs(6, vocab, seed=seed, scale=40.0)
        obj = objectives.get(name, **params)
        d = closed_form(obj, z, zt, tokens, adv)
        assert torch.isfinite(d).all()
        ref = autograd_direction(name, obj.params, z.double(), zt.double(), tokens, adv.double())
        _assert_elementwise(d, ref, _allowance(name, obj.params, z, zt, tokens, adv))


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
    ref = autograd_direction(name, obj.params, z.double(), zt.double(), tokens, adv.double())
    _assert_elementwise(d[:, :live], ref, _allowance(name, obj.params, z, zt, tokens, adv))


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


def _one_sample_written(name, logp, logq, a, adv=None):
    """The one-sample direction A (e_a - p) at token a for every row, written out here in float64."""
    p = logp.exp()
    tokens = torch.full((p.shape[0],), a)
    e_a = torch.zeros_like(p).scatter_(-1, tokens[:, None], 1.0)
    return _advantage(name, logp, logq, tokens, adv)[:, None] * (e_a - p)


def _expectation_written(name, logp, logq):
    """What E_{a~p}[d] is: rkl's -p (l - KL(p||q)) for both rkl estimators, q - p for k3, 0 for k1 (float64)."""
    p, q, l = logp.exp(), logq.exp(), logp - logq
    if name in ("rkl_sampled", "rkl_baselined"):
        return -p * (l - (p * l).sum(-1, keepdim=True))
    if name == "k3_loss":
        return q - p
    if name == "k1_loss":
        return torch.zeros_like(p)
    raise KeyError(name)


@pytest.mark.parametrize("name,target", [("rkl_sampled", "rkl"), ("rkl_baselined", "rkl"), ("k3_loss", "fkl"),
                                         ("k1_loss", None)])  # fmt: skip
@pytest.mark.parametrize("scale", [2.0, 6.0])
def test_sampled_expectation_by_enumeration(name, target, scale):
    """E_{a~p} of the one-sample direction, enumerated over every token a with the direction written out in
    this file, equals the expectation written out in closed form; `expected_direction` equals it, and so does
    the same enumeration of the object's own `direction` (per element, module docstring bound)."""
    z, zt, _, _ = _inputs(4, 11, seed=6, scale=scale)
    logp, logq = _lsm(z.double()), _lsm(zt.double())
    p = logp.exp()
    oracle = sum(p[:, a : a + 1] * _one_sample_written(name, logp, logq, a) for a in range(z.shape[1]))
    closed = _expectation_written(name, logp, logq)
    torch.testing.assert_close(oracle, closed, rtol=1e-10, atol=1e-13)  # the identity, in float64

    obj = objectives.get(name)
    exp_d = obj.expected_direction(z, zt)
    assert exp_d.dtype == torch.float32 and exp_d.shape == z.shape
    if target is None:
        assert (exp_d == 0).all()
    else:
        _assert_elementwise(exp_d, oracle, _allowance(target, {}, z, zt))
    enumerated, allowance = torch.zeros_like(oracle), torch.zeros_like(oracle)
    for a in range(z.shape[1]):
        tokens = torch.full((z.shape[0],), a)
        enumerated += p[:, a : a + 1] * obj.direction(z, zt, tokens).double()
        allowance += p[:, a : a + 1] * _allowance(name, {}, z, zt, tokens)
    _assert_elementwise(enumerated, oracle, allowance)


def test_grpo_ref_with_exact_q_is_the_ideal_gradient():
    """With advantages A_a = Q_a - V, the exact expectation (enumerated here over a ~ p) of the GRPO token term
    (Q_a - V)(e_a - p) is g* = p (Q - V); expected_direction, the object's direction averaged over a, and
    ideal_gradient all equal the float64 g* written out here."""
    from diagnose.ideal import ideal_gradient

    n, vocab = 4, 9
    z, _, _, _ = _inputs(n, vocab, seed=7)
    q = torch.rand(n, vocab, generator=torch.Generator().manual_seed(8))
    logp = _lsm(z.double())
    p, q64 = logp.exp(), q.double()
    value = (p * q64).sum(-1, keepdim=True)
    g_star = p * (q64 - value)
    oracle = torch.zeros(n, vocab, dtype=torch.float64)
    for a in range(vocab):
        e_a = torch.zeros_like(p)
        e_a[:, a] = 1.0
        oracle += p[:, a : a + 1] * (q64[:, a : a + 1] - value) * (e_a - p)
    torch.testing.assert_close(oracle, g_star, rtol=1e-10, atol=1e-13)  # the identity, in float64

    obj = objectives.get("grpo_ref")
    # g* entries are p (Q - V): float32 rounding of p and of Q - V (V a sum of p Q) costs ~eps32 (p + |g*|)
    allowance = EPS32 * (p + g_star.abs())
    expected = obj.expected_direction(z, token_advantages=(q - value.float()))
    _assert_elementwise(expected, g_star, allowance)
    enumerated = torch.zeros(n, vocab, dtype=torch.float64)
    for a in range(vocab):
        tokens = torch.full((n,), a)
        adv = q64[:, a] - value[:, 0]
        enumerated += p[:, a : a + 1] * obj.direction(z, None, tokens, advantages=adv.float()).double()
    _assert_elementwise(enumerated, g_star, allowance)
    star = ideal_gradient(z, torch.arange(vocab).expand(n, vocab), q)
    _assert_elementwise(star.g, g_star, allowance)


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
    # Values an objective cannot use are refused when it is built, before any work
    for spec, word in [("rkl_topk:support=both", "support"), ("jsd:beta=1.5", "beta"), ("jsd:beta=-0.1", "beta"),
                       ("rkl_topk:k=0", "k must"), ("fkl_topk:k=0", "k must"), ("fkl_clipped:clip=0", "clip")]:
        with pytest.raises(ValueError, match=word):
            objectives.parse(spec)
    assert objectives.parse("jsd:beta=1").params == {"beta": 1.0}  # the endpoints are allowed
    with pytest.raises(ValueError, match="sampled tokens"):
        objectives.get("rkl_sampled").direction(torch.zeros(1, 3), torch.zeros(1, 3))
