"""No signal reads as no signal: a teacher that differs from the student by rounding alone is never ranked."""

from __future__ import annotations

import pytest
import torch

import diagnose
from diagnose import kernels, objectives
from diagnose.estimate.signal import SIGNAL_FLOOR, roundoff, signal_ratio, twins
from diagnose.report import read_metadata, read_table

OBJECTIVES = ["rkl", "fkl", "jsd:beta=0.5", "fkl_clipped"]
TINY = dict(
    questions=2,
    rollouts=2,
    max_new_tokens=24,
    budget=24,
    top_k=2,
    continuations=2,
    objectives=OBJECTIVES,
    seed=0,
)


def _ratios(z, zt, u, objs, tokens):
    cand = torch.stack([torch.cat([tokens[i : i + 1], z[i].topk(2).indices]) for i in range(len(z))])
    tw = twins(z, u, seed=1)
    st = kernels.node_stats(
        z, [zt, *tw], cand, torch.zeros(cand.shape, dtype=torch.float64), objs, tokens=tokens, backend="chunked"
    )
    return torch.stack([signal_ratio(st.d_sq[0, o], st.d_sq[1:, o]) for o in range(len(objs))])


def test_rounding_sized_differences_have_no_signal_and_real_ones_do():
    """A teacher = the student rounded to bfloat16 sits below the floor for every objective; one that raises
    the student's three runner-up tokens by 1 nat (a hint-like change) sits above it at nearly every node.
    (Half a nat on three tokens is within a few times bfloat16 rounding of 5,000 logits: no signal there.)"""
    gen = torch.Generator().manual_seed(0)
    z = 4 * torch.randn(32, 5000, generator=gen)
    tokens = torch.randint(0, 5000, (32,), generator=gen)
    objs = [objectives.parse(o) for o in OBJECTIVES + ["rkl_sampled", "k3_loss", "rkl_topk"]]
    rounded = z.to(torch.bfloat16).float()
    assert bool((_ratios(z, rounded, roundoff("bfloat16"), objs, tokens) <= SIGNAL_FLOOR).all())
    shifted = z.clone()
    idx = z.topk(4).indices[:, 1:]
    shifted.scatter_add_(1, idx, torch.full(idx.shape, 1.0))
    real = _ratios(z, shifted, roundoff("bfloat16"), objs[:4], tokens)
    assert float((real > SIGNAL_FLOOR).double().mean()) >= 0.95
    # In float32 the same change is far above the floor everywhere.
    assert bool((_ratios(z, shifted, roundoff("float32"), objs[:4], tokens) > 1e3).all())
    assert roundoff(torch.float32) == 2.0**-24 and roundoff("torch.bfloat16") == 2.0**-8


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["auto", "bfloat16"])
def test_the_student_as_its_own_external_teacher_has_no_signal(tmp_path, embedded_model_path, dtype):
    """model=embedded (the student's own weights through the external-teacher path, in the student's dtype or
    in bfloat16) has no signal at any node for any objective and is never ranked; a self:system hint keeps
    its signal."""
    out = tmp_path / "run"
    res = diagnose.run(
        out=str(out),
        progress=False,
        teachers=["model=embedded", "self:system=The answer is a single number; think step by step."],
        teacher_dtype=dtype,
        **TINY,
    )
    al = read_table(out, "alignment")
    own = al[al["teacher"] == "model=embedded"]
    hint = al[al["teacher"].str.startswith("self:system")]
    assert len(own) and bool(own["no_signal"].all()) and bool(own["degenerate"].all())
    assert float(hint["no_signal"].mean()) <= 0.2
    meta = read_metadata(out, "alignment")
    assert meta["teacher_dtype"] == dtype and meta["student_dtype"] == "float32"
    summ = res.summary[res.summary["metric"] == "cos_full"].set_index("objective")
    rows = summ[summ["teacher"] == "model=embedded"]
    assert rows["mean"].isna().all() and (rows["n_no_signal"] == len(own) // len(OBJECTIVES)).all()
    rec = res.recommendation
    assert rec["overall"] is None or not rec["overall"]["config"].startswith("model=embedded")
    assert any(x.startswith("model=embedded|") and "no signal at" in x for x in rec["no_signal"])
    assert "no signal" in (out / "report.html").read_text(encoding="utf-8").lower()
