"""The arms of a validation: what update direction d each one applies to the student's logits per token.

- a configuration of the run (teacher x objective): d from the objective registry, the same code the
  diagnosis scores, with the teacher scored on the student's own rollout (its context, its model);
- `ideal`: g* = p (Q - V) estimated from targeted rollouts at the nodes the run's estimator selects (the
  upper bound the diagnosis assumes), nothing elsewhere;
- `grpo`: the objective `grpo_ref`, (R - mean R of the question's group)(e_a - p) at every token;
- `control`: the first configuration's objective against its teacher with the vocabulary shuffled per
  token: a signal of the same size and shape that carries no information, so it should not help.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from .. import objectives as objectives_mod
from ..estimate import Estimator
from ..estimate.directions import at_temperature
from ..estimate.nodes import Node
from ..estimate.rollouts import Rollout, group_advantages
from ..tasks import Question as TaskQuestion
from ..teachers import TeacherConfig
from ..teachers.at_nodes import TeacherAtNodes


@dataclass
class Arm:
    """One trained arm: its label, kind (config, ideal, grpo, control), and the run's alignment for it."""

    label: str
    kind: str
    teacher: str = ""
    objective: str = ""
    alignment: float = float("nan")  # the run's summary `mean` for this configuration (configs only)
    alignment_low: float = float("nan")
    alignment_high: float = float("nan")


@dataclass
class StepBatch:
    """One step's on-policy rollouts: `questions[r.question]` is rollout r's task question."""

    rollouts: list[Rollout]
    questions: list[TaskQuestion]
    step: int
    seed: int  # the step's own seed (rollouts, continuations, control permutations)
    extra: dict = field(default_factory=dict)

    def advantages(self) -> list[float]:
        """Per rollout: its reward minus the mean reward of its question's group (GRPO's baseline)."""
        return group_advantages(self.rollouts)


class ArmDirections:
    """Base: train at every response token; subclasses give d at a set of (rollout, position) rows."""

    def prepare(self, batch: StepBatch) -> None:
        """Work done once per step before the micro-batches (the ideal arm's targeted rollouts)."""

    def positions(self, batch: StepBatch) -> list[list[int]]:
        """Per rollout of the batch: the response positions that receive a direction."""
        return [list(range(len(r.token_ids))) for r in batch.rollouts]

    def direction(self, batch: StepBatch, index: Sequence[int], positions: Sequence[Sequence[int]], z) -> torch.Tensor:
        """d [N, V] for rows (index[i], positions[i][j]) in order, given the student's logits z [N, V] (detached)."""
        raise NotImplementedError

    @staticmethod
    def tokens(batch: StepBatch, index, positions) -> torch.Tensor:
        pairs = zip(index, positions, strict=True)
        return torch.tensor([batch.rollouts[r].token_ids[t] for r, pos in pairs for t in pos])


class ObjectiveDirections(ArmDirections):
    """A teacher x objective configuration (optionally with the teacher's vocabulary shuffled: the control)."""

    def __init__(
        self,
        teacher: TeacherConfig,
        objective: str,
        engine,
        shuffle: bool = False,
        summaries=None,
        temperature: float = 1.0,
    ):
        """`temperature`: the run's scoring temperature for teacher logits (the diagnosis scored the same)."""
        self.teacher, self.engine, self.shuffle, self.temperature = teacher, engine, shuffle, float(temperature)
        self.objective = objectives_mod.parse(objective)
        self.summaries = summaries or {}
        self.teacher_tokens = 0

    def teacher_logits(self, batch: StepBatch, index, positions) -> torch.Tensor:
        """The teacher's logits at the rows at the scoring temperature, scored one question at a time (its
        context sees that question)."""
        rows: list[torch.Tensor | None] = [None] * sum(len(p) for p in positions)
        offsets, at = [], 0
        for pos in positions:
            offsets.append(at)
            at += len(pos)
        by_q: dict[int, list[int]] = {}
        for k, r in enumerate(index):
            by_q.setdefault(batch.rollouts[r].question, []).append(k)
        for qi, ks in by_q.items():
            q = batch.questions[qi]
            fn = TeacherAtNodes(self.teacher, self.engine, q, self.summaries.get(q.id))
            nodes = [Node(index[k], t) for k in ks for t in positions[k]]
            logits = fn(batch.rollouts, nodes)
            self.teacher_tokens += fn.tokens
            j = 0
            for k in ks:
                for m in range(len(positions[k])):
                    rows[offsets[k] + m] = logits[j]
                    j += 1
        out = at_temperature(torch.stack(rows).float(), self.temperature)
        if self.shuffle:  # one fresh permutation of the vocabulary per row, drawn from the step's stream
            perm = torch.stack([torch.randperm(out.shape[1], generator=self.gen) for _ in range(out.shape[0])])
            out = torch.gather(out, 1, perm)
        return out

    def prepare(self, batch: StepBatch) -> None:
        self.gen = torch.Generator().manual_seed(int(batch.seed))

    def direction(self, batch, index, positions, z):
        zt = self.teacher_logits(batch, index, positions).to(z.device)
        tokens = self.tokens(batch, index, positions).to(z.device)
        return self.objective.direction(z, zt, tokens)


class GRPODirections(ArmDirections):
    """The objective `grpo_ref` with the group-baselined reward of each rollout at every one of its tokens."""

    def __init__(self):
        self.objective = objectives_mod.parse("grpo_ref")

    def direction(self, batch, index, positions, z):
        adv = batch.advantages()
        a = torch.tensor([adv[r] for r, pos in zip(index, positions, strict=True) for _ in pos], dtype=torch.float32)
        tokens = self.tokens(batch, index, positions).to(z.device)
        return self.objective.direction(z, None, tokens, advantages=a.to(z.device))


class IdealDirections(ArmDirections):
    """g-hat = p (Q-hat - V-hat) on the candidates at the nodes the run's estimator selects and estimates on the
    step's rollouts (its budget, continuations and node rule); zero off the candidates; no other token."""

    def __init__(self, engine, estimate_config, questions_for):
        self.engine, self.ecfg, self.questions_for = engine, estimate_config, questions_for
        self.continuation_tokens = 0

    def prepare(self, batch: StepBatch) -> None:
        from dataclasses import replace

        questions = self.questions_for(batch)
        # The run's budget is per question; continuations are drawn afresh every step (the step's seed).
        cfg = replace(self.ecfg, seed=batch.seed, budget=self.ecfg.budget * len(questions))
        est = Estimator(self.engine, questions, {}, [], cfg)
        try:
            result = est.run(rollouts=batch.rollouts)
        finally:
            est.cache.close()
        self.continuation_tokens += int(result.summary["continuation_tokens"])
        self.rows: dict[tuple[int, int], tuple[list[int], list[float]]] = {}
        for e in result.nodes:
            g, _ = e.ideal()
            self.rows[(e.node.rollout, e.node.position)] = (list(e.cand_ids), g)

    def positions(self, batch):
        out: list[list[int]] = [[] for _ in batch.rollouts]
        for r, t in sorted(self.rows):
            out[r].append(t)
        return out

    def direction(self, batch, index, positions, z):
        d = torch.zeros(z.shape, dtype=torch.float32)
        i = 0
        for r, pos in zip(index, positions, strict=True):
            for t in pos:
                ids, g = self.rows[(r, t)]
                d[i, torch.tensor(ids)] = torch.tensor(g, dtype=torch.float32)
                i += 1
        return d.to(z.device)
