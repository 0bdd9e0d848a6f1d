"""Is there a distillation signal at all? The size of d against what rounding of the logits alone makes.

A cosine is scale-free: a direction made only of rounding noise (a teacher that is the student computed in
another precision, KL ~ 1e-3) gets a full-size cosine. So every node x configuration also carries the size
of its signal: |d| divided by the expected size of the same objective's direction toward a "rounding twin" of
the student, z + eta xi, with xi a random sign vector and eta = u max_v |z_v| the rounding error of logits
computed with unit roundoff u (the coarser of the student's and the teacher's precision; logits of size |z|
are known to about u |z|). The expectation over xi is taken exactly over the sign patterns of the node's three
most likely tokens (4 twins, `twins`) and by averaging over the rest of the vocabulary: where two tokens hold
most of the mass, |d_twin| depends on whether they get the same sign, and two random draws left that to luck.
Below SIGNAL_FLOOR times that size the row is "no signal": its cosine is undefined (reported as 0 and
flagged, like a degenerate row), it is left out of every mean and ranking, and counted separately.

The floor, measured with benchmarks/signal_floor.py on the embedded model (SmolLM2-135M, float32 student, 48
rollouts at temperature 0.7, every position: 1,163 nodes, 77 of them two-peaked, ten objectives): the same
weights in bfloat16 give ratios with 99th percentile 2.5, 99.9th percentile 5.06 and maximum 9.3; at the
two-peaked nodes at most 2.4. SIGNAL_FLOOR = 5 is about twice the 99th percentile: 0.13% of the null rows
pass it, none at a two-peaked node (with the two random twins used before, 3.8% passed, with ratios up to
3e4 at two-peaked nodes). A system-prompt hint scored as a run scores it (float32) passes at 97% of rows.
"""

from __future__ import annotations

import torch

SIGNAL_FLOOR = 5.0
TOP_SIGNS = 3  # sign patterns of the 3 most likely tokens are enumerated: 2**(3-1) = 4 twins per node
UNIT_ROUNDOFF = {
    torch.float64: 2.0**-53,
    torch.float32: 2.0**-24,
    torch.float16: 2.0**-11,
    torch.bfloat16: 2.0**-8,
}


def roundoff(dtype) -> float:
    """Unit roundoff of a torch dtype or its name ('bfloat16', 'torch.float32', ...); float32 if unknown."""
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype.replace("torch.", ""), torch.float32)
    return UNIT_ROUNDOFF.get(dtype, UNIT_ROUNDOFF[torch.float32])


def twins(student_logits: torch.Tensor, u: float, seed: int = 0, top: int = TOP_SIGNS) -> list[torch.Tensor]:
    """Rounding twins of the student's logits [N, V]: z + u max|z| xi, xi = +-1, one twin per sign pattern of the
    row's `top` most likely tokens (the first fixed at +1: a flip of every sign leaves |d| unchanged to first
    order), random seeded signs elsewhere. The mean of |d_twin|^2 over the twins is then the expectation over
    the top tokens' signs, where a two- or three-peaked node's twin size is decided, and a law-of-large-numbers
    average over the tail: it no longer depends on the luck of two draws (which gave a two-peaked node a
    vanishing twin, and rounding a pass, a quarter of the time)."""
    z = student_logits.float()
    finite = torch.isfinite(z)
    eta = u * torch.where(finite, z.abs(), torch.zeros_like(z)).amax(-1, keepdim=True)
    gen = torch.Generator().manual_seed(int(seed))
    m = max(1, min(int(top), z.shape[-1]))
    peaks = z.topk(m, dim=-1).indices  # [N, m]
    out = []
    for pattern in range(2 ** (m - 1)):
        signs = torch.tensor([1.0] + [-1.0 if (pattern >> j) & 1 else 1.0 for j in range(m - 1)], dtype=z.dtype)
        xi = torch.randint(0, 2, z.shape, generator=gen).to(z.dtype) * 2 - 1
        xi = xi.to(z.device).scatter(-1, peaks, signs.to(z.device).expand(peaks.shape).contiguous())
        out.append(torch.where(finite, z + eta * xi, z))
    return out


def signal_ratio(d_sq: torch.Tensor, twin_d_sq: torch.Tensor) -> torch.Tensor:
    """|d| / rms |d_twin| per node (twin_d_sq: [T, N], one row per sign pattern of `twins`: their mean is the
    expected |d_twin|^2); inf where the twins give exactly 0 and d does not."""
    d_sq = d_sq.double()
    ref = twin_d_sq.double().mean(0).sqrt()
    ratio = d_sq.clamp_min(0).sqrt() / torch.where(ref > 0, ref, 1.0)
    return torch.where(ref > 0, ratio, torch.where(d_sq > 0, float("inf"), 0.0))
