"""`node_stats`: alignment sums per node, config and objective without any [N, V] intermediate.

Two streams over the logits (log-normalisers, then the vocabulary sums of plan.py) and O(N K) work on the
gathered candidates / top-k sets. |d|^2 of objectives whose direction holds a row scalar found in the same
pass (KL for rkl, KL(p||m) for jsd) is expanded around a pivot (l at the student's argmax), which keeps the
expansion free of catastrophic cancellation when l is nearly constant on p's support.
"""

from __future__ import annotations

import torch

from diagnose.alignment import safe_cosine

from . import chunked
from .plan import LOG_FLOOR, StreamPlan
from .reference import node_stats_reference
from .types import NodeStats, finish_cosines, teacher_list

SAMPLED = ("rkl_sampled", "rkl_baselined", "k1_loss", "k3_loss", "grpo_ref")
TOPK = ("rkl_topk", "rkl_topk_unnorm", "fkl_topk")
FUSED = ("rkl", "fkl", "jsd", "fkl_clipped") + SAMPLED + TOPK
FALLBACK_ROWS = 64
TOPK_ROWS = 32


def _floor(x):
    return x.clamp_min(LOG_FLOOR)


def _q_minus_p(logp, logq):
    """q - p from log-probs, as p expm1(log q - log p) where the two are close (no cancellation when both
    are near 1, as at the argmax of a peaked row)."""
    diff = logq - logp
    near = diff.abs() < 0.5
    return torch.where(near, logp.exp() * torch.expm1(torch.where(near, diff, 0.0)), logq.exp() - logp.exp())


def _log_softmax_on(x, valid):
    """Floored float64 log-softmax of x over the `valid` entries of the last axis, as (x - max) - log1p(sum of
    exp(x - max) over the other entries): log p of an entry holding nearly all the mass keeps its digits.
    NaN where every valid entry is -inf, as torch.log_softmax (the objectives) gives."""
    x = x.masked_fill(~valid, float("-inf"))
    m, am = x.max(-1, keepdim=True)
    e = torch.exp(x - m).scatter(-1, am, 0.0)
    return _floor((x - m) - torch.log1p(e.sum(-1, keepdim=True)))


def _dedup(ids: torch.Tensor, *others: torch.Tensor, with_order: bool = False):
    """Sort ids along the last axis and mark padding (-1) and all but the last of repeated ids invalid (as
    `ideal_gradient`'s scatter does); `others` follow the sort. with_order: the sort's permutation last."""
    ids, order = ids.long().sort(dim=-1, stable=True)
    valid = ids >= 0
    valid[..., :-1] &= ids[..., :-1] != ids[..., 1:]  # of repeated ids the last occurrence counts
    return (ids, valid, *(o.gather(-1, order) for o in others), *((order,) if with_order else ()))


def _topk(logits: torch.Tensor, k: int):
    """(values, ids) of each row's k largest logits, in row chunks (matches `logits.float().topk(k)`)."""
    vals, ids = [], []
    for r0 in range(0, logits.shape[0], TOPK_ROWS):
        t = logits[r0 : r0 + TOPK_ROWS].float().topk(k, dim=-1)
        vals.append(t.values)
        ids.append(t.indices)
    return torch.cat(vals), torch.cat(ids)


def resolve_backend(backend: str, student: torch.Tensor) -> str:
    """auto -> triton on CUDA when triton imports, chunked otherwise."""
    if backend not in ("auto", "chunked", "torch", "triton", "reference"):
        raise ValueError(f"unknown backend {backend!r} (auto, chunked, triton, reference)")
    if backend == "torch":
        return "chunked"
    if backend != "auto":
        return backend
    if student.is_cuda:
        try:
            import triton  # noqa: F401
        except ImportError:
            return "chunked"
        return "triton"
    return "chunked"


