"""Scale-out on Ray: the run's questions go to a pool of workers (Ray actors, one model copy each) and only the
driver writes the run directory.

The unit of work is one question, computed entirely on one worker so every continuation of a node hits that
worker's prefix cache. A worker loads the student (and colocated teachers) once and keeps up to `in_flight`
questions at once, their engine calls merged as in a single-process run (inflight.py). The driver hands out
questions as slots free up (uneven question costs balance themselves) and commits each returned question's
shards (alignment last), so workers need no access to the run directory; their continuation caches stay on
their own disk.

Faults: a worker process that dies is replaced and its questions are retried (at most MAX_RETRIES times
each); an error raised inside a question (bad input) stops handing out work, lets the questions in flight
commit, then ends the run with that error. A killed driver resumes by rerunning the command.

Cost: a worker's Batcher times the engine calls of each question it computes, and that question's engine
seconds travel in its cost to the driver; elapsed time is the driver's own invocation (runner.write_cost),
so cost.json's `elapsed_s` is the whole run's while `engine_s` adds up over workers running side by side.

External teachers run in each worker (`teacher_placement = "colocate"`, default) or in a pool of teacher
servers, one per teacher model, that the workers call behind the engine protocol (`"pool"`).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections import deque
from dataclasses import asdict
from pathlib import Path

from .. import logs
from ..engines.base import PROTOCOL_ATTRIBUTES, precision
from ..errors import DiagnoseError
from .config import RunConfig
from .inflight import Batcher, batched_engines

MAX_RETRIES = 2  # a question whose worker died is retried at most this many times
# Test hook (tests/test_scale.py): "kill:INDEX:MARKER" makes the worker that starts question INDEX exit abruptly,
# once (the MARKER file records it); "fail:INDEX" raises a user error in question INDEX.
TEST_HOOK_ENV = "DIAGNOSE_TEST_WORKER_HOOK"


def _ray():
    try:
        import ray
    except ImportError:
        raise DiagnoseError(
            "--workers / --ray-address need Ray: pip install 'diagnose[scale]' (or pip install ray)"
        ) from None
    return ray


# ---- the processes ---------------------------------------------------------------------------------------


class QuestionWorker:
    """A Ray actor: loads the student (and colocated teachers) once, then computes questions on request.
    Several `compute` calls run at once (threaded actor); their engine calls share one Batcher."""

    def __init__(
        self, cfg: dict, engine_options: dict | None = None, test_hook: str | None = None, verbose: bool = False
    ):
        from .job import QuestionJob

        logs.configure(verbose)  # as the driver was told (quiet unless --verbose); it shows progress
        self.runner = QuestionJob(RunConfig(**cfg), progress=False, worker=True)
        self.engine_options = engine_options or {}
        self.test_hook = test_hook
        self.batcher = Batcher()

    def load_student(self) -> dict:
        """Load the student; returns its device and precision (teacher servers load in the same)."""
        self.runner.load_student(self.engine_options)
        e = self.runner.engine
        return {"device": str(e.device), "dtype": precision(e)}

    def load(self, servers: dict) -> None:
        """Student then teachers, in one call (a threaded actor does not keep the order of separate calls)."""
        self.load_student()
        self.load_teachers(servers)

    def load_teachers(self, servers: dict) -> None:
        """Colocated teachers load here; `servers` (model -> TeacherServer) are used where given. Then check
        the prompts fit. Bad input raises one DiagnoseError."""
        self.runner.load_teachers({model: RemoteTeacher(h) for model, h in servers.items()})
        self.engine, self.teachers = batched_engines(self.runner.engine, self.runner.teacher_engines, self.batcher)

    def compute(self, index: int, plan=None, rollouts=None):
        """One question's QuestionOutput (nothing is written in the run directory); `plan`: its frontier plan,
        `rollouts`: the ones it was made from (whichever worker sampled them)."""
        self.batcher.join(1)
        try:
            self.batcher.working_on(index)
            self._test_hook(index)
            return self.runner.compute_question(
                index, self.engine, self.teachers, self.batcher.exclusive, plan, rollouts
            )
        finally:
            self.batcher.quit()

    def rollouts(self, index: int) -> list:
        """One question's rollouts for the frontier plan (also kept in this worker's cache)."""
        self.batcher.join(1)
        try:
            self.batcher.working_on(index)
            return self.runner.question_rollouts(index, self.engine)
        finally:
            self.batcher.quit()

    def _test_hook(self, index: int) -> None:
        action, _, rest = (self.test_hook or "").partition(":")
        target, _, marker = rest.partition(":")
        if not action or int(target) != index:
            return
        if action == "fail":
            raise DiagnoseError(f"question {index}: failed on purpose (test hook)")
        if action == "kill" and not os.path.exists(marker):
            Path(marker).write_text(str(os.getpid()))
            os._exit(1)  # a worker dying mid-question, as on a crashed machine


class TeacherServer:
    """A Ray actor holding one external teacher model; workers call `score` on it (teacher_placement=pool)."""

    def __init__(self, engine: str, model: str, dtype: str, verbose: bool = False):
        from .. import engines

        logs.configure(verbose)  # as the driver was told (quiet unless --verbose); it shows progress
        self.engine = engines.load(engine, model, dtype=dtype)

    def describe(self) -> dict:
        e = self.engine
        # the protocol's attributes but the model, which stays in this actor (a pooled teacher only scores)
        return {k: getattr(e, k) for k in PROTOCOL_ATTRIBUTES if k != "model"}

    def score(self, sequences, positions, topk=None, token_ids=None):
        return self.engine.score(sequences, positions, topk=topk, token_ids=token_ids)


class RemoteTeacher:
    """The engine protocol's `score` (all a teacher is asked for) served by a TeacherServer."""

    def __init__(self, handle):
        self._handle = handle
        self.model = None  # the weights stay in the TeacherServer actor
        self.__dict__.update(_ray().get(handle.describe.remote()))

    def score(self, sequences, positions, topk=None, token_ids=None):
        ray = _ray()
        return ray.get(self._handle.score.remote(sequences, positions, topk=topk, token_ids=token_ids))

    def sample(self, *args, **kwargs):
        raise DiagnoseError("a pooled teacher only scores; self-distillation contexts use the student")

    continue_from = sample


