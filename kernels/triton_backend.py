"""Triton back end: one program per node streams the student row and all C teacher rows in vocabulary blocks.

Same contract as chunked.py (`lse_pass`, `stream_pass`). Teacher rows are loaded as a [C_PAD, BLOCK] tile, so
the student row is read once per pass whatever C is. One launch handles one jsd beta, one clip and one top-k
threshold per side; further values of these parameters cost one more (partial) read each.
On CPU tensors it needs TRITON_INTERPRET=1 in the environment before triton is first imported.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .plan import LOG_FLOOR, StreamPlan

BLOCK = 1024
ROW_CH = ("spp_x", "sp_x", "ent_s", "thr_s")
CFG_CH = ("kl_pq", "kl_qp", "ent_t", "tv", "spq", "sqq", "js", "r1", "r2", "fkl_dd",
          "klm", "jr1", "jr2", "notU", "cdd", "cpd", "thr_t", "thr_u")


@triton.jit
def _logaddexp(a, b):
    m = tl.maximum(a, b)
    return m + tl.log(1.0 + tl.exp(-tl.abs(a - b)))


@triton.jit
def _lse_kernel(s_ptr, t_ptr, s_rs, t_cs, t_rs, V, C, N, lse_s_ptr, lse_t_ptr, arg_ptr,
                BLOCK: tl.constexpr, C_PAD: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    one = tl.arange(0, 1)
    cfg = tl.arange(0, C_PAD)
    cmask = cfg < C
    m_s = tl.full([1], -1e30, tl.float32)
    s_s = tl.zeros([1], tl.float32)
    best = tl.full([1], float("-inf"), tl.float32)
    arg = tl.zeros([1], tl.int32)
    m_t = tl.full([C_PAD], -1e30, tl.float32)
    s_t = tl.zeros([C_PAD], tl.float32)
    for v0 in range(0, V, BLOCK):
        cols = v0 + offs
        vm = cols < V
        z = tl.load(s_ptr + n * s_rs + cols[None, :], mask=vm[None, :], other=float("-inf")).to(tl.float32)
        bm = tl.max(z, axis=1)
        ba = tl.argmax(z, axis=1).to(tl.int32)
        upd = bm > best
        arg = tl.where(upd, ba + v0, arg)
        best = tl.where(upd, bm, best)
        mn = tl.maximum(m_s, bm)
        s_s = s_s * tl.exp(m_s - mn) + tl.sum(tl.exp(z - mn[:, None]), axis=1)
        m_s = mn
        t_off = cfg.to(tl.int64)[:, None] * t_cs + n * t_rs + cols[None, :]
        zt = tl.load(t_ptr + t_off, mask=cmask[:, None] & vm[None, :], other=float("-inf")).to(tl.float32)
        bmt = tl.max(zt, axis=1)
        mnt = tl.maximum(m_t, bmt)
        s_t = s_t * tl.exp(m_t - mnt) + tl.sum(tl.exp(zt - mnt[:, None]), axis=1)
        m_t = mnt
    tl.store(lse_s_ptr + n + one, m_s + tl.log(s_s))
    tl.store(arg_ptr + n + one, arg)
    tl.store(lse_t_ptr + cfg * N + n, m_t + tl.log(s_t), mask=cmask)


@triton.jit
def _stream_kernel(s_ptr, t_ptr, s_rs, t_cs, t_rs, V, C, N,
                   lse_s_ptr, lse_t_ptr, tok_ptr, piv_ptr, pivj_ptr, taus_ptr, taut_ptr, tauus_ptr, tauut_ptr,
                   row_ptr, cfg_ptr, log_beta, log_1mbeta, clip,
                   BLOCK: tl.constexpr, C_PAD: tl.constexpr, BASE: tl.constexpr, TOKENS: tl.constexpr,
                   RKL: tl.constexpr, FKL: tl.constexpr, JSD: tl.constexpr, CLIP: tl.constexpr,
                   THR_S: tl.constexpr, THR_T: tl.constexpr, THR_U: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    one = tl.arange(0, 1)
    cfg = tl.arange(0, C_PAD)
    cmask = cfg < C
    cn = cfg * N + n
    lse_s = tl.load(lse_s_ptr + n + one)
    lse_t = tl.load(lse_t_ptr + cn, mask=cmask, other=0.0)
    tok = tl.load(tok_ptr + n + one) if TOKENS else tl.full([1], -1, tl.int64)
    piv = tl.load(piv_ptr + cn, mask=cmask, other=0.0) if RKL else tl.zeros([C_PAD], tl.float32)
    pivj = tl.load(pivj_ptr + cn, mask=cmask, other=0.0) if JSD else tl.zeros([C_PAD], tl.float32)
    taus = tl.load(taus_ptr + n + one) if THR_S else tl.zeros([1], tl.float32)
    taut = tl.load(taut_ptr + cn, mask=cmask, other=0.0) if THR_T else tl.zeros([C_PAD], tl.float32)
    tauus = tl.load(tauus_ptr + n + one) if THR_U else tl.zeros([1], tl.float32)
    tauut = tl.load(tauut_ptr + cn, mask=cmask, other=0.0) if THR_U else tl.zeros([C_PAD], tl.float32)
    zr = tl.zeros([1], tl.float32)
    zc = tl.zeros([C_PAD], tl.float32)
    spp_x, sp_x, ent_s, ths = zr, zr, zr, zr
    kl_pq, kl_qp, ent_t, tv, spq, sqq, js = zc, zc, zc, zc, zc, zc, zc
    r1, r2, fdd, klm, jr1, jr2, notu, cdd, cpd, tht, thu = zc, zc, zc, zc, zc, zc, zc, zc, zc, zc, zc
    for v0 in range(0, V, BLOCK):
        cols = v0 + offs
        vm = cols < V
        z = tl.load(s_ptr + n * s_rs + cols[None, :], mask=vm[None, :], other=float("-inf")).to(tl.float32)
        logp = tl.maximum(z - lse_s[:, None], LOG_FLOOR)
        p = tl.exp(logp)
        pp = p * p
        t_off = cfg.to(tl.int64)[:, None] * t_cs + n * t_rs + cols[None, :]
        zt = tl.load(t_ptr + t_off, mask=cmask[:, None] & vm[None, :], other=float("-inf")).to(tl.float32)
        logq = tl.maximum(zt - lse_t[:, None], LOG_FLOOR)
        q = tl.exp(logq)
        l = logp - logq
        if BASE:
            ent_s += -tl.sum(p * logp, axis=1)
            if TOKENS:
                px = tl.where(cols[None, :] == tok[:, None], 0.0, p)
            else:
                px = p
            spp_x += tl.sum(px * px, axis=1)
            sp_x += tl.sum(px, axis=1)
            kl_pq += tl.sum(p * l, axis=1)
            kl_qp += -tl.sum(q * l, axis=1)
            ent_t += -tl.sum(q * logq, axis=1)
            tv += tl.sum(tl.abs(q - p), axis=1)
            spq += tl.sum(p * q, axis=1)
            sqq += tl.sum(q * q, axis=1)
            logm = _logaddexp(logp, logq) - 0.6931471805599453
            js += 0.5 * tl.sum(p * (logp - logm) + q * (logq - logm), axis=1)
        if RKL:
            r = l - piv[:, None]
            ppr = pp * r
            r1 += tl.sum(ppr, axis=1)
            r2 += tl.sum(ppr * r, axis=1)
        if FKL:
            diff = q - p
            fdd += tl.sum(diff * diff, axis=1)
        if JSD:
            lm = logp - _logaddexp(logq + log_beta, logp + log_1mbeta)
            klm += tl.sum(p * lm, axis=1)
            rj = lm - pivj[:, None]
            pprj = pp * rj
            jr1 += tl.sum(pprj, axis=1)
            jr2 += tl.sum(pprj * rj, axis=1)
        if CLIP:
            term = tl.where(q > 0, q * (logq - logp), 0.0)
            kept = term < clip
            notu += tl.sum(tl.where(kept, 0.0, q), axis=1)
            e = tl.where(kept, q, 0.0) - p
            cdd += tl.sum(e * e, axis=1)
            cpd += tl.sum(p * e, axis=1)
        if THR_S:
            ths += tl.sum(tl.where(z <= taus[:, None], pp, 0.0), axis=1)
        if THR_T:
            tht += tl.sum(tl.where(zt <= taut[:, None], pp, 0.0), axis=1)
        if THR_U:
            keep = (z <= tauus[:, None]) & (zt <= tauut[:, None])
            thu += tl.sum(tl.where(keep, pp, 0.0), axis=1)
    tl.store(row_ptr + 0 * N + n + one, spp_x)
    tl.store(row_ptr + 1 * N + n + one, sp_x)
    tl.store(row_ptr + 2 * N + n + one, ent_s)
    tl.store(row_ptr + 3 * N + n + one, ths)
    tl.store(cfg_ptr + 0 * C * N + cn, kl_pq, mask=cmask)
    tl.store(cfg_ptr + 1 * C * N + cn, kl_qp, mask=cmask)
    tl.store(cfg_ptr + 2 * C * N + cn, ent_t, mask=cmask)
    tl.store(cfg_ptr + 3 * C * N + cn, tv, mask=cmask)
    tl.store(cfg_ptr + 4 * C * N + cn, spq, mask=cmask)
    tl.store(cfg_ptr + 5 * C * N + cn, sqq, mask=cmask)
    tl.store(cfg_ptr + 6 * C * N + cn, js, mask=cmask)
    tl.store(cfg_ptr + 7 * C * N + cn, r1, mask=cmask)
    tl.store(cfg_ptr + 8 * C * N + cn, r2, mask=cmask)
    tl.store(cfg_ptr + 9 * C * N + cn, fdd, mask=cmask)
    tl.store(cfg_ptr + 10 * C * N + cn, klm, mask=cmask)
    tl.store(cfg_ptr + 11 * C * N + cn, jr1, mask=cmask)
    tl.store(cfg_ptr + 12 * C * N + cn, jr2, mask=cmask)
    tl.store(cfg_ptr + 13 * C * N + cn, notu, mask=cmask)
    tl.store(cfg_ptr + 14 * C * N + cn, cdd, mask=cmask)
    tl.store(cfg_ptr + 15 * C * N + cn, cpd, mask=cmask)
    tl.store(cfg_ptr + 16 * C * N + cn, tht, mask=cmask)
    tl.store(cfg_ptr + 17 * C * N + cn, thu, mask=cmask)


def _teacher_groups(teachers):
    """Split the teacher rows into groups sharing one base pointer and a constant config stride."""
    groups, i = [], 0
    while i < len(teachers):
        t0 = _rowmajor(teachers[i])
        j = i + 1
        stride = None
        while j < len(teachers):
            t = teachers[j]
            if t.dtype != t0.dtype or t.stride() != t0.stride() or t.device != t0.device:
                break
            gap = t.data_ptr() - teachers[j - 1].data_ptr()
            if gap % t0.element_size() or (stride is not None and gap // t0.element_size() != stride):
                break
            stride = gap // t0.element_size()
            j += 1
        groups.append((i, j, t0, stride if stride is not None else 0))
        i = j
    return groups


def _rowmajor(x):
    return x if x.stride(-1) == 1 else x.contiguous()


def _cpad(c: int) -> int:
    return triton.next_power_of_2(max(c, 1))


def lse_pass(student, teachers, block: int = BLOCK):
    """(lse_student [N], lse_teacher [C, N], student argmax [N])."""
    student = _rowmajor(student)
    n, v = student.shape
    dev = student.device
    lse_s = torch.empty(n, dtype=torch.float32, device=dev)
    arg = torch.empty(n, dtype=torch.int32, device=dev)
    lse_t = torch.empty(len(teachers), n, dtype=torch.float32, device=dev)
    for i, j, t0, t_cs in _teacher_groups(teachers):
        _lse_kernel[(n,)](student, t0, student.stride(0), t_cs, t0.stride(0), v, j - i, n,
                          lse_s, lse_t[i:j], arg, BLOCK=block, C_PAD=_cpad(j - i))
    return lse_s, lse_t, arg.long()


def stream_pass(student, teachers, lse_s, lse_t, plan: StreamPlan, aux: dict, tokens=None, block: int = BLOCK):
    """The plan's vocabulary sums (see plan.py) as float64 tensors."""
    student = _rowmajor(student)
    n, v = student.shape
    n_cfg = len(teachers)
    dev = student.device
    f32 = torch.float32
    dummy = torch.zeros(1, dtype=f32, device=dev)
    tok = tokens.long().contiguous() if tokens is not None else torch.zeros(1, dtype=torch.long, device=dev)
    lse_t = lse_t.float().contiguous()
    out: dict = {}
    jobs = max(1, len(plan.jsd), len(plan.clips), len(plan.thr_s), len(plan.thr_t), len(plan.thr_u))
    for job in range(jobs):
        beta = plan.jsd[job] if job < len(plan.jsd) else None
        clip = plan.clips[job] if job < len(plan.clips) else None
        ks = plan.thr_s[job] if job < len(plan.thr_s) else None
        kt = plan.thr_t[job] if job < len(plan.thr_t) else None
        ku = plan.thr_u[job] if job < len(plan.thr_u) else None
        base = job == 0
        row = torch.zeros(len(ROW_CH), n, dtype=f32, device=dev)
        cfg = torch.zeros(len(CFG_CH), n_cfg, n, dtype=f32, device=dev)

        def arr(key, sl=None):
            if key not in aux:
                return dummy
            x = aux[key].float()
            return (x if sl is None else x[sl]).contiguous()

        for i, j, t0, t_cs in _teacher_groups(teachers):
            sl = slice(i, j)
            cfg_g = torch.zeros(len(CFG_CH), j - i, n, dtype=f32, device=dev)
            _stream_kernel[(n,)](
                student, t0, student.stride(0), t_cs, t0.stride(0), v, j - i, n,
                lse_s.float().contiguous(), lse_t[sl].contiguous(), tok,
                arr("piv_rkl", sl), arr(("piv_jsd", beta), sl), arr(("tau_s", ks)), arr(("tau_t", kt), sl),
                arr(("tau_s", ku)), arr(("tau_t", ku), sl), row, cfg_g,
                math.log(beta) if beta else 0.0, math.log(1 - beta) if beta else 0.0,
                clip if clip is not None else 0.0,
                BLOCK=block, C_PAD=_cpad(j - i), BASE=base, TOKENS=tokens is not None,
                RKL=base and plan.rkl, FKL=base and plan.fkl, JSD=beta is not None, CLIP=clip is not None,
                THR_S=ks is not None, THR_T=kt is not None, THR_U=ku is not None,
            )
            cfg[:, sl] = cfg_g
        cfg = cfg.double()
        if base:
            row = row.double()
            out.update({k: row[i] for i, k in enumerate(ROW_CH[:3])})
            for i, k in enumerate(CFG_CH[:7]):
                out[k] = cfg[i]
            if plan.rkl:
                out["r1"], out["r2"] = cfg[7], cfg[8]
            if plan.fkl:
                out["fkl_dd"] = cfg[9]
        if beta is not None:
            for i, k in zip((10, 11, 12), ("klm", "r1", "r2")):
                out[("jsd", beta, k)] = cfg[i]
        if clip is not None:
            for i, k in zip((13, 14, 15), ("notU", "dd", "pd")):
                out[("clip", clip, k)] = cfg[i]
        if ks is not None:
            out[("thr_s", ks)] = row[3].double()
        if kt is not None:
            out[("thr_t", kt)] = cfg[16]
        if ku is not None:
            out[("thr_u", ku)] = cfg[17]
    return out
