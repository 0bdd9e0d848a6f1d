"""One question's job, the same for the local run and a Ray worker: what a run loads once (task, student,
teachers) and how one question becomes its tables and cost (QuestionOutput), writing nothing but caches.
The Runner (runner.py) adds the run directory, commits and resume on top; scale.py's workers use it as is."""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .. import engines, tasks
from ..engines.base import precision, render_prompt
from ..errors import DiagnoseError
from ..estimate import EstimateConfig, EstimateQuestion, Estimator
from ..estimate.frontier import QuestionPlan, with_plan
from ..estimate.param_cos import param_cosines
from ..objectives import parse as parse_objective
from ..tables import standard_metadata
from ..teachers import parse_teacher
from ..teachers.at_nodes import TeacherAtNodes, check_context_available
from ..teachers.scoring import max_context
from ..teachers.summaries import summarize
from .config import RunConfig
from .inflight import BatchedEngine
from .progress import Progress
from .teachers import load_teacher_engines

TABLES = ("rollouts", "nodes", "candidates", "alignment")


def shard_id(index: int) -> str:
    return f"q{index:05d}"


@dataclass
class QuestionOutput:
    """One question's computed tables and cost, not yet written: a worker computes it, the run commits it."""

    index: int
    frames: dict  # table name -> DataFrame
    cost: dict
    metadata: dict  # Parquet metadata of its shards (models, seeds, precision)
    device: str


