"""Estimate the ideal per-token gradient g* = p (Q - V) from targeted rollouts, with honest uncertainty.

One call does it all::

    from diagnose.estimate import EstimateConfig, EstimateQuestion, estimate
    questions = [EstimateQuestion(id="q0", prompt_ids=ids, verify=lambda text: ...)]     # verify(response text)
    teachers = {"hint": lambda rollouts, nodes: logits}  # float [N, V] per node, or int top-k ids
    res = estimate(engine, questions, teachers, objectives=["rkl", "fkl"],
                   config=EstimateConfig(budget=4000, nodes="windows", allocation="adaptive"),
                   cache="runs/x/samples.sqlite")
    res.node_records   # per node: node_id, position, v_hat, candidates
                       # [{token, p, successes, count, q_hat, g, outcomes}]
    res.scores         # per node x teacher x objective: cos_full / cos_support raw, *_corrected, *_lo/*_hi,
                       # ta / ta_lo / ta_hi, degenerate, and the per-node sums dot, g_sq, noise, d_sq_*
    res.summary        # spend, cache hits, effective node counts per direction
    res.tables()       # pandas DataFrames in the run tables' layout: rollouts, nodes, candidates, alignment

Steps (each usable alone): `sample_rollouts` (rollouts.py) -> `select_nodes` / `refine_nodes` (nodes.py)
-> `candidate_sets` (candidates.py) -> `run_continuations` (q.py, through the cached `Generator` of
generate.py and cache.py) -> `node_scores` (stats.py: bias-corrected cosines, bootstrap intervals, teacher
advantage; `pooled_alignment`: the noise-consistent group figure) with `allocate` (adaptive.py) planning
extra continuations from a pilot that is never counted in Q-hat (so Q-hat stays unbiased); `design_weights`
(nodes.py) gives the tokens each node stands for; diagnose.estimate.truth recomputes everything with exact Q on
the exact engine. Each teacher x objective's direction d comes from directions.py, the budget's accounting
from budget.py, and the result's rows from records.py. The `Estimator` class (pipeline.py) drives the steps;
`estimate()` is its one-call front end. Everything talks to an engine only through the Engine protocol
(sample, continue_from, score).
"""

from .adaptive import allocate, half_widths, uniform_allocate
from .cache import MemoryCache, SampleCache, open_cache, sample_key
from .candidates import candidate_sets
from .generate import Generator, Request, derive_seed
from .nodes import STRATEGIES, Node, design_weights, refine_nodes, select_nodes, token_coverage
from .pipeline import (
    EstimateConfig,
    EstimateResult,
    Estimator,
    TeacherFn,
    estimate,
)
from .q import NodeEstimate, Spend, new_estimates, pack, run_continuations
from .rollouts import EstimateQuestion, Rollout, sample_rollouts
from .stats import (
    NodeScores,
    bootstrap_q,
    corrected_cosine,
    effective_nodes,
    ideal_degenerate,
    node_scores,
    node_scores_many,
    noise_term,
    noise_weights,
    pooled_alignment,
    pooled_from_sums,
    rollout_cosine,
    sparse_ideal,
)

__all__ = [
    "EstimateConfig",
    "EstimateResult",
    "Estimator",
    "TeacherFn",
    "estimate",
    "EstimateQuestion",
    "Rollout",
    "sample_rollouts",
    "Node",
    "STRATEGIES",
    "select_nodes",
    "refine_nodes",
    "design_weights",
    "token_coverage",
    "candidate_sets",
    "Generator",
    "Request",
    "derive_seed",
    "MemoryCache",
    "SampleCache",
    "open_cache",
    "sample_key",
    "NodeEstimate",
    "Spend",
    "new_estimates",
    "pack",
    "run_continuations",
    "NodeScores",
    "node_scores",
    "node_scores_many",
    "bootstrap_q",
    "corrected_cosine",
    "noise_term",
    "noise_weights",
    "sparse_ideal",
    "effective_nodes",
    "ideal_degenerate",
    "pooled_alignment",
    "pooled_from_sums",
    "rollout_cosine",
    "allocate",
    "uniform_allocate",
    "half_widths",
]
