"""The estimate pipeline: rollouts -> nodes (budget) -> candidates -> continuations -> Q, V, g*, scores."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch

from .. import objectives as objectives_mod
from ..alignment import proxies
from ..engines.base import SamplingParams
from ..engines.sampling import processed_logprobs
from ..errors import DiagnoseError
from ..ideal import sparse_ideal
from ..objectives.base import log_probs
from . import rows
from . import signal as signal_mod
from .adaptive import allocate, finished, half_widths, uniform_allocate
from .budget import ALLOCATIONS, BUDGET_UNITS, Budget
from .cache import open_cache
from .candidates import candidate_sets
from .directions import Direction, add_directions, direction_tensors, teacher_rows
from .generate import Generator
from .nodes import DesignWeights, Node, design_weights, refine_nodes, select_nodes, token_coverage
from .q import NodeEstimate, new_estimates, pack, run_continuations
from .records import node_records, score_rows
from .rollouts import EstimateQuestion, Rollout, group_advantages, sample_rollouts
from .stats import ideal_degenerate, node_scores_many, split_halves

SELECTION_PASSES = 4  # most node-selection passes (each scores the student and teachers at its nodes)
REFINE_PASSES = 64  # `refine`: most bisection passes after the first, coarse selection

# teacher(rollouts, nodes) -> float logits [N, V] (on the student's prefixes) or integer top-k ids [N, k].
TeacherFn = Callable[[Sequence[Rollout], Sequence[Node]], torch.Tensor]


@dataclass
class EstimateConfig:
    """Every knob of an estimate (recorded with the result, so a run can be repeated). Its defaults are the only
    ones: `diagnose run`'s RunConfig takes the defaults of the keys it shares from here (pipeline/config.py)."""

    rollouts_per_question: int = 4
    temperature: float = 1.0
    # The temperature the teacher's logits are divided by before any objective sees them. None (default): the
    # sampling temperature, the trainers' convention (TRL's and ms-swift's GKD use one temperature for
    # sampling and both sides of the loss), so a teacher identical to the student gives d = 0 at any T.
    teacher_temperature: float | None = None
    top_p: float = 1.0
    max_new_tokens: int = 64
    stop: tuple[str, ...] = ()
    seed: int = 0
    k_student: int = 2
    k_teacher: int = 2  # RunConfig's top_k sets both
    continuations: int = 2  # per candidate (uniform); adaptive starts from `adaptive_initial`
    budget: float = 40.0  # in `budget_unit`s, for everything after the rollouts
    budget_unit: str = "continuations"  # or "tokens" (a node's cost is bounded by max_new_tokens - position)
    nodes: str = "windows"  # windows | windows_end | uniform | every | refine
    # The run's frontier plan (estimate/frontier.py) for this estimate's questions: the probability they were
    # chosen to be estimated (multiplies inclusion probabilities) and the factor their node weights are
    # multiplied by (about 1 / that probability), so weighted sums stand for every question of the run.
    question_inclusion: float = 1.0
    question_weight: float = 1.0
    refine_fraction: float = 0.5  # `refine`: share of the node budget spent on the first, coarse pass
    allocation: str = "uniform"  # or "adaptive"
    adaptive_initial: int = 2  # adaptive: pilot continuations per candidate (plan only; never in Q-hat)
    adaptive_reserve: float = 0.5  # adaptive: share of the budget kept for the planned continuations
    # adaptive: plan no more for a node once its predicted interval is this narrow
    target_half_width: float | None = None
    round_size: int = 256  # the sequential uniform baseline of benchmarks/estimator.py only
    adaptive_step: int = 2
    max_per_candidate: int = 1024
    g_tolerance: float = 0.01  # adaptive: a node whose |g*| is confidently below this needs no more samples
    # Count the rollout's own verdict as a continuation of its observed token. Off by default: it biases Q-hat
    # within the correct/incorrect splits (see q.py); only for unconditional use.
    free_sample: bool = False
    n_boot: int = 1000
    level: float = 0.95
    prior: float = 0.5
    max_batch: int = 256
    node_chunk: int = 64

    @property
    def scoring_temperature(self) -> float:
        """The temperature teacher logits are scored at: `teacher_temperature`, else the sampling one."""
        return float(self.teacher_temperature or self.temperature)

    def sampling(self) -> SamplingParams:
        return SamplingParams(
            temperature=self.temperature,
            top_p=self.top_p,
            max_new_tokens=self.max_new_tokens,
            stop=tuple(self.stop),
            seed=self.seed,
        )


