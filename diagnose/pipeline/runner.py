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
import threading
import time
import uuid
from collections import deque
from pathlib import Path

from .. import tasks
from ..estimate.frontier import describe as describe_plan
from ..estimate.frontier import from_rollouts, plan_budgets
from ..estimate.summary import write_summary
from ..tables import completed_shards, write_table
from .config import RunConfig
from .frontier import load_verdicts, save_verdicts
from .inflight import Batcher, batched_engines
from .job import TABLES, QuestionJob, QuestionOutput, shard_id
from .rundir import check_writable, open_run_dir, write_atomic


class Runner(QuestionJob):
    """A run: the question job (job.py) plus the run directory, commits (one shard per table, alignment last),
    resume, questions in flight on worker threads, and the cost record."""

    def __init__(self, cfg: RunConfig, progress: bool | None = None, worker: bool = False):
        if not worker:
            check_writable(Path(cfg.out).expanduser())
        super().__init__(cfg, progress=progress, worker=worker)
        self.device = None  # the student's device, once a question has been committed
        self._batcher = None  # the engine-call merger of this invocation (run_questions)

    def run_question(self, index: int, engine=None, teacher_engines=None, exclusive=None) -> dict:
        """Estimate one question and commit its shards (alignment last); returns its cost."""
        return self.commit(self.compute_question(index, engine, teacher_engines, exclusive))

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
                if pool is None:
                    self.load()
                self.plan_frontier(pool)
                with self.progress.bar("questions", total=total, completed=total - len(todo)) as bar:
                    if pool is not None:
                        pool.run(todo, bar)
                    else:
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

    def plan_frontier(self, pool=None) -> None:
        """Make the frontier plan (frontier.py) before any question is estimated: every question's rollout
        verdicts, sampled in flight (or on the Ray workers) into the questions' caches, saved in frontier.json
        (kept by the first process to write it, so `--shard` siblings and resumes share one plan)."""
        if self.cfg.frontier >= 1:
            return
        ids = [q.id for q in self.questions]
        saved = load_verdicts(self.out, ids)
        if saved is None:
            indices = list(range(len(self.questions)))
            found: dict[int, list] = {}
            with self.progress.bar("rollouts (frontier plan)", total=len(indices)) as bar:
                if pool is not None:
                    found = pool.rollouts(indices, bar)
                else:
                    # --shard siblings would write the same caches at once: they plan from uncached rollouts
                    cached = not self.cfg.shard

                    def work(index, engine, teachers, exclusive):
                        found[index] = self.question_rollouts(index, engine, cached=cached)

                    self.run_questions(indices, bar, work=work)
            self.planned_rollouts = found  # each estimate is given the rollouts its plan was made from
            save_verdicts(self.out, *from_rollouts([found[i] for i in indices]), ids)
            saved = load_verdicts(self.out, ids)  # a --shard sibling's, if it wrote first
        verdicts, tokens = saved
        self.plans = plan_budgets(verdicts, ids, self.cfg.budget, self.cfg.frontier, self.cfg.seed, tokens)
        self.progress.note(describe_plan(self.plans, self.cfg.budget))

    def run_questions(self, todo: list[int], bar=None, work=None) -> None:
        """Work through `todo` with up to `in_flight` questions at once, their engine calls merged; `work(index,
        engine, teachers, exclusive)` is what is done to each (default: estimate and commit it).

        Questions commit as they finish. If one fails, no new question starts, the others in flight finish
        and commit, and the first error is raised (a rerun resumes with what is left)."""
        work = work or self.run_question
        workers = min(self.cfg.questions_in_flight(), len(todo))
        show = bar.update if bar is not None else (lambda **_: None)
        # One Batcher per invocation: the frontier plan's rollouts and the estimates share its per-question
        # engine seconds (cost.json) and its counters (engine_stats).
        batcher = self._batcher = self._batcher or Batcher()
        batcher.on_call = lambda st: show(tokens_per_s=st.generated_per_s(), rows=dict(st.rows))
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
                        work(index, engine, teachers, batcher.exclusive)
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
        # the workers' device (Ray: the driver loads no engine), else the local engine's
        total["device"] = self.device or (str(self.engine.device) if self.engine is not None else "cpu")
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
    run_dir = Path(run_dir)
    try:
        cfg = RunConfig.load(run_dir)
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
