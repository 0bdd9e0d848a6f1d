"""`diagnose run`, end to end: task -> student rollouts -> nodes -> candidates -> targeted continuations
-> Q, V, g* -> teacher scoring -> d per objective -> alignment -> Parquet tables -> summary -> report.

Each question is worked on by itself and written as one shard per table (alignment last), so a killed run
resumes with the questions whose alignment shard is missing; continuations are also cached on disk, so even a
half-finished question restarts without regenerating what it had. Several questions are in flight at once
(`in_flight`, worker threads): their engine calls are merged into shared calls (inflight.py), which keeps the
engine busy without changing any question's numbers.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import engines, tasks
from ..alignment import proxies
from ..engines.base import render_prompt
from ..errors import DiagnoseError
from ..estimate import EstimateConfig, EstimateQuestion, EstimateResult, Estimator
from ..objectives import parse as parse_objective
from ..report import standard_metadata, write_summary, write_table
from ..report.tables import completed_shards
from ..teachers import parse_teacher
from ..teachers.scoring import max_context
from ..teachers.summaries import summarize
from .config import RunConfig
from .frames import frames_for_question
from .inflight import BatchedEngine, Batcher, batched_engines
from .param_cos import param_cosines
from .progress import Progress
from .rundir import check_writable, open_run_dir, write_atomic
from .teachers import TeacherAtNodes, check_context_available, load_teacher_engines

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


class Runner:
    """Holds what a run loads once (task, engines, teachers) and processes questions one shard at a time.

    `worker=True`: a scale-out worker (scale.py), which computes questions and never writes the run directory
    (the driver commits), so it needs no access to it."""

    def __init__(self, cfg: RunConfig, progress: bool | None = None, worker: bool = False):
        self.cfg = cfg
        self.out = Path(cfg.out).expanduser()
        self.worker = worker
        if not worker:
            check_writable(self.out)
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
        self.device = None  # the student's device, once a question has been computed

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
            student_dtype=str(getattr(self.engine, "dtype", "auto")).replace("torch.", ""),
        )

    # ---- one question --------------------------------------------------------------------------------
    def run_question(self, index: int, engine=None, teacher_engines=None, exclusive=None) -> dict:
        """Estimate one question and commit its shards (alignment last); returns its cost."""
        return self.commit(self.compute_question(index, engine, teacher_engines, exclusive))

    def compute_question(self, index: int, engine=None, teacher_engines=None, exclusive=None) -> QuestionOutput:
        """Estimate one question; writes nothing in the run directory (only the cache). `engine` /
        `teacher_engines`: what to call (the batched wrappers when questions run in flight); `exclusive(fn)`:
        how to run direct model work (parameter-space gradients) so that it never overlaps an engine call."""
        engine = engine or self.engine
        teacher_engines = teacher_engines or self.teacher_engines
        q = self.questions[index]
        t0 = time.perf_counter()
        prompt_ids = render_prompt(engine.tokenizer, q.prompt)
        eq = EstimateQuestion(id=q.id, prompt_ids=prompt_ids, verify=lambda text, q=q: self.task.verify(q, text))
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
            self.estimate_config(),
            cache=self.cache_root / f"{shard_id(index)}.sqlite",
        )
        try:
            result = est.run()
        finally:
            est.cache.close()
        param_cos = {}
        if self.cfg.param_space:
            work = lambda: param_cosines(self.engine, result, self.objectives)  # noqa: E731
            param_cos = exclusive(work) if exclusive is not None else work()
        teacher_proxies = self._proxies(result)
        frames = frames_for_question(result, q, self.task, engine.tokenizer, teacher_proxies, fns, param_cos)
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
            "question_s": round(time.perf_counter() - t0, 3),
            "engine_s": {k: round(v, 6) for k, v in (batcher.take_seconds(index) if batcher else {}).items()},
        }
        device = str(getattr(self.engine, "device", "cpu"))
        return QuestionOutput(index, frames, cost, self.metadata(), device)

    def commit(self, output: QuestionOutput) -> dict:
        """Write one question's shards and cost (alignment last: its presence marks the question done, so a
        done question always has its cost), and extend this invocation's time record."""
        for name in TABLES[:-1]:
            write_table(self.out, name, output.frames[name], shard=shard_id(output.index), metadata=output.metadata)
        cost_dir = self.out / "cost"
        cost_dir.mkdir(exist_ok=True)
        write_atomic(cost_dir / f"{shard_id(output.index)}.json", json.dumps(output.cost))
        name = TABLES[-1]
        write_table(self.out, name, output.frames[name], shard=shard_id(output.index), metadata=output.metadata)
        self.device = output.device
        self._record_invocation(committed=1)
        return output.cost

    @staticmethod
    def _proxies(result: EstimateResult) -> dict:
        """(teacher label, node id) -> proxy dict, from the student and teacher logits the estimate scored."""
        out = {}
        z = result.student_logits
        if not result.nodes or z is None:
            return out
        observed = torch.tensor([e.observed for e in result.nodes])
        for label, zt in result.teacher_logits.items():
            prox = proxies(z, zt)
            q_tok = torch.softmax(zt.float(), -1)[torch.arange(len(result.nodes)), observed]
            for i, e in enumerate(result.nodes):
                row = {name: float(v[i]) for name, v in prox.items()}
                row["q_token"] = float(q_tok[i])
                out[(label, e.id)] = row
        return out

    # ---- whole run -----------------------------------------------------------------------------------
    def pending(self) -> list[int]:
        """Questions of the run without a committed alignment shard."""
        if not (self.out / "alignment").is_dir():
            return list(range(len(self.questions)))
        done = set(completed_shards(self.out, "alignment"))
        return [i for i in range(len(self.questions)) if shard_id(i) not in done]

    def todo(self) -> list[int]:
        """What this process works on: the pending questions of its `--shard` slice (all of them without)."""
        part = self.cfg.shard_slice()
        return [i for i in self.pending() if part is None or i % part[1] == part[0]]

    def run(self):
        """Run (or resume) and return the loaded result; None when this is a `--shard` whose siblings have
        not all finished (the last shard to finish writes the summary and report)."""
        from ..report import load as load_result
        from ..report import render_report

        started = time.time()  # this invocation's start (see write_cost: elapsed_s)
        self._invocation = None
        # Everything that can fail on bad input (models, tokenizers, prompt lengths) is checked before the
        # run directory is created, so a refused run leaves nothing behind. With Ray, the workers load.
        fresh = not (self.out / "config.toml").exists()
        pool = None
        if self.cfg.uses_ray() and (fresh or self.todo()):
            from .scale import WorkerPool

            pool = WorkerPool(self)
        elif fresh:
            self.load()
        try:
            open_run_dir(self.cfg)
            todo = self.todo()
            if todo:
                self._start_invocation(started)
                part = self.cfg.shard_slice() or (0, 1)
                total = len(range(part[0], len(self.questions), part[1]))  # this process's questions
                with self.progress.bar("questions", total=total, completed=total - len(todo)) as bar:
                    if pool is not None:
                        pool.run(todo, bar)
                    else:
                        self.load()
                        self.run_questions(todo, bar)
        finally:
            if pool is not None:
                pool.close()
        self.write_cost()
        if self.pending():
            return None
        with self.progress.status("summary and report"):
            write_summary(self.out, seed=self.cfg.seed)
            render_report(self.out)
        return load_result(self.out)

    def run_questions(self, todo: list[int], bar=None) -> None:
        """Work through `todo` with up to `in_flight` questions at once, their engine calls merged.

        Questions commit as they finish. If one fails, no new question starts, the others in flight finish
        and commit, and the first error is raised (a rerun resumes with what is left)."""
        workers = min(self.cfg.questions_in_flight(), len(todo))
        show = bar.update if bar is not None else (lambda **_: None)
        batcher = Batcher(on_call=lambda st: show(tokens_per_s=st.generated_per_s(), rows=dict(st.rows)))
        engine, teachers = batched_engines(self.engine, self.teacher_engines, batcher)
        queue, lock, errors = deque(todo), threading.Lock(), []

        def worker() -> None:
            try:
                while True:
                    with lock:
                        if errors or not queue:
                            return
                        index = queue.popleft()
                    batcher.working_on(index)
                    try:
                        self.run_question(index, engine, teachers, batcher.exclusive)
                    except BaseException as err:  # noqa: BLE001 - re-raised by the main thread
                        with lock:
                            errors.append(err)
                        return
                    show(advance=1)
            finally:
                batcher.quit()

        threads = [threading.Thread(target=worker, name=f"question-{k}", daemon=True) for k in range(workers)]
        batcher.join(workers)  # all of them before any starts: the first dispatch waits for every worker
        for t in threads:
            t.start()
        for t in threads:
            while t.is_alive():  # join in slices so Ctrl-C reaches the main thread
                t.join(0.2)
        self.engine_stats = batcher.stats
        if errors:
            raise errors[0]

    # ---- cost --------------------------------------------------------------------------------------
    def _start_invocation(self, started: float) -> None:
        """This process works on questions: from now on it keeps a record of its wall-clock interval in
        cost/invocations/ (updated as questions commit, so a killed process leaves what it had done)."""
        token = f"{int(started * 1000)}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._invocation = {"path": self.out / "cost" / "invocations" / f"{token}.json", "lock": threading.Lock(),
                            "record": {"started": started, "ended": started, "questions": 0,
                                       "shard": self.cfg.shard or None, "workers": self.cfg.workers}}
        self._record_invocation()

    def _record_invocation(self, committed: int = 0) -> None:
        inv = getattr(self, "_invocation", None)
        if inv is None:  # commits outside `run` (or a run with nothing to do) record no interval
            return
        with inv["lock"]:
            record = inv["record"]
            record["ended"] = max(record["ended"], time.time())
            record["questions"] += committed
            inv["path"].parent.mkdir(parents=True, exist_ok=True)
            write_atomic(inv["path"], json.dumps(record))

    def write_cost(self) -> dict:
        """cost.json: the questions' costs summed (cost/qNNNNN.json), plus the run's elapsed time.

        - `elapsed_s`: wall-clock seconds during which some invocation of `diagnose run` was working on this
          run directory, from its start (model loading included) to its cost.json: the union of the intervals
          in cost/invocations/, so resumes add up (the gaps between them do not count) and `--shard` processes
          running side by side count once. An invocation that had nothing to do records nothing.
        - `engine_s`: per stage, busy seconds inside engine calls spent on the committed questions; questions in
          flight share merged calls (split by sequences), and Ray workers or shards run calls side by side, so
          the sum can exceed `elapsed_s` there (never within one process: it runs one engine call at a time).
        - `question_seconds_sum`: each question's seconds from its start to its result, summed; questions in
          flight overlap, so this can exceed elapsed time. (Older runs called it `wall_time_s`.)
        - `continuations` = `continuations_generated` (by the engine, for the committed questions) +
          `continuations_cached` (read from the continuation cache: an interrupted earlier invocation, a run
          sharing --cache-dir, or an identical prefix earlier in the question).
        """
        self._record_invocation()
        total: dict = {}
        for path in sorted((self.out / "cost").glob("q*.json")):
            shard = json.loads(path.read_text())
            if "wall_time_s" in shard:  # written before elapsed time was recorded: it was the question's time
                shard["question_s"] = shard.pop("wall_time_s")
            for key, value in shard.items():
                if isinstance(value, dict):
                    into = total.setdefault(key, {})
                    for k, v in value.items():
                        into[k] = into.get(k, 0) + v
                else:
                    total[key] = total.get(key, 0) + value
        if "question_s" in total:
            total["question_seconds_sum"] = round(total.pop("question_s"), 3)
        if "engine_s" in total:
            total["engine_s"] = {k: round(v, 3) for k, v in sorted(total["engine_s"].items())}
        intervals = []
        for path in sorted((self.out / "cost" / "invocations").glob("*.json")):
            try:
                rec = json.loads(path.read_text())
                intervals.append((float(rec["started"]), float(rec["ended"])))
            except (ValueError, KeyError, TypeError):  # unreadable record: left out
                continue
        if intervals:
            total = {"elapsed_s": round(_union_seconds(intervals), 3), "invocations": len(intervals), **total}
        total["questions"] = len(self.questions)
        total["device"] = self.device or str(getattr(self.engine, "device", "cpu"))
        write_atomic(self.out / "cost.json", json.dumps(total, indent=1))
        return total


