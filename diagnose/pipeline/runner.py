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
import threading
import time
from collections import deque
from pathlib import Path

import torch

from .. import engines, tasks
from ..alignment import proxies
from ..engines.base import render_prompt
from ..errors import DiagnoseError
from ..estimate import EstimateConfig, Estimator
from ..estimate import Question as EstimateQuestion
from ..objectives import parse as parse_objective
from ..report import standard_metadata, write_summary, write_table
from ..report.tables import completed_shards
from ..teachers import parse_teacher
from ..teachers.scoring import max_context
from ..teachers.summaries import summarize
from .config import RunConfig
from .frames import frames_for_question
from .inflight import BatchedEngine, Batcher
from .param_cos import param_cosines
from .progress import Progress
from .rundir import check_writable, open_run_dir, write_atomic
from .teachers import TeacherAtNodes, check_context_available, load_teacher_engines

TABLES = ("rollouts", "nodes", "candidates", "alignment")


def shard_id(index: int) -> str:
    return f"q{index:05d}"


class Runner:
    """Holds what a run loads once (task, engines, teachers) and processes questions one shard at a time."""

    def __init__(self, cfg: RunConfig, progress: bool | None = None):
        self.cfg = cfg
        self.out = Path(cfg.out).expanduser()
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

    # ---- loading -------------------------------------------------------------------------------------
    def load(self) -> None:
        if self.engine is not None:
            return
        with self.progress.status(f"loading student {self.cfg.student} ({self.cfg.engine})"):
            self.engine = engines.load(self.cfg.engine, self.cfg.student)
            self.teacher_engines = load_teacher_engines(
                self.teacher_cfgs, self.engine, self.cfg.engine, self.cfg.teacher_dtype
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
            engine=self.cfg.engine,
            teacher_dtype=self.cfg.teacher_dtype,
            student_dtype=str(getattr(self.engine, "dtype", "auto")).replace("torch.", ""),
        )

    # ---- one question --------------------------------------------------------------------------------
    def run_question(self, index: int, engine=None, teacher_engines=None, exclusive=None) -> dict:
        """Estimate one question and commit its shards (alignment last). `engine`/`teacher_engines`: what to
        call (the batched wrappers when questions run in flight); `exclusive(fn)`: how to run direct model
        work (parameter-space gradients) so that it never overlaps an engine call."""
        engine = engine or self.engine
        teacher_engines = teacher_engines or self.teacher_engines
        q = self.questions[index]
        t0 = time.time()
        prompt_ids = render_prompt(engine.tokenizer, q.prompt)
        eq = EstimateQuestion(id=q.id, prompt_ids=prompt_ids, verify=lambda text, q=q: self.task.verify(q, text))
        summary = None
        if any(tc.context == "summary" for tc in self.teacher_cfgs) and not q.meta.get("summary"):
            if q.solution:
                summary = summarize(engine, [q.solution], self.out / "cache" / "summaries", self.cfg.seed)[0]
        fns = {tc.label: TeacherAtNodes(tc, teacher_engines[tc.model], q, summary) for tc in self.teacher_cfgs}
        (self.out / "cache").mkdir(exist_ok=True)
        est = Estimator(
            engine,
            [eq],
            fns,
            self.objectives,
            self.estimate_config(),
            cache=self.out / "cache" / f"{shard_id(index)}.sqlite",
        )
        try:
            result = est.run()
        finally:
            est.cache.close()
        param_cos = {}
        if self.cfg.param_space:
            work = lambda: param_cosines(self.engine, est, fns, self.objectives)  # noqa: E731
            param_cos = exclusive(work) if exclusive is not None else work()
        teacher_proxies = self._proxies(est, fns)
        frames = frames_for_question(result, q, self.task, engine.tokenizer, teacher_proxies, fns, param_cos)
        meta = self.metadata()
        for name in TABLES:
            write_table(self.out, name, frames[name], shard=shard_id(index), metadata=meta)
        cost = {
            "rollouts": len(result.rollouts),
            "generated_tokens": int(sum(len(r.token_ids) for r in result.rollouts)),
            "continuations": int(result.summary["continuations"]),
            "continuation_tokens": int(result.summary["continuation_tokens"]),
            "teacher_tokens": int(sum(f.tokens for f in fns.values())),
            "nodes": int(result.summary["nodes"]),
            "wall_time_s": round(time.time() - t0, 3),
        }
        cost_dir = self.out / "cost"
        cost_dir.mkdir(exist_ok=True)
        write_atomic(cost_dir / f"{shard_id(index)}.json", json.dumps(cost))
        return cost

    @staticmethod
    def _proxies(est: Estimator, fns: dict) -> dict:
        """(teacher label, node key) -> proxy dict, from the student and teacher logits the estimate used."""
        out = {}
        if not est.estimates:
            return out
        z = torch.stack(est._student_logits)
        keys = [(e.node.rollout, e.node.position) for e in est.estimates]
        for label, fn in fns.items():
            zt = torch.stack([fn.kept[k] for k in keys])
            prox = proxies(z, zt)
            q_tok = torch.softmax(zt.float(), -1)[
                torch.arange(len(keys)), torch.tensor([e.observed for e in est.estimates])
            ]
            for i, e in enumerate(est.estimates):
                row = {name: float(v[i]) for name, v in prox.items()}
                row["q_token"] = float(q_tok[i])
                out[(label, e.id)] = row
            fn.kept.clear()
        return out

    # ---- whole run -----------------------------------------------------------------------------------
    def pending(self) -> list[int]:
        if not (self.out / "alignment").is_dir():
            return list(range(len(self.questions)))
        done = set(completed_shards(self.out, "alignment"))
        return [i for i in range(len(self.questions)) if shard_id(i) not in done]

    def run(self):
        from ..report import load as load_result
        from ..report import render_report

        # Everything that can fail on bad input (models, tokenizers, prompt lengths) is checked before the
        # run directory is created, so a refused run leaves nothing behind.
        if not (self.out / "config.toml").exists():
            self.load()
        open_run_dir(self.cfg)
        todo = self.pending()
        if todo:
            self.load()
            with self.progress.bar(
                "questions", total=len(self.questions), completed=len(self.questions) - len(todo)
            ) as bar:
                self.run_questions(todo, bar)
        with self.progress.status("summary and report"):
            self.write_cost()
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
        wrapped: dict[int, BatchedEngine] = {}

        def wrap(e):
            if id(e) not in wrapped:
                wrapped[id(e)] = BatchedEngine(e, batcher)
            return wrapped[id(e)]

        engine = wrap(self.engine)
        teachers = {name: wrap(e) for name, e in self.teacher_engines.items()}
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

    def write_cost(self) -> dict:
        total: dict = {}
        for path in sorted((self.out / "cost").glob("q*.json")):
            for key, value in json.loads(path.read_text()).items():
                total[key] = total.get(key, 0) + value
        total["questions"] = len(self.questions)
        total["device"] = str(getattr(self.engine, "device", "cpu")) if self.engine is not None else "cpu"
        write_atomic(self.out / "cost.json", json.dumps(total, indent=1))
        return total


def run(config: RunConfig | None = None, progress: bool | None = None, **overrides):
    """Run (or resume) a diagnosis; returns the loaded result (`diagnose.report.RunResult`)."""
    cfg = config if config is not None else RunConfig.from_sources(None, overrides)
    if config is not None and overrides:
        cfg = RunConfig.from_sources(None, {**cfg.__dict__, **overrides})
    return Runner(cfg, progress).run()


__all__ = ["Runner", "run", "shard_id"]
