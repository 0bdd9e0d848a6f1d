"""Chunked torch back end: two passes over the logits in [rows x vocab] blocks, O(block) extra memory.

Pass 1 (`lse_pass`) gives the log-normalisers and the student's argmax; pass 2 (`stream_pass`) the sums
listed in plan.py. Runs on any device; on the CPU it is the default. The logits are rounded to float32 (exact
for bf16/fp16/fp32) and every element-wise quantity is then computed, and summed, in float64.
"""

from __future__ import annotations

import math

import torch

from .plan import LOG_FLOOR, PROXY_KEYS, StreamPlan

ROWS = 64
COLS = 8192
F64 = torch.float64
SUM_DTYPE = F64  # per-block row sums, merged across blocks in float64


def _blocks(n: int, v: int, rows: int | None, cols: int | None):
    rows, cols = rows or ROWS, cols or COLS
    for r0 in range(0, n, rows):
        for c0 in range(0, v, cols):
            yield slice(r0, min(r0 + rows, n)), slice(c0, min(c0 + cols, v))


def lse_pass(student, teachers, rows: int | None = None, cols: int | None = None):
    """Row maxima and log-sums (log-normaliser = max + logsum), and the student's argmax, in one read.

    Returns (max_s [N], logsum_s [N], max_t [C, N], logsum_t [C, N], argmax_s [N]); logsums are float64.
    Keeping the pair apart lets log p = (z - max) - logsum keep full precision on peaked rows, where
    max + logsum would round.
    """
    n, v = student.shape
    dev = student.device
    n_cfg = len(teachers)
    m = torch.full((1 + n_cfg, n), float("-inf"), dtype=F64, device=dev)  # float32 values
    rest = torch.zeros(1 + n_cfg, n, dtype=F64, device=dev)  # sum of exp(x - max) but the max's own
    arg = torch.zeros(n, dtype=torch.long, device=dev)
    for rs, cs in _blocks(n, v, rows, cols):
        for c, x in enumerate([student] + list(teachers)):
            z = x[rs, cs].float().double()
            bm, idx = z.max(-1)
            new = bm > m[c, rs]
            if c == 0:
                arg[rs] = torch.where(new, idx + cs.start, arg[rs])
            m_new = torch.maximum(m[c, rs], bm)
            safe = torch.where(torch.isfinite(m_new), m_new, 0.0)
            e = torch.exp(z - safe[:, None])
            hit = torch.nonzero(new, as_tuple=True)[0]
            e[hit, idx[hit]] = 0.0  # the new maximum's own term (= 1) is carried by the "+ 1" below
            old = rest[c, rs]
            scale = torch.exp(m[c, rs] - safe)
            rest[c, rs] = torch.where(new, scale * (old + 1.0), old) + e.sum(-1, dtype=SUM_DTYPE)
            m[c, rs] = m_new
    ls = torch.log1p(rest)
    m = m.float()  # maxima of float32 values: exact
    return m[0], ls[0], m[1:], ls[1:], arg


def log_mix_ratio(l, beta: float):
    """log(p / m), m = beta q + (1 - beta) p, from l = log p - log q, accurate also where l ~ 0."""
    near = -torch.log1p(beta * torch.expm1(-l.clamp_min(-80.0)))
    low = l <= -80.0  # p << q: log(p/m) ~ l - log(beta)
    if bool(low.any()):
        far = l - math.log(beta) - torch.log1p((1.0 - beta) / beta * torch.exp(l.clamp_max(0.0)))
        near = torch.where(low, far, near)
    return near