def node_stats(
    student_logits: torch.Tensor,
    teacher_logits,
    cand_ids: torch.Tensor,
    g_cand: torch.Tensor,
    objectives,
    tokens: torch.Tensor | None = None,
    advantages: torch.Tensor | None = None,
    backend: str = "auto",
) -> NodeStats:
    """Fused alignment statistics (see the package docstring). Objectives the kernels do not know are
    computed by the reference on row chunks of FALLBACK_ROWS nodes."""
    teachers = teacher_list(teacher_logits)
    objectives = list(objectives)
    n, vocab = student_logits.shape
    for zt in teachers:
        if tuple(zt.shape) != (n, vocab):
            raise ValueError(f"teacher logits {tuple(zt.shape)} do not match student logits {(n, vocab)}")
    if cand_ids.shape != g_cand.shape or cand_ids.shape[0] != n:
        raise ValueError(
            f"candidates {tuple(cand_ids.shape)} and g* {tuple(g_cand.shape)} must be [N={n}, K]"
        )
    if any(o.sampled for o in objectives) and tokens is None:
        raise ValueError("sampled-token objectives need tokens=[N]")
    if any(o.name == "grpo_ref" for o in objectives) and advantages is None:
        raise ValueError("grpo_ref needs advantages=[N]")
    backend = resolve_backend(backend, student_logits)
    if backend == "reference":
        return node_stats_reference(
            student_logits, teacher_logits, cand_ids, g_cand, objectives, tokens, advantages
        )
    if backend == "triton":
        from . import triton_backend as be
    else:
        be = chunked
    dev = student_logits.device
    tokens = None if tokens is None else tokens.to(dev).long()
    n_cfg = len(teachers)

    plan = StreamPlan(tokens=tokens is not None)
    s_k, t_k = set(), set()
    for o in objectives:
        name, prm = o.name, o.params
        if name in ("rkl", "rkl_sampled", "rkl_baselined") or (name == "jsd" and float(prm["beta"]) == 1.0):
            plan.rkl |= name == "rkl" or name == "jsd"
        elif name in ("fkl", "k3_loss") or (name == "jsd" and float(prm["beta"]) == 0.0):
            plan.fkl |= name != "k3_loss"
        elif name == "jsd":
            if not 0.0 < float(prm["beta"]) < 1.0:
                raise ValueError(f"jsd: beta must lie in [0, 1], got {prm['beta']}")
            plan.add("jsd", float(prm["beta"]))
        elif name == "fkl_clipped":
            plan.add("clips", float(prm["clip"]))
        elif name in TOPK:
            k = min(int(prm["k"]), vocab)
            if k < 1:
                raise ValueError(f"k must be >= 1, got {prm['k']}")
            support = "teacher" if name == "fkl_topk" else prm["support"]
            if support not in ("student", "teacher", "union"):
                raise ValueError(f"support must be student, teacher or union, got {support!r}")
            if support in ("student", "union"):
                s_k.add(k)
            if support in ("teacher", "union"):
                t_k.add(k)
            if name != "rkl_topk":
                plan.add({"student": "thr_s", "teacher": "thr_t", "union": "thr_u"}[support], k)

    m_s, ls_s, m_t, ls_t, arg = be.lse_pass(student_logits, teachers)
    norm = (m_s, ls_s, m_t, ls_t)
    # Pivot: the log-ratio l_top at the student's argmax; the stream sums r = l - l_top (see plan.py).
    z_a = student_logits.gather(1, arg[:, None]).float()[:, 0]
    zt_a = torch.stack([zt.gather(1, arg[:, None]).float()[:, 0] for zt in teachers])
    lp_a, lq_a = (
        _floor((z_a.double() - m_s.double()) - ls_s.double()),
        _floor((zt_a.double() - m_t.double()) - ls_t.double()),
    )
    piv_ok = (lp_a > LOG_FLOOR) & (lq_a > LOG_FLOOR)
    piv64 = torch.where(piv_ok, lp_a - lq_a, 0.0)  # no pivot where a floor is hit at the argmax
    aux: dict = {"z_a": z_a, "zt_a": zt_a, "piv": piv64, "piv_ok": piv_ok, "arg": arg}
    topk_s = {k: _topk(student_logits, k) for k in sorted(s_k)}  # per k: ties are broken as torch.topk(k)
    topk_t = {k: [_topk(zt, k) for zt in teachers] for k in sorted(t_k)}
    for k, (vals, _) in topk_s.items():
        aux[("tau_s", k)] = vals[:, k - 1].contiguous()
    for k, per_cfg in topk_t.items():
        aux[("tau_t", k)] = torch.stack([vals[:, k - 1] for vals, _ in per_cfg]).contiguous()
    sums = be.stream_pass(student_logits, teachers, norm, plan, aux, tokens)

    ctx = _Context(student_logits, teachers, norm, cand_ids, g_cand, tokens, sums, aux, topk_s, topk_t, piv64)
    dot = torch.zeros(n_cfg, len(objectives), n, dtype=torch.float64, device=dev)
    d_sq, d_sup = torch.zeros_like(dot), torch.zeros_like(dot)
    d_cand = torch.zeros(n_cfg, len(objectives), *cand_ids.shape, dtype=torch.float64, device=dev)
    fallback = []
    for i, o in enumerate(objectives):
        if o.name not in FUSED:
            fallback.append(i)
            continue
        d_sq[:, i], d_c = ctx.objective(o, advantages)
        d_c = d_c.expand(n_cfg, *cand_ids.shape)
        dot[:, i], d_sup[:, i] = ctx.candidate_terms(d_c)
        d_cand[:, i] = ctx.caller_order(d_c)
    if fallback:
        _fill_fallback(
            dot,
            d_sq,
            d_sup,
            d_cand,
            fallback,
            objectives,
            student_logits,
            teachers,
            cand_ids,
            g_cand,
            tokens,
            advantages,
        )
    spp, sqq = ctx.s_pp, sums["sqq"]
    cos_f, cos_s, degenerate = finish_cosines(dot, ctx.g_sq, d_sq, d_sup, spp, sqq)
    return NodeStats(
        labels=[o.label for o in objectives],
        lse_student=(m_s + ls_s).float(),
        lse_teacher=(m_t + ls_t).float(),
        g_sq=ctx.g_sq,
        dot=dot,
        d_sq=d_sq,
        d_sq_support=d_sup,
        d_cand=d_cand,
        p_sq=spp.clone(),
        q_sq=sqq.clone(),
        cos_full=cos_f,
        cos_support=cos_s,
        degenerate=degenerate,
        kl_pq=(piv64 + sums["kl_r"]).float(),
        kl_qp=sums["kl_qp"].float(),
        js=sums["js"].float(),
        tv=(0.5 * (sums["tv"] + ctx.diff_top.abs())).float(),
        cos_pq=safe_cosine(sums["spq"].float(), spp.float().expand(n_cfg, n), sqq.float())[0],
        entropy_student=sums["ent_s"].float(),
        entropy_teacher=sums["ent_t"].float(),
    )


