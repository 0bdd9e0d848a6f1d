"""`diagnose plan` / `diagnose run --dry-run`: the bill of a run before it is spent.

`expected_work` is arithmetic on the config (and a mean rollout length): counts that the budget bounds are
given as [lo, hi] bounds, the rest as estimates. `calibrate` times a short sample and one scoring pass on the
loaded engine; `plan` loads the models the way the Runner does (so bad input is refused the same way), never
creates the run directory, and turns both into an ETA range.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Mapping, Sequence

from ..engines.base import render_prompt
from ..estimate.budget import Budget
from ..estimate.frontier import plan_budgets
from ..estimate.nodes import select_nodes, window_index
from ..estimate.pipeline import REFINE_PASSES
from ..estimate.pipeline import SELECTION_PASSES as MAX_PASSES
from ..tables import verdict_note
from .config import RunConfig
from .runner import Runner

CALIBRATION_ROWS = 32  # rows sampled together in the calibration (fewer when the run has fewer rollouts)


# ---- arithmetic on the config ------------------------------------------------------------------------------


def budget_model(cfg: RunConfig) -> Budget:
    """The estimator's own cost model for this run (what a node's first round costs, what selection may spend)."""
    return Budget(cfg.estimate_config(), len(cfg.teachers))


def node_costs(cfg: RunConfig) -> tuple[int, int]:
    """(fewest, most) continuations a node's first round can cost, by the estimator's Budget: candidate sets
    hold top_k to 1 + top_k + top_k x teachers tokens (they overlap), each candidate gets `continuations`
    (adaptive: its pilot's); the most is what selection reserves."""
    budget = budget_model(cfg)
    return budget.first_round(max(cfg.top_k, 1)), budget.first_round(budget.nominal_candidates)


def node_budget(cfg: RunConfig) -> float:
    """Continuations node selection may spend on first rounds (adaptive keeps a reserve for planned ones)."""
    return budget_model(cfg).node_budget


def _window_remaining(n: int, w: int, anchor: str) -> float:
    """Mean tokens left (L - t, the forced token included) over window w of a rollout of n tokens: offsets
    [2^w - 1, 2^(w+1) - 1) from the anchor, clipped to the rollout."""
    a, b = 2**w - 1, min(2 ** (w + 1) - 1, n)
    mean_offset = (a + b - 1) / 2
    return mean_offset + 1 if anchor == "end" else n - mean_offset


def expected_remaining(length: float, strategy: str = "windows") -> float:
    """Mean tokens left after a node in a rollout of `length` tokens (rounded) when every window gets an equal
    share of nodes and positions are uniform inside a window (a budget large enough for every window)."""
    n = int(round(length))
    if n < 1:
        return 0.0
    if strategy in ("uniform", "every"):
        return (n + 1) / 2
    anchor = "end" if strategy == "windows_end" else "start"
    return sum(_window_remaining(n, w, anchor) for w in range(n.bit_length())) / n.bit_length()


def selection_remaining(cfg: RunConfig, length: float) -> float:
    """Mean tokens left after a node where a first selection pass puts nodes (nodes.select_nodes on `rollouts`
    rollouts of `length` tokens, each node at the most cost): a window whose share buys no node passes it on,
    so a small budget gathers nodes in the widest windows, late in the response."""
    n = int(round(length))
    if n < 1 or cfg.nodes in ("uniform", "every"):
        return expected_remaining(n, cfg.nodes)
    anchor = "end" if cfg.nodes == "windows_end" else "start"
    _, most = node_costs(cfg)
    strategy = "windows_end" if anchor == "end" else "windows"
    chosen = select_nodes([n] * cfg.rollouts, node_budget(cfg), lambda r, t: most, strategy, seed=cfg.seed)
    if not chosen:
        return expected_remaining(n, cfg.nodes)
    windows = [window_index(node.position, n, anchor) for node in chosen]
    return sum(_window_remaining(n, w, anchor) for w in windows) / len(windows)


def node_bounds(cfg: RunConfig, positions: int) -> tuple[int, int]:
    """[lo, hi] nodes of one question: the first pass takes floor(node budget / most cost) nodes (`refine`: of
    its first share), later passes only add; spend never passes the node budget (the budget, less adaptive's
    reserve) and each node costs at least the fewest; at most MAX_PASSES passes (not `refine`) each take at
    most that many. Never beyond `positions`."""
    least, most = node_costs(cfg)
    if cfg.nodes == "every":
        return positions, positions
    share = cfg.estimate_config().refine_fraction if cfg.nodes == "refine" else 1.0
    spend = node_budget(cfg)
    first = math.floor(spend * share + 1e-9) // most
    hi = min(math.floor(spend + 1e-9) // least, positions)
    if cfg.nodes != "refine":
        hi = min(hi, MAX_PASSES * first)
    return min(first, positions), hi


def continuation_bounds(cfg: RunConfig, positions: int) -> tuple[int, int]:
    """[lo, hi] continuations of one question, at most the budget. Selection ends when what is left of the node
    budget buys no node at the most cost (spent > node budget - most cost), after MAX_PASSES passes (each
    adding a node), or when every position is a node: first rounds spend at least the smallest of those three
    (`refine`: its first-pass nodes). Adaptive's planned continuations come on top, up to the budget."""
    least, most = node_costs(cfg)
    adaptive = cfg.allocation == "adaptive"
    if cfg.nodes == "every":  # every position is a node, whatever its first rounds cost
        return least * positions, (max if adaptive else min)(cfg.budget, most * positions)
    first, nodes_hi = node_bounds(cfg, positions)
    # uniform allocation spends only first rounds, at most the nominal cost per node: few positions cap it
    hi = cfg.budget if adaptive else min(cfg.budget, most * nodes_hi)
    if cfg.nodes == "refine":
        return least * first, hi
    spend = math.floor(node_budget(cfg) + 1e-9)
    lo = min(spend - most + 1, least * (first + MAX_PASSES - 1), least * positions)
    return max(lo, 0), hi


def max_passes(cfg: RunConfig, nodes_hi: int) -> int:
    """Selection passes that score rollouts: each adds a node; at most MAX_PASSES (`refine`: plus its own
    REFINE_PASSES), one for `every`."""
    if cfg.nodes == "every":
        return 1
    limit = MAX_PASSES + (REFINE_PASSES if cfg.nodes == "refine" else 0)
    return max(1, min(limit, nodes_hi))


def in_continuations(cfg: RunConfig, length: float) -> RunConfig:
    """The config with a token budget (`--budget-unit tokens`) read as the continuations it buys: the budget
    over the mean tokens a continuation runs (L - t where selection puts nodes). An estimate, not a bound:
    the estimator spends a token budget in expectation (its second round plans on what the first one cost).
    A budget in continuations is returned as it is."""
    if cfg.budget_unit != "tokens":
        return cfg
    as_continuations = replace(cfg, budget_unit="continuations")
    first = replace(as_continuations, budget=max(1, math.floor(cfg.budget / max(1.0, expected_remaining(length)))))
    per_continuation = max(1.0, selection_remaining(first, length))
    return replace(as_continuations, budget=max(1, math.floor(cfg.budget / per_continuation + 1e-9)))


def _planned_bounds(cfg: RunConfig, positions: int, budgets: Sequence[float], length: float) -> tuple[list, list]:
    """[lo, hi] nodes and continuations summed over questions estimated at `budgets` (0: skipped)."""
    nodes, conts = [0, 0], [0, 0]
    for b in budgets:
        if b <= 0:
            continue
        one = in_continuations(replace(cfg, budget=b), length)
        nodes = [x + y for x, y in zip(nodes, node_bounds(one, positions), strict=True)]
        conts = [x + y for x, y in zip(conts, continuation_bounds(one, positions), strict=True)]
    return nodes, conts


def expected_work(
    cfg: RunConfig, mean_rollout_tokens: float, mean_prompt_tokens: float = 0.0, budgets: Sequence[float] | None = None
) -> dict:
    """What the config asks for, given the mean rollout length L (and prompt length): ranges are [lo, hi];
    the ones named as bounds hold while each question's rollouts have at least rollouts x L positions.
    `budgets`: each question's budget under the frontier plan (0: skipped; default: every question at
    --budget); the per-question figures are those of a question estimated at --budget."""
    q, r, length = cfg.questions, cfg.rollouts, float(mean_rollout_tokens)
    rollouts = q * r
    positions = math.floor(r * length + 1e-9)
    given = cfg
    cfg = in_continuations(cfg, length)  # a token budget as the continuations it buys (then all are estimates)
    least, most = node_costs(cfg)
    nodes = node_bounds(cfg, positions)
    conts = continuation_bounds(cfg, positions)
    planned = [given.budget] * q if budgets is None else budgets
    total_nodes, total_conts = _planned_bounds(given, positions, planned, length)
    remaining = selection_remaining(cfg, length)
    passes = (1, max_passes(cfg, nodes[1]))
    scored_per_pass = rollouts * (mean_prompt_tokens + length)  # one model's pass over every rollout
    teachers = len(cfg.teachers)
    # prefill: each prompt once for its rollouts; each node's prefix once for all its continuations
    prefill = [q * mean_prompt_tokens + n * (mean_prompt_tokens + length - remaining) for n in total_nodes]
    generated = [rollouts * length + c * remaining for c in total_conts]
    scored = [(1 + teachers) * scored_per_pass * p for p in passes]
    return {
        "questions": q,
        "rollouts": rollouts,
        "rollouts_per_question": r,
        "mean_rollout_tokens": length,
        "mean_prompt_tokens": float(mean_prompt_tokens),
        "rollout_tokens": rollouts * length,
        "positions_per_question": positions,
        "budget_unit": given.budget_unit,
        # a token budget: the continuations it buys per question (~; the node and continuation figures are then
        # estimates, not bounds)
        "budget_continuations": cfg.budget,
        "node_cost_continuations": [least, most],
        "nodes_per_question": list(nodes),
        "nodes": total_nodes,
        "continuations_per_question": list(conts),
        "continuations": total_conts,
        "node_selection": cfg.nodes,
        "mean_remaining_tokens": remaining,
        "mean_remaining_tokens_equal_shares": expected_remaining(length, cfg.nodes),
        "continuation_tokens": [c * remaining for c in total_conts],
        "planned_budgets": None if budgets is None else [float(b) for b in budgets],
        "selection_passes": list(passes),
        "teacher_scored_tokens_per_pass": teachers * scored_per_pass,
        "teacher_scored_tokens": [teachers * scored_per_pass * p for p in passes],
        "engine_forward_tokens": [g + p + s for g, p, s in zip(generated, prefill, scored, strict=True)],
    }


# ---- measurement on the loaded engine ----------------------------------------------------------------------


def time_score(engine, prompt_ids: Sequence[int], response_ids: Sequence[int], repeats: int = 2) -> float:
    """Seconds for one `engine.score` of prompt + response at every response position (full logits, as the
    run scores a rollout once per pass for the student and for each teacher); the best of `repeats` calls,
    so a first-call warm-up or a busy moment does not set the estimate."""
    if not response_ids:
        return 0.0
    seq = list(prompt_ids) + list(response_ids)
    best = float("inf")
    for i in range(repeats):
        # a new sequence each time (its last token changed): an engine that keeps what it scored (hf's
        # score_cache) would answer a repeat from memory, and a run's first pass over a rollout does not
        seq[-1] = (int(response_ids[-1]) + i) % engine.vocab_size
        t0 = time.perf_counter()
        engine.score([seq], [list(range(len(prompt_ids), len(seq)))], topk=None)
        best = min(best, time.perf_counter() - t0)
    return best


def calibrate(
    engine, prompts: Sequence[Sequence[int]], cfg: RunConfig, stop: Sequence[str] = (), teacher_engines=None,
    verify: Sequence | None = None,
) -> dict:
    """Sample the run's rollouts for the first k prompts (k x rollouts = min(32, questions x rollouts) rows)
    with its sampling settings, then time scoring one of them on the student and on each external teacher.
    `verify[i](text)`: prompt i's verifier, to report the sample's pass rate and the questions with both
    verdicts (where g* can be nonzero). Nothing is cached: the run samples its own rollouts."""
    k = min(len(prompts), max(1, CALIBRATION_ROWS // cfg.rollouts))
    params = cfg.estimate_config(stop=stop).sampling()
    start = t0 = time.perf_counter()
    rows = engine.sample([list(p) for p in prompts[:k]], cfg.rollouts, params)
    samples = [s for row in rows for s in row]
    sample_s = time.perf_counter() - t0
    tokens = sum(len(s.token_ids) for s in samples)
    mean = tokens / max(1, len(samples))
    typical = min(samples, key=lambda s: abs(len(s.token_ids) - mean))  # the rollout nearest the mean length
    others: Mapping = {m: e for m, e in (teacher_engines or {}).items() if e is not engine}
    score_s = {"self": time_score(engine, prompts[0], typical.token_ids)}
    score_s.update({m: time_score(e, prompts[0], typical.token_ids) for m, e in others.items()})
    verdicts = {}
    if verify is not None:
        correct = [[bool(verify[i](s.text)) for s in row] for i, row in enumerate(rows)]
        flat = [c for row in correct for c in row]
        verdicts = {
            "pass_rate": sum(flat) / max(1, len(flat)),
            "mixed_questions": sum(0 < sum(row) < len(row) for row in correct),
            "verdicts": correct,
            "verdict_note": verdict_note(flat, [i for i, row in enumerate(correct) for _ in row]),
        }
    return {
        **verdicts,
        "prompts": k,
        "rows": k * cfg.rollouts,
        "max_new_tokens": cfg.max_new_tokens,
        "mean_rollout_tokens": mean,
        "generated_tokens": tokens,
        "sample_s": sample_s,
        "tokens_per_s": tokens / max(sample_s, 1e-9),
        "score_tokens": len(prompts[0]) + len(typical.token_ids),
        "score_s": score_s,
        "seconds": time.perf_counter() - start,  # the whole calibration, scoring included
        "cached": False,
    }


# ---- the plan ----------------------------------------------------------------------------------------------


@dataclass
class Plan:
    """The bill of a run: expected work (from the config), the calibration it rests on, and the ETA range."""

    student: str
    engine: str
    device: str
    task: str
    teachers: list[str]
    objectives: list[str]
    budget: int
    work: dict
    calibration: dict
    load_s: float
    eta_s: list[float]  # [lo, hi]
    eta_parts: dict = field(default_factory=dict)  # seconds: load, generation [lo, hi], scoring [lo, hi]
    workers: int = 1  # workers the generation and scoring are split over (--workers)
    shard: str = ""  # "i/N": the plan bills this shard's questions only

    def to_dict(self) -> dict:
        """Plain JSON-ready values."""
        return asdict(self)

    def describe(self) -> str:
        """Readable multi-line bill: each quantity with its unit, then the ETA and what it rests on."""
        return "\n".join(self._header() + self._work_lines() + self._eta_lines())

    def _header(self) -> list[str]:
        least, most = self.work["node_cost_continuations"]
        return [
            f"plan: student {self.student} on {self.engine} ({self.device}), task {self.task}, "
            f"{len(self.teachers)} teacher(s) x {len(self.objectives)} objective(s)"
            + (f", shard {self.shard} (its questions only)" if self.shard else ""),
            f"  budget {self._budget_text()} per question; one node costs {least} to {most} continuations "
            "(its candidate set is smaller when top-k lists overlap)",
            *self._verdict_lines(),
            "",
            "work (ranges marked 'bounds' hold whatever the model does, given the rollout length; '~' marks "
            "estimates)",
        ]

    def _budget_text(self) -> str:
        if self.work.get("budget_unit") == "tokens":
            return f"{self.budget} continuation tokens (~{self.work['budget_continuations']} continuations)"
        return f"{self.budget} continuations"

    def _verdict_lines(self) -> list[str]:
        """The calibration sample's pass rate, and a warning when its verdicts leave nothing to learn from."""
        c = self.calibration
        if "pass_rate" not in c:
            return []
        lines = [
            f"  student on the calibration sample: pass rate {c['pass_rate']:.2f} over {c['rows']} rollouts; "
            f"{c['mixed_questions']} of {c['prompts']} questions with both verdicts (g* can be nonzero only there)"
        ]
        if c.get("verdict_note"):
            lines.append(f"  warning: {c['verdict_note']}")
        budgets = self.work.get("planned_budgets")
        if budgets is not None:
            skipped = sum(b <= 0 for b in budgets)
            lines.append(
                f"  frontier plan (estimated from the calibration sample): ~{skipped} of {len(budgets)} questions "
                "skipped (their rollouts all agree); the budget they free goes to the questions with both verdicts"
            )
        return lines

    def _work_lines(self) -> list[str]:
        w = self.work
        per_q = w["rollouts_per_question"]
        # a budget in tokens buys ~ budget / (tokens a continuation runs) continuations: estimates, not bounds
        kind = "estimates" if w.get("budget_unit") == "tokens" else "bounds"
        length, prompt = w["mean_rollout_tokens"], w["mean_prompt_tokens"]
        return [
            _row("questions", f"{w['questions']}"),
            _row("rollouts", f"{w['rollouts']}", f"{per_q} per question"),
            _row(
                "rollout tokens",
                f"~{_num(w['rollout_tokens'])} tokens",
                f"{w['rollouts']} x {length:.1f} tokens (mean length in the calibration)",
            ),
            _row(
                "nodes",
                _span(w["nodes"], "nodes"),
                f"{kind}: {_span(w['nodes_per_question'], '')}per question "
                f"(of ~{w['positions_per_question']} positions)",
            ),
            _row(
                "continuations",
                _span(w["continuations"], "continuations"),
                f"{kind}: {_span(w['continuations_per_question'], '')}per question"
                + ("; at most the budget" if kind == "bounds" else ""),
            ),
            _row(
                "continuation tokens",
                _span(w["continuation_tokens"], "tokens", "~"),
                f"x ~{w['mean_remaining_tokens']:.1f} tokens left after a node where {w['node_selection']} "
                "selection puts them",
            ),
            _row(
                "teacher-scored tokens",
                _span(w["teacher_scored_tokens"], "tokens", "~"),
                f"{len(self.teachers)} teacher(s) x {w['rollouts']} rollouts x ({prompt:.0f} prompt + "
                f"{length:.0f}) tokens per pass; {_span(w['selection_passes'], 'passes')}",
            ),
            _row(
                "engine forward tokens",
                _span(w["engine_forward_tokens"], "tokens", "~"),
                "generated + prefill (a prefix once per node) + scored (student and teachers)",
            ),
        ]

    def _eta_lines(self) -> list[str]:
        c, parts = self.calibration, self.eta_parts
        scores = ", ".join(f"{m} {s:.3f} s" for m, s in c["score_s"].items())
        return [
            "",
            f"ETA ~{_duration(self.eta_s[0])} to ~{_duration(self.eta_s[1])} (estimate; summary and report not "
            "included)",
            _row("model load", f"{_duration(parts['load_s'])}", "measured (student and external teachers)"),
            _row(
                "generation",
                _duration_span(parts["generation_s"]),
                f"(rollout + continuation tokens) / {c['tokens_per_s']:.1f} tokens/s"
                + (f" / {self.workers} workers" if self.workers > 1 else ""),
            ),
            _row(
                "scoring",
                _duration_span(parts["scoring_s"]),
                f"passes x rollouts x (student + each teacher) x one rollout of {c['score_tokens']} tokens "
                f"scored alone: {scores}",
            ),
            *(
                [f"split over {self.workers} Ray workers, each taken to run as fast as this calibration (workers "
                 "that share this machine's cores or GPU run slower)"]
                if self.workers > 1
                else []
            ),
            f"calibration on {self.engine} ({self.device}): {c['rows']} rows ({c['prompts']} prompt(s) x "
            f"{c['rows'] // max(1, c['prompts'])} rollouts, up to {c['max_new_tokens']} new tokens), "
            f"{c['generated_tokens']} tokens in {c['sample_s']:.1f} s; its rollouts are not cached or reused",
            "  (the run's calls carry the rows of every question in flight, continuation calls more: its rate "
            "differs)",
        ]


def _row(name: str, value: str, note: str = "") -> str:
    """One aligned line of the bill: name, value with its unit, what it rests on."""
    return f"  {name:<23}{value:<28}{note}".rstrip()


def _num(x: float) -> str:
    """A count with thousands separators."""
    return f"{x:,.0f}"


def _span(pair: Sequence[float], unit: str, mark: str = "") -> str:
    """`lo to hi unit` (one number when they agree); `mark` ("~") flags estimates."""
    lo, hi = pair
    text = f"{mark}{_num(lo)}" if round(lo) == round(hi) else f"{mark}{_num(lo)} to {mark}{_num(hi)}"
    return f"{text} {unit}" if unit else f"{text} "


def _duration(seconds: float) -> str:
    """Seconds in the unit a reader wants (s, min, h)."""
    if seconds < 90:
        return f"{seconds:.1f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _duration_span(pair: Sequence[float]) -> str:
    """`lo to hi` as durations."""
    return f"{_duration(pair[0])} to {_duration(pair[1])}"


def eta(
    work: dict, calibration: dict, load_s: float, teacher_models: Sequence[str], parallel: int = 1
) -> dict:
    """ETA parts in seconds: load, generation [lo, hi] (rollout + continuation tokens at the calibrated rate)
    and scoring [lo, hi] (passes x rollouts x (one student pass + one per teacher, each timed on its model)),
    the last two split over `parallel` workers that each run as fast as the calibration (they load at once)."""
    rate = calibration["tokens_per_s"] * max(1, parallel)
    generation = [(work["rollout_tokens"] + c) / rate for c in work["continuation_tokens"]]
    times = calibration["score_s"]
    per_rollout = times["self"] + sum(times.get(m, times["self"]) for m in teacher_models)
    scoring = [p * work["rollouts"] * per_rollout / max(1, parallel) for p in work["selection_passes"]]
    total = [load_s + g + s for g, s in zip(generation, scoring, strict=True)]
    return {"load_s": load_s, "generation_s": generation, "scoring_s": scoring, "total_s": total}


def plan(cfg: RunConfig, progress: bool = True) -> Plan:
    """Load the run's models as the Runner does (every check it makes happens), calibrate, and bill the run.
    Creates nothing: the run directory is made only by Runner.run()."""
    runner = Runner(cfg, progress)
    t0 = time.perf_counter()
    runner.load()
    load_s = time.perf_counter() - t0
    prompts = [render_prompt(runner.engine.tokenizer, q.prompt) for q in runner.questions]
    with runner.progress.status("calibrating (a short sample and one scoring pass)"):
        verify = [lambda text, q=q: runner.task.verify(q, text) for q in runner.questions]
        calib = calibrate(runner.engine, prompts, cfg, runner.task.stop, runner.teacher_engines, verify)
    mine, parallel = split(cfg, len(runner.questions))  # a file task may hold fewer than asked for
    mean_prompt = sum(map(len, prompts)) / len(prompts)
    budgets = None
    if cfg.frontier < 1 and calib.get("verdicts"):
        # the frontier plan, estimated: the calibration's questions stand in for the rest, in turn
        sample = calib["verdicts"]
        pattern = [sample[i % len(sample)] for i in range(mine)]
        ids = [q.id for q in runner.questions][:mine]
        budgets = [p.budget for p in plan_budgets(pattern, ids, cfg.budget, cfg.frontier, cfg.seed)]
    work = expected_work(replace(cfg, questions=mine), calib["mean_rollout_tokens"], mean_prompt, budgets)
    parts = eta(work, calib, load_s, [tc.model for tc in runner.teacher_cfgs], parallel)
    return Plan(
        student=cfg.student,
        engine=cfg.engine,
        device=str(runner.engine.device),
        task=cfg.task,
        teachers=list(cfg.teachers),
        objectives=list(cfg.objectives),
        budget=cfg.budget,
        work=work,
        calibration=calib,
        load_s=load_s,
        eta_s=parts.pop("total_s"),
        eta_parts=parts,
        workers=parallel,
        shard=cfg.shard or "",
    )


def split(cfg: RunConfig, questions: int) -> tuple[int, int]:
    """(questions this process bills, workers that share them): a `--shard i/N` process takes the questions
    whose index is i mod N; `--workers W` spreads them over min(W, questions) Ray workers. With only a
    `--ray-address` the cluster's size is not known here, and the plan counts one worker."""
    part = cfg.shard_slice()
    mine = len(range(part[0], questions, part[1])) if part else questions
    return mine, max(1, min(cfg.workers, mine)) if cfg.workers > 0 else 1


__all__ = ["Plan", "calibrate", "eta", "expected_remaining", "expected_work", "plan", "split"]
