"""Chunked torch back end: two passes over the logits in [rows x vocab] blocks, O(block) extra memory.

Pass 1 (`lse_pass`) gives the log-normalisers and the student's argmax; pass 2 (`stream_pass`) the sums
listed in plan.py. Runs on any device; on the CPU it is the default.
"""

from __future__ import annotations

import math

import torch

from .plan import LOG_FLOOR, PROXY_KEYS, StreamPlan

ROWS = 128
COLS = 8192


def _blocks(n: int, v: int, rows: int, cols: int):
    for r0 in range(0, n, rows):
        for c0 in range(0, v, cols):
            yield slice(r0, min(r0 + rows, n)), slice(c0, min(c0 + cols, v))


def lse_pass(student, teachers, rows: int = ROWS, cols: int = COLS):
    """(lse_student [N], lse_teacher [C, N], student argmax [N]) with one read of each logit."""
    n, v = student.shape
    dev = student.device
    lse_s = torch.full((n,), float("-inf"), device=dev)
    lse_t = torch.full((len(teachers), n), float("-inf"), device=dev)
    best = torch.full((n,), float("-inf"), device=dev)
    arg = torch.zeros(n, dtype=torch.long, device=dev)
    for rs, cs in _blocks(n, v, rows, cols):
        z = student[rs, cs].float()
        lse_s[rs] = torch.logaddexp(lse_s[rs], torch.logsumexp(z, -1))
        val, idx = z.max(-1)
        better = val > best[rs]
        best[rs] = torch.where(better, val, best[rs])
        arg[rs] = torch.where(better, idx + cs.start, arg[rs])
        for c, zt in enumerate(teachers):
            lse_t[c, rs] = torch.logaddexp(lse_t[c, rs], torch.logsumexp(zt[rs, cs].float(), -1))
    return lse_s, lse_t, arg


def stream_pass(student, teachers, lse_s, lse_t, plan: StreamPlan, aux: dict, tokens=None,
                rows: int = ROWS, cols: int = COLS) -> dict:
    """The plan's vocabulary sums (float64) from one more read of the logits; `aux` holds pivots/thresholds."""
    n, v = student.shape
    n_cfg = len(teachers)
    dev = student.device
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
    ln2 = math.log(2.0)
    for rs, cs in _blocks(n, v, rows, cols):
        z = student[rs, cs].float()
        logp = (z - lse_s[rs, None]).clamp_min_(LOG_FLOOR)
        p = logp.exp()
        pp = p * p
        acc("ent_s", False, rs, None, -(p * logp).sum(-1, dtype=torch.float64))
        for k in plan.thr_s:
            keep = z <= aux[("tau_s", k)][rs, None]
            acc(("thr_s", k), False, rs, None, torch.where(keep, pp, 0.0).sum(-1, dtype=torch.float64))
        for c, zt_all in enumerate(teachers):
            zt = zt_all[rs, cs].float()
            logq = (zt - lse_t[c, rs, None]).clamp_min_(LOG_FLOOR)
            q = logq.exp()
            l = logp - logq
            f64 = torch.float64
            acc("kl_pq", True, rs, c, (p * l).sum(-1, dtype=f64))
            acc("kl_qp", True, rs, c, -(q * l).sum(-1, dtype=f64))
            acc("ent_t", True, rs, c, -(q * logq).sum(-1, dtype=f64))
            diff = q - p
            acc("tv", True, rs, c, diff.abs().sum(-1, dtype=f64))
            acc("spq", True, rs, c, (p * q).sum(-1, dtype=f64))
            acc("sqq", True, rs, c, (q * q).sum(-1, dtype=f64))
            logm = torch.logaddexp(logp, logq) - ln2
            acc("js", True, rs, c, 0.5 * (p * (logp - logm) + q * (logq - logm)).sum(-1, dtype=f64))
            if plan.rkl:
                r = l - aux["piv_rkl"][c, rs, None]
                ppr = pp * r
                acc("r1", True, rs, c, ppr.sum(-1, dtype=f64))
                acc("r2", True, rs, c, (ppr * r).sum(-1, dtype=f64))
            if plan.fkl:
                acc("fkl_dd", True, rs, c, (diff * diff).sum(-1, dtype=f64))
            for beta in plan.jsd:
                lm = logp - torch.logaddexp(logq + math.log(beta), logp + math.log(1.0 - beta))
                acc(("jsd", beta, "klm"), True, rs, c, (p * lm).sum(-1, dtype=f64))
                r = lm - aux[("piv_jsd", beta)][c, rs, None]
                ppr = pp * r
                acc(("jsd", beta, "r1"), True, rs, c, ppr.sum(-1, dtype=f64))
                acc(("jsd", beta, "r2"), True, rs, c, (ppr * r).sum(-1, dtype=f64))
            if plan.clips:
                term = torch.where(q > 0, q * (logq - logp), 0.0)
            for clip in plan.clips:
                kept = term < clip
                acc(("clip", clip, "notU"), True, rs, c, torch.where(kept, 0.0, q).sum(-1, dtype=f64))
                e = torch.where(kept, q, 0.0) - p
                acc(("clip", clip, "dd"), True, rs, c, (e * e).sum(-1, dtype=f64))
                acc(("clip", clip, "pd"), True, rs, c, (p * e).sum(-1, dtype=f64))
            for k in plan.thr_t:
                keep = zt <= aux[("tau_t", k)][c, rs, None]
                acc(("thr_t", k), True, rs, c, torch.where(keep, pp, 0.0).sum(-1, dtype=f64))
            for k in plan.thr_u:
                keep = (z <= aux[("tau_s", k)][rs, None]) & (zt <= aux[("tau_t", k)][c, rs, None])
                acc(("thr_u", k), True, rs, c, torch.where(keep, pp, 0.0).sum(-1, dtype=f64))
        if tokens is not None:  # exclude the sampled token, so that 1 - p_a and its norm keep their precision
            local = tokens[rs] - cs.start
            hit = (local >= 0) & (local < z.shape[1])
            rows_hit = torch.nonzero(hit, as_tuple=True)[0]
            p[rows_hit, local[rows_hit]] = 0.0
            pp[rows_hit, local[rows_hit]] = 0.0
        acc("spp_x", False, rs, None, pp.sum(-1, dtype=torch.float64))
        acc("sp_x", False, rs, None, p.sum(-1, dtype=torch.float64))
    return out
