"""No signal reads as no signal: a teacher that differs from the student by rounding alone is never ranked."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

import diagnose
from diagnose import kernels, objectives
from diagnose.estimate.signal import SIGNAL_FLOOR, roundoff, signal_ratio, twins
from diagnose.tables import read_metadata, read_table

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


def test_twin_size_is_the_expectation_over_signs_at_two_peaked_nodes():
    """At nodes where two tokens hold most of the mass, the twins' mean |d|^2 is the expectation over random
    signs (measured with 400 draws), within a factor of 2 at every node: the top tokens' sign patterns are
    enumerated, not drawn. Two random twins gave both peaks the same sign a quarter of the time, shrinking
    |d_twin| toward 0 and giving rounding a pass."""
    gen = torch.Generator().manual_seed(3)
    n, v = 48, 2000
    z = torch.randn(n, v, generator=gen)
    z[:, 0] = 12.0
    z[:, 1] = 12.0 - torch.rand(n, generator=gen)  # two peaks, the second within 1 nat
    tokens = torch.zeros(n, dtype=torch.long)
    u = roundoff("bfloat16")
    objs = [objectives.parse(o) for o in ("rkl", "fkl", "jsd:beta=0.5")]
    cand = torch.stack([torch.tensor([0, 1, 2])] * n)
    zeros = torch.zeros(cand.shape, dtype=torch.float64)

    def mean_sq(teachers):
        st = kernels.node_stats(z, teachers, cand, zeros, objs, tokens=tokens, backend="chunked")
        return st.d_sq.double().mean(0)  # [O, N]

    eta = u * z.abs().amax(-1, keepdim=True)
    draws = [z + eta * (torch.randint(0, 2, z.shape, generator=gen).float() * 2 - 1) for _ in range(400)]
    expected = torch.stack([mean_sq(draws[i : i + 50]) for i in range(0, 400, 50)]).mean(0)
    got = mean_sq(twins(z, u, seed=1))
    ratio = got / expected
    assert float(ratio.min()) >= 0.5 and float(ratio.max()) <= 2.0


@pytest.mark.slow
@pytest.mark.parametrize(
    "dtype,temperature", [("auto", 1.0), ("bfloat16", 1.0), ("auto", 0.7), ("auto", 1.3)]
)
def test_the_student_as_its_own_external_teacher_has_no_signal(tmp_path, embedded_model_path, dtype, temperature):
    """model=embedded (the student's own weights through the external-teacher path, in the student's dtype or
    in bfloat16, at sampling temperatures 1, 0.7 and 1.3) has no signal at any node for any objective and is
    never ranked; a self:system hint keeps its signal. (At T != 1 this failed while the teacher was scored
    untempered: 30 of 48 rows live at T = 0.7, ranked first at T = 1.3.)"""
    out = tmp_path / "run"
    res = diagnose.run(
        out=str(out),
        progress=False,
        teachers=["model=embedded", "self:system=The answer is a single number; think step by step."],
        teacher_dtype=dtype,
        temperature=temperature,
        **TINY,
    )
    al = read_table(out, "alignment")
    own = al[al["teacher"] == "model=embedded"]
    hint = al[al["teacher"].str.startswith("self:system")]
    assert len(own) and bool(own["no_signal"].all()) and bool(own["degenerate"].all())
    assert float(hint["no_signal"].mean()) <= 0.2
    meta = read_metadata(out, "alignment")
    assert meta["teacher_dtype"] == dtype and meta["student_dtype"] == "float32"
    assert meta["temperature"] == temperature and meta["teacher_temperature"] == temperature
    summ = res.summary[res.summary["metric"] == "cos_full"].set_index("objective")
    rows = summ[summ["teacher"] == "model=embedded"]
    assert rows["mean"].isna().all() and (rows["n_no_signal"] == len(own) // len(OBJECTIVES)).all()
    rec = res.recommendation
    assert rec["overall"] is None or not rec["overall"]["config"].startswith("model=embedded")
    assert any(x.startswith("model=embedded|") and "no signal at" in x for x in rec["no_signal"])
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "no signal" in page.lower()
    assert f"temperature {temperature} (teacher scored at {temperature})" in page


def _signal_floor_benchmark():
    """benchmarks/signal_floor.py (a benchmark, not part of the package): its `measure` is the real estimator
    path (Estimator.add_nodes with the run's TeacherAtNodes) at every position of real rollouts."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "signal_floor.py"
    spec = importlib.util.spec_from_file_location("benchmarks_signal_floor", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_bfloat16_copy_is_silent_over_hundreds_of_real_nodes(hf_engine, embedded_model_path):
    """The float32 student against its own bfloat16 copy at every position of 24 rollouts (>= 300 nodes, the
    demo's temperature): at most 1% of rows pass the floor, no two-peaked node passes it (where the old pair
    of random twins gave rounding a pass about a quarter of the time), and a system-prompt hint scored as a
    run scores it (the float32 student with the hint) keeps its signal at most rows."""
    from diagnose import engines

    bench = _signal_floor_benchmark()
    bf16 = engines.load("hf", embedded_model_path, dtype="bfloat16")
    objs, null, hint, _, old, peaked = bench.measure(hf_engine, bf16, questions=6, rollouts=4, max_new_tokens=24,
                                                  temperature=0.7, seed=0)
    assert null.shape[1] >= 300 and peaked.sum() >= 3
    live = null > SIGNAL_FLOOR
    assert float(live.mean()) <= 0.01
    assert not bool(live[:, peaked].any())
    assert float((hint > SIGNAL_FLOOR).mean()) >= 0.9
    assert float((old > SIGNAL_FLOOR).mean()) > float(live.mean())  # the old rule let rounding through more often
