"""Fused alignment kernels (diagnose.kernels) against the dense reference and a float64 oracle."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import kernel_cases as kc
import pytest
import torch
from diagnose.kernels import chunked

from diagnose import kernels as K
from diagnose import objectives as O
from diagnose.objectives.base import Objective
from diagnose.objectives.divergences import rkl_from_logprobs

HERE = Path(__file__).parent


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks much smaller than the inputs, with ragged edges, so every merge path runs."""
    monkeypatch.setattr(chunked, "ROWS", 3)
    monkeypatch.setattr(chunked, "COLS", 1100)


def _check(args, objs, backend="chunked"):
    exact = kc.oracle(*args[:4], objs, *args[4:])
    ref32 = K.node_stats_reference(*args[:4], objs, *args[4:])
    got = K.node_stats(*args[:4], objs, *args[4:], backend=backend)
    bad = kc.compare(exact, ref32, got, kc.student_s_pp(args[0]))
    assert not bad, "\n".join(bad)
    return exact, got


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("kind", ["random", "peaked", "neginf", "equal"])
def test_chunked_matches_reference(kind, dtype, small_blocks):
    exact, got = _check(kc.make_case(kind, dtype=dtype), kc.objectives())
    assert got.dot.shape == (3, len(kc.SPECS), 8) and got.kl_pq.shape == (3, 8)


def test_chunked_matches_reference_at_full_vocabulary():
    args = kc.make_case("random", n=2, vocab=151_936, n_cfg=2, dtype=torch.bfloat16, seed=3)
    specs = (
        "rkl",
        "fkl",
        "jsd",
        "fkl_clipped",
        "rkl_baselined",
        "k3_loss",
        "rkl_topk_unnorm:k=5,support=union",
        "fkl_topk:k=5",
    )
    _check(args, [O.parse(s) for s in specs])


def test_agreement_is_meaningful():
    """The comparison does catch a wrong answer: a fused result for another teacher fails it."""
    z, zt, ids, g, tok, adv = kc.make_case("random")
    objs = [O.get("rkl"), O.get("fkl")]
    exact = kc.oracle(z, zt, ids, g, objs, tok, adv)
    ref32 = K.node_stats_reference(z, zt, ids, g, objs, tok, adv)
    wrong = K.node_stats(z, zt.flip(0), ids, g, objs, tok, adv, backend="chunked")
    assert kc.compare(exact, ref32, wrong, kc.student_s_pp(z))


def test_cosines_match_alignment_module():
    """cos_full / cos_support equal diagnose.alignment.cosines on dense g* and d."""
    from diagnose.alignment import cosines

    z, zt, ids, g, tok, adv = kc.make_case("random", n_cfg=1)
    got = K.node_stats(z, zt, ids, g, [O.get("rkl")], tok, backend="chunked")
    g_dense, mask = K.dense_candidates(ids, g, z.shape[1])
    cos = cosines(g_dense, O.get("rkl").direction(z, zt[0]), mask)
    torch.testing.assert_close(got.cos_full[0, 0].double(), cos.full, atol=1e-5, rtol=0)
    torch.testing.assert_close(got.cos_support[0, 0].double(), cos.support, atol=1e-5, rtol=0)


def test_teacher_list_equals_stacked_tensor():
    z, zt, ids, g, tok, adv = kc.make_case("random")
    objs = kc.objectives()
    a = K.node_stats(z, zt, ids, g, objs, tok, adv, backend="chunked")
    b = K.node_stats(z, [t.clone() for t in zt], ids, g, objs, tok, adv, backend="chunked")
    for key, x in a.tensors().items():
        torch.testing.assert_close(x, b.tensors()[key], rtol=0, atol=0, msg=key)


@dataclass(repr=False)
class _DoubledRKL(Objective):
    """An objective the kernels do not know: twice the reverse-KL direction."""

    name = "doubled_rkl_test_only"

    def direction(self, student_logits, teacher_logits=None, tokens=None, **kw):
        return 2.0 * rkl_from_logprobs(O.log_probs(student_logits), O.log_probs(teacher_logits))


def test_unknown_objective_falls_back_to_reference_rows(small_blocks):
    z, zt, ids, g, tok, adv = kc.make_case("random")
    objs = [O.get("rkl"), _DoubledRKL()]
    got = K.node_stats(z, zt, ids, g, objs, tok, adv, backend="chunked")
    torch.testing.assert_close(got.d_sq[:, 1], 4 * got.d_sq[:, 0], rtol=1e-4, atol=1e-9)
    torch.testing.assert_close(got.cos_full[:, 1], got.cos_full[:, 0], rtol=0, atol=1e-5)


def test_input_errors():
    z, zt, ids, g, tok, adv = kc.make_case("random")
    with pytest.raises(ValueError, match="tokens"):
        K.node_stats(z, zt, ids, g, [O.get("rkl_sampled")])
    with pytest.raises(ValueError, match="advantages"):
        K.node_stats(z, zt, ids, g, [O.get("grpo_ref")], tok)
    with pytest.raises(ValueError, match="do not match"):
        K.node_stats(z, zt[:, :, :-1], ids, g, [O.get("rkl")])
    with pytest.raises(ValueError, match="backend"):
        K.node_stats(z, zt, ids, g, [O.get("rkl")], backend="cuda")
    assert K.resolve_backend("auto", z) == "chunked"


