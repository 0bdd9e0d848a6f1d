"""Spend where the evidence is: each question's continuation budget, planned from its rollouts' verdicts.

The ideal gradient g* vanishes where the student always (or never) succeeds, so continuations spent on a
question whose rollouts all agree mostly land on degenerate nodes. Before any continuation, the run samples
every question's rollouts (they are cached, so the question's own estimate reuses them) and plans:

- a question with both verdicts among its rollouts (the frontier) is always estimated;
- of the m questions whose rollouts are all correct, k = ceil(frontier x m) are estimated at the run's
  per-question budget: those with the smallest coins (keyed by the run's seed and the question's id,
  independent of every outcome), a uniformly random subset, so each has inclusion probability k / m (at
  least `frontier`, and at least one); the same for the questions whose rollouts are all wrong;
- the budget the skipped questions leave goes to the frontier questions in equal shares, at most
  1 / `frontier` times the per-question budget each (what is left beyond that is not spent).

Estimand: unchanged, every token of every student rollout of the run's questions. An estimated agreeing
question's node weights are multiplied by its stratum's rollout tokens over those of the stratum's estimated
questions (about m / k, the inverse of its inclusion probability): a stratified ratio estimator, so the
estimated questions stand for exactly their stratum's tokens, and every weighted sum the summary pools is
(nearly, as a ratio estimator is) unbiased for its value over all questions. The question-cluster bootstrap
resamples every question (a skipped one brings its rollouts and no nodes), so the sampling of questions is in
the intervals. The plan depends only on the rollouts and the coins, never on a continuation's outcome, so
the estimate at each node stays unbiased as before.
`frontier = 1` (RunConfig's default) estimates every question at the run's budget, with no plan.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, replace
from typing import Sequence


@dataclass(frozen=True)
class QuestionPlan:
    """One question's share: its continuation budget (0: skipped), the probability that it was chosen, and
    the factor its node weights are multiplied by (1 / inclusion in expectation; see plan_budgets)."""

    budget: float
    inclusion: float
    mixed: bool  # the rollouts have both verdicts
    weight: float = 1.0


def coin(seed: int, question_id: str) -> float:
    """A uniform number in [0, 1) fixed by the run's seed and the question's id (and nothing else)."""
    digest = hashlib.sha256(f"frontier:{seed}:{question_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2**64


def plan_budgets(
    verdicts: Sequence[Sequence[bool]], ids: Sequence[str], budget: float, frontier: float, seed: int,
    tokens: Sequence[float] | None = None,
) -> list[QuestionPlan]:
    """Each question's plan from its rollouts' verdicts (see the module docstring).

    Strata: questions with both verdicts (always estimated), all rollouts correct, all wrong. In a stratum of
    m agreeing questions the k = ceil(frontier x m) with the smallest coins are estimated (a uniformly random
    subset: inclusion probability k / m, at least `frontier`), and their node weights are multiplied by the
    stratum's rollout tokens over theirs (`tokens`, per question; default equal: m / k), so the estimated
    questions stand for their stratum's tokens exactly (a ratio estimator, as the design weights within a
    question are). The planned budgets sum to at most budget x questions."""
    tokens = [1.0] * len(verdicts) if tokens is None else [float(t) for t in tokens]
    kind = ["mixed" if 0 < sum(v) < len(v) else ("correct" if all(v) else "wrong") for v in verdicts]
    if frontier >= 1 or all(k == "mixed" for k in kind):
        return [QuestionPlan(float(budget), 1.0, k == "mixed") for k in kind]
    plans: dict[int, QuestionPlan] = {}
    skipped = 0
    for stratum in ("correct", "wrong"):
        members = [i for i, k in enumerate(kind) if k == stratum]
        if not members:
            continue
        k = math.ceil(frontier * len(members) - 1e-9)
        chosen = sorted(members, key=lambda i: (coin(seed, ids[i]), i))[:k]
        total, kept = sum(tokens[i] for i in members), sum(tokens[i] for i in chosen)
        factor = total / kept if kept > 0 else len(members) / k
        for i in members:
            plans[i] = QuestionPlan(float(budget) if i in chosen else 0.0, k / len(members), False, factor)
        skipped += len(members) - k
    n_mixed = kind.count("mixed")
    share = min(float(budget) * (1 + skipped / n_mixed), float(budget) / frontier) if n_mixed else 0.0
    return [plans.get(i, QuestionPlan(share, 1.0, True)) for i in range(len(kind))]


def from_rollouts(rollouts: Sequence[Sequence]) -> tuple[list[list[bool]], list[int]]:
    """(verdicts, rollout tokens) per question: what `plan_budgets` is made from."""
    return [[bool(r.correct) for r in ro] for ro in rollouts], [sum(len(r.token_ids) for r in ro) for ro in rollouts]


def with_plan(cfg, plan: QuestionPlan | None):
    """An EstimateConfig with a question's plan applied: its budget, inclusion probability and weight factor."""
    if plan is None:
        return cfg
    return replace(
        cfg, budget=float(plan.budget), question_inclusion=float(plan.inclusion), question_weight=float(plan.weight)
    )


def describe(plans: Sequence[QuestionPlan], budget: float) -> str:
    """One line on what the plan did, for the log and the progress display."""
    n = len(plans)
    mixed = sum(p.mixed for p in plans)
    skipped = sum(p.budget == 0 for p in plans)
    spent = sum(p.budget for p in plans)
    return (
        f"frontier: {mixed} of {n} questions have both verdicts; {skipped} of the {n - mixed} others skipped; "
        f"planned {spent:g} of {budget * n:g} budget units"
    )
