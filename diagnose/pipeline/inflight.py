"""Many questions in flight: each question runs its own estimate in a worker thread, and their engine calls
are merged into shared engine calls, so the engine sees batches as large as the pending work allows.

Every question keeps its own code path, cache and atomic shards: a question's numbers cannot depend on which
other questions shared an engine call, because every engine draws each sample from its own counter-based
stream (seed, prefix, forced token, sample index) and scores each sequence on its own.

The `Batcher` dispatches when every busy worker is waiting on the engine (nothing more can arrive): all
pending calls are grouped by what makes them compatible (method, samples per request, sampling settings) and
each group becomes one engine call. Only one engine call runs at a time.

Engine time is accounted per stage (`STAGES`: rollouts, scoring, continuations, param_space) and per question:
a merged call's seconds are split over its members in proportion to the sequences each asked for, so the
questions' shares add up to the engine's busy time (`Batcher.take_seconds`; the run's cost.json sums them).
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

from ..engines.base import Continuation, SamplingParams


@dataclass
class _Call:
    """One worker's request to the engine, answered by the dispatcher."""

    kind: str  # sample | continue | score | exclusive
    key: tuple
    args: dict
    done: bool = False
    result: Any = None
    error: BaseException | None = None
    rank: tuple = (0, 0)  # (question, call number within it): the order inside a merged call


# Engine call kind -> the stage its seconds are reported under (cost.json `engine_s`). `sample` also writes the
# summaries of `self:summary` teacher contexts; `score` scores the student and every teacher at the nodes;
# `exclusive` is direct model work between engine calls (--param-space gradients).
STAGES = {"sample": "rollouts", "score": "scoring", "continue": "continuations", "exclusive": "param_space"}


@dataclass
class Throughput:
    """What the engine has done for the run so far (for progress display and cost accounting)."""

    started: float = field(default_factory=time.perf_counter)
    calls: int = 0
    rows: dict = field(default_factory=lambda: defaultdict(int))  # kind -> sequences generated or scored
    tokens: dict = field(default_factory=lambda: defaultdict(int))  # kind -> tokens generated
    seconds: dict = field(default_factory=lambda: defaultdict(float))  # kind -> seconds inside its calls
    # question index -> stage -> its share of the seconds inside engine calls (see the module docstring)
    by_question: dict = field(default_factory=lambda: defaultdict(lambda: defaultdict(float)))

    def generated_per_s(self) -> float:
        elapsed = time.perf_counter() - self.started
        return (self.tokens["sample"] + self.tokens["continue"]) / elapsed if elapsed > 0 else 0.0


