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


def objectives():
    return [O.parse(s) for s in SPECS]


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
    """Run the objectives/alignment code with float64 log-probs: the reference becomes an accurate oracle."""
    from diagnose import alignment, ideal
    from diagnose.objectives import base, divergences, sampled, topk

    def log_probs64(logits):
        return torch.log_softmax(logits.double(), dim=-1).clamp_min(base.LOG_FLOOR)

    mods = (base, divergences, sampled, topk, alignment, ideal)
    saved = [m.log_probs for m in mods]
    for m in mods:
        m.log_probs = log_probs64
    try:
        yield
    finally:
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
    at float32 noise (|d| ~ 1e-6 |p|). NaN must match NaN. Cosines are not compared where
    the exact |d|^2 is below 1e-12 sum p^2 (`s_pp` [N]): there d is rounding noise (e.g. teacher == student)
    and its direction is arbitrary.
    """
    bad = []
    assert exact.labels == got.labels == ref32.labels
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
