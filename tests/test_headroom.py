"""The headroom (what choosing the configuration per token would add over the best single one) survives the
winner's curse: on the exact engine's nodes at the run defaults (2 continuations per candidate), with every
configuration equally good at every node its interval covers 0, and with a real per-node winner it covers the
exact headroom (diagnose.estimate.truth.headroom_simulation; benchmarks/validity.py runs >= 100 of each)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from diagnose import engines
from diagnose.estimate.truth import exact_node_pool, exact_questions, headroom_simulation
from diagnose.pipeline.config import RunConfig
from diagnose.teachers import engine_teacher

RUNS = 20


@pytest.fixture(scope="module")
def pool():
    eng = engines.load("exact", "exact", seed=1, horizon=12)
    teacher = engines.load("exact", "exact", seed=2, horizon=12)
    cfg = RunConfig().estimate_config()  # the CLI defaults: 2 continuations per candidate, top-k 2, ...
    cfg.n_boot = 10
    return exact_node_pool(eng, exact_questions(eng, 32, seed=71), {"t": engine_teacher(teacher)}, cfg)


def _runs(pool, winner_cos):
    out = []
    for r in range(RUNS):
        rng = random.Random(r)
        hr, exact = headroom_simulation(rng.sample(pool, 16), rng, configs=5, winner_cos=winner_cos, n_boot=200)
        out.append((hr, exact))
    return out


# kills summary.headroom_in_sample_choice, summary.headroom_single_in_sample
def test_null_headroom_interval_covers_zero(pool):
    """Five configurations with true cosine 0.3 at every node: the exact headroom is 0. The in-sample per-node
    maximum reads as clear headroom (the winner's curse this guards against); the cross-fitted estimate is
    centred on 0 and its interval covers 0."""
    runs = _runs(pool, None)
    assert all(hr["cross_fitted"] for hr, _ in runs)
    assert all(abs(exact) < 1e-9 for _, exact in runs)
    covered = [hr["headroom_ci_low"] <= 0 <= hr["headroom_ci_high"] for hr, _ in runs]
    assert np.mean(covered) >= 0.9
    in_sample = np.mean([hr["headroom_in_sample"] for hr, _ in runs])
    cross = np.array([hr["headroom"] for hr, _ in runs])
    assert in_sample > 0.1  # the curse is real here ...
    assert abs(cross.mean()) < 3 * cross.std(ddof=1) / np.sqrt(len(cross)) + 0.02  # ... and cross-fitting removes it


def test_headroom_interval_covers_a_real_per_node_winner(pool):
    """One configuration drawn per node has cosine 0.9, the others 0.3: a real headroom. The interval covers the
    exact value; the cross-fitted point estimate is positive but, made on half the evidence, below it."""
    runs = _runs(pool, 0.9)
    exact = np.array([e for _, e in runs])
    assert (exact > 0.2).all()
    covered = [hr["headroom_ci_low"] <= e <= hr["headroom_ci_high"] for hr, e in runs]
    assert np.mean(covered) >= 0.9
    cross = np.array([hr["headroom"] for hr, _ in runs])
    assert 0 < cross.mean() < exact.mean()