class Batcher:
    """Merges the engine calls of concurrently running questions (see the module docstring)."""

    def __init__(self, on_call: Callable[["Throughput"], None] | None = None):
        self._cond = threading.Condition()
        self._pending: list[_Call] = []
        self._active = 0  # workers inside a question
        self._dispatching = False
        self._local = threading.local()
        self.stats = Throughput()
        self.on_call = on_call

    # ---- workers ---------------------------------------------------------------------------------------
    def join(self, workers: int = 1) -> None:
        """Workers start taking questions: until each `quit`s, every dispatch waits for its next call, so
        what shares an engine call does not depend on thread timing. Call it before starting the threads."""
        with self._cond:
            self._active += workers

    def quit(self) -> None:
        """A worker has no more questions (or failed): the others no longer wait for it."""
        with self._cond:
            self._active -= 1
            self._cond.notify_all()

    def working_on(self, rank: int) -> None:
        """Name the question the calling worker is on: calls are ordered by it inside a merged call."""
        self._local.rank = rank
        self._local.seq = 0

    def submit(self, call: _Call):
        """Queue `call` and block until it is answered; the last worker to wait runs the dispatch."""
        call.rank = (getattr(self._local, "rank", 0), getattr(self._local, "seq", 0))
        self._local.seq = call.rank[1] + 1
        with self._cond:
            self._pending.append(call)
            self._cond.notify_all()
            while not call.done:
                if not self._dispatching and self._pending and len(self._pending) >= self._active:
                    self._dispatch_locked()
                else:
                    self._cond.wait()
        if call.error is not None:
            raise call.error
        return call.result

    def take_seconds(self, question: int) -> dict[str, float]:
        """Question `question`'s share of the engine's busy seconds so far, per stage, and forget it (a
        question's calls are all answered once its worker has its result)."""
        with self._cond:
            return dict(self.stats.by_question.pop(question, {}))

    def exclusive(self, fn: Callable[[], Any]):
        """Run `fn` (direct model use, e.g. parameter-space gradients) between engine calls, never during one."""
        return self.submit(_Call("exclusive", ("exclusive", id(fn)), {"fn": fn}))

    # ---- dispatcher ------------------------------------------------------------------------------------
    def _dispatch_locked(self) -> None:
        calls, self._pending = sorted(self._pending, key=lambda c: c.rank), []
        self._dispatching = True
        # Deterministic composition and order: members by question, groups by their first member.
        groups: dict[tuple, list[_Call]] = {}
        for c in calls:
            groups.setdefault(c.key, []).append(c)
        self._cond.release()
        try:
            for key, members in groups.items():
                t0 = time.perf_counter()
                try:
                    _run_group(members)
                except BaseException as err:  # every member learns it; each worker raises it itself
                    for c in members:
                        c.error = err
                self._account(key[0], members, time.perf_counter() - t0)
        finally:
            self._cond.acquire()
            for c in calls:
                c.done = True
            self._dispatching = False
            self._cond.notify_all()

    def _account(self, kind: str, members: list[_Call], seconds: float) -> None:
        s = self.stats
        s.calls += 1
        s.seconds[kind] += seconds
        sizes = [_size(c) for c in members]
        total = sum(sizes)
        for c, n in zip(members, sizes, strict=True):
            s.by_question[c.rank[0]][STAGES.get(kind, kind)] += seconds * (n / total if total else 1 / len(members))
        for c in members:
            if c.error is not None or c.result is None or kind == "exclusive":
                continue
            if kind == "score":
                s.rows[kind] += len(c.result)
                continue
            for group in c.result:
                s.rows[kind] += len(group)
                s.tokens[kind] += sum(len(x.token_ids) for x in group)
        if self.on_call is not None:
            self.on_call(s)


def _size(call: _Call) -> int:
    """Sequences a call asks the engine for (its weight in the split of a merged call's seconds)."""
    a = call.args
    if call.kind == "sample":
        return len(a["prompts"]) * a["n"]
    if call.kind == "continue":
        return len(a["requests"]) * a["m"]
    if call.kind == "score":
        return len(a["sequences"])
    return 1


def _run_group(members: list[_Call]) -> None:
    """One engine call for a group of compatible calls; each member gets its own slice of the result."""
    kind = members[0].kind
    if kind == "exclusive":
        for c in members:
            try:
                c.result = c.args["fn"]()
            except BaseException as err:
                c.error = err
        return
    engine = members[0].args["engine"]
    if kind == "sample":
        prompts = [p for c in members for p in c.args["prompts"]]
        out = engine.sample(prompts, members[0].args["n"], members[0].args["params"])
        _split(members, out, [len(c.args["prompts"]) for c in members])
    elif kind == "continue":
        requests = [r for c in members for r in c.args["requests"]]
        limit = max(c.args["params"].max_new_tokens for c in members)
        params = replace(members[0].args["params"], max_new_tokens=limit)
        out = engine.continue_from(requests, members[0].args["m"], params)
        _split(members, out, [len(c.args["requests"]) for c in members])
    elif kind == "score":
        seqs = [s for c in members for s in c.args["sequences"]]
        pos = [p for c in members for p in c.args["positions"]]
        ids = None
        if members[0].args["token_ids"] is not None:
            ids = [t for c in members for t in c.args["token_ids"]]
        out = engine.score(seqs, pos, topk=members[0].args["topk"], token_ids=ids)
        _split(members, out, [len(c.args["sequences"]) for c in members])
    else:  # pragma: no cover - _Call kinds are fixed above
        raise ValueError(kind)


