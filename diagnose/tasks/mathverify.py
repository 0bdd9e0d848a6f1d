"""Symbolic answer checking with math-verify, in a lazily created, reused process pool.

math-verify enforces its timeouts with SIGALRM, which works only in a process's main thread: each check
runs in the main thread of a worker process, and the parent also bounds the whole batch, killing and
replacing the pool if a worker hangs (a hung item counts as wrong). Workers start by forkserver (spawn
where it is missing), so a script calling this needs the usual `if __name__ == "__main__":` guard.
"""

from __future__ import annotations

import atexit
import concurrent.futures as cf
import multiprocessing
import os
import threading
from functools import lru_cache
from typing import Sequence

TIMEOUT_S = 5  # seconds per item: math-verify's parse and verify budgets inside the worker
_lock = threading.Lock()
_pool: cf.ProcessPoolExecutor | None = None


def _context():
    methods = multiprocessing.get_all_start_methods()
    # fork would copy a parent that may hold torch threads; forkserver forks from a clean server process.
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


def workers() -> int:
    """Worker count: DIAGNOSE_VERIFY_WORKERS, else the usable CPUs (at most 8)."""
    env = os.environ.get("DIAGNOSE_VERIFY_WORKERS")
    if env:
        return max(1, int(env))
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        cpus = os.cpu_count() or 1
    return max(1, min(8, cpus))


def _get_pool() -> cf.ProcessPoolExecutor:
    global _pool
    with _lock:
        if _pool is None:
            _pool = cf.ProcessPoolExecutor(max_workers=workers(), mp_context=_context(), initializer=_warm)
        return _pool


def shutdown(kill: bool = False) -> None:
    """Stop the pool (it is recreated on the next call); kill=True terminates hung workers."""
    global _pool
    with _lock:
        pool, _pool = _pool, None
    if pool is None:
        return
    if kill:
        for proc in list(getattr(pool, "_processes", {}).values()):
            proc.terminate()
    pool.shutdown(wait=not kill, cancel_futures=True)


atexit.register(shutdown, True)


def _warm() -> None:
    """Pay math-verify's import and first-parse set-up once per worker, not on the first items."""
    _check_safely("1", "\\boxed{1}")


@lru_cache(maxsize=4096)
def _gold(answer: str):
    from math_verify import parse

    parsed = parse("\\boxed{" + answer + "}", parsing_timeout=TIMEOUT_S)
    return parsed or parse("$" + answer + "$", parsing_timeout=TIMEOUT_S)


def check(answer: str, completion: str) -> bool:
    """One check in this process (must be a main thread): does `completion` state `answer`?"""
    from math_verify import parse, verify

    gold = _gold(answer)
    if not gold:
        return False
    predicted = parse(completion, parsing_timeout=TIMEOUT_S)
    if not predicted:
        return False
    return bool(verify(gold, predicted, timeout_seconds=TIMEOUT_S))


def _check_safely(answer: str, completion: str) -> bool:
    try:
        return check(answer, completion)
    except Exception:  # a malformed completion is a wrong answer, never a crash
        return False


def check_many(items: Sequence[tuple[str, str]], timeout_s: float = TIMEOUT_S) -> list[bool]:
    """(reference answer, completion) pairs -> verdicts, checked in the worker pool.

    Items still running when the batch's budget (per-item timeout x items per worker, plus start-up)
    runs out count as wrong, and the pool is replaced.
    """
    if not items:
        return []
    pool = _get_pool()
    futures = [pool.submit(_check_safely, answer, text) for answer, text in items]
    per_worker = -(-len(items) // workers())
    done, pending = cf.wait(futures, timeout=30.0 + 3 * timeout_s * per_worker)
    if pending:
        shutdown(kill=True)
    out = []
    for future in futures:
        try:
            out.append(future in done and bool(future.result(timeout=0)))
        except Exception:  # a worker died (BrokenProcessPool) or the item was cancelled
            out.append(False)
    if any(future in done and future.exception() is not None for future in futures):
        shutdown(kill=True)  # a broken pool cannot be reused
    return out
