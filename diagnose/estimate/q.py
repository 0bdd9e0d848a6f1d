"""Q-hat per candidate from verified targeted continuations; V-hat and g* on the candidate set.

A `NodeEstimate` keeps the raw 0/1 outcomes of every candidate, so counts, Q-hat, bootstrap resamples and
split halves all come from the same record. `run_continuations` adds numbered continuations (index i of
candidate k at a node is always the same sample, through the cache).

Under adaptive allocation a node also keeps a `pilot`: the first continuations per candidate, which decide
how many estimation continuations each candidate gets (adaptive.allocate) and are therefore never part of
counts, successes or Q-hat (Q-hat averaged over outcomes that chose their own number is biased). Pilot and
estimation continuations are numbered in one sequence per candidate, so no sample is in both.

Continuations follow the rollout's policy exactly: a continuation from response position t may generate at
most max_new_tokens - t tokens (the forced one included), and a stop string that the forced token or the
first continuation tokens complete across the prefix boundary ends it there, as it would have ended the
rollout. Q is then the success rate of the very policy that produced the rollouts.

The rollout's own verdict is NOT an outcome of its observed token by default (`free=False`): nodes are
split and weighted by that verdict (correct vs incorrect rollouts), and conditioned on it the verdict is a
biased draw of Q(u, observed) (measured on the exact engine: +0.19 on correct rollouts, -0.07 on incorrect
ones). `free=True` keeps the old behaviour for unconditional use only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch

from .generate import Generator, Request, cut_sample
from .nodes import Node
from .rollouts import EstimateQuestion, Rollout
from .stats import sparse_ideal


@dataclass
class NodeEstimate:
    """Everything estimated at one node: candidates, student probabilities on them, outcomes per candidate."""

    node: Node
    rollout_id: str
    question_id: str
    observed: int
    cand_ids: list[int]
    p: list[float]  # student probabilities of the candidates (at the sampling temperature)
    outcomes: list[list[int]] = field(default_factory=list)
    free: bool = False  # outcomes[0][0] is the rollout's own verdict (biased under splits by that verdict)
    # Adaptive allocation: the planning continuations per candidate (empty list: none, as under uniform). They
    # chose how many `outcomes` there are, so they are not outcomes: not in counts, successes or Q-hat.
    pilot: list[list[int]] = field(default_factory=list)

    @property
    def id(self) -> str:
        return f"{self.rollout_id}/{self.node.position}"

    @property
    def successes(self) -> list[int]:
        return [sum(o) for o in self.outcomes]

    @property
    def counts(self) -> list[int]:
        return [len(o) for o in self.outcomes]

    def generated(self, k: int) -> int:
        """Continuations generated so far for candidate k, pilot included (the free rollout sample excluded):
        the index the next one gets, so pilot and estimation samples never share an index."""
        pilot = len(self.pilot[k]) if self.pilot else 0
        return pilot + len(self.outcomes[k]) - (1 if (self.free and k == 0) else 0)

    @property
    def q_hat(self) -> list[float]:
        return [sum(o) / len(o) if o else float("nan") for o in self.outcomes]

    def ideal(self) -> tuple[list[float], float]:
        """(g* on the candidates, V-hat) from Q-hat (candidates without outcomes are left out: Q := V).

        A node with a pilot and no estimation outcomes yet (adaptive allocation, before the plan is drawn)
        answers from its pilot: only planning uses (refine's choice of nodes) can ask then."""
        rows = self.outcomes
        if self.pilot and sum(map(len, rows)) <= (1 if self.free else 0):
            rows = self.pilot
        mask = torch.tensor([len(o) > 0 for o in rows])
        q = torch.tensor([sum(o) / len(o) if o else 0.0 for o in rows], dtype=torch.float64)
        g, v = sparse_ideal(torch.tensor(self.p, dtype=torch.float64), q, mask)
        return g.tolist(), float(v)


def new_estimates(
    nodes: Sequence[Node],
    rollouts: Sequence[Rollout],
    cand_ids: torch.Tensor,
    student_probs: torch.Tensor,
    free: bool = False,
) -> list[NodeEstimate]:
    """NodeEstimates for nodes with candidate ids [N, K] (-1 pad; observed first) and student probs [N, V]."""
    out = []
    for i, node in enumerate(nodes):
        ro = rollouts[node.rollout]
        ids = [int(c) for c in cand_ids[i].tolist() if c >= 0]
        observed = int(ro.token_ids[node.position])
        assert ids[0] == observed, "the observed token must be candidate 0"
        est = NodeEstimate(
            node=node,
            rollout_id=ro.id,
            question_id=ro.question_id,
            observed=observed,
            cand_ids=ids,
            p=[float(student_probs[i, c]) for c in ids],
            outcomes=[[] for _ in ids],
            free=free,
        )
        if free:
            est.outcomes[0].append(int(ro.correct))
        out.append(est)
    return out


@dataclass
class Spend:
    """Cost accounting: continuations and continuation tokens consumed (cached ones included)."""

    continuations: int = 0
    tokens: int = 0

    def add(self, other: "Spend") -> None:
        self.continuations += other.continuations
        self.tokens += other.tokens


def run_continuations(
    gen: Generator,
    questions: Sequence[EstimateQuestion],
    rollouts: Sequence[Rollout],
    estimates: Sequence[NodeEstimate],
    alloc: Mapping[tuple[int, int], int],
    pilot: bool = False,
) -> Spend:
    """Add alloc[(estimate index, candidate index)] new continuations to each candidate and verify them
    (pilot=True: into the candidate's pilot, see NodeEstimate). Every one is counted in the Spend."""
    keys = [(e, k, c) for (e, k), c in sorted(alloc.items()) if c > 0]
    reqs = []
    limit = gen.params.max_new_tokens
    for e, k, c in keys:
        est = estimates[e]
        ro = rollouts[est.node.rollout]
        prefix = tuple(ro.prompt_ids) + tuple(ro.token_ids[: est.node.position])
        reqs.append(
            Request(
                prefix=prefix,
                token=est.cand_ids[k],
                start=est.generated(k),
                count=c,
                max_new_tokens=limit - est.node.position,
            )
        )
    out = gen.fetch(reqs)
    spend = Spend()
    tok = gen.engine.tokenizer
    stops = tuple(s for s in gen.params.stop if s)
    for (e, k, _), samples in zip(keys, out, strict=False):
        est = estimates[e]
        ro = rollouts[est.node.rollout]
        q = questions[ro.question]
        head = ro.token_ids[: est.node.position]
        for smp in samples:
            spend.continuations += 1
            spend.tokens += len(smp.token_ids)
            ids = list(smp.token_ids)
            if stops:
                cut = boundary_stop(tok, head, ids, stops)
                if cut is not None:
                    smp = cut_sample(smp, cut, tok, "stop")
                    ids = smp.token_ids
            (est.pilot if pilot else est.outcomes)[k].append(int(q.judge(tok, head + ids, smp)))
    return spend


def boundary_stop(tokenizer, head: Sequence[int], cont: Sequence[int], stops: Sequence[str]) -> int | None:
    """Length to cut a continuation at when a stop string spans the prefix boundary (None: no such stop).

    Engines see only a continuation's own tokens when they look for stop strings, so a stop string begun in
    the rollout's prefix and completed by the forced token (or the next few) goes unseen; the rollout itself
    would have stopped there. Only occurrences that end inside the continuation count.
    """
    width = max(len(s) for s in stops) + 4
    tail = list(head[-width:])
    if not tail:
        return None
    base = tokenizer.decode(tail, skip_special_tokens=False)
    already = {s for s in stops if s in base}
    for j in range(1, min(len(cont), width) + 1):
        text = tokenizer.decode(tail + list(cont[:j]), skip_special_tokens=False)
        if any(s in text and s not in already for s in stops):
            return j
    return None


def pack(estimates: Sequence[NodeEstimate], pilot: bool = False):
    """Padded tensors: cand_ids (long, -1 pad), p, successes, counts, mask (a candidate with outcomes).

    pilot=True: successes, counts and mask of the pilot instead (what adaptive allocation plans from)."""
    width = max((len(e.cand_ids) for e in estimates), default=0)
    n = len(estimates)
    ids = torch.full((n, width), -1, dtype=torch.long)
    p = torch.zeros(n, width, dtype=torch.float64)
    s = torch.zeros(n, width, dtype=torch.float64)
    c = torch.zeros(n, width, dtype=torch.float64)
    for i, e in enumerate(estimates):
        kk = len(e.cand_ids)
        ids[i, :kk] = torch.tensor(e.cand_ids)
        p[i, :kk] = torch.tensor(e.p, dtype=torch.float64)
        rows = (e.pilot or [[] for _ in e.cand_ids]) if pilot else e.outcomes
        s[i, :kk] = torch.tensor([sum(o) for o in rows], dtype=torch.float64)
        c[i, :kk] = torch.tensor([len(o) for o in rows], dtype=torch.float64)
    return ids, p, s, c, (ids >= 0) & (c > 0)
