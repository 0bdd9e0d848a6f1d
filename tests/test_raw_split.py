"""The paper-style correct/incorrect split (`mean_per_token_<split>`, `diff_per_token`) against its estimand on
the exact engine, at the CLI's default estimator settings.

Its estimand is the token-weighted mean, over the nodes of correct (incorrect) rollouts, of E[cos(g-hat, d)]:
the raw per-node cosine expected over continuation noise at the run's number of continuations. Drawing fresh
outcomes from the exact Q at the same nodes many times gives that expectation; the run's figure must sit within
the noise of one draw around it. With many continuations the same figure approaches the noiseless cosine
cos(g*, d); at the default 2 it is a property of the noise as well as of the teacher, which is why the report
draws it beside the noise-consistent split."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diagnose import engines
from diagnose.estimate.summary import summarize
from diagnose.estimate.truth import (
    concat_inputs,
    exact_questions,
    exact_result,
    resampled_result,
    run_per_question,
)
from diagnose.pipeline.config import RunConfig
from diagnose.teachers import engine_teacher

COLS = ["mean_per_token_correct", "mean_per_token_incorrect", "diff_per_token"]
DRAWS = 12


def _figures(results):
    table = summarize(**concat_inputs(results), n_boot=10).table
    return table.set_index("config").loc[lambda t: t["metric"] == "cos_full", COLS]


@pytest.fixture(scope="module")
def raw_split():
    eng = engines.load("exact", "exact", seed=1, horizon=12)
    teacher = engine_teacher(engines.load("exact", "exact", seed=2, horizon=12))
    cfg = RunConfig().estimate_config()
    assert cfg.continuations == 2  # the default the estimand is stated at
    cfg.n_boot = 5
    runs = run_per_question(eng, exact_questions(eng, 24, seed=11), {"other": teacher}, ["rkl", "fkl"], cfg)
    est = _figures([res for _, res in runs])
    gen = torch.Generator().manual_seed(5)
    draws = [_figures([resampled_result(e, gen) for e, _ in runs]) for _ in range(DRAWS)]
    many = _figures([resampled_result(e, gen, continuations=4096) for e, _ in runs])
    exact = _figures([exact_result(e, n_boot=5) for e, _ in runs])
    return est, draws, many, exact


def test_raw_split_matches_its_estimand_at_the_defaults(raw_split):
    est, draws, _, _ = raw_split
    stack = np.stack([d.to_numpy() for d in draws])
    mean, sd = stack.mean(0), stack.std(0, ddof=1)
    assert np.isfinite(est.to_numpy()).all()
    # The run is one draw of the same noise: within 4 of its standard deviations of the expectation.
    assert (np.abs(est.to_numpy() - mean) <= 4 * sd + 1e-9).all(), (est, mean, sd)
    # The expectation is pinned down well enough for that check to mean something.
    assert (sd / np.sqrt(DRAWS) < 0.05).all()


def test_raw_split_converges_to_the_noiseless_cosine_with_many_continuations(raw_split):
    _, draws, many, exact = raw_split
    at_two = np.stack([d.to_numpy() for d in draws]).mean(0)
    # 4096 continuations per candidate: one draw lands on the noiseless figure (its spread there is about 0.005).
    assert (np.abs(many.to_numpy() - exact.to_numpy()) < 0.02).all(), (many, exact)
    # At the default 2 the same figure is a different quantity: draws spread widely around their expectation.
    assert np.isfinite(at_two).all()
    assert (np.stack([d.to_numpy() for d in draws]).std(0, ddof=1) > 0.01).all()
