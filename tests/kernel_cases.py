"""Inputs and comparisons shared by test_kernels.py and the Triton-interpreter check it runs in a subprocess.

Not collected by pytest (no test_ prefix).
"""

from __future__ import annotations

import contextlib

import torch

from diagnose import objectives as O

SPECS = [
    "rkl",
    "fkl",
    "jsd",
    "jsd:beta=0.1",
    "jsd:beta=1.0",
    "jsd:beta=0.0",
    "fkl_clipped",
    "fkl_clipped:clip=0.01",
    "rkl_sampled",
    "rkl_baselined",
    "k1_loss",
    "k3_loss",
    "grpo_ref",
    "rkl_topk:k=5",
    "rkl_topk:k=5,support=teacher",
    "rkl_topk:k=4,support=union",
    "rkl_topk_unnorm:k=5",
    "rkl_topk_unnorm:k=6,support=teacher",
    "rkl_topk_unnorm:k=3,support=union",
    "fkl_topk:k=5",
    "fkl_topk:k=8",
]


# objectives whose d vanishes exactly when the teacher equals the student (k1_loss, grpo_ref, fkl_topk and
# rkl_topk_unnorm do not)
VANISH_WHEN_EQUAL = ("rkl", "fkl", "jsd", "fkl_clipped", "rkl_topk", "rkl_sampled", "rkl_baselined", "k3_loss")


def objectives():
    return [O.parse(s) for s in SPECS]


def all_specs() -> list[str]:
    """SPECS plus every registered objective with its default parameters, and a few more parameter values."""
    extra = ["jsd:beta=0.9", "fkl_clipped:clip=0.1", "rkl_topk_unnorm:k=1"]
    return list(dict.fromkeys(SPECS + O.available() + extra))


def peaked_case(n: int = 8, vocab: int = 3000, seed: int = 0, bumps=(24.0, 27.0, 30.0, 26.0, 31.0, 25.0, 28.0, 29.0)):
    """Peaked rows: each student row has one logit raised by `bumps[i]` above randn * 2 logits (with V = 3000,
    bumps 24..31 give 1 - p_top ~ 1e-6 .. 1e-9; 60 or 100 give 1 - p_top far below float64's epsilon).
    Teachers: 0 = the student plus 0.01 noise (nearly equal), 1 = plus 1.5 noise (same peak), 2 = peaked as
    sharply on another token. Candidates: both tops, random ids, padding, a repeat; half the sampled tokens
    are the argmax, the others a candidate off it. Same tuple as `make_case`."""
    gen = torch.Generator().manual_seed(seed)
    rows = torch.arange(n)
    z = torch.randn(n, vocab, generator=gen) * 2.0
    top = torch.randint(0, vocab, (n,), generator=gen)
    other = (top + 1 + torch.randint(0, vocab - 1, (n,), generator=gen)) % vocab
    bump = torch.tensor([bumps[i % len(bumps)] for i in range(n)], dtype=torch.float32)
    z[rows, top] += bump
    zt = z[None].repeat(3, 1, 1)
    zt[0] += 0.01 * torch.randn(n, vocab, generator=gen)
    zt[1] += 1.5 * torch.randn(n, vocab, generator=gen)
    zt[2] = z + torch.randn(n, vocab, generator=gen)
    zt[2, rows, top] -= bump
    zt[2, rows, other] += bump
    rnd = torch.randint(0, vocab, (n, 3), generator=gen)
    ids = torch.cat([z.topk(3, -1).indices, zt[2].topk(2, -1).indices, rnd, torch.full((n, 2), -1)], -1)
    ids[0, -1] = ids[0, 0]
    g = torch.randn(n, ids.shape[1], generator=gen) * 0.1
    g[ids < 0] = 0.0
    tokens = z.argmax(-1)
    tokens[1::2] = ids[1::2, 6]
    return z, zt, ids, g, tokens, torch.randn(n, generator=gen)


def closed_form64(objs, student, teachers, tokens=None, advantages=None):
    """d [C, O, N, V] from each objective's own closed form (`direction`) in float64."""
    kw = {} if advantages is None else {"advantages": advantages}
    with float64_logprobs():
        return torch.stack(
            [torch.stack([o.direction(student, zt, tokens, **kw).double() for o in objs]) for zt in teachers]
        )