@dataclass
class EstimateResult:
    """Rollouts, per-node estimates, per node x teacher x objective scores, and the run's accounting.

    `student_logits` [N, V] (at the sampling temperature) and `teacher_logits` (teacher name -> [N, V], for the
    teachers that returned logits rather than top-k ids) are the logits the estimate scored, row i at node
    `nodes[i]`: what proxies and the parameter-space cosine are computed from afterwards. They share storage
    with the estimator that made them (no copy)."""

    rollouts: list[Rollout]
    nodes: list[NodeEstimate]
    node_records: list[dict]
    scores: list[dict]
    summary: dict
    config: EstimateConfig
    rollout_scores: list[dict] = field(default_factory=list)  # rollout x teacher x objective
    student_logits: torch.Tensor | None = None  # [N, V], None when no node was estimated
    teacher_logits: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> [N, V]

    def proxies(self) -> dict:
        """(teacher name, node id) -> the node's cheap proxies for that teacher (`alignment.proxies`: KL both
        ways, JS, TV, cos(p, q), both entropies) and q_token, the teacher's probability of the observed token;
        from the logits the estimate scored, for the teachers that returned logits."""
        out: dict = {}
        z = self.student_logits
        if not self.nodes or z is None:
            return out
        observed = torch.tensor([e.observed for e in self.nodes])
        for label, zt in self.teacher_logits.items():
            prox = proxies(z, zt)
            q_tok = torch.softmax(zt.float(), -1)[torch.arange(len(self.nodes)), observed]
            for i, e in enumerate(self.nodes):
                row = {name: float(v[i]) for name, v in prox.items()}
                row["q_token"] = float(q_tok[i])
                out[(label, e.id)] = row
        return out

    def tables(self, decode=None, final_answer=None, references=None, proxies=None, param_cos=None) -> dict:
        """pandas DataFrames in the run tables' layout (estimate/rows.py): rollouts, nodes, candidates,
        alignment (node x teacher x objective), and rollout_alignment (rollout x teacher x objective: the
        cosine of the rollout's concatenated nodes). The text, proxy and param_cos columns come only with what
        they are made from (`rows.table_rows`); the raw records stay in `node_records` and `scores`."""
        import pandas as pd

        out = rows.frames(rows.table_rows(self, decode, final_answer, references, proxies, param_cos))
        out["rollout_alignment"] = pd.DataFrame(self.rollout_scores)
        return out


def _resolve_objectives(objectives) -> list:
    out = []
    for o in objectives:
        out.append(objectives_mod.parse(o) if isinstance(o, str) else o)
    return out


