"""`diagnose plan` / `diagnose run --dry-run`: the bill of a run before it is spent.

`expected_work` (plan_work.py) is arithmetic on the config and the calibration's rollout lengths: counts that
the budget bounds are given as [lo, hi] bounds, with point estimates beside them. `calibrate` samples the first
questions' rollouts as the run does, times one scoring pass and measures the candidate-set size on the loaded
engine; `plan` loads the models the way the Runner does (so bad input is refused the same way), never creates
the run directory, and turns both into an ETA range.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from typing import Mapping, Sequence

from ..errors import DiagnoseError
from ..estimate.candidates import candidate_sets
from ..estimate.frontier import plan_budgets
from ..estimate.nodes import Node
from ..estimate.pipeline import Estimator
from ..tables import verdict_note
from ..teachers.at_nodes import TeacherAtNodes
from .config import RunConfig
from .plan_work import (  # noqa: F401 - the plan's arithmetic, importable from here as before
    budget_model,
    continuation_bounds,
    expected_remaining,
    expected_totals,
    expected_work,
    max_passes,
    node_bounds,
    node_budget,
    node_costs,
    selection_remaining,
)
from .runner import Runner

CALIBRATION_ROWS = 32  # rows sampled together in the calibration (fewer when the run has fewer rollouts)


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


def candidate_size(engine, rollouts, teachers: Mapping, cfg: RunConfig, positions: int = 16) -> float:
    """Mean candidate-set size (observed token, student top-k, each teacher's top-k, deduplicated: what a node
    really costs per continuation) at up to `positions` positions spread over the rollout of `rollouts` nearest
    their mean length, with the estimator's own `candidate_sets` and the run's own teacher functions."""
    mean = sum(len(r.token_ids) for r in rollouts) / max(1, len(rollouts))
    index = min(range(len(rollouts)), key=lambda i: abs(len(rollouts[i].token_ids) - mean))
    ro = rollouts[index]
    n = len(ro.token_ids)
    if n < 1:
        return float(budget_model(cfg).nominal_candidates)
    pos = sorted({round(i * (n - 1) / max(1, positions - 1)) for i in range(min(positions, n))})
    nodes = [Node(index, t) for t in pos]
    cut = len(ro.prompt_ids)
    z = engine.score([ro.prompt_ids + ro.token_ids], [[cut + t for t in pos]], topk=None)[0].logits
    payloads = {label: fn(rollouts, nodes) for label, fn in teachers.items()}
    cands = candidate_sets(z, [ro.token_ids[t] for t in pos], payloads, cfg.top_k, cfg.top_k)
    return float((cands >= 0).sum(1).float().mean())


def calibrate(
    engine, questions: Sequence, cfg: RunConfig, stop: Sequence[str] = (), teacher_engines=None,
    teachers: Mapping | None = None,
) -> dict:
    """Sample the run's rollouts of its first k questions (k x rollouts = min(32, questions x rollouts) rows)
    exactly as the run samples them (the estimator's seeds: on an engine with per-request seeds they are the
    run's own rollouts), then time scoring one of them on the student and on each external teacher.
    `questions`: the run's EstimateQuestions (their verifiers give the sample's pass rate and the questions with
    both verdicts, where g* can be nonzero). `teachers`: label -> the run's TeacherFn for the first question, to
    measure the candidate-set size a node really has (`candidate_size`). Nothing is cached: the run samples its
    own rollouts."""
    k = min(len(questions), max(1, CALIBRATION_ROWS // cfg.rollouts))
    start = t0 = time.perf_counter()
    rollouts = Estimator(engine, list(questions[:k]), {}, ["rkl"], cfg.estimate_config(stop=stop)).sample()
    sample_s = time.perf_counter() - t0
    rows = [[r for r in rollouts if r.question == i] for i in range(k)]
    tokens = sum(len(r.token_ids) for r in rollouts)
    mean = tokens / max(1, len(rollouts))
    typical = min(rollouts, key=lambda r: abs(len(r.token_ids) - mean))  # the rollout nearest the mean length
    others: Mapping = {m: e for m, e in (teacher_engines or {}).items() if e is not engine}
    score_s = {"self": time_score(engine, typical.prompt_ids, typical.token_ids)}
    score_s.update({m: time_score(e, typical.prompt_ids, typical.token_ids) for m, e in others.items()})
    correct = [[bool(r.correct) for r in row] for row in rows]
    flat = [c for row in correct for c in row]
    try:
        candidates, measured = candidate_size(engine, rows[0], teachers or {}, cfg), True
    except DiagnoseError:  # a teacher that cannot score here (e.g. a context this question lacks): the most
        candidates, measured = float(budget_model(cfg).nominal_candidates), False
    return {
        "pass_rate": sum(flat) / max(1, len(flat)),
        "mixed_questions": sum(0 < sum(row) < len(row) for row in correct),
        "verdicts": correct,
        "verdict_note": verdict_note(flat, [i for i, row in enumerate(correct) for _ in row]),
        "prompts": k,
        "rows": len(rollouts),
        "max_new_tokens": cfg.max_new_tokens,
        "mean_rollout_tokens": mean,
        "lengths": [[len(r.token_ids) for r in row] for row in rows],
        "candidates_per_node": candidates,
        "candidates_measured": measured,
        "generated_tokens": tokens,
        "sample_s": sample_s,
        "tokens_per_s": tokens / max(sample_s, 1e-9),
        "score_tokens": len(typical.prompt_ids) + len(typical.token_ids),
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
            *self._expected_lines(),
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

    def _expected_lines(self) -> list[str]:
        """The point estimates: the estimator's selection replayed on the calibration's rollouts."""
        e = self.work.get("expected")
        if not e:
            return []
        measured = self.calibration.get("candidates_measured")
        source = "candidate sets measured there" if measured else "candidate sets at their most (not measured)"
        return [
            _row("expected nodes", f"~{_num(e['nodes'])} nodes",
                 f"point estimates: the selection replayed on the calibration's rollout lengths, {source}"),
            _row("  continuations", f"~{_num(e['continuations'])} continuations",
                 f"{e['candidates_per_node']:.1f} candidates per node x continuations per candidate"),
            _row("  continuation tokens", f"~{_num(e['continuation_tokens'])} tokens",
                 f"~{e['tokens_per_continuation']:.1f} tokens each (what its rollout had left at the node)"),
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
    questions = [runner.estimate_question(i, runner.engine) for i in range(len(runner.questions))]
    prompts = [q.prompt_ids for q in questions]
    first = runner.questions[0]
    teachers = {tc.label: TeacherAtNodes(tc, runner.teacher_engines[tc.model], first) for tc in runner.teacher_cfgs}
    with runner.progress.status("calibrating (the first questions' rollouts, one scoring pass, candidate sets)"):
        calib = calibrate(runner.engine, questions, cfg, runner.task.stop, runner.teacher_engines, teachers)
    mine, parallel = split(cfg, len(runner.questions))  # a file task may hold fewer than asked for
    mean_prompt = sum(map(len, prompts)) / len(prompts)
    budgets = None
    if cfg.frontier < 1 and calib.get("verdicts"):
        # the frontier plan, estimated: the calibration's questions stand in for the rest, in turn
        sample = calib["verdicts"]
        pattern = [sample[i % len(sample)] for i in range(mine)]
        ids = [q.id for q in runner.questions][:mine]
        budgets = [p.budget for p in plan_budgets(pattern, ids, cfg.budget, cfg.frontier, cfg.seed)]
    work = expected_work(replace(cfg, questions=mine), calib["mean_rollout_tokens"], mean_prompt, budgets,
                         calib["lengths"], calib["candidates_per_node"])
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
