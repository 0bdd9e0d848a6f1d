"""What the vocabulary stream must sum for a set of objectives, and the keys its results are stored under.

Both streaming back ends (chunked torch, Triton) take a `StreamPlan` and return a dict of float64 sums:
row keys -> [N], config keys -> [C, N]. Log-probs are floored at LOG_FLOOR exactly as the objectives do.

Row keys: "spp_x" = sum_{v != a} p^2 and "sp_x" = sum_{v != a} p (a = sampled token; all v when there are
no tokens), "ent_s" = -sum p log p, ("thr_s", k) = sum_{z <= tau_s(k)} p^2.
Config keys: "kl_pq", "kl_qp", "ent_t", "tv", "spq" = sum p q, "sqq" = sum q^2, "js"; "r1"/"r2" = sum p^2 r,
sum p^2 r^2 with r = l - pivot (rkl); "fkl_dd" = sum (q - p)^2; ("jsd", beta, "klm"|"r1"|"r2") likewise with
l replaced by log(p/m); ("clip", c, "notU"|"dd"|"pd") = sum q over clipped entries, sum (qU - p)^2,
sum p (qU - p); ("thr_t", k) = sum_{zT <= tau_t(k)} p^2; ("thr_u", k) = sum_{z <= tau_s(k), zT <= tau_t(k)} p^2.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from diagnose.objectives.base import LOG_FLOOR  # noqa: F401  (re-exported for the back ends)

ROW_KEYS = ("spp_x", "sp_x", "ent_s")
PROXY_KEYS = ("kl_pq", "kl_qp", "ent_t", "tv", "spq", "sqq", "js")


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