def _union_seconds(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of [start, end] intervals (overlapping ones count once)."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def completion(run_dir) -> tuple[int, int] | None:
    """(questions with a committed alignment shard, questions in the run) of a run directory, or None when
    its config.toml cannot be read (e.g. `--shard` siblings still running leave the first number short)."""
    from .rundir import CONFIG_FILE, tomllib

    run_dir = Path(run_dir)
    try:
        cfg = RunConfig(**tomllib.loads((run_dir / CONFIG_FILE).read_text()))
        total = len(tasks.get(cfg.task).questions(cfg.questions, seed=cfg.seed))
    except Exception:  # noqa: BLE001 - no config, or one this version cannot read: nothing to say
        return None
    done = len(completed_shards(run_dir, "alignment")) if (run_dir / "alignment").is_dir() else 0
    return done, total


def run(config: RunConfig | None = None, progress: bool | None = None, **overrides):
    """Run (or resume) a diagnosis; returns the loaded result (`diagnose.report.RunResult`)."""
    cfg = config if config is not None else RunConfig.from_sources(None, overrides)
    if config is not None and overrides:
        cfg = RunConfig.from_sources(None, {**cfg.__dict__, **overrides})
    return Runner(cfg, progress).run()


__all__ = ["QuestionOutput", "Runner", "completion", "run", "shard_id"]
