"""Triton back end: one program per node streams the student row and all C teacher rows in vocabulary blocks.

Same contract as chunked.py (`lse_pass`, `stream_pass`). Teacher rows are loaded as a [C_PAD, BLOCK] tile, so
the student row is read once per pass whatever C is. One launch handles one jsd beta, one clip and one top-k
threshold per side; further values of these parameters cost one more (partial) read each.
On CPU tensors it needs TRITON_INTERPRET=1 in the environment before triton is first imported.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .plan import LOG_FLOOR, StreamPlan

BLOCK = 1024
ROW_CH = ("spp_x", "sp_x", "ent_s", "spp_xtop", "ths_lt", "ths_eq", "ths_cnt")
CFG_CH = (
    "kl_r",
    "kl_qp",
    "ent_t",
    "tv",
    "spq",
    "sqq",
    "js",
    "r1",
    "r2",
    "fkl_dd",
    "klm",
    "jr1",
    "jr2",
    "notU",
    "cdd",
    "cpd",
    "sU",
    "quu",
    "pqu",
    "tht_lt",
    "tht_eq",
    "tht_cnt",
    "thu_lt",
    "thu_eq",
    "thu_cnt",
)


@triton.jit
def _expm1(x):
    """exp(x) - 1 accurate near 0 (Kahan's trick: the rounding of exp cancels in (u - 1) / log u)."""
    u = tl.exp(x)
    um1 = u - 1.0
    return tl.where(u == 1.0, x, tl.where(um1 == -1.0, -1.0, um1 * x / tl.log(u)))


@triton.jit
def _log1p(x):
    """log(1 + x) accurate near 0 (Kahan's trick)."""
    y = 1.0 + x
    return tl.where(y == 1.0, x, tl.log(y) * x / (y - 1.0))


@triton.jit
def _log_mix_ratio(l, beta, coef):
    """log(p / m), m = beta q + (1 - beta) p, from l = log p - log q; coef = (1 - beta) / beta."""
    safe = tl.maximum(l, -80.0)
    near = -_log1p(beta * _expm1(-safe))
    far = l - tl.log(beta) - _log1p(coef * tl.exp(tl.minimum(l, 0.0)))
    return tl.where(l > -80.0, near, far)


@triton.jit
def _lse_kernel(
    s_ptr,
    t_ptr,
    s_rs,
    t_cs,
    t_rs,
    V,
    C,
    N,
    m_s_ptr,
    ls_s_ptr,
    m_t_ptr,
    ls_t_ptr,
    arg_ptr,
    BLOCK: tl.constexpr,
    C_PAD: tl.constexpr,
):
    """Per row: max, the sum of exp(x - max) over all but the max entry, and the student's argmax."""
    n = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    one = tl.arange(0, 1)
    cfg = tl.arange(0, C_PAD)
    cmask = cfg < C
    m_s = tl.full([1], -1e30, tl.float32)
    r_s = tl.zeros([1], tl.float32)
    arg = tl.zeros([1], tl.int32)
    m_t = tl.full([C_PAD], -1e30, tl.float32)
    r_t = tl.zeros([C_PAD], tl.float32)
    for v0 in range(0, V, BLOCK):
        cols = v0 + offs
        vm = cols < V
        z = tl.load(s_ptr + n * s_rs + cols[None, :], mask=vm[None, :], other=float("-inf")).to(tl.float32)
        bm = tl.max(z, axis=1)
        ba = tl.argmax(z, axis=1).to(tl.int32) + v0
        new = bm > m_s
        arg = tl.where(new, ba, arg)
        mn = tl.maximum(m_s, bm)
        e = tl.exp(z - mn[:, None])
        e = tl.where(new[:, None] & (cols[None, :] == ba[:, None]), 0.0, e)
        r_s = tl.where(new, tl.exp(m_s - mn) * (r_s + 1.0), r_s) + tl.sum(e, axis=1)
        m_s = mn
        t_off = cfg.to(tl.int64)[:, None] * t_cs + n * t_rs + cols[None, :]
        zt = tl.load(t_ptr + t_off, mask=cmask[:, None] & vm[None, :], other=float("-inf")).to(tl.float32)
        bmt = tl.max(zt, axis=1)
        bat = tl.argmax(zt, axis=1).to(tl.int32) + v0
        newt = bmt > m_t
        mnt = tl.maximum(m_t, bmt)
        et = tl.exp(zt - mnt[:, None])
        et = tl.where(newt[:, None] & (cols[None, :] == bat[:, None]), 0.0, et)
        r_t = tl.where(newt, tl.exp(m_t - mnt) * (r_t + 1.0), r_t) + tl.sum(et, axis=1)
        m_t = mnt
    tl.store(m_s_ptr + n + one, m_s)
    tl.store(ls_s_ptr + n + one, r_s)
    tl.store(arg_ptr + n + one, arg)
    tl.store(m_t_ptr + cfg * N + n, m_t, mask=cmask)
    tl.store(ls_t_ptr + cfg * N + n, r_t, mask=cmask)


@triton.jit
def _stream_kernel(
    s_ptr,
    t_ptr,
    s_rs,
    t_cs,
    t_rs,
    V,
    C,
    N,
    m_s_ptr,
    ls_s_ptr,
    m_t_ptr,
    ls_t_ptr,
    tok_ptr,
    arg_ptr,
    za_ptr,
    zta_ptr,
    piv_ptr,
    pok_ptr,
    taus_ptr,
    taut_ptr,
    tauus_ptr,
    tauut_ptr,
    row_ptr,
    cfg_ptr,
    beta,
    coef,
    clip,
    BLOCK: tl.constexpr,
    C_PAD: tl.constexpr,
    BASE: tl.constexpr,
    TOKENS: tl.constexpr,
    RKL: tl.constexpr,
    FKL: tl.constexpr,
    JSD: tl.constexpr,
    CLIP: tl.constexpr,
    THR_S: tl.constexpr,
    THR_T: tl.constexpr,
    THR_U: tl.constexpr,
):
    n = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    one = tl.arange(0, 1)
    cfg = tl.arange(0, C_PAD)
    cmask = cfg < C
    cn = cfg * N + n
    m_s = tl.load(m_s_ptr + n + one)
    ls_s = tl.load(ls_s_ptr + n + one)
    m_t = tl.load(m_t_ptr + cn, mask=cmask, other=0.0)
    ls_t = tl.load(ls_t_ptr + cn, mask=cmask, other=0.0)
    arg = tl.load(arg_ptr + n + one)
    z_a = tl.load(za_ptr + n + one)
    zt_a = tl.load(zta_ptr + cn, mask=cmask, other=0.0)
    piv = tl.load(piv_ptr + cn, mask=cmask, other=0.0)
    pok = tl.load(pok_ptr + cn, mask=cmask, other=0) != 0
    tok = tl.load(tok_ptr + n + one) if TOKENS else tl.full([1], -1, tl.int64)
    taus = tl.load(taus_ptr + n + one) if THR_S else tl.zeros([1], tl.float32)
    taut = tl.load(taut_ptr + cn, mask=cmask, other=0.0) if THR_T else tl.zeros([C_PAD], tl.float32)
    tauus = tl.load(tauus_ptr + n + one) if THR_U else tl.zeros([1], tl.float32)
    tauut = tl.load(tauut_ptr + cn, mask=cmask, other=0.0) if THR_U else tl.zeros([C_PAD], tl.float32)
    fpiv = _log_mix_ratio(piv, beta, coef) if JSD else tl.zeros([C_PAD], tl.float32)
    zr = tl.zeros([1], tl.float32)
    zc = tl.zeros([C_PAD], tl.float32)
    spp_x, sp_x, ent_s, spp_xt, ths_lt, ths_eq, ths_cnt = zr, zr, zr, zr, zr, zr, zr
    kl_r, kl_qp, ent_t, tv, spq, sqq, js = zc, zc, zc, zc, zc, zc, zc
    r1, r2, fdd, klm, jr1, jr2 = zc, zc, zc, zc, zc, zc
    notu, cdd, cpd, su, quu, pqu = zc, zc, zc, zc, zc, zc
    tht_lt, tht_eq, tht_cnt, thu_lt, thu_eq, thu_cnt = zc, zc, zc, zc, zc, zc
    for v0 in range(0, V, BLOCK):
        cols = v0 + offs
        vm = cols < V
        z = tl.load(s_ptr + n * s_rs + cols[None, :], mask=vm[None, :], other=float("-inf")).to(tl.float32)
        logp = tl.maximum((z - m_s[:, None]) - ls_s[:, None], LOG_FLOOR)
        p = tl.exp(logp)
        pp = p * p
        not_top = tl.where(cols[None, :] == arg[:, None], 0.0, 1.0)
        t_off = cfg.to(tl.int64)[:, None] * t_cs + n * t_rs + cols[None, :]
        zt = tl.load(t_ptr + t_off, mask=cmask[:, None] & vm[None, :], other=float("-inf")).to(tl.float32)
        logq = tl.maximum((zt - m_t[:, None]) - ls_t[:, None], LOG_FLOOR)
        q = tl.exp(logq)
        ok = (logp > LOG_FLOOR) & (logq > LOG_FLOOR) & pok[:, None]
        r = tl.where(ok, (z - z_a[:, None]) - (zt - zt_a[:, None]), (logp - logq) - piv[:, None])
        lv = piv[:, None] + r
        if BASE:
            ent_s += -tl.sum(p * logp, axis=1)
            if TOKENS:
                px = tl.where(cols[None, :] == tok[:, None], 0.0, p)
            else:
                px = p
            spp_x += tl.sum(px * px, axis=1)
            sp_x += tl.sum(px, axis=1)
            kl_r += tl.sum(p * r, axis=1)
            kl_qp += -tl.sum(q * lv, axis=1)
            ent_t += -tl.sum(q * logq, axis=1)
            tv += tl.sum(tl.abs(q - p) * not_top, axis=1)
            spq += tl.sum(p * q, axis=1)
            sqq += tl.sum(q * q, axis=1)
            lm_half = _log_mix_ratio(lv, 0.5, 1.0)  # log(p/m); log(q/m) = log(p/m) - l
            js += 0.5 * tl.sum(p * lm_half + q * (lm_half - lv), axis=1)
        if RKL:
            ppr = pp * r
            r1 += tl.sum(ppr, axis=1)
            r2 += tl.sum(ppr * r, axis=1)
        if FKL:
            diff = (q - p) * not_top
            fdd += tl.sum(diff * diff, axis=1)
        if JSD:
            rm = _log_mix_ratio(lv, beta, coef) - fpiv[:, None]
            pprm = pp * rm
            klm += tl.sum(p * rm, axis=1)
            jr1 += tl.sum(pprm, axis=1)
            jr2 += tl.sum(pprm * rm, axis=1)
        if CLIP:
            spp_xt += tl.sum(pp * not_top, axis=1)
            term = tl.where(q > 0, q * (logq - logp), 0.0)
            qu = tl.where(term < clip, q, 0.0)
            notu += tl.sum(q - qu, axis=1)
            e = (qu - p) * not_top
            qx = qu * not_top
            cdd += tl.sum(e * e, axis=1)
            cpd += tl.sum(p * e, axis=1)
            su += tl.sum(qx, axis=1)
            quu += tl.sum(qx * qx, axis=1)
            pqu += tl.sum(p * qx, axis=1)
        if THR_S:
            ths_lt += tl.sum(tl.where(z < taus[:, None], pp, 0.0), axis=1)
            tie_s = z == taus[:, None]
            ths_eq += tl.sum(tl.where(tie_s, pp, 0.0), axis=1)
            ths_cnt += tl.sum(tie_s.to(tl.float32), axis=1)
        if THR_T:
            tht_lt += tl.sum(tl.where(zt < taut[:, None], pp, 0.0), axis=1)
            tie_t = zt == taut[:, None]
            tht_eq += tl.sum(tl.where(tie_t, pp, 0.0), axis=1)
            tht_cnt += tl.sum(tie_t.to(tl.float32), axis=1)
        if THR_U:
            lt = (z < tauus[:, None]) & (zt < tauut[:, None])
            le = (z <= tauus[:, None]) & (zt <= tauut[:, None])
            tie_u = le & (lt == 0)
            thu_lt += tl.sum(tl.where(lt, pp, 0.0), axis=1)
            thu_eq += tl.sum(tl.where(tie_u, pp, 0.0), axis=1)
            thu_cnt += tl.sum(tie_u.to(tl.float32), axis=1)
    tl.store(row_ptr + 0 * N + n + one, spp_x)
    tl.store(row_ptr + 1 * N + n + one, sp_x)
    tl.store(row_ptr + 2 * N + n + one, ent_s)
    tl.store(row_ptr + 3 * N + n + one, spp_xt)
    tl.store(row_ptr + 4 * N + n + one, ths_lt)
    tl.store(row_ptr + 5 * N + n + one, ths_eq)
    tl.store(row_ptr + 6 * N + n + one, ths_cnt)
    tl.store(cfg_ptr + 0 * C * N + cn, kl_r, mask=cmask)
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
    tl.store(cfg_ptr + 16 * C * N + cn, su, mask=cmask)
    tl.store(cfg_ptr + 17 * C * N + cn, quu, mask=cmask)
    tl.store(cfg_ptr + 18 * C * N + cn, pqu, mask=cmask)
    tl.store(cfg_ptr + 19 * C * N + cn, tht_lt, mask=cmask)
    tl.store(cfg_ptr + 20 * C * N + cn, tht_eq, mask=cmask)
    tl.store(cfg_ptr + 21 * C * N + cn, tht_cnt, mask=cmask)
    tl.store(cfg_ptr + 22 * C * N + cn, thu_lt, mask=cmask)
    tl.store(cfg_ptr + 23 * C * N + cn, thu_eq, mask=cmask)
    tl.store(cfg_ptr + 24 * C * N + cn, thu_cnt, mask=cmask)


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


def lse_pass(student, teachers, block: int | None = None):
    """(max_s [N], logsum_s [N], max_t [C, N], logsum_t [C, N], argmax_s [N]) as chunked.lse_pass."""
    student = _rowmajor(student)
    block = block or BLOCK
    n, v = student.shape
    dev = student.device
    f32 = torch.float32
    m_s, ls_s = torch.empty(n, dtype=f32, device=dev), torch.empty(n, dtype=f32, device=dev)
    arg = torch.empty(n, dtype=torch.int32, device=dev)
    n_cfg = len(teachers)
    m_t, ls_t = torch.empty(n_cfg, n, dtype=f32, device=dev), torch.empty(n_cfg, n, dtype=f32, device=dev)
    for i, j, t0, t_cs in _teacher_groups(teachers):
        mt_g, lt_g = (
            torch.empty(j - i, n, dtype=f32, device=dev),
            torch.empty(j - i, n, dtype=f32, device=dev),
        )
        _lse_kernel[(n,)](
            student,
            t0,
            student.stride(0),
            t_cs,
            t0.stride(0),
            v,
            j - i,
            n,
            m_s,
            ls_s,
            mt_g,
            lt_g,
            arg,
            BLOCK=block,
            C_PAD=_cpad(j - i),
        )
        m_t[i:j], ls_t[i:j] = mt_g, lt_g
    return m_s, torch.log1p(ls_s.double()), m_t, torch.log1p(ls_t.double()), arg.long()


def stream_pass(student, teachers, norm, plan: StreamPlan, aux: dict, tokens=None, block: int | None = None):
    """The plan's vocabulary sums (see plan.py) as float64 tensors."""
    student = _rowmajor(student)
    block = block or BLOCK
    n, v = student.shape
    n_cfg = len(teachers)
    dev = student.device
    f32 = torch.float32
    m_s, ls_s, m_t, ls_t = (x.float().contiguous() for x in norm)
    dummy = torch.zeros(1, dtype=f32, device=dev)
    tok = tokens.long().contiguous() if tokens is not None else torch.zeros(1, dtype=torch.long, device=dev)
    arg = aux["arg"].long().contiguous()
    z_a = aux["z_a"].float().contiguous()
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
                student,
                t0,
                student.stride(0),
                t_cs,
                t0.stride(0),
                v,
                j - i,
                n,
                m_s,
                ls_s,
                m_t[sl].contiguous(),
                ls_t[sl].contiguous(),
                tok,
                arg,
                z_a,
                arr("zt_a", sl),
                arr("piv", sl),
                aux["piv_ok"][sl].to(torch.int32).contiguous(),
                arr(("tau_s", ks)),
                arr(("tau_t", kt), sl),
                arr(("tau_s", ku)),
                arr(("tau_t", ku), sl),
                row,
                cfg_g,
                beta if beta else 0.5,
                (1 - beta) / beta if beta else 1.0,
                clip if clip is not None else 0.0,
                BLOCK=block,
                C_PAD=_cpad(j - i),
                BASE=base,
                TOKENS=tokens is not None,
                RKL=base and plan.rkl,
                FKL=base and plan.fkl,
                JSD=beta is not None,
                CLIP=clip is not None,
                THR_S=ks is not None,
                THR_T=kt is not None,
                THR_U=ku is not None,
            )
            cfg[:, sl] = cfg_g
        cfg, row = cfg.double(), row.double()
        ch = {name: cfg[i] for i, name in enumerate(CFG_CH)}
        rw = {name: row[i] for i, name in enumerate(ROW_CH)}
        if base:
            out.update({k: rw[k] for k in ("spp_x", "sp_x", "ent_s")})
            out.update({k: ch[k] for k in ("kl_r", "kl_qp", "ent_t", "tv", "spq", "sqq", "js")})
            if plan.rkl:
                out["r1"], out["r2"] = ch["r1"], ch["r2"]
            if plan.fkl:
                out["fkl_dd"] = ch["fkl_dd"]
        if beta is not None:
            for src, k in (("klm", "klm"), ("jr1", "r1"), ("jr2", "r2")):
                out[("jsd", beta, k)] = ch[src]
        if clip is not None:
            out["spp_xtop"] = rw["spp_xtop"]
            for src, k in (
                ("notU", "notU"),
                ("cdd", "dd"),
                ("cpd", "pd"),
                ("sU", "sU"),
                ("quu", "quu"),
                ("pqu", "pqu"),
            ):
                out[("clip", clip, k)] = ch[src]
        for k, fam, pre, src in (
            (ks, "thr_s", "ths", rw),
            (kt, "thr_t", "tht", ch),
            (ku, "thr_u", "thu", ch),
        ):
            if k is not None:
                for x in ("lt", "eq", "cnt"):
                    out[(fam, k, x)] = src[f"{pre}_{x}"]
    return out
