"""What the vocabulary stream must sum for a set of objectives, and the keys its results are stored under.

Both streaming back ends (chunked torch, Triton) take a `StreamPlan` and return a dict of float64 sums:
row keys -> [N], config keys -> [C, N]. Log-probs are floored at LOG_FLOOR exactly as the objectives do.

Row keys: "spp_x" = sum_{v != a} p^2 and "sp_x" = sum_{v != a} p (a = sampled token; all v when there are
no tokens), "ent_s" = -sum p log p, "spp_xtop" = sum_{v != top} p^2 (only with clips).
Config keys, with l = log p - log q and r = l - l_top (top = the student's argmax "arg"; aux gives l_top as
"piv", 0 where a floor is hit there):
"kl_r" = sum p r (KL(p||q) = l_top + kl_r), "kl_qp" = -sum q (l_top + r), "ent_t", "tv"
= sum_{v != top} |q - p|, "spq" = sum p q, "sqq" = sum q^2, "js"; "r1"/"r2" = sum p^2 r, sum p^2 r^2 (rkl);
"fkl_dd" = sum_{v != top} (q - p)^2; ("jsd", beta, "klm"|"r1"|"r2") likewise with r replaced by
log(p/m) - log(p/m)_top; ("clip", c, X) for X in notU = sum q over clipped entries, and over v != top only:
dd = sum (qU - p)^2, pd = sum p (qU - p), sU = sum qU, quu = sum qU^2, pqu = sum p qU.
Top-k thresholds tau (the k-th largest logit): (fam, k, "lt"|"eq"|"cnt") = sum p^2 strictly below tau, sum
p^2 on tau, number of entries on tau; fam "thr_s" (row: student logits), "thr_t" (teacher logits),
"thr_u" (both: lt = below on both sides, eq/cnt = at most tau on both sides but not below on both).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from diagnose.objectives.base import LOG_FLOOR  # noqa: F401  (re-exported for the back ends)

ROW_KEYS = ("spp_x", "sp_x", "ent_s")
PROXY_KEYS = ("kl_r", "kl_qp", "ent_t", "tv", "spq", "sqq", "js")


@dataclass
class StreamPlan:
    """Which families of vocabulary sums one stream over the logits must produce."""

    tokens: bool = False
    proxies: bool = True
    rkl: bool = False
    fkl: bool = False
    jsd: list = field(default_factory=list)  # betas strictly inside (0, 1)
    clips: list = field(default_factory=list)
    thr_s: list = field(default_factory=list)  # k of student top-k sets
    thr_t: list = field(default_factory=list)  # k of teacher top-k sets
    thr_u: list = field(default_factory=list)  # k of union top-k sets

    def add(self, attr: str, value) -> None:
        lst = getattr(self, attr)
        if value not in lst:
            lst.append(value)
