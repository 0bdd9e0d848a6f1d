"""Budget accounting: what a node costs and what has been spent, in the configured unit (continuations, or
continuation tokens, where a continuation from response position t is bounded by max_new_tokens - t)."""

from __future__ import annotations

from typing import Sequence

from .q import Spend

ALLOCATIONS = ("uniform", "adaptive")  # continuations per candidate: all in the first round, or a planned rest
BUDGET_UNITS = ("continuations", "tokens")  # what a budget counts


class Budget:
    """The estimate's budget in `cfg.budget_unit`s: the cost of a node's first round and the spend so far.

    `cfg` is an EstimateConfig; `teachers` is how many teachers add top-k candidates to every node."""

    def __init__(self, cfg, teachers: int):
        self.cfg = cfg
        self.teachers = teachers
        self.spend = Spend()

    @property
    def per_candidate(self) -> int:
        """Continuations per candidate in a node's first round (uniform: all it gets; adaptive: the start)."""
        return self.cfg.continuations if self.cfg.allocation == "uniform" else self.cfg.adaptive_initial

    @property
    def nominal_candidates(self) -> int:
        """The most candidates a node can have: its observed token, the student's top-k, each teacher's top-k."""
        return 1 + self.cfg.k_student + self.cfg.k_teacher * self.teachers

    @property
    def node_budget(self) -> float:
        """What node selection may spend on first rounds: the budget, less adaptive's reserve (kept for the
        continuations the pilot plans)."""
        reserve = self.cfg.adaptive_reserve if self.cfg.allocation == "adaptive" else 0.0
        return self.cfg.budget * (1 - reserve)

    def first_round(self, candidates: int) -> int:
        """Continuations of a node's first round with `candidates` candidates."""
        return candidates * self.per_candidate - (1 if self.cfg.free_sample else 0)

    def node_cost(self, remaining: float, candidates: int) -> float:
        """What a node's first round costs with `candidates` candidates, each continuation `remaining` tokens
        long (in tokens: the bound max_new_tokens - position; Estimator.select's second round passes a
        calibrated forecast instead)."""
        conts = self.first_round(candidates)
        if self.cfg.budget_unit == "tokens":
            return conts * max(1, remaining)
        return conts

    @staticmethod
    def mean_remaining(lengths: Sequence[int]) -> list[float]:
        """Per response position t (up to the longest rollout): the mean of L - t over the rollouts longer than t.

        The shape of a continuation's expected length along the response, used (calibrated on what continuations
        really spent) to plan a token budget's second selection round: unlike one rollout's own remaining length,
        it does not forecast ~0 tokens near the end of a short rollout, where a forced candidate can run long."""
        out = []
        for t in range(max(lengths, default=0)):
            rest = [n - t for n in lengths if n > t]
            out.append(sum(rest) / len(rest))
        return out

    def spent(self) -> float:
        return self.spend.tokens if self.cfg.budget_unit == "tokens" else self.spend.continuations

    def left(self, total: float | None = None) -> float:
        """Budget left of `total` (default: the whole budget)."""
        return (self.cfg.budget if total is None else total) - self.spent()

    def tokens_per_continuation(self) -> float:
        """Mean length of the continuations so far (1 when counting continuations): the exchange rate the
        adaptive rounds plan with."""
        if self.cfg.budget_unit != "tokens":
            return 1.0
        return max(1.0, self.spend.tokens / max(1, self.spend.continuations))