# ---- the driver ------------------------------------------------------------------------------------------


class WorkerPool:
    """Starts Ray (or joins `ray_address`), the workers and any teacher servers, and loads every model (bad
    input fails here, before the run directory exists); `run(todo, bar)` computes the questions on the
    workers and commits each through the runner."""

    def __init__(self, runner):
        self.runner, cfg = runner, runner.cfg
        ray = _ray()
        # one teacher server per external teacher model when they are pooled
        external = sorted({t.model for t in runner.teacher_cfgs if not t.is_self})
        self.server_models = external if cfg.teacher_placement == "pool" else []
        self.started_ray = not ray.is_initialized()
        if self.started_ray:
            needed = cfg.workers + len(self.server_models)
            where = {"address": cfg.ray_address} if cfg.ray_address else {"num_cpus": max(needed, os.cpu_count() or 1)}
            with runner.progress.status("starting Ray"):
                ray.init(**where, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
        resources = ray.cluster_resources()
        self.gpus = float(cfg.gpus_per_worker) if resources.get("GPU", 0) > 0 else 0.0
        auto = int(resources.get("GPU", 0) // self.gpus) if self.gpus else int(resources.get("CPU", 1))
        self.size = cfg.workers or max(1, auto)
        self.slots = cfg.questions_in_flight()
        self.cfg = asdict(cfg)
        # tensor parallelism inside a worker for models larger than one GPU
        self.engine_options = {"tensor_parallel_size": int(self.gpus)} if self.gpus > 1 and cfg.engine == "vllm" else {}
        self.test_hook = os.environ.get(TEST_HOOK_ENV)
        self.verbose = not logs.is_quiet()  # what the command line asked for (quiet by default)
        self.actors, self.servers = [], {}
        self._check_room(resources)
        try:
            with runner.progress.status(f"loading {cfg.student} on {self.size} Ray worker(s)"):
                self.actors = [self._start() for _ in range(self.size)]
                student = _get([a.load_student.remote() for a in self.actors])[0]
                self.runner.device = student["device"]
                if self.server_models:
                    self._start_servers(student["dtype"])
                _get([a.load_teachers.remote(self.servers) for a in self.actors])
        except BaseException:
            self.close()
            raise

    def _check_room(self, resources: dict) -> None:
        """Refuse up front what the cluster can never place (Ray would wait for it forever)."""
        actors = self.size + len(self.server_models)
        for name, each in (("CPU", 1.0), ("GPU", self.gpus)):
            if each and actors * each > resources.get(name, 0) + 1e-9:
                raise DiagnoseError(
                    f"the Ray cluster has {resources.get(name, 0):g} {name}s but {self.size} worker(s)"
                    + (f" and {len(self.server_models)} teacher server(s)" if self.server_models else "")
                    + f" need {actors * each:g}; lower --workers or --gpus-per-worker"
                )

    def _start(self):
        worker = _ray().remote(num_cpus=1, num_gpus=self.gpus, max_concurrency=self.slots + 1)(QuestionWorker)
        return worker.remote(self.cfg, self.engine_options, self.test_hook, self.verbose)

    def _start_servers(self, student_dtype: str) -> None:
        """One TeacherServer per external teacher model, in the student's precision unless told otherwise."""
        server = _ray().remote(num_cpus=1, num_gpus=self.gpus)(TeacherServer)
        dtype = student_dtype if self.runner.cfg.teacher_dtype == "auto" else self.runner.cfg.teacher_dtype
        for model in self.server_models:
            self.servers[model] = server.remote(self.runner.cfg.engine, model, dtype, self.verbose)
        _get([h.describe.remote() for h in self.servers.values()])

    def run(self, todo: list[int], bar=None) -> None:
        """Compute `todo` on the workers, committing each question as it returns (see the module docstring)."""
        ray = _ray()
        show = bar.update if bar is not None else (lambda **_: None)
        queue, tries, errors = deque(todo), {}, []
        running: dict = {}  # object ref -> (worker slot, question index)
        loading: dict = {}  # object ref of a replacement worker's loading -> worker slot
        busy = [0] * len(self.actors)
        work, tokens, t0 = {"sample": 0, "continue": 0}, 0, time.perf_counter()
        while True:
            if not errors:
                for w, actor in enumerate(self.actors):
                    while queue and busy[w] < self.slots and w not in loading.values():
                        index = queue.popleft()
                        plan = self.runner.plans[index] if self.runner.plans is not None else None
                        rollouts = self.runner.planned_rollouts.get(index)
                        running[actor.compute.remote(index, plan, rollouts)] = (w, index)
                        busy[w] += 1
            if not running and not loading:
                break
            ref = ray.wait(list(running) + list(loading), num_returns=1)[0][0]
            if ref in loading:
                loading.pop(ref)
                _get(ref)
                continue
            w, index = running.pop(ref)
            busy[w] -= 1
            try:
                output = ray.get(ref)
            except ray.exceptions.RayActorError:  # the worker died: replace it, retry its questions
                tries[index] = tries.get(index, 0) + 1
                if tries[index] > MAX_RETRIES:
                    errors.append(DiagnoseError(f"question {index}: its worker died {tries[index]} times; giving up"))
                else:
                    queue.appendleft(index)
                    print(f"warning: a Ray worker died; retrying question {index} ({tries[index]}/{MAX_RETRIES})",
                          file=sys.stderr)
                if w not in loading.values() and not _alive(self.actors[w]):
                    self.actors[w] = self._start()
                    loading[self._reload(self.actors[w])] = w
                continue
            except ray.exceptions.RayTaskError as err:  # raised inside the question: stop handing out work
                errors.append(_cause(err))
                continue
            self.runner.commit(output)
            work["sample"] += output.cost["rollouts"]
            work["continue"] += output.cost["continuations"]
            tokens += output.cost["generated_tokens"] + output.cost["continuation_tokens"]
            show(advance=1, rows=dict(work), tokens_per_s=tokens / max(time.perf_counter() - t0, 1e-9))
        if errors:
            raise errors[0]

    def rollouts(self, indices: list[int], bar=None) -> dict[int, list]:
        """Every question's rollouts (the frontier plan's input), spread over the workers."""
        ray = _ray()
        refs = {}
        for j, index in enumerate(indices):
            refs[self.actors[j % len(self.actors)].rollouts.remote(index)] = index
        found = {}
        while refs:
            ref = ray.wait(list(refs), num_returns=1)[0][0]
            found[refs.pop(ref)] = _get(ref)
            if bar is not None:
                bar.update(advance=1)
        return found

    def _reload(self, actor):
        """A replacement worker's loading (student, then teachers), as one object ref."""
        return actor.load.remote(self.servers)

    def close(self) -> None:
        ray = _ray()
        for actor in self.actors + list(self.servers.values()):
            try:
                ray.kill(actor)
            except Exception:  # noqa: BLE001 - already gone
                pass
        if self.started_ray:
            ray.shutdown()


def _alive(actor) -> bool:
    ray = _ray()
    try:
        ray.get(actor.__ray_ready__.remote(), timeout=30)
        return True
    except Exception:  # noqa: BLE001 - any failure to answer means it is gone
        return False


def _cause(err) -> BaseException:
    """The exception raised inside a Ray task (a DiagnoseError stays one line)."""
    cause = getattr(err, "cause", None)
    return cause if isinstance(cause, BaseException) else DiagnoseError(str(err).strip().splitlines()[-1])


def _get(refs):
    """ray.get that re-raises what a task raised as itself (one-line user errors stay one line)."""
    ray = _ray()
    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as err:
        raise _cause(err) from None
    except ray.exceptions.RayActorError as err:
        raise DiagnoseError(f"a Ray worker died while loading: {str(err).strip().splitlines()[0]}") from None