class Estimator:
    """Stateful pipeline; `estimate()` below is the one-call front end. Steps can be driven one by one."""

    def __init__(
        self,
        engine,
        questions: Sequence[EstimateQuestion],
        teachers: Mapping[str, TeacherFn] | None = None,
        objectives: Sequence = ("rkl",),
        config: EstimateConfig | None = None,
        cache: str | Path | None = None,
        keep_teacher_logits: bool = True,
    ):
        """keep_teacher_logits=False: the result carries no `teacher_logits` (they are not kept per node)."""
        self.engine = engine
        self.keep_teacher_logits = keep_teacher_logits
        self.questions = list(questions)
        self.teachers = dict(teachers or {})
        self.objectives = _resolve_objectives(objectives)
        self.cfg = config or EstimateConfig()
        if self.cfg.allocation not in ALLOCATIONS:
            raise DiagnoseError(f"allocation must be one of {', '.join(ALLOCATIONS)}, got {self.cfg.allocation!r}")
        if self.cfg.budget_unit not in BUDGET_UNITS:
            raise DiagnoseError(
                f"budget_unit must be one of {', '.join(BUDGET_UNITS)}, got {self.cfg.budget_unit!r}"
            )
        self.cache = open_cache(cache) if not hasattr(cache, "get_many") else cache
        self.gen = Generator(engine, self.cfg.sampling(), self.cache, max_batch=self.cfg.max_batch)
        self.rollouts: list[Rollout] = []
        self.estimates: list[NodeEstimate] = []
        self.directions: dict[tuple[str, str], Direction] = {}
        self.budget = Budget(self.cfg, len(self.teachers))
        self.spend = self.budget.spend  # continuations and tokens consumed so far
        # Per node, in the order of `estimates`: the student's logits at the sampling temperature [V], and each
        # teacher's logits [V] (teachers that return top-k ids have none). `results()` hands them out stacked.
        self._student_logits: list[torch.Tensor] = []
        self._teacher_logits: dict[str, list[torch.Tensor]] = {}

    # ---- steps -----------------------------------------------------------------------------------------

    def sample(self, rollouts: Sequence[Rollout] | None = None) -> list[Rollout]:
        self.rollouts = (
            list(rollouts)
            if rollouts is not None
            else sample_rollouts(self.gen, self.questions, self.cfg.rollouts_per_question)
        )
        return self.rollouts

    def cost(self, r: int, t: int) -> float:
        """Upper bound of a node's cost in budget units (actual candidate sets can only be smaller; in tokens
        each continuation is bounded by max_new_tokens - t, see `_node_cost`)."""
        return self._node_cost(r, t, self.budget.nominal_candidates)

    def add_nodes(self, nodes: Sequence[Node], continuations: bool = True) -> list[NodeEstimate]:
        """Score the student and teachers at new nodes, build candidates and directions, run continuations
        (continuations=False: none yet, e.g. to fill in exact Q with diagnose.estimate.truth)."""
        nodes = [n for n in nodes if n not in {e.node for e in self.estimates}]
        if not nodes:
            return []
        new: list[NodeEstimate] = []
        for a in range(0, len(nodes), self.cfg.node_chunk):
            new.extend(self._add_chunk(nodes[a : a + self.cfg.node_chunk]))
        if continuations:
            self._first_continuations(len(self.estimates) - len(new))
        return new

    def _first_continuations(self, start: int) -> None:
        """One engine round: the initial continuations of every estimate from index `start` on.

        Uniform: `continuations` per candidate, the estimate itself. Adaptive: `adaptive_initial` per
        candidate into the node's pilot, which plans the estimation continuations (`adapt`) and is never
        averaged into Q-hat (see adaptive.py); a free rollout verdict stays an estimation outcome, which the
        plan does not see. Pilot continuations are spent like any other."""
        pilot = self.cfg.allocation == "adaptive"
        alloc = {}
        for i in range(start, len(self.estimates)):
            est = self.estimates[i]
            if pilot and not est.pilot:
                est.pilot = [[] for _ in est.cand_ids]
            for k in range(len(est.cand_ids)):
                alloc[(i, k)] = self.budget.per_candidate - (1 if (est.free and k == 0 and not pilot) else 0)
        if alloc:
            self.spend.add(
                run_continuations(self.gen, self.questions, self.rollouts, self.estimates, alloc, pilot=pilot)
            )

    def _student(self, nodes: Sequence[Node]) -> torch.Tensor:
        by_r: dict[int, list[int]] = {}
        for i, n in enumerate(nodes):
            by_r.setdefault(n.rollout, []).append(i)
        out = [None] * len(nodes)
        rs = sorted(by_r)
        seqs = [self.rollouts[r].prompt_ids + self.rollouts[r].token_ids for r in rs]
        pos = [[len(self.rollouts[r].prompt_ids) + nodes[i].position for i in by_r[r]] for r in rs]
        for r, sc in zip(rs, self.engine.score(seqs, pos, topk=None), strict=False):
            for j, i in enumerate(by_r[r]):
                out[i] = sc.logits[j].float()
        return torch.stack(out) / self.cfg.temperature

    def _node_cost(self, r: int, t: int, candidates: int) -> float:
        """The first round's cost of node (rollout r, position t) with `candidates` candidates. In tokens a
        continuation from position t may generate up to max_new_tokens - t tokens (the rollout's policy, its
        length limit included), whatever the rollout's own remaining length: that is the bound."""
        return self.budget.node_cost(self.cfg.max_new_tokens - t, candidates)

    def _add_chunk(self, nodes: Sequence[Node]) -> list[NodeEstimate]:
        """Score the student and teachers at nodes (one engine round), then build candidates, student
        probabilities, directions and their signal checks."""
        z = self._student(nodes)
        teach = {name: fn(self.rollouts, nodes) for name, fn in self.teachers.items()}
        rows = teacher_rows(teach, z, self.cfg.scoring_temperature)
        observed = [self.rollouts[n.rollout].token_ids[n.position] for n in nodes]
        cand = candidate_sets(z, observed, teach, self.cfg.k_student, self.cfg.k_teacher)
        # p is the sampling policy's distribution: temperature (already in z) and the top-p nucleus, so a
        # forced token outside the nucleus has p = 0 and no weight in g* = p (Q - V) or in V.
        if self.cfg.top_p < 1.0:
            probs = processed_logprobs(z, 1.0, self.cfg.top_p).double().exp()
        else:
            probs = log_probs(z.double()).exp()
        ests = new_estimates(nodes, self.rollouts, cand, probs, free=self.cfg.free_sample)
        add_directions(
            self.directions,
            z,
            rows,
            cand,
            ests,
            self.objectives,
            tokens=torch.tensor(observed, dtype=torch.long),
            advantages=self._advantages(nodes),
            roundoffs={name: self.teacher_roundoff(name) for name, _ in rows},
            twin_seed=int(self.cfg.seed) * 1_000_003 + len(self.estimates),
        )
        self._student_logits.extend(z)
        for name, payload in rows if self.keep_teacher_logits else ():
            self._teacher_logits.setdefault(name, []).extend(payload)
        self.estimates.extend(ests)
        return ests

    def teacher_roundoff(self, name: str) -> float:
        """Unit roundoff of teacher `name`'s logits against the student's: the coarser of the two precisions
        (a TeacherFn may say its own with a `roundoff` attribute; else it is taken as the student's)."""
        student = signal_mod.roundoff(self.engine.dtype)
        own = getattr(self.teachers.get(name), "roundoff", None)
        return max(student, float(own)) if own is not None else student

    def _advantages(self, nodes) -> torch.Tensor:
        """R - mean R over the question's rollouts (the GRPO reference arm's advantage), per node."""
        per_rollout = group_advantages(self.rollouts)
        return torch.tensor([per_rollout[n.rollout] for n in nodes])

    def select(self) -> None:
        """Choose nodes until the node budget is spent (several passes: actual candidate sets are smaller).

        Each pass is `select_nodes` on the budget left, excluding the nodes already chosen: a rollout's part
        of a window gets a uniformly random subset in every pass (in tokens too: select_nodes plans a window's
        nodes at its largest cost), so `nodes.inclusion_probs` (c / m over all passes) and the design weights
        hold for the union. Budgets in continuations: one round of up to SELECTION_PASSES passes. In tokens:
        two rounds of up to SELECTION_PASSES passes each (the pass cap is per round). Round 1 plans with the
        bound max_new_tokens - t per continuation, so it never overspends, but the bound is loose; round 2
        plans with a forecast calibrated on what round 1 really spent (see `node_cost` below), so the budget
        is spent in expectation (docs/estimator.md, Budget)."""
        cfg = self.cfg
        node_budget = self.budget.node_budget
        lengths = [len(r.token_ids) for r in self.rollouts]
        if cfg.nodes == "every":
            self.add_nodes(select_nodes(lengths, None, self.cost, "every"))
            return
        first = node_budget * (cfg.refine_fraction if cfg.nodes == "refine" else 1.0)
        # Up to 4 selection passes per round (actual candidate sets are smaller than the nominal cost assumes,
        # so a pass leaves budget for the next), each only scoring the student and teachers at its nodes; then
        # one continuation round for all of them. In tokens, round 1's passes plan with each continuation's
        # upper bound; what round 1 leaves unspent goes to round 2, planned with the calibrated forecast.
        tokens = cfg.budget_unit == "tokens"
        remaining = self.budget.mean_remaining(lengths) if tokens else []
        passes, k = 0, None  # k: tokens spent per forecast token in round 1 (None: plan with the bound)

        def node_cost(r: int, t: int, candidates: int) -> float:
            """Round 1: the bound. Round 2 (tokens): min(bound, k x mean remaining length after t) per
            continuation, the same for every rollout (so still one planned cost per window)."""
            if k is None:
                return self._node_cost(r, t, candidates)
            return self.budget.node_cost(min(cfg.max_new_tokens - t, k * remaining[t]), candidates)

        nominal = self.budget.nominal_candidates
        for _ in range(2 if tokens else 1):
            start, planned, before = len(self.estimates), 0.0, self.spend.tokens
            for _ in range(SELECTION_PASSES):
                left = self.budget.left(first) - planned
                nodes = select_nodes(
                    lengths,
                    left,
                    self.cost if k is None else (lambda r, t: node_cost(r, t, nominal)),
                    "windows" if cfg.nodes == "refine" else cfg.nodes,
                    seed=cfg.seed + passes,
                    exclude=[e.node for e in self.estimates],
                )
                passes += 1
                new = self.add_nodes(nodes, continuations=False)
                if not new:
                    break
                planned += sum(node_cost(e.node.rollout, e.node.position, len(e.cand_ids)) for e in new)
            if start < len(self.estimates):
                self._first_continuations(start)
            if not tokens or k is not None:
                break
            # Calibrate round 2's forecast on round 1 (k = 1 when round 1 could not afford a node at the bound).
            k = 1.0
            new = self.estimates[start:]
            forecast = sum(node_cost(e.node.rollout, e.node.position, len(e.cand_ids)) for e in new)
            if forecast > 0:
                k = max(1.0, self.spend.tokens - before) / forecast
        if cfg.nodes == "refine":
            for _ in range(REFINE_PASSES):
                left = self.budget.left(node_budget)
                values = {e.node: e.ideal()[1] for e in self.estimates}
                finals = [float(r.correct) for r in self.rollouts]
                nodes = refine_nodes(lengths, values, finals, left, self.cost)
                if not self.add_nodes(nodes):
                    break

    def direction_tensors(self):
        """Per direction: (key, d [N, K] padded, d_sq_full [N], teacher_p [N, K] or None)."""
        return direction_tensors(self.directions, self.estimates)

    def adapt(self, mode: str = "adaptive") -> None:
        """Estimation continuations after the pilot, until the budget is spent or every node meets the target.

        mode="adaptive": one plan from the pilot (`allocate`: a floor on every candidate, then equal shares
        across unfinished nodes, within a node where samples most reduce the noise of g-hat), drawn as fresh
        continuations numbered after the pilot's; the plan never sees an estimation outcome, so Q-hat stays
        unbiased. In tokens the plan converts the budget at the pilot's mean continuation length (spent
        exactly in expectation, not in every run).
        mode="uniform": the baseline of benchmarks/estimator.py, sequential: the pilot becomes estimation
        outcomes and every candidate of every unfinished node gets `adaptive_step` more per round, with
        stopping read off the very outcomes it estimates from (cheap, but its Q-hat is not unbiased).
        """
        cfg = self.cfg
        dirs = [d for _, d, _, _ in self.direction_tensors()]
        per = self.budget.tokens_per_continuation()
        if mode == "adaptive":
            size = int(math.floor(self.budget.left() / per))
            _, p, s, c, mask = pack(self.estimates, pilot=True)
            _, _, _, drawn, _ = pack(self.estimates)
            alloc = allocate(
                p,
                s,
                c,
                mask,
                dirs,
                size,
                cfg.adaptive_step,
                cfg.target_half_width,
                max_per_candidate=cfg.max_per_candidate,
                g_tolerance=cfg.g_tolerance,
                drawn=drawn,
            )
            if alloc:
                self.spend.add(run_continuations(self.gen, self.questions, self.rollouts, self.estimates, alloc))
            return
        for e in self.estimates:  # the sequential baseline estimates from its first round as well
            if e.pilot:
                e.outcomes = [a + b for a, b in zip(e.pilot, e.outcomes, strict=True)]
                e.pilot = []
        while True:
            _, p, s, c, mask = pack(self.estimates)
            size = int(min(cfg.round_size, math.floor(self.budget.left() / self.budget.tokens_per_continuation())))
            if size < cfg.adaptive_step:
                break
            alloc = uniform_allocate(
                c,
                mask,
                half_widths(p, s, c, mask, dirs),
                size,
                cfg.adaptive_step,
                cfg.target_half_width,
                cfg.max_per_candidate,
                done=finished(p, s, c, mask, cfg.g_tolerance),
            )
            if not alloc:
                break
            self.spend.add(run_continuations(self.gen, self.questions, self.rollouts, self.estimates, alloc))

    def results(self) -> EstimateResult:
        """Per-node records (candidates, Q-hat, counts, V-hat, g*) and node x direction scores."""
        cfg = self.cfg
        ids, p, s, c, mask = pack(self.estimates)
        records = []
        g_zero = ideal_degenerate(s, c, mask, p) if self.estimates else []
        weights = self.design_weights()
        negligible = self.negligible()
        z, teacher_logits = self._stacked_logits()
        if self.estimates:
            g_c, value = sparse_ideal(p, torch.where(mask, s / c.clamp_min(1), 0.0), mask, exact_ties=True)
            records = node_records(self.estimates, self.rollouts, value, g_c, mask, c, weights, negligible, g_zero)
        dts = self.direction_tensors()
        many = (
            node_scores_many(
                p,
                s,
                c,
                mask,
                [(d, dsq, tp, self.directions[key].no_signal) for key, d, dsq, tp in dts],
                n_boot=cfg.n_boot,
                level=cfg.level,
                prior=cfg.prior,
                seed=cfg.seed,
                halves=split_halves([e.outcomes for e in self.estimates], ids.shape[1]),
            )
            if self.estimates
            else []
        )
        scored = [(self.directions[key], st) for (key, _, _, _), st in zip(dts, many, strict=False)]
        scores, per_rollout, eff = score_rows(self.estimates, self.rollouts, scored, weights)
        hw = (
            half_widths(p, s, c, mask, [d for _, d, _, _ in dts])
            if self.estimates
            else []
        )
        summary = {
            "nodes": len(self.estimates),
            "rollouts": len(self.rollouts),
            "continuations": self.spend.continuations,
            "continuation_tokens": self.spend.tokens,
            "generated": self.gen.generated,
            "cache_hits": self.cache.hits,
            "engine_calls": self.gen.engine_calls,
            "budget": cfg.budget,
            "budget_unit": cfg.budget_unit,
            "max_half_width": float(max(hw)) if len(hw) else float("nan"),
            "token_coverage": token_coverage(
                [w / self.cfg.question_weight for w in weights], [len(r.token_ids) for r in self.rollouts]
            ),
            "effective_nodes": eff,
        }
        return EstimateResult(
            self.rollouts,
            list(self.estimates),
            records,
            scores,
            summary,
            cfg,
            per_rollout,
            student_logits=z,
            teacher_logits=teacher_logits,
        )

    def _stacked_logits(self) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        """The kept student and teacher logits as [N, V] tensors (rows aligned with `estimates`). The per-node
        lists are re-pointed at the stacked rows, so the chunks they came from are freed: one copy in all."""
        if not self.estimates:
            return None, {}
        z = torch.stack(self._student_logits)
        self._student_logits = list(z.unbind(0))
        teachers = {
            name: torch.stack(kept)
            for name, kept in self._teacher_logits.items()
            if len(kept) == len(self.estimates)  # not a teacher that returned top-k ids for some chunks
        }
        self._teacher_logits = {
            name: list(teachers[name].unbind(0)) if name in teachers else kept
            for name, kept in self._teacher_logits.items()
        }
        return z, teachers

    def design_weights(self) -> list[float]:
        """Tokens each estimated node stands for, a list that also carries (`.inclusion`) each node's
        inclusion probability (nodes.design_weights; the weight includes the cross-rollout rescaling, so it
        is not 1 / inclusion)."""
        lengths = [len(r.token_ids) for r in self.rollouts]
        groups = [(r.question, bool(r.correct)) for r in self.rollouts]
        w = design_weights([e.node for e in self.estimates], lengths, self.cfg.nodes, groups)
        pi, factor = float(self.cfg.question_inclusion), float(self.cfg.question_weight)
        if pi == 1.0 and factor == 1.0:
            return w
        return DesignWeights([x * factor for x in w], [x * pi for x in w.inclusion])

    def negligible(self) -> torch.Tensor:
        """Nodes adaptive allocation stopped because |g*| is confidently below g_tolerance (their few
        continuations cannot resolve a cosine: left out of per-token means, kept in pooled figures).

        Read off the pilot, as the plan was (so the flag, like the allocation, is independent of the
        estimation outcomes); nodes without a pilot were never stopped."""
        if not self.estimates or self.cfg.allocation != "adaptive":
            return torch.zeros(len(self.estimates), dtype=torch.bool)
        _, p, s, c, mask = pack(self.estimates)
        _, _, ps, pc, pmask = pack(self.estimates, pilot=True)
        g_small = finished(p, ps, pc, pmask, self.cfg.g_tolerance) & pmask.any(-1)
        return g_small & ~ideal_degenerate(s, c, mask, p)

    def run(self, rollouts: Sequence[Rollout] | None = None) -> EstimateResult:
        """Rollouts, nodes (with their first round: the estimate, or under adaptive allocation the pilot),
        the adaptive plan's estimation continuations, results."""
        self.sample(rollouts)
        self.select()
        if self.cfg.allocation == "adaptive":
            self.adapt()
        return self.results()


def estimate(
    engine,
    questions: Sequence[EstimateQuestion],
    teachers: Mapping[str, TeacherFn] | None = None,
    objectives: Sequence = ("rkl",),
    config: EstimateConfig | None = None,
    cache: str | Path | None = None,
    rollouts: Sequence[Rollout] | None = None,
) -> EstimateResult:
    """Run the whole estimate: see the package docstring."""
    est = Estimator(engine, questions, teachers, objectives, config, cache)
    try:
        return est.run(rollouts)
    finally:
        if est.cache is not cache:  # close only what we opened
            est.cache.close()