class QuestionJob:
    """Holds what a run loads once (task, engines, teachers) and computes one question at a time.

    `worker=True`: a scale-out worker (scale.py), which computes questions and never writes the run directory
    (the driver commits), so it needs no access to it."""

    def __init__(self, cfg: RunConfig, progress: bool | None = None, worker: bool = False):
        self.cfg = cfg
        self.out = Path(cfg.out).expanduser()
        self.worker = worker
        self.task = tasks.get(cfg.task)
        self.questions = self.task.questions(cfg.questions, seed=cfg.seed)
        if not self.questions:
            raise DiagnoseError(f"task {cfg.task!r} has no questions")
        self.teacher_cfgs = [parse_teacher(t) for t in cfg.teachers]
        self.objectives = [parse_objective(o) for o in cfg.objectives]
        for tc in self.teacher_cfgs:
            check_context_available(tc, self.questions[0])
        self.progress = Progress(enabled=cfg.progress if progress is None else progress)
        self.engine = None
        self.teacher_engines = {}
        self.plans: list[QuestionPlan] | None = None  # the frontier plan, once made (Runner.plan_frontier)
        self.planned_rollouts: dict[int, list] = {}  # question -> the rollouts the plan was made from

    @property
    def cache_root(self) -> Path:
        """Where continuation caches and teacher-context summaries live: `cache_dir`/<config digest> when set,
        else the run directory's cache/ (a scale-out worker: its machine's temp folder, never a shared disk,
        since SQLite must not live on a network file system)."""
        if self.cfg.cache_dir:
            return Path(self.cfg.cache_dir).expanduser() / self.cfg.digest()
        if self.worker:
            return Path(tempfile.gettempdir()) / "diagnose-cache" / self.cfg.digest()
        return self.out / "cache"

    # ---- loading -------------------------------------------------------------------------------------
    def load(self, engine_options: dict | None = None, served_teachers: dict | None = None) -> None:
        """Load the student (`engine_options`: extra engine arguments) and the external teachers
        (`served_teachers`: model -> an engine already running elsewhere), and check every prompt fits."""
        if self.engine is not None:
            return
        with self.progress.status(f"loading student {self.cfg.student} ({self.cfg.engine})"):
            self.load_student(engine_options)
            self.load_teachers(served_teachers)

    def load_student(self, engine_options: dict | None = None) -> None:
        self.engine = engines.load(self.cfg.engine, self.cfg.student, **(engine_options or {}))

    def load_teachers(self, served: dict | None = None) -> None:
        """External teachers (the student must be loaded), then the prompt-length check."""
        self.teacher_engines = load_teacher_engines(
            self.teacher_cfgs, self.engine, self.cfg.engine, self.cfg.teacher_dtype, served
        )
        limit = max_context(self.engine)
        for q in self.questions:
            n = len(render_prompt(self.engine.tokenizer, q.prompt))
            if limit is not None and n + self.cfg.max_new_tokens > limit:
                raise DiagnoseError(
                    f"question {q.id}: prompt of {n} tokens plus --max-new-tokens {self.cfg.max_new_tokens} "
                    f"exceeds the model's context of {limit} tokens"
                )

    def estimate_config(self) -> EstimateConfig:
        return self.cfg.estimate_config(stop=self.task.stop)

    def metadata(self) -> dict:
        return standard_metadata(
            models={"student": self.cfg.student, "teachers": self.cfg.teachers},
            seeds={"seed": self.cfg.seed},
            config_hash=self.cfg.digest(),
            temperature=self.cfg.temperature,
            teacher_temperature=self.estimate_config().scoring_temperature,
            engine=self.cfg.engine,
            teacher_dtype=self.cfg.teacher_dtype,
            student_dtype=precision(self.engine),
        )

    # ---- one question --------------------------------------------------------------------------------
    def estimate_question(self, index: int, engine) -> EstimateQuestion:
        q = self.questions[index]
        prompt_ids = render_prompt(engine.tokenizer, q.prompt)
        return EstimateQuestion(id=q.id, prompt_ids=prompt_ids, verify=lambda text, q=q: self.task.verify(q, text))

    def question_rollouts(self, index: int, engine=None, cached: bool = True) -> list:
        """One question's rollouts, sampled as its estimate samples them: their verdicts are what its frontier
        plan is made from, and the estimate is given them back (`compute_question(rollouts=...)`). With
        `cached`, they also go into the question's continuation cache (a resume finds them there)."""
        engine = engine or self.engine
        cache = None
        if cached:
            self.cache_root.mkdir(parents=True, exist_ok=True)
            cache = self.cache_root / f"{shard_id(index)}.sqlite"
        est = Estimator(engine, [self.estimate_question(index, engine)], {}, self.objectives,
                        self.estimate_config(), cache=cache)
        try:
            return est.sample()
        finally:
            est.cache.close()

    def compute_question(
        self, index: int, engine=None, teacher_engines=None, exclusive=None, plan: QuestionPlan | None = None,
        rollouts: list | None = None,
    ) -> QuestionOutput:
        """Estimate one question; writes nothing in the run directory (only the cache). `engine` /
        `teacher_engines`: what to call (the batched wrappers when questions run in flight); `exclusive(fn)`:
        how to run direct model work (parameter-space gradients) so that it never overlaps an engine call;
        `plan`: its frontier plan (default: the run's, `self.plans`, when made); `rollouts`: the ones the plan
        was made from (default: those this process sampled for it, else sampled here, from the cache)."""
        engine = engine or self.engine
        teacher_engines = teacher_engines or self.teacher_engines
        if plan is None and self.plans is not None:
            plan = self.plans[index]
        if rollouts is None:
            rollouts = self.planned_rollouts.pop(index, None)
        q = self.questions[index]
        t0 = time.perf_counter()
        eq = self.estimate_question(index, engine)
        summary = None
        if any(tc.context == "summary" for tc in self.teacher_cfgs) and not q.meta.get("summary"):
            if q.solution:
                summary = summarize(engine, [q.solution], self.cache_root / "summaries", self.cfg.seed)[0]
        fns = {tc.label: TeacherAtNodes(tc, teacher_engines[tc.model], q, summary) for tc in self.teacher_cfgs}
        self.cache_root.mkdir(parents=True, exist_ok=True)
        est = Estimator(
            engine,
            [eq],
            fns,
            self.objectives,
            with_plan(self.estimate_config(), plan),
            cache=self.cache_root / f"{shard_id(index)}.sqlite",
        )
        try:
            result = est.run(rollouts)
        finally:
            est.cache.close()
        param_cos = {}
        if self.cfg.param_space:
            work = lambda: param_cosines(self.engine, result, self.objectives)  # noqa: E731
            param_cos = exclusive(work) if exclusive is not None else work()
        frames = result.tables(
            engine.tokenizer.decode, self.task.final_answer, {q.id: q.answer}, result.proxies(), param_cos
        )
        del frames["rollout_alignment"]  # not a run table: the summary computes it from the alignment rows
        batcher = engine.batcher if isinstance(engine, BatchedEngine) else None  # it times the engine calls
        tally = est.gen.tally
        cost = {
            "rollouts": len(result.rollouts),
            "rollouts_cached": tally["rollouts"].cached,
            "generated_tokens": int(sum(len(r.token_ids) for r in result.rollouts)),
            "continuations": int(result.summary["continuations"]),
            "continuations_generated": tally["continuations"].generated,
            "continuations_cached": tally["continuations"].cached,
            "continuation_tokens": int(result.summary["continuation_tokens"]),
            "continuation_tokens_generated": tally["continuations"].generated_tokens,
            "teacher_tokens": int(sum(f.tokens for f in fns.values())),
            "nodes": int(result.summary["nodes"]),
            "live_nodes": int(sum(not rec["degenerate"] for rec in result.node_records)),
            "budget": float(plan.budget if plan is not None else self.cfg.budget),
            "question_s": round(time.perf_counter() - t0, 3),
            "engine_s": {k: round(v, 6) for k, v in (batcher.take_seconds(index) if batcher else {}).items()},
        }
        device = str(self.engine.device)
        return QuestionOutput(index, frames, cost, self.metadata(), device)