def _fill_fallback(
    dot, d_sq, d_sup, d_cand, idx, objectives, student, teachers, cand_ids, g_cand, tokens, advantages
):
    """Objectives unknown to the kernels: the reference on row chunks (memory O(FALLBACK_ROWS * V))."""
    objs = [objectives[i] for i in idx]
    for r0 in range(0, student.shape[0], FALLBACK_ROWS):
        rs = slice(r0, r0 + FALLBACK_ROWS)
        ref = node_stats_reference(
            student[rs],
            [zt[rs] for zt in teachers],
            cand_ids[rs],
            g_cand[rs],
            objs,
            None if tokens is None else tokens[rs],
            None if advantages is None else advantages[rs],
        )
        for j, i in enumerate(idx):
            dot[:, i, rs], d_sq[:, i, rs], d_sup[:, i, rs], d_cand[:, i, rs] = (
                ref.dot[:, j],
                ref.d_sq[:, j],
                ref.d_sq_support[:, j],
                ref.d_cand[:, j],
            )


class _Context:
    """Gathered values at the candidates, the sampled token and the top-k sets, plus the stream sums."""

    def __init__(self, student, teachers, norm, cand_ids, g_cand, tokens, sums, aux, topk_s, topk_t, piv):
        self.student, self.teachers, self.sums, self.aux = student, teachers, sums, aux
        self.piv = piv  # float64 pivot l_top [C, N]
        self.m_s, self.ls_s, self.m_t, self.ls_t = (x.double() for x in norm)
        self.arg = aux["arg"]
        self.zt_a = aux["zt_a"].double()
        self.lp_top = _floor((aux["z_a"].double() - self.m_s) - self.ls_s)
        lq_top = _floor((self.zt_a - self.m_t) - self.ls_t)
        self.diff_top = _q_minus_p(self.lp_top, lq_top)  # q - p at the student's argmax, in float64
        self.topk_s, self.topk_t = topk_s, topk_t
        ids, valid, g, order = _dedup(
            cand_ids.to(student.device), g_cand.to(student.device).double(), with_order=True
        )
        self.ids, self.valid, self.order = ids, valid, order
        self.g = torch.where(valid, g, 0.0).double()
        self.g_sq = (self.g * self.g).sum(-1)
        self.logp_c, self.logq_c = self._logprobs(ids.clamp_min(0))  # [N, K], [C, N, K]
        self.p_c, self.q_c = self.logp_c.exp(), self.logq_c.exp()
        self.tokens = tokens
        spp_x = sums["spp_x"]
        if tokens is not None:
            self.logp_a, self.logq_a = (x[..., 0] for x in self._logprobs(tokens[:, None]))
            self.p_a = self.logp_a.exp()
            self.s_pp = spp_x + self.p_a * self.p_a
            self.e_sq = sums["sp_x"] ** 2 + spp_x  # |e_a - p|^2
            self.is_a = ids == tokens[:, None]  # every slot holding a, repeats included
            # e_a - p at the candidates; 1 - p_a = -expm1(log p_a) keeps its digits when p_a ~ 1
            self.e_minus_p = torch.where(self.is_a, -torch.expm1(self.logp_c), -self.p_c)
        else:
            self.s_pp = spp_x

    def _logprobs(self, ids):
        """float64 floored log p and log q at ids [N, K] (log q: [C, N, K]); values are float32-exact."""
        z = self.student.gather(1, ids).float().double()  # the logits count as rounded to float32
        zt = torch.stack([t.gather(1, ids) for t in self.teachers]).float().double()
        logp = _floor((z - self.m_s[:, None]) - self.ls_s[:, None])
        logq = _floor((zt - self.m_t[..., None]) - self.ls_t[..., None])
        return logp, logq

    def caller_order(self, d_cand):
        """d at the sorted candidates [C, N, K] -> the caller's slot order, 0 at padding slots."""
        d_cand = torch.where(self.ids >= 0, d_cand, 0.0)
        return torch.empty_like(d_cand).scatter_(-1, self.order.expand_as(d_cand), d_cand)

    def candidate_terms(self, d_cand):
        """(<g*, d>, |d on the candidates|^2) from d at the candidates [C, N, K]."""
        d_cand = torch.where(self.valid, d_cand, 0.0)
        return (self.g * d_cand).sum(-1), (d_cand * d_cand).sum(-1)

    # --- objectives: each returns (|d|^2 [C, N], d at the candidates [C, N, K]) ---------------------------

    def objective(self, o, advantages):
        name, prm = o.name, o.params
        if name == "jsd":
            beta = float(prm["beta"])
            if beta == 0.0:
                name = "fkl"
            elif beta == 1.0:
                name = "rkl"
            else:
                return self._jsd(beta)
        if name in SAMPLED:
            return self._sampled(name, advantages)
        if name in TOPK:
            return self._topk(
                name,
                min(int(prm["k"]), self.student.shape[1]),
                "teacher" if name == "fkl_topk" else prm["support"],
            )
        return getattr(self, "_" + name)(*([float(prm["clip"])] if name == "fkl_clipped" else []))

    def _pivoted(self, delta, r1, r2):
        """sum p^2 (r - delta)^2 from the streamed sum p^2 r, sum p^2 r^2 and sum p^2."""
        return r2 - 2 * delta * r1 + delta * delta * self.s_pp

    def _rkl(self):
        s = self.sums
        delta = s["kl_r"]  # KL - l_top
        r_c = (self.logp_c - self.logq_c) - self.piv[..., None]
        return self._pivoted(delta, s["r1"], s["r2"]), -self.p_c * (r_c - delta[..., None])

    def _fkl(self):
        return self.sums["fkl_dd"] + self.diff_top**2, _q_minus_p(self.logp_c, self.logq_c)

    def _jsd(self, beta):
        s = self.sums
        delta = s[("jsd", beta, "klm")]  # KL(p||m) - log(p/m)_top
        d_sq = self._pivoted(delta, s[("jsd", beta, "r1")], s[("jsd", beta, "r2")])
        rm = (
            chunked.log_mix_ratio(self.logp_c - self.logq_c, beta)
            - chunked.log_mix_ratio(self.piv, beta)[..., None]
        )
        return (1 - beta) ** 2 * d_sq, -(1 - beta) * self.p_c * (rm - delta[..., None])

    def _fkl_clipped(self, clip):
        """d = qU - s p, s = sum qU. The argmax term is exact; the rest of |d|^2 is expanded around s = 1
        (little clipped) or s = 0 (most clipped), with sums over v != argmax from the stream."""
        s = self.sums
        key = ("clip", clip)
        q = self.q_c
        kept = torch.where(q > 0, q * (self.logq_c - self.logp_c), 0.0) < clip
        q_u = torch.where(kept, q, 0.0)
        qu_minus_p = torch.where(kept, _q_minus_p(self.logp_c, self.logq_c), -self.p_c)
        lq_top = _floor((self.zt_a - self.m_t) - self.ls_t)
        q_top = lq_top.exp()
        kept_top = torch.where(q_top > 0, q_top * (lq_top - self.lp_top), 0.0) < clip
        qu_top = torch.where(kept_top, q_top, 0.0)
        su_x = s[key + ("sU",)]
        s_u = su_x + qu_top
        sigma = -s[key + ("notU",)]  # s - 1 without cancellation
        p_top = self.lp_top.exp()
        mostly_kept = s_u >= 0.5
        d_top = torch.where(
            mostly_kept,
            torch.where(kept_top, self.diff_top, -p_top) - p_top * sigma,
            qu_top * (-torch.expm1(self.lp_top)) - p_top * su_x,
        )  # qU_a (1 - p_a) - p_a sum'
        pp_x = s["spp_xtop"]
        near_one = s[key + ("dd",)] - 2 * sigma * s[key + ("pd",)] + sigma * sigma * pp_x
        near_zero = s[key + ("quu",)] - 2 * s_u * s[key + ("pqu",)] + s_u * s_u * pp_x
        d_sq = d_top * d_top + torch.where(mostly_kept, near_one, near_zero).clamp_min(0.0)
        d_c = torch.where(
            mostly_kept[..., None],
            qu_minus_p - self.p_c * sigma[..., None],
            q_u - self.p_c * s_u[..., None],
        )
        is_top = self.ids == self.arg[:, None]
        return d_sq, torch.where(is_top, d_top[..., None], d_c)

    def _sampled(self, name, advantages):
        l_a = self.logp_a - self.logq_a  # [C, N]
        if name == "rkl_sampled":
            adv = -l_a
        elif name == "rkl_baselined":
            adv = -((l_a - self.piv) - self.sums["kl_r"])
        elif name == "k1_loss":
            adv = -torch.ones_like(l_a)
        elif name == "k3_loss":
            adv = torch.expm1(self.logq_a - self.logp_a)
        else:
            adv = torch.as_tensor(advantages, device=l_a.device).double().expand_as(l_a)
        d_sq = adv * adv * self.e_sq
        return d_sq, adv[..., None] * self.e_minus_p

    def _topk(self, name, k, support):
        n_cfg = len(self.teachers)
        if support == "student":
            s_ids = self.topk_s[k][1].expand(n_cfg, -1, -1)
        elif support == "teacher":
            s_ids = torch.stack([ids for _, ids in self.topk_t[k]])
        else:
            s_ids = torch.cat(
                [self.topk_s[k][1].expand(n_cfg, -1, -1), torch.stack([ids for _, ids in self.topk_t[k]])], -1
            )
        s_ids, s_valid = _dedup(s_ids)
        zs = torch.stack([self.student.gather(1, s_ids[c]) for c in range(n_cfg)]).float().double()
        zts = torch.stack([t.gather(1, s_ids[c]) for c, t in enumerate(self.teachers)]).float().double()
        match = (self.ids[None, :, :, None] == s_ids[:, :, None, :]) & s_valid[:, :, None, :]  # [C, N, K, kS]
        in_s = match.any(-1)

        def on_cand(d_s):  # d on S -> its value at each candidate in S (0 elsewhere)
            return (match.double() * d_s[:, :, None, :]).sum(-1)

        if name == "rkl_topk":  # pivoted at the student's argmax on S, as rkl
            logp, logq = _log_softmax_on(zs, s_valid), _log_softmax_on(zts, s_valid)
            p = torch.where(s_valid, logp.exp(), 0.0)
            l = logp - logq
            r = torch.where(s_valid, l - l.gather(-1, logp.argmax(-1, keepdim=True)), 0.0)
            d_s = -p * (r - (p * r).sum(-1, keepdim=True))
            return (d_s * d_s).sum(-1), on_cand(d_s)
        logp = _floor((zs - self.m_s[:, None]) - self.ls_s[:, None])
        p = torch.where(s_valid, logp.exp(), 0.0)
        # sum over v not in S of p^2 = streamed sum strictly below the threshold(s) + ties outside S
        if support == "student":
            tau = self.aux[("tau_s", k)][:, None]
            tie, fam = zs == tau, ("thr_s", k)
        elif support == "teacher":
            tau = self.aux[("tau_t", k)][..., None]
            tie, fam = zts == tau, ("thr_t", k)
        else:
            tau_s, tau_t = self.aux[("tau_s", k)][:, None], self.aux[("tau_t", k)][..., None]
            tie = ((zs <= tau_s) & (zts <= tau_t)) & ~((zs < tau_s) & (zts < tau_t))
            fam = ("thr_u", k)
        tie = tie & s_valid
        lt, eq, cnt = (self.sums[fam + (x,)] for x in ("lt", "eq", "cnt"))
        tied_in_s = tie.sum(-1).double()
        outside = torch.where(cnt > tied_in_s, eq - torch.where(tie, p * p, 0.0).sum(-1), 0.0)
        off_pp = lt + outside.clamp_min(0.0)
        if name == "fkl_topk":
            d_s = torch.where(s_valid, _q_minus_p(logp, _log_softmax_on(zts, s_valid)), 0.0)
            d_cand = torch.where(in_s, on_cand(d_s), -self.p_c)
            return (d_s * d_s).sum(-1) + off_pp, d_cand
        # rkl_topk_unnorm with full-vocabulary p and q: d = -p (l + 1 - inner) on S, p inner off S, with
        # inner = sum_S p (l + 1). Where S holds the student's argmax, around L = l there:
        # l + 1 - inner = (l - L) - sum_S p (l - L) + (L + 1)(1 - p(S)), 1 - p(S) = (1 - p_top) - p(S - top).
        logq = _floor((zts - self.m_t[..., None]) - self.ls_t[..., None])
        top_in = (s_ids == self.arg[:, None]) & s_valid
        has_top = top_in.any(-1, keepdim=True)
        piv = torch.where(has_top, self.piv[..., None], 0.0)
        r = torch.where(s_valid, (logp - logq) - piv, 0.0)
        p_s = p.sum(-1, keepdim=True)
        out_mass = torch.where(
            has_top, -torch.expm1(self.lp_top)[:, None] - torch.where(top_in, 0.0, p).sum(-1, keepdim=True), 1.0 - p_s
        ).clamp_min(0.0)  # 1 - p(S)
        p_s = torch.where(has_top, 1.0 - out_mass, p_s)
        s_pr = (p * r).sum(-1, keepdim=True)
        inner = s_pr + (piv + 1.0) * p_s
        d_s = torch.where(s_valid, -p * ((r - s_pr) + (piv + 1.0) * out_mass), 0.0)
        d_cand = torch.where(in_s, on_cand(d_s), self.p_c * inner)
        return (d_s * d_s).sum(-1) + inner[..., 0] ** 2 * off_pp, d_cand