def test_triton_kernels_under_interpreter():
    """The Triton path (TRITON_INTERPRET=1, set before triton loads: hence a subprocess) agrees too."""
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run(
        [sys.executable, str(HERE / "kernels_interpret.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0 and proc.stdout.strip().endswith("OK"), proc.stdout + proc.stderr[-3000:]


# --- d at the candidates, float64 sums and degeneracy (the estimator's inputs) ---------------------------------

REL = 1e-6  # relative per element (above a floor of 1e-12 max|d|); absolute for cosines
EQUAL_SPECS = (
    "rkl",
    "fkl",
    "jsd:beta=0.5",
    "fkl_clipped",
    "rkl_topk",
    "rkl_sampled",
    "rkl_baselined",
    "k3_loss",
    "jsd:beta=0.1",
    "fkl_clipped:clip=0.01",
    "rkl_topk:k=4,support=union",
)


def _gather_cand(d, ids):
    """d [C, O, N, V] at the candidate slots [N, K] (0 at padding), as NodeStats.d_cand lays it out."""
    slots = ids.clamp_min(0).expand(*d.shape[:2], *ids.shape)
    return torch.where(ids >= 0, d.gather(-1, slots), 0.0)


def _check_against(st, d, d_sq, ids, g):
    """NodeStats `st` against an exact d [C, O, N, V] and |d|^2 [C, O, N]: d_cand and d_sq within REL, and
    the cosine dot / sqrt(g_sq d_sq) from st's float64 sums within 1e-6 of the exact one."""
    bad = []
    labels = st.labels
    scale = d.nan_to_num(0.0).abs().amax(-1, keepdim=True)  # rows with a NaN: rkl_topk where q~ is undefined
    err_c = kc.rel_errors(st.d_cand, _gather_cand(d, ids), scale)
    err_sq = kc.rel_errors(st.d_sq, d_sq, scale[..., 0] ** 2)
    g_dense, mask = K.dense_candidates(ids, g.double(), d.shape[-1])
    exact_cos = (g_dense * d).sum(-1) / (g_dense.pow(2).sum(-1).sqrt() * d_sq.sqrt())
    live = (d_sq > 1e-18 * (st.p_sq + st.q_sq)[:, None]) & (st.g_sq > 0)
    got_cos = st.dot / (st.g_sq.sqrt() * st.d_sq.sqrt())
    err_cos = torch.where(live, (got_cos - exact_cos).abs(), 0.0)
    d_sup = (torch.where(mask, d, 0.0) ** 2).sum(-1)
    err_sup = kc.rel_errors(st.d_sq_support, d_sup, scale[..., 0] ** 2)
    for what, err in (("d_cand", err_c), ("d_sq", err_sq), ("d_sq_support", err_sup), ("cos", err_cos)):
        for o, label in enumerate(labels):
            worst = err[:, o].max().item()
            if not worst <= REL:
                bad.append(f"{label}: {what} error {worst:.3g}")
    assert st.d_cand.dtype == st.d_sq.dtype == st.dot.dtype == st.d_sq_support.dtype == torch.float64
    assert st.p_sq.dtype == st.q_sq.dtype == torch.float64
    return bad


def test_every_registered_objective_is_covered():
    covered = {O.parse(s).name for s in kc.all_specs()}
    assert set(O.available()) <= covered, sorted(set(O.available()) - covered)


@pytest.mark.parametrize("kind", ["random", "neginf"])
def test_d_cand_and_d_sq_match_float64_closed_forms(kind, small_blocks):
    """Every registered objective: d at the candidates, |d|^2 and the cosine from the float64 sums agree with
    the objectives' own closed forms evaluated in float64 (accurate on rows that are not peaked)."""
    z, zt, ids, g, tok, adv = kc.make_case(kind)
    objs = [O.parse(s) for s in kc.all_specs()]
    st = K.node_stats(z, zt, ids, g, objs, tok, adv, backend="chunked")
    d = kc.closed_form64(objs, z, list(zt), tok, adv)
    assert st.d_cand.shape == (3, len(objs), *ids.shape)
    bad = _check_against(st, d, (d * d).sum(-1), ids, g)
    assert not bad, "\n".join(bad)


def test_d_cand_and_d_sq_match_mpmath_on_peaked_rows():
    """Peaked rows (1 - p_top from ~1e-2 down to ~1e-43, teachers on the same peak, nearly equal, or peaked on
    another token) against 60-digit arithmetic: the float64 closed forms themselves cancel there (q - p at the
    argmax, 1 - p_a), so they cannot serve as the oracle."""
    pytest.importorskip("mpmath")
    z, zt, ids, g, tok, adv = kc.peaked_case(n=6, vocab=48, seed=5, bumps=(0.0, 21.0, 26.0, 40.0, 60.0, 100.0))
    objs = [O.parse(s) for s in kc.all_specs()]
    st = K.node_stats(z, zt, ids, g, objs, tok, adv, backend="chunked")
    d, d_sq = kc.mp_directions(objs, z, list(zt), tok, adv)
    bad = _check_against(st, d, d_sq, ids, g)
    assert not bad, "\n".join(bad)


def test_mpmath_oracle_is_the_objectives_closed_form():
    """On random rows the mpmath directions equal the objectives' float64 closed forms (same definitions)."""
    pytest.importorskip("mpmath")
    z, zt, ids, g, tok, adv = kc.make_case("random", n=3, vocab=40, n_cfg=2, seed=2)
    objs = [O.parse(s) for s in kc.all_specs()]
    d_mp, _ = kc.mp_directions(objs, z, list(zt), tok, adv)
    d_64 = kc.closed_form64(objs, z, list(zt), tok, adv)
    err = kc.rel_errors(d_64, d_mp, d_mp.abs().amax(-1, keepdim=True))
    assert err.max() < 1e-6, [(s, err[:, o].max().item()) for o, s in enumerate(kc.all_specs())]


@pytest.mark.parametrize("kind", ["random", "peaked"])
@pytest.mark.parametrize("backend", ["chunked", "reference"])
def test_teacher_equal_to_student_is_degenerate(kind, backend):
    """d = 0 when q = p for the full-vocabulary, renormalised top-k and sampled log-ratio objectives: every node
    is degenerate (cosine 0). k1_loss, grpo_ref (and fkl_topk, rkl_topk_unnorm: q~ != p) do not vanish."""
    if kind == "random":
        z, zt, ids, g, tok, adv = kc.make_case("random")
    else:
        z, zt, ids, g, tok, adv = kc.peaked_case(vocab=3000, bumps=(30.0, 40.0, 60.0, 25.0))
    zt = torch.stack([z, zt[1]])
    specs = EQUAL_SPECS + ("k1_loss", "grpo_ref", "fkl_topk:k=5", "rkl_topk_unnorm:k=5")
    objs = [O.parse(s) for s in specs]
    if backend == "reference":
        objs = objs[:2] + objs[-4:]  # float32 closed forms that vanish exactly; jsd's log m rounds
    st = K.node_stats(z, zt, ids, g, objs, tok, adv, backend=backend)
    off_top = tok != z.argmax(-1)  # on one-hot rows A (e_a - p) is itself ~0 (relative) when a = argmax
    for o, (obj, label) in enumerate(zip(objs, st.labels, strict=True)):
        if obj.name in ("k1_loss", "grpo_ref"):
            assert not st.degenerate[0, o, off_top].any(), label
            assert kind == "peaked" or not st.degenerate[0, o].any(), label
        elif obj.name not in kc.VANISH_WHEN_EQUAL:  # fkl_topk, rkl_topk_unnorm: q~ != p
            assert kind == "peaked" or not st.degenerate[0, o].any(), label  # peaked: mass off S ~ e^-bump
        else:
            assert st.degenerate[0, o].all(), label
            assert (st.cos_full[0, o] == 0).all() and (st.cos_support[0, o] == 0).all(), label
            assert (st.d_sq[0, o] <= (K.D_REL_TOL**2) * (st.p_sq + st.q_sq[0])).all(), label
    assert kind == "peaked" or not st.degenerate[1].any()  # a different teacher


def test_d_cand_follows_the_callers_slots(small_blocks):
    """d_cand is in the caller's slot order: permuting the candidate columns permutes it (bit for bit); padding
    holds 0 and a repeated id holds the same d in both of its slots."""
    z, zt, ids, g, tok, adv = kc.make_case("random")
    objs = [O.parse(s) for s in ("rkl", "fkl_clipped", "rkl_sampled", "rkl_topk_unnorm:k=3,support=union")]
    objs.append(_DoubledRKL())  # computed by the fallback (reference rows)
    a = K.node_stats(z, zt, ids, g, objs, tok, adv, backend="chunked")
    perm = torch.randperm(ids.shape[1], generator=torch.Generator().manual_seed(1))
    b = K.node_stats(z, zt, ids[:, perm], g[:, perm], objs, tok, adv, backend="chunked")
    torch.testing.assert_close(b.d_cand, a.d_cand[..., perm], rtol=0, atol=0)
    assert (a.d_cand[..., ids < 0] == 0).all()
    assert ids[0, -1] == ids[0, 0] and torch.equal(a.d_cand[:, :, 0, -1], a.d_cand[:, :, 0, 0])
    torch.testing.assert_close(a.d_cand[:, 4], 2 * a.d_cand[:, 0], rtol=1e-5, atol=1e-9)
    p = torch.softmax(z.double(), -1)
    q = torch.softmax(zt.double(), -1)
    torch.testing.assert_close(a.p_sq, (p * p).sum(-1), rtol=1e-12, atol=0)
    torch.testing.assert_close(a.q_sq, (q * q).sum(-1), rtol=1e-12, atol=0)