def mp_directions(objs, student, teachers, tokens=None, advantages=None, dps: int = 60):
    """d [C, O, N, V] rounded to float64 from `dps`-digit arithmetic (mpmath), and |d|^2 [C, O, N] summed
    there: exact to float64 even where the closed forms cancel. Finite logits only; small V (it is slow)."""
    import mpmath

    from diagnose.objectives.base import topk_mask

    n_cfg, n, vocab = len(teachers), student.shape[0], student.shape[1]
    d = torch.zeros(n_cfg, len(objs), n, vocab, dtype=torch.float64)
    d_sq = torch.zeros(n_cfg, len(objs), n, dtype=torch.float64)
    with mpmath.workdps(dps):
        for c, zt in enumerate(teachers):
            for i in range(n):
                zs, zq = student[i].float().tolist(), zt[i].float().tolist()
                for o, obj in enumerate(objs):
                    masks = None  # top-k sets chosen as the objectives do (torch.topk on float32 logits)
                    if "k" in obj.params:
                        masks = [topk_mask(x[i : i + 1], obj.params["k"])[0].tolist() for x in (student, zt)]
                    tok = None if tokens is None else int(tokens[i])
                    adv = None if advantages is None else float(advantages[i])
                    row = _mp_direction(obj, zs, zq, masks, tok, adv)
                    d[c, o, i] = torch.tensor([float(x) for x in row], dtype=torch.float64)
                    d_sq[c, o, i] = float(mpmath.fsum(x * x for x in row))
    return d, d_sq


def _mp_log_softmax(x, keep=None):
    import mpmath

    keep = keep or [True] * len(x)
    lse = mpmath.log(mpmath.fsum(mpmath.exp(mpmath.mpf(v)) for v, k in zip(x, keep, strict=True) if k))
    return [mpmath.mpf(v) - lse if k else None for v, k in zip(x, keep, strict=True)]


def _mp_rkl(logp, logq, scale=1):
    """-scale p (l - KL) over the entries where logp is defined (0 elsewhere)."""
    import mpmath

    p = [mpmath.exp(a) if a is not None else mpmath.mpf(0) for a in logp]
    l = [a - b if a is not None else mpmath.mpf(0) for a, b in zip(logp, logq, strict=True)]
    kl = mpmath.fsum(pi * li for pi, li in zip(p, l, strict=True))
    return [-scale * pi * (li - kl) for pi, li in zip(p, l, strict=True)]


def _mp_direction(obj, zs, zq, masks, tok, adv):
    """d = -dL/dz of one row, in mpmath, written from the objectives' docstrings (diagnose/objectives)."""
    import mpmath

    name, prm = obj.name, obj.params
    logp, logq = _mp_log_softmax(zs), _mp_log_softmax(zq)
    p, q = [mpmath.exp(a) for a in logp], [mpmath.exp(b) for b in logq]
    if name == "jsd" and float(prm["beta"]) in (0.0, 1.0):
        name = "fkl" if float(prm["beta"]) == 0.0 else "rkl"
    if name == "rkl":
        return _mp_rkl(logp, logq)
    if name == "fkl":
        return [b - a for a, b in zip(p, q, strict=True)]
    if name == "jsd":
        beta = mpmath.mpf(float(prm["beta"]))
        logm = [mpmath.log(beta * b + (1 - beta) * a) for a, b in zip(p, q, strict=True)]
        return _mp_rkl(logp, logm, 1 - beta)
    if name == "fkl_clipped":
        clip = mpmath.mpf(float(prm["clip"]))
        q_u = [b if b * (lb - la) < clip else mpmath.mpf(0) for b, la, lb in zip(q, logp, logq, strict=True)]
        s = mpmath.fsum(q_u)
        return [u - a * s for a, u in zip(p, q_u, strict=True)]
    if name in ("rkl_sampled", "rkl_baselined", "k1_loss", "k3_loss", "grpo_ref"):
        l_a = logp[tok] - logq[tok]
        adv = {
            "rkl_sampled": lambda: -l_a,
            "rkl_baselined": lambda: -(l_a - mpmath.fsum(a * (x - y) for a, x, y in zip(p, logp, logq, strict=True))),
            "k1_loss": lambda: mpmath.mpf(-1),
            "k3_loss": lambda: mpmath.exp(-l_a) - 1,
            "grpo_ref": lambda: mpmath.mpf(adv),
        }[name]()
        return [adv * ((1 if j == tok else 0) - pj) for j, pj in enumerate(p)]
    if name not in ("rkl_topk", "rkl_topk_unnorm", "fkl_topk"):
        raise NotImplementedError(f"mp_directions does not know objective {name!r}: add its d here")
    s_s, s_t = masks
    support = "teacher" if name == "fkl_topk" else prm["support"]
    keep = {"student": s_s, "teacher": s_t, "union": [a or b for a, b in zip(s_s, s_t, strict=True)]}[support]
    if name == "rkl_topk":  # both renormalised on S
        return _mp_rkl(_mp_log_softmax(zs, keep), _mp_log_softmax(zq, keep))
    if name == "fkl_topk":  # teacher renormalised on its top-k, full student
        lqt = _mp_log_softmax(zq, keep)
        return [(mpmath.exp(b) if b is not None else 0) - a for a, b in zip(p, lqt, strict=True)]
    inner = mpmath.fsum(p[j] * (logp[j] - logq[j] + 1) for j in range(len(p)) if keep[j])
    return [p[j] * inner - (p[j] * (logp[j] - logq[j] + 1) if keep[j] else 0) for j in range(len(p))]


