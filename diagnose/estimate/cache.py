"""On-disk cache of generated samples (rollouts and targeted continuations), in one sqlite file.

A sample is keyed by everything that determines it: model id, the full prefix (prompt + response so far),
the forced token (-1 for a rollout), the sampling settings including the base seed, and the sample's index.
Adding a teacher or an objective later therefore reuses every rollout and continuation already generated,
and an interrupted estimate resumes where it stopped: results are written after every engine call.

Engines need not support per-request seeds: the cache stores what was generated, so a resumed run reads the
stored samples back instead of regenerating them. `MemoryCache` has the same interface without a file.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from pathlib import Path
from typing import Iterable, Sequence

from ..engines.base import Sample, SamplingParams


def sample_key(model_id: str, prefix: Sequence[int], token: int, params: SamplingParams, index: int) -> str:
    """The cache key of one sample: a hash of what determines it."""
    payload = repr(
        (str(model_id), tuple(int(i) for i in prefix), int(token), tuple(params.key()), int(index))
    )
    return hashlib.blake2b(payload.encode(), digest_size=20).hexdigest()


def _encode(sample: Sample) -> str:
    return json.dumps(
        {"t": sample.token_ids, "l": sample.logprobs, "x": sample.text, "f": sample.finish_reason},
        separators=(",", ":"),
    )


def _decode(text: str) -> Sample:
    d = json.loads(text)
    return Sample(token_ids=list(d["t"]), logprobs=list(d["l"]), text=d["x"], finish_reason=d["f"])


class MemoryCache:
    """In-memory cache (the default when no path is given)."""

    def __init__(self):
        self._data: dict[str, str] = {}
        self.hits = 0
        self.writes = 0

    def get_many(self, keys: Iterable[str]) -> dict[str, Sample]:
        out = {k: _decode(self._data[k]) for k in keys if k in self._data}
        self.hits += len(out)
        return out

    def put_many(self, items: dict[str, Sample]) -> None:
        for k, s in items.items():
            self._data[k] = _encode(s)
        self.writes += len(items)

    def __len__(self) -> int:
        return len(self._data)

    def close(self) -> None:
        pass


class SampleCache(MemoryCache):
    """sqlite-backed cache: one row per sample, committed after each engine call (safe to kill and resume)."""

    def __init__(self, path: str | Path):
        super().__init__()
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS samples (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        self._db.commit()

    def get_many(self, keys: Iterable[str]) -> dict[str, Sample]:
        keys = list(keys)
        out: dict[str, Sample] = {}
        with self._lock:
            for i in range(0, len(keys), 500):
                chunk = keys[i : i + 500]
                marks = ",".join("?" * len(chunk))
                for k, v in self._db.execute(f"SELECT key, value FROM samples WHERE key IN ({marks})", chunk):
                    out[k] = _decode(v)
        self.hits += len(out)
        return out

    def put_many(self, items: dict[str, Sample]) -> None:
        with self._lock:
            self._db.executemany(
                "INSERT OR REPLACE INTO samples (key, value) VALUES (?, ?)",
                [(k, _encode(s)) for k, s in items.items()],
            )
            self._db.commit()
        self.writes += len(items)

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM samples").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()


def open_cache(path: str | Path | None):
    """A SampleCache at `path`, or a MemoryCache when `path` is None."""
    return MemoryCache() if path is None else SampleCache(path)
