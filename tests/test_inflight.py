"""Many questions in flight (pipeline/inflight.py): merged engine calls give every question exactly the numbers
it gets alone, on the exact engine (bit for bit), with the run's default estimate settings."""

from __future__ import annotations

import threading

import pandas as pd
import pytest

from diagnose import engines
from diagnose.engines.base import Continuation, SamplingParams
from diagnose.errors import DiagnoseError
from diagnose.estimate import Estimator
from diagnose.estimate.truth import exact_questions, noisy_teacher
from diagnose.pipeline.config import RunConfig
from diagnose.pipeline.inflight import BatchedEngine, Batcher
from diagnose.teachers import engine_teacher


class Counting:
    """Passes calls to an engine and records (method, rows) of each: what the engine actually saw."""

    def __init__(self, engine):
        self.engine, self.calls = engine, []

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def sample(self, prompts, n, params):
        self.calls.append(("sample", len(prompts) * n))
        return self.engine.sample(prompts, n, params)

    def continue_from(self, requests, m, params):
        self.calls.append(("continue", len(requests) * m))
        return self.engine.continue_from(requests, m, params)

    def score(self, sequences, positions, topk=None, token_ids=None):
        self.calls.append(("score", len(sequences)))
        return self.engine.score(sequences, positions, topk=topk, token_ids=token_ids)


def _config():
    """The estimate settings `diagnose run` uses by default (RunConfig defaults), on the exact engine's horizon."""
    return RunConfig(max_new_tokens=8).estimate_config()


def _estimate(engine, question, cfg):
    teachers = {"noisy": noisy_teacher(engine, "noisy"), "self": engine_teacher(engine)}
    est = Estimator(engine, [question], teachers, ["rkl", "fkl", "rkl_sampled"], cfg)
    return est.run()


def _in_flight(engine, questions, cfg, workers, fail_at=None):
    """Every question's estimate in worker threads sharing one Batcher (as the runner does)."""
    batcher = Batcher()
    batched = BatchedEngine(engine, batcher)
    results, errors, queue, lock = {}, {}, list(range(len(questions))), threading.Lock()

    def worker():
        try:
            while True:
                with lock:
                    if not queue:
                        return
                    i = queue.pop(0)
                batcher.working_on(i)
                try:
                    if i == fail_at:
                        batched.score([[1, 2]], [[1]])  # one merged call first, then a user error
                        raise DiagnoseError("bad question")
                    results[i] = _estimate(batched, questions[i], cfg)
                except DiagnoseError as err:
                    errors[i] = err
        finally:
            batcher.quit()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(workers)]
    batcher.join(workers)
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
        assert not t.is_alive(), "a worker is stuck: the batcher deadlocked"
    return results, errors, batcher


def _frames(result):
    return {k: v.reset_index(drop=True) for k, v in result.tables().items()}


def test_merged_calls_give_each_question_its_serial_numbers():
    engine = engines.load("exact", "exact", digits=4, horizon=8)
    questions = exact_questions(engine, 6, seed=3)
    cfg = _config()
    serial_engine = Counting(engine)
    serial = [_estimate(serial_engine, q, cfg) for q in questions]
    merged_engine = Counting(engine)
    merged, errors, batcher = _in_flight(merged_engine, questions, cfg, workers=4)
    assert not errors and sorted(merged) == list(range(len(questions)))
    for i, ref in enumerate(serial):
        got = merged[i]
        assert got.node_records == ref.node_records
        for name, frame in _frames(ref).items():
            pd.testing.assert_frame_equal(_frames(got)[name], frame, check_exact=True)
    # the same rows reached the engine, in far fewer and larger calls
    rows = lambda calls, kind: sum(n for k, n in calls if k == kind)  # noqa: E731
    for kind in ("sample", "continue", "score"):
        assert rows(merged_engine.calls, kind) == rows(serial_engine.calls, kind), kind
    assert len(merged_engine.calls) * 2 < len(serial_engine.calls)
    assert batcher.stats.rows["continue"] == rows(serial_engine.calls, "continue")
    biggest = max(n for k, n in merged_engine.calls if k == "continue")
    assert biggest > max(n for k, n in serial_engine.calls if k == "continue")


def test_a_failing_question_does_not_stop_or_block_the_others():
    engine = engines.load("exact", "exact", digits=4, horizon=8)
    questions = exact_questions(engine, 4, seed=5)
    cfg = _config()
    results, errors, _ = _in_flight(engine, questions, cfg, workers=3, fail_at=1)
    assert list(errors) == [1] and str(errors[1]) == "bad question"
    assert sorted(results) == [0, 2, 3]
    ref = _estimate(engine, questions[2], cfg)
    assert results[2].node_records == ref.node_records


def test_requests_with_different_length_limits_share_a_call_and_keep_their_limits():
    engine = Counting(engines.load("exact", "exact", digits=4, horizon=8))
    q = exact_questions(engine.engine, 1, seed=1)[0]
    prefix = tuple(q.prompt_ids)
    calls = [(SamplingParams(max_new_tokens=8, seed=7), Continuation(prefix, 1)),
             (SamplingParams(max_new_tokens=3, seed=7), Continuation(prefix, 2)),
             (SamplingParams(max_new_tokens=8, seed=7), Continuation(prefix, 3, max_new_tokens=2))]
    alone = [engine.engine.continue_from([r], 16, p)[0] for p, r in calls]
    batcher = Batcher()
    batched = BatchedEngine(engine, batcher)
    got = [None] * len(calls)

    def worker(i):
        batcher.working_on(i)
        try:
            got[i] = batched.continue_from([calls[i][1]], 16, calls[i][0])[0]
        finally:
            batcher.quit()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(calls))]
    batcher.join(len(threads))
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert engine.calls == [("continue", 48)]  # one engine call for all three
    for mine, ref, (params, req) in zip(got, alone, calls, strict=True):
        limit = min(params.max_new_tokens, req.max_new_tokens or params.max_new_tokens)
        assert [s.token_ids for s in mine] == [s.token_ids for s in ref]
        assert max(len(s.token_ids) for s in mine) <= limit


@pytest.mark.parametrize("engine_name,expected", [("hf", 8), ("vllm", 32)])
def test_in_flight_is_an_execution_key(engine_name, expected):
    base = RunConfig(engine=engine_name)
    assert base.questions_in_flight() == expected
    assert RunConfig(engine=engine_name, in_flight=3).digest() == base.digest()  # resumable with another value
    with pytest.raises(DiagnoseError, match="in-flight"):
        RunConfig.from_sources(None, {"in_flight": -1})