def rel_errors(got, exact, floor_of, rel_floor: float = 1e-12):
    """|got - exact| / max(|exact|, rel_floor * floor_of) elementwise (floor_of broadcasts against exact); 0
    where both are NaN, inf where one is."""
    err = (got - exact).abs() / torch.maximum(exact.abs(), rel_floor * floor_of).clamp_min(1e-300)
    both = torch.isnan(got) & torch.isnan(exact)
    return torch.where(both, 0.0, torch.where(torch.isnan(err), float("inf"), err))


def make_case(
    kind: str,
    n: int = 8,
    vocab: int = 3000,
    n_cfg: int = 3,
    k_cand: int = 10,
    seed: int = 0,
    dtype=torch.float32,
):
    """(student [N, V], teachers [C, N, V], cand_ids, g_cand, tokens, advantages) for a named scenario."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, vocab, generator=gen) * 2.0
    zt = z[None] + torch.randn(n_cfg, n, vocab, generator=gen) * 1.5
    if kind == "peaked":  # nearly one-hot student and teachers
        z = z * 25.0
        zt = zt * 25.0
        zt[0] = z + 0.01 * torch.randn(n, vocab, generator=gen)  # a teacher almost equal to the student
    elif kind == "neginf":  # masked vocabulary entries on both sides, and a teacher that kills student mass
        z[:, vocab // 2 :] = float("-inf")
        zt[1, :, : vocab // 4] = float("-inf")
        zt[2] = z.clone()
        zt[2, :, :7] = float("-inf")
    elif kind == "equal":  # teacher == student (d = 0 for full-vocabulary objectives) and a shifted copy
        zt[0] = z
        zt[1] = z + 3.0
    z, zt = z.to(dtype), zt.to(dtype)
    # candidates: student top few, teacher top few, random ids, padding, one duplicate
    top = z.float().topk(4, dim=-1).indices
    rnd = torch.randint(0, vocab, (n, k_cand - 6), generator=gen)
    ids = torch.cat([top, rnd, torch.full((n, 2), -1)], -1)
    ids[0, -1] = ids[0, 0]  # a repeated id: the last occurrence's g* counts
    g = torch.randn(n, k_cand, generator=gen) * 0.1
    g[ids < 0] = 0.0
    if kind == "neginf":
        ids[-1, 4] = vocab - 1  # a candidate the student can never emit
    tokens = torch.multinomial(torch.softmax(z.float(), -1), 1, generator=gen)[:, 0]
    tokens[-1] = ids[-1, 0]  # sampled token among the candidates
    advantages = torch.randn(n, generator=gen)
    return z, zt, ids, g, tokens, advantages


@contextlib.contextmanager
def float64_logprobs():
    """Run the objectives/alignment code with float64 log-probs (and float64 as torch's default dtype, for
    constants such as jsd's log(beta)): the reference becomes a float64 oracle. On peaked rows the closed
    forms still cancel in float64 (q - p at the argmax, 1 - p_a); `mp_directions` has no such limit."""
    from diagnose import alignment, ideal
    from diagnose.objectives import base, divergences, sampled, topk

    def log_probs64(logits):
        return torch.log_softmax(logits.double(), dim=-1).clamp_min(base.LOG_FLOOR)

    mods = (base, divergences, sampled, topk, alignment, ideal)
    saved = [m.log_probs for m in mods]
    dtype = torch.get_default_dtype()
    for m in mods:
        m.log_probs = log_probs64
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(dtype)
        for m, f in zip(mods, saved, strict=True):
            m.log_probs = f


def oracle(*args):
    """node_stats_reference computed with float64 log-probs."""
    from diagnose.kernels import node_stats_reference

    with float64_logprobs():
        return node_stats_reference(*args)


PROXIES = ("kl_pq", "kl_qp", "js", "tv", "cos_pq", "entropy_student", "entropy_teacher")


def compare(exact, ref32, got, s_pp=None, rtol: float = 2e-3, cos_atol: float = 2e-3, slack: float = 4.0):
    """Where `got` (a fused path) is less accurate than the float32 reference allows, as readable lines.

    Against the float64 oracle `exact`, every element must satisfy
    |got - exact| <= slack |ref32 - exact| + rtol |exact| (+ cos_atol for cosines, + a 1e-6 relative floor
    per node otherwise), so ill-conditioned values (d ~ 0, KL ~ 0 between near-equal one-hot rows) may be as
    noisy as the float32 reference itself, and no noisier; proxies get 1e-6 absolute, and sums of d a floor
    at float32 noise (|d| ~ 1e-6 |p|). NaN must match NaN. Nodes whose exact |d|^2 lies far below the
    degeneracy threshold must be flagged degenerate. Cosines are not compared where
    the exact |d|^2 is below 1e-12 sum p^2 (`s_pp` [N]): there d is rounding noise (e.g. teacher == student)
    and its direction is arbitrary.
    """
    bad = []
    assert exact.labels == got.labels == ref32.labels
    # where the exact d is zero far below the degeneracy threshold (e.g. teacher == student), got must flag it
    from diagnose.kernels import D_REL_TOL

    clear = exact.d_sq.double() <= 1e-6 * D_REL_TOL**2 * (exact.p_sq + exact.q_sq).double()[:, None, :]
    if bool((clear & ~got.degenerate).any()):
        idx = tuple(int(i) for i in torch.nonzero(clear & ~got.degenerate)[0])
        bad.append(f"degenerate [{exact.labels[idx[1]]}] at {idx}: exact |d|^2 {exact.d_sq[idx].item():.3g}")
    for key, a in exact.tensors().items():
        b, r = got.tensors()[key], ref32.tensors()[key]
        if a.shape != b.shape:
            bad.append(f"{key}: shape {tuple(a.shape)} vs {tuple(b.shape)}")
            continue
        if a.dtype == torch.bool:
            continue  # checked through the cosines (0 on degenerate nodes)
        a64, b64, r64 = a.double(), b.double(), r.double()
        nan_a = torch.isnan(a64)
        if not torch.equal(nan_a, torch.isnan(b64)):
            bad.append(f"{key}: NaN pattern differs")
            continue
        a64, b64, r64 = (torch.where(nan_a, 0.0, x) for x in (a64, b64, r64))
        tol = slack * (r64 - a64).abs() + rtol * a64.abs()
        if key.startswith("cos"):
            tol = tol + cos_atol
            if s_pp is not None and key in ("cos_full", "cos_support"):
                d2 = exact.d_sq if key == "cos_full" else exact.d_sq_support
                tol = torch.where(d2.double() < 1e-12 * s_pp.double(), float("inf"), tol)
        elif key in PROXIES:
            tol = tol + 1e-6  # sums of float32 probabilities: ~1e-7 per unit of mass, whatever the path
        else:
            scale = a64.abs().amax(dim=-1, keepdim=True) if a64.dim() > 1 else a64.abs().amax()
            tol = tol + 1e-6 * scale + 1e-9
            if s_pp is not None and key in ("dot", "d_sq", "d_sq_support"):
                # d at float32 noise level (|d| ~ 1e-6 |p|) carries no information
                noise = 1e-6 * (exact.g_sq.double() * s_pp.double()).sqrt() if key == "dot" else 1e-12 * s_pp
                tol = tol + noise.double()
        err = (a64 - b64).abs()
        if not bool((err <= tol).all()):
            idx = tuple(int(i) for i in torch.nonzero(err > tol)[0])
            label = f" [{exact.labels[idx[1]]}]" if a.dim() == 3 else ""
            bad.append(
                f"{key}{label} at {idx}: exact {a64[idx].item():.6g} ref32 {r64[idx].item():.6g} "
                f"got {b64[idx].item():.6g}"
            )
    return bad


def student_s_pp(student_logits):
    """sum p^2 per node, in float64."""
    p = torch.softmax(student_logits.double(), -1)
    return (p * p).sum(-1)
