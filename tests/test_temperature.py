"""One temperature for sampling and both sides of the loss: a teacher identical to the student is silent at every
temperature and nucleus, and `teacher_temperature` is the explicit, recorded alternative (exact engine)."""

from __future__ import annotations

import pytest
import torch

from diagnose import engines, objectives
from diagnose.estimate import EstimateConfig, Estimator
from diagnose.estimate.nodes import Node
from diagnose.estimate.truth import exact_questions
from diagnose.objectives.base import NEEDS_NONE
from diagnose.pipeline import RunConfig
from diagnose.teachers import engine_teacher

# Every registered objective that reads a teacher, at its default parameters.
TEACHER_OBJECTIVES = [name for name in objectives.available() if objectives.parse(name).needs != NEEDS_NONE]


def _every_node(eng, cfg, teachers, objs=TEACHER_OBJECTIVES):
    est = Estimator(eng, exact_questions(eng, 3, seed=5), teachers, objs, cfg)
    est.sample()
    est.add_nodes([Node(r, t) for r, ro in enumerate(est.rollouts) for t in range(len(ro.token_ids))], False)
    assert len(est.estimates) >= 10
    return est


@pytest.mark.parametrize("temperature,top_p", [(0.7, 1.0), (1.3, 1.0), (0.8, 0.9), (1.0, 1.0)])
def test_identical_teacher_gives_d_zero_at_every_temperature(temperature, top_p):
    """The student scored as its own teacher: d = 0 exactly for every objective, every node flagged no signal.
    (Before the fix the teacher was scored untempered: at T != 1 every direction pointed toward the T = 1
    distribution and read as signal.)"""
    eng = engines.load("exact", "exact", seed=1)
    cfg = EstimateConfig(temperature=temperature, top_p=top_p, max_new_tokens=10, seed=2,
                         k_student=4, k_teacher=4, continuations=8, budget=2000.0)
    est = _every_node(eng, cfg, {"self": engine_teacher(eng)})
    assert cfg.scoring_temperature == temperature
    for (teacher, obj), dirn in est.directions.items():
        assert teacher == "self"
        assert all(dirn.no_signal), obj
        if obj == "k1_loss":  # -(e_a - p): the teacher does not enter its gradient at all (expectation 0)
            continue
        # zero up to float64 rounding of the normalisers (rkl_topk_unnorm leaves 1e-17), and flagged as zero
        assert max(float(d.abs().max()) for d in dirn.d) <= 1e-12, obj
        assert max(dirn.d_sq_full) <= 1e-24 and all(dirn.d_zero), obj
    # The logits the result hands out for the teacher are the student's, at the same temperature.
    res = est.results()
    assert torch.equal(res.teacher_logits["self"], res.student_logits)


def test_teacher_temperature_is_the_explicit_alternative():
    """teacher_temperature = 1 beside sampling at 0.7 scores the teacher untempered: the identical teacher now
    has a direction, and it is the objective's closed form between z / 0.7 and z / 1."""
    eng = engines.load("exact", "exact", seed=1)
    cfg = EstimateConfig(temperature=0.7, teacher_temperature=1.0, max_new_tokens=10, seed=2,
                         k_student=4, k_teacher=4, continuations=8, budget=2000.0)
    assert cfg.scoring_temperature == 1.0
    est = _every_node(eng, cfg, {"self": engine_teacher(eng)}, ["rkl", "fkl"])
    res = est.results()
    z = res.student_logits.double()
    assert torch.allclose(res.teacher_logits["self"].double(), z * 0.7, rtol=1e-5)
    for obj in ("rkl", "fkl"):
        dirn = est.directions[("self", obj)]
        want = objectives.parse(obj).direction(z, z * 0.7, None).double()
        for i, (e, d) in enumerate(zip(est.estimates, dirn.d, strict=True)):
            assert torch.allclose(d, want[i, torch.tensor(e.cand_ids)], atol=1e-6, rtol=1e-4)
        assert sum(dirn.no_signal) < len(dirn.no_signal) // 2


def test_run_config_carries_the_scoring_temperature():
    """The run's key maps onto the estimate (0: the sampling temperature); at T != 1 it is part of the run's
    identity (a run scored before the convention is not resumed into), at T = 1 the digest is unchanged."""
    assert RunConfig(temperature=0.7).estimate_config().scoring_temperature == 0.7
    assert RunConfig(temperature=0.7, teacher_temperature=1.0).estimate_config().scoring_temperature == 1.0
    assert RunConfig().identity().get("teacher_temperature") is None
    assert RunConfig(temperature=0.7).identity()["teacher_temperature"] == 0.7
    assert RunConfig(temperature=0.7).digest() == RunConfig(temperature=0.7, teacher_temperature=0.7).digest()
    assert RunConfig(temperature=0.7).digest() != RunConfig(temperature=0.7, teacher_temperature=1.0).digest()
