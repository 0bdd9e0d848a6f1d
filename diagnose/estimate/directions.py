"""Each teacher x objective's update direction d at the estimated nodes: d on the candidates and |d|^2 from the
fused kernels, whether d vanishes, and how far it stands above what rounding of the logits alone makes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from .. import kernels
from ..errors import DiagnoseError
from ..objectives.base import NEEDS_NONE, log_probs
from . import signal as signal_mod
from .q import NodeEstimate, pack


@dataclass
class Direction:
    """One teacher x objective at the estimated nodes: d on the candidates, |d|^2, teacher probs on C."""

    teacher: str
    objective: str
    d: list[torch.Tensor] = field(default_factory=list)  # per node: [K_i]
    d_sq_full: list[float] = field(default_factory=list)
    d_zero: list[bool] = field(default_factory=list)  # d vanishes relative to its scale (kernels.D_REL_TOL)
    signal: list[float] = field(default_factory=list)  # |d| / |d toward the student's rounding twins|
    teacher_p: list[torch.Tensor] | None = None

    @property
    def no_signal(self) -> list[bool]:
        """d = 0, or d no larger than rounding of the logits alone makes it (signal.SIGNAL_FLOOR)."""
        return [z or r <= signal_mod.SIGNAL_FLOOR for z, r in zip(self.d_zero, self.signal, strict=True)]


def add_directions(
    directions: dict[tuple[str, str], Direction],
    z: torch.Tensor,
    rows: Sequence[tuple[str, torch.Tensor]],
    cand: torch.Tensor,
    ests: Sequence[NodeEstimate],
    objectives: Sequence,
    tokens: torch.Tensor,
    advantages: torch.Tensor,
    roundoffs: dict[str, float],
    twin_seed: int,
) -> None:
    """Append one chunk of nodes to every direction: z [N, V] student logits, `rows` (teacher name, logits
    [N, V]), candidate ids [N, K]; objectives without a teacher (the GRPO reference arm) are keyed by "-"."""
    # d at the candidates and |d|^2 come from the fused kernels: float64 sums pivoted at the student's
    # mode, accurate on peaked rows where float32 d over the vocabulary is not, and no [N, V] direction
    # is ever materialised. g* is not known yet (zeros): only d, |d|^2 and the scales are used here. The
    # chunked back end (any device) is the float64 one; the Triton kernel still streams in float32.
    zeros = torch.zeros(cand.shape, dtype=torch.float64)
    with_teacher = [o for o in objectives if o.needs != NEEDS_NONE]
    without = [o for o in objectives if o.needs == NEEDS_NONE]
    # Rounding twins of the student (signal.py): per distinct precision, the directions toward them size
    # what rounding alone makes, so a teacher that differs from the student only by rounding reads as
    # "no signal" instead of getting a full-size cosine.
    twin_sets = {u: signal_mod.twins(z, u, seed=twin_seed) for u in sorted(set(roundoffs.values()))}
    twin_index, extra = {}, []
    for u, ts in twin_sets.items():
        twin_index[u] = list(range(len(rows) + len(extra), len(rows) + len(extra) + len(ts)))
        extra.extend(ts)
    calls = []
    if with_teacher and rows:
        calls.append(([name for name, _ in rows], with_teacher, [t for _, t in rows] + extra, {}))
    if without:
        calls.append((["-"], without, [z], {"advantages": advantages}))
    for tnames, objs, tlogits, kw in calls:
        st = kernels.node_stats(z, tlogits, cand, zeros, objs, tokens=tokens, backend="chunked", **kw)
        scale = st.p_sq.double()[None, :] + st.q_sq.double()  # [C, N]
        for c, tname in enumerate(tnames):
            tp = log_probs(tlogits[c].double()).exp() if tname != "-" else None
            for o, obj in enumerate(objs):
                key = (tname, obj.label)
                dirn = directions.setdefault(key, Direction(teacher=tname, objective=obj.label))
                if tp is not None and dirn.teacher_p is None:
                    dirn.teacher_p = []
                d_sq = st.d_sq[c, o].double()
                zero = d_sq <= (kernels.D_REL_TOL**2) * scale[c]
                if tname == "-":  # no teacher (the GRPO reference arm): nothing to compare with
                    ratio = torch.full_like(d_sq, float("inf"))
                else:
                    ratio = signal_mod.signal_ratio(d_sq, st.d_sq[twin_index[roundoffs[tname]], o])
                for i, e in enumerate(ests):
                    dirn.d.append(st.d_cand[c, o, i, : len(e.cand_ids)].double())
                    dirn.d_sq_full.append(float(d_sq[i]))
                    dirn.d_zero.append(bool(zero[i]))
                    dirn.signal.append(float(ratio[i]))
                    if tp is not None:
                        dirn.teacher_p.append(tp[i, torch.tensor(e.cand_ids, dtype=torch.long)])


def direction_tensors(directions: dict[tuple[str, str], Direction], estimates: Sequence[NodeEstimate]):
    """Per direction: (key, d [N, K] padded, d_sq_full [N], teacher_p [N, K] or None)."""
    _, p, _, _, _ = pack(estimates)
    out = []
    for key, dirn in directions.items():
        d = torch.zeros_like(p)
        tp = torch.zeros_like(p) if dirn.teacher_p is not None else None
        for i, row in enumerate(dirn.d):
            d[i, : len(row)] = row
            if tp is not None:
                tp[i, : len(row)] = dirn.teacher_p[i]
        out.append((key, d, torch.tensor(dirn.d_sq_full, dtype=torch.float64), tp))
    return out


def teacher_rows(
    teach: dict[str, torch.Tensor], z: torch.Tensor, temperature: float = 1.0
) -> list[tuple[str, torch.Tensor]]:
    """Check what each teacher returned at the N nodes of z [N, V] (logits [N, V], or top-k ids [N, k]) and
    return the (name, logits / temperature) pairs: the teachers that have a direction, at the scoring
    temperature (`at_temperature`), as the student's z already is."""
    for name, payload in teach.items():
        if payload.shape[0] != z.shape[0] or (payload.dtype.is_floating_point and payload.shape != z.shape):
            raise DiagnoseError(f"teacher {name!r} returned shape {tuple(payload.shape)} for {z.shape[0]} nodes")
    floats = [(name, payload) for name, payload in teach.items() if payload.dtype.is_floating_point]
    return [(name, at_temperature(payload, temperature)) for name, payload in floats]


def at_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Teacher logits as every objective sees them: divided by the scoring temperature (the run's sampling
    temperature unless `teacher_temperature` says otherwise). The one place teacher logits are tempered: the
    estimator (teacher_rows) and the validate arms call it."""
    t = float(temperature)
    return logits if t == 1.0 else logits / t
