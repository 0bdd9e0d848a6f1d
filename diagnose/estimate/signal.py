"""Is there a distillation signal at all? The size of d against what rounding of the logits alone makes.

A cosine is scale-free: a direction made only of rounding noise (a teacher that is the student computed in
another precision, KL ~ 1e-3) gets a full-size cosine. So every node x configuration also carries the size
of its signal: |d| divided by the size of the same objective's direction toward a "rounding twin" of the
student, z + eta xi, with xi a fixed random sign vector and eta = u max_v |z_v| the rounding error of logits
computed with unit roundoff u (the coarser of the student's and the teacher's precision; logits of size
|z| are known to about u |z|). The twin's direction is computed twice (two sign vectors) and its rms taken.
Below SIGNAL_FLOOR times that size the row is "no signal": its cosine is undefined (reported as 0 and flagged,
like a degenerate row), it is left out of every mean and ranking, and counted separately.

Measured on the embedded model (SmolLM2-135M, float32 student): the same weights loaded in bfloat16 give
|d| / |d_twin| of median 0.8, at most 4.1 over 40 nodes and seven objectives; a system-prompt hint (KL ~
0.3) gives 4.6 at the least and 7-13 at the median. The floor sits between.
"""

from __future__ import annotations

import torch

SIGNAL_FLOOR = 5.0
TWINS = 2
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


def twins(student_logits: torch.Tensor, u: float, seed: int = 0, n: int = TWINS) -> list[torch.Tensor]:
    """n rounding twins of the student's logits [N, V]: z + u max|z| xi, xi = +-1 (seeded, deterministic)."""
    z = student_logits.float()
    finite = torch.where(torch.isfinite(z), z.abs(), torch.zeros_like(z))
    eta = u * finite.amax(-1, keepdim=True)
    gen = torch.Generator().manual_seed(int(seed))
    out = []
    for _ in range(n):
        xi = torch.randint(0, 2, z.shape, generator=gen).to(z.device, z.dtype) * 2 - 1
        out.append(torch.where(torch.isfinite(z), z + eta * xi, z))
    return out


def signal_ratio(d_sq: torch.Tensor, twin_d_sq: torch.Tensor) -> torch.Tensor:
    """|d| / rms |d_twin| per node (twin_d_sq: [T, N]); inf where the twins give exactly 0 and d does not."""
    d_sq = d_sq.double()
    ref = twin_d_sq.double().mean(0).sqrt()
    ratio = d_sq.clamp_min(0).sqrt() / torch.where(ref > 0, ref, 1.0)
    return torch.where(ref > 0, ratio, torch.where(d_sq > 0, float("inf"), 0.0))
