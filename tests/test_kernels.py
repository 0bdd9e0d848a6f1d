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
    torch.testing.assert_close(got.cos_full[0, 0], cos.full, atol=1e-5, rtol=0)
    torch.testing.assert_close(got.cos_support[0, 0], cos.support, atol=1e-5, rtol=0)


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