def stream_pass(
    student,
    teachers,
    norm,
    plan: StreamPlan,
    aux: dict,
    tokens=None,
    rows: int | None = None,
    cols: int | None = None,
) -> dict:
    """The plan's vocabulary sums (float64) from one more read of the logits.

    `norm` = (max_s, logsum_s, max_t, logsum_t) from `lse_pass`; `aux` holds pivots and thresholds.
    """
    n, v = student.shape
    n_cfg = len(teachers)
    dev = student.device
    m_s, ls_s, m_t, ls_t = (x.double() for x in norm)
    out: dict = {}

    def acc(key, shape_cfg: bool, rs, c, value):
        if key not in out:
            out[key] = torch.zeros((n_cfg, n) if shape_cfg else (n,), dtype=torch.float64, device=dev)
        if shape_cfg:
            out[key][c, rs] += value
        else:
            out[key][rs] += value

    for key in PROXY_KEYS:
        out[key] = torch.zeros(n_cfg, n, dtype=torch.float64, device=dev)
    z_a, zt_a, piv = (aux[k].double() for k in ("z_a", "zt_a", "piv"))
    piv_ok = aux["piv_ok"]
    taus = {key: x.double() for key, x in aux.items() if isinstance(key, tuple) and key[0] in ("tau_s", "tau_t")}
    for rs, cs in _blocks(n, v, rows, cols):
        z = student[rs, cs].float().double()
        logp = ((z - m_s[rs, None]) - ls_s[rs, None]).clamp_min_(LOG_FLOOR)
        p = logp.exp()
        pp = p * p
        acc("ent_s", False, rs, None, -(p * logp).sum(-1, dtype=SUM_DTYPE))
        dz = z - z_a[rs, None]
        not_top = (torch.arange(cs.start, cs.stop, device=dev)[None, :] != aux["arg"][rs, None]).double()
        if plan.clips:
            acc("spp_xtop", False, rs, None, (pp * not_top).sum(-1, dtype=SUM_DTYPE))
        for k in plan.thr_s:
            tau = taus[("tau_s", k)][rs, None]
            _threshold(acc, ("thr_s", k), False, rs, None, z < tau, z == tau, pp)
        for c, zt_all in enumerate(teachers):
            zt = zt_all[rs, cs].float().double()
            logq = ((zt - m_t[c, rs, None]) - ls_t[c, rs, None]).clamp_min_(LOG_FLOOR)
            q = logq.exp()
            pv = piv[c, rs, None]
            # r = l - l_a; away from the floors the normalisers cancel and r is exact to a few ulps
            ok = (logp > LOG_FLOOR) & (logq > LOG_FLOOR) & piv_ok[c, rs, None]
            r = torch.where(ok, dz - (zt - zt_a[c, rs, None]), (logp - logq) - pv)
            lv = pv + r
            acc("kl_r", True, rs, c, (p * r).sum(-1, dtype=SUM_DTYPE))
            acc("kl_qp", True, rs, c, -(q * lv).sum(-1, dtype=SUM_DTYPE))
            acc("ent_t", True, rs, c, -(q * logq).sum(-1, dtype=SUM_DTYPE))
            diff = (q - p) * not_top  # the argmax term is added exactly in the finish
            acc("tv", True, rs, c, diff.abs().sum(-1, dtype=SUM_DTYPE))
            acc("spq", True, rs, c, (p * q).sum(-1, dtype=SUM_DTYPE))
            acc("sqq", True, rs, c, (q * q).sum(-1, dtype=SUM_DTYPE))
            lm_half = log_mix_ratio(lv, 0.5)  # log(p/m); log(q/m) = log(p/m) - l
            acc("js", True, rs, c, 0.5 * (p * lm_half + q * (lm_half - lv)).sum(-1, dtype=SUM_DTYPE))
            if plan.rkl:
                ppr = pp * r
                acc("r1", True, rs, c, ppr.sum(-1, dtype=SUM_DTYPE))
                acc("r2", True, rs, c, (ppr * r).sum(-1, dtype=SUM_DTYPE))
            if plan.fkl:
                acc("fkl_dd", True, rs, c, (diff * diff).sum(-1, dtype=SUM_DTYPE))
            for beta in plan.jsd:
                rm = (lm_half if beta == 0.5 else log_mix_ratio(lv, beta)) - log_mix_ratio(pv, beta)
                ppr = pp * rm
                acc(("jsd", beta, "klm"), True, rs, c, (p * rm).sum(-1, dtype=SUM_DTYPE))
                acc(("jsd", beta, "r1"), True, rs, c, ppr.sum(-1, dtype=SUM_DTYPE))
                acc(("jsd", beta, "r2"), True, rs, c, (ppr * rm).sum(-1, dtype=SUM_DTYPE))
            if plan.clips:
                term = torch.where(q > 0, q * (logq - logp), 0.0)
            for clip in plan.clips:  # sums over v != top (the argmax term is added exactly in the finish)
                kept = term < clip
                qu = torch.where(kept, q, 0.0)
                e = (qu - p) * not_top
                qx = qu * not_top
                for name, val in (
                    ("notU", q - qu),
                    ("dd", e * e),
                    ("pd", p * e),
                    ("sU", qx),
                    ("quu", qx * qx),
                    ("pqu", p * qx),
                ):
                    acc(("clip", clip, name), True, rs, c, val.sum(-1, dtype=SUM_DTYPE))
            for k in plan.thr_t:
                tau = taus[("tau_t", k)][c, rs, None]
                _threshold(acc, ("thr_t", k), True, rs, c, zt < tau, zt == tau, pp)
            for k in plan.thr_u:
                tau_s, tau_t = taus[("tau_s", k)][rs, None], taus[("tau_t", k)][c, rs, None]
                le = (z <= tau_s) & (zt <= tau_t)
                lt = (z < tau_s) & (zt < tau_t)
                _threshold(acc, ("thr_u", k), True, rs, c, lt, le & ~lt, pp)
        if tokens is not None:  # exclude the sampled token, so that 1 - p_a and its norm keep their precision
            local = tokens[rs] - cs.start
            hit = (local >= 0) & (local < z.shape[1])
            rows_hit = torch.nonzero(hit, as_tuple=True)[0]
            p[rows_hit, local[rows_hit]] = 0.0
            pp[rows_hit, local[rows_hit]] = 0.0
        acc("spp_x", False, rs, None, pp.sum(-1, dtype=SUM_DTYPE))
        acc("sp_x", False, rs, None, p.sum(-1, dtype=SUM_DTYPE))
    return out


def _threshold(acc, key, cfg, rs, c, strict, tie, pp):
    """Sums of p^2 below a top-k threshold and on it, and the number of ties (see plan.py)."""
    acc(key + ("lt",), cfg, rs, c, torch.where(strict, pp, 0.0).sum(-1, dtype=SUM_DTYPE))
    acc(key + ("eq",), cfg, rs, c, torch.where(tie, pp, 0.0).sum(-1, dtype=SUM_DTYPE))
    acc(key + ("cnt",), cfg, rs, c, tie.sum(-1, dtype=SUM_DTYPE))