def _split(members: list[_Call], out: list, sizes: list[int]) -> None:
    if len(out) != sum(sizes):
        raise RuntimeError(f"engine returned {len(out)} results for {sum(sizes)} requests")
    at = 0
    for c, n in zip(members, sizes, strict=True):
        c.result = out[at : at + n]
        at += n


class BatchedEngine:
    """The engine protocol over a shared `Batcher`: same answers as the wrapped engine, merged calls.

    Attributes other than the three protocol calls (tokenizer, vocab_size, model_id, dtype, ...) are the
    wrapped engine's; the tokenizer is shared behind a lock (fast tokenizers refuse concurrent use).
    """

    def __init__(self, engine, batcher: Batcher, tokenizer_lock: threading.RLock | None = None):
        self._engine = engine
        self._batcher = batcher
        self.tokenizer = LockedTokenizer(engine.tokenizer, tokenizer_lock or threading.RLock())

    def __getattr__(self, name):
        return getattr(self._engine, name)

    @property
    def batcher(self) -> Batcher:
        """The Batcher this engine's calls go through (its per-question engine seconds: `take_seconds`)."""
        return self._batcher

    def sample(self, prompts: Sequence[Sequence[int]], n: int, params: SamplingParams):
        if not prompts:
            return []
        args = {"engine": self._engine, "prompts": [list(p) for p in prompts], "n": n, "params": params}
        return self._batcher.submit(_Call("sample", ("sample", id(self._engine), n, params), args))

    def continue_from(self, requests: Sequence[Continuation], m: int, params: SamplingParams):
        if not requests:
            return []
        # Each request carries its own length limit, so calls that differ only in their default limit merge.
        reqs = [
            replace(r, max_new_tokens=params.max_new_tokens if r.max_new_tokens is None
                    else min(int(r.max_new_tokens), params.max_new_tokens))
            for r in requests
        ]
        key = ("continue", id(self._engine), m, replace(params, max_new_tokens=0))
        return self._batcher.submit(_Call("continue", key, {"engine": self._engine, "requests": reqs, "m": m,
                                                            "params": params}))

    def score(self, sequences, positions, topk=None, token_ids=None):
        if not sequences:
            return []
        args = {"engine": self._engine, "sequences": list(sequences), "positions": list(positions), "topk": topk,
                "token_ids": None if token_ids is None else list(token_ids)}
        key = ("score", id(self._engine), topk, token_ids is None)
        return self._batcher.submit(_Call("score", key, args))


class LockedTokenizer:
    """A tokenizer whose every method call holds one lock (Rust-backed tokenizers fail under concurrent use)."""

    def __init__(self, tokenizer, lock: threading.RLock):
        object.__setattr__(self, "_tok", tokenizer)
        object.__setattr__(self, "_lock", lock)

    def __getattr__(self, name):
        value = getattr(self._tok, name)
        if not callable(value):
            return value
        lock = self._lock

        def locked(*args, **kwargs):
            with lock:
                return value(*args, **kwargs)

        return locked

    def __call__(self, *args, **kwargs):
        with self._lock:
            return self._tok(*args, **kwargs)

    def __len__(self):
        return len(self._tok)


__all__ = ["STAGES", "Batcher", "BatchedEngine", "LockedTokenizer", "Throughput"]


def batched_engines(engine, teacher_engines: dict, batcher: Batcher) -> tuple[BatchedEngine, dict]:
    """The student and teacher engines behind `batcher`, one wrapper per distinct engine (a `self` teacher is
    the student's engine: its calls must merge with the student's)."""
    wrapped: dict[int, BatchedEngine] = {}

    def wrap(e):
        if id(e) not in wrapped:
            wrapped[id(e)] = BatchedEngine(e, batcher)
        return wrapped[id(e)]

    return wrap(engine), {name: wrap(e) for name, e in teacher_engines.items()}

