"""Cached sample generation: numbered rollouts and numbered continuations, read from the cache or generated.

Sample i of a (prefix, forced token) is generated in a block [start, start + count) by one engine call with
the seed derived from (base seed, start); sample j of that call becomes index start + j. Blocks are written
to the cache as soon as the call returns. For an engine with per-request seeding (the exact engine) a sample
then depends only on its key, never on which other requests shared the call.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from typing import Sequence

from ..engines.base import Continuation, Sample, SamplingParams
from .cache import MemoryCache, sample_key


def derive_seed(base: int, *parts) -> int:
    """A 31-bit seed derived from a base seed and block coordinates (stable across runs and platforms)."""
    h = hashlib.blake2b(repr((int(base),) + parts).encode(), digest_size=4).digest()
    return int.from_bytes(h, "little") & 0x7FFFFFFF


@dataclass
class Request:
    """Samples [start, start + count) of `prefix` with `token` forced first (token -1: a free rollout)."""

    prefix: tuple[int, ...]
    token: int
    start: int
    count: int
    max_new_tokens: int | None = None  # this request's length limit (None: the Generator's); see q.py


@dataclass
class Tally:
    """Samples one kind of request (rollouts or continuations) was answered with: `generated` by the engine in
    this Generator's lifetime, or `cached` (read from the cache: written by an earlier, interrupted run, by a
    run sharing the cache, or earlier in this one for an identical prefix). Every sample a request asks for is
    counted once, so generated + cached is what the caller received; tokens likewise."""

    generated: int = 0
    cached: int = 0
    generated_tokens: int = 0
    cached_tokens: int = 0


class Generator:
    """Fetches numbered samples through the cache, generating the missing blocks with the engine."""

    def __init__(self, engine, params: SamplingParams, cache=None, max_batch: int = 256):
        self.engine = engine
        self.params = params
        self.cache = cache if cache is not None else MemoryCache()
        self.max_batch = max(1, int(max_batch))
        self.model_id = engine.model_id
        self.generated = 0  # samples produced by the engine in this Generator's lifetime
        self.generated_tokens = 0
        self.engine_calls = 0
        self.tally = {"rollouts": Tally(), "continuations": Tally()}  # see Tally

    def params_for(self, request: Request) -> SamplingParams:
        """The sampling settings of one request (its own length limit, when it has one)."""
        if request.max_new_tokens is None or request.max_new_tokens == self.params.max_new_tokens:
            return self.params
        return replace(self.params, max_new_tokens=int(request.max_new_tokens))

    def key(self, prefix, token: int, index: int, params: SamplingParams | None = None) -> str:
        return sample_key(self.model_id, prefix, token, params or self.params, index)

    def fetch(self, requests: Sequence[Request]) -> list[list[Sample]]:
        """The samples of every request, in index order."""
        for r in requests:
            if r.max_new_tokens is not None and r.max_new_tokens < 1:
                raise ValueError(f"a request needs max_new_tokens >= 1, got {r.max_new_tokens}")
        req_params = [self.params_for(r) for r in requests]
        keys = [
            [self.key(r.prefix, r.token, r.start + j, pr) for j in range(r.count)]
            for r, pr in zip(requests, req_params, strict=True)
        ]
        found = self.cache.get_many(k for ks in keys for k in ks)
        hits = set(found)  # what the cache answered before any generation
        # Missing samples, as contiguous runs per request, grouped by (token kind, run start, run length).
        groups: dict[tuple[bool, int], list[tuple[int, int, int]]] = {}
        for ri, (r, ks) in enumerate(zip(requests, keys, strict=False)):
            j = 0
            while j < r.count:
                if ks[j] in found:
                    j += 1
                    continue
                run = j
                while j < r.count and ks[j] not in found:
                    j += 1
                groups.setdefault((r.token < 0, r.start + run), []).append((ri, r.start + run, j - run))
        # One engine call per (kind, block start) and batch: runs of different lengths share it (each takes the
        # first samples it needs), so a node's observed token, which has one free sample, does not cost a
        # separate call. The seed depends on the block start only, so sample j of a block is the same sample
        # whichever other requests shared the call (for engines that seed per request).
        for (is_rollout, start), members in sorted(groups.items()):
            for b in range(0, len(members), self.max_batch):
                chunk = members[b : b + self.max_batch]
                length = max(n for _, _, n in chunk)
                # Requests of one call may have different length limits (a continuation from response position
                # t may generate max_new_tokens - t more tokens): the call runs to the largest, each request
                # carries its own limit, and every sample is cut at its limit below (exact: tokens before the
                # cut do not depend on what comes after), so engines that ignore the per-request limit agree.
                limit = max(req_params[ri].max_new_tokens for ri, _, _ in chunk)
                params = replace(self.params, seed=derive_seed(self.params.seed, start), max_new_tokens=limit)
                if is_rollout:
                    out = self.engine.sample([list(requests[ri].prefix) for ri, _, _ in chunk], length, params)
                else:
                    reqs = [
                        Continuation(
                            prefix=requests[ri].prefix,
                            token=requests[ri].token,
                            max_new_tokens=req_params[ri].max_new_tokens,
                        )
                        for ri, _, _ in chunk
                    ]
                    out = self.engine.continue_from(reqs, length, params)
                self.engine_calls += 1
                new: dict[str, Sample] = {}
                for (ri, s0, n), samples in zip(chunk, out, strict=False):
                    r = requests[ri]
                    for j, smp in enumerate(samples[:n]):
                        if len(smp.token_ids) > req_params[ri].max_new_tokens:
                            smp = cut_sample(smp, req_params[ri].max_new_tokens, self.engine.tokenizer, "length")
                        new[self.key(r.prefix, r.token, s0 + j, req_params[ri])] = smp
                        self.generated_tokens += len(smp.token_ids)
                self.generated += len(new)
                self.cache.put_many(new)
                found.update(new)
        out = [[found[k] for k in ks] for ks in keys]
        for r, ks, samples in zip(requests, keys, out, strict=True):
            t = self.tally["rollouts" if r.token < 0 else "continuations"]
            for k, smp in zip(ks, samples, strict=True):
                if k in hits:
                    t.cached += 1
                    t.cached_tokens += len(smp.token_ids)
                else:
                    t.generated += 1
                    t.generated_tokens += len(smp.token_ids)
        return out


def cut_sample(sample: Sample, length: int, tokenizer, finish_reason: str) -> Sample:
    """The first `length` tokens of a sample, as a generation that ended there (for `finish_reason`) would
    have produced them: tokens before the cut do not depend on what came after."""
    ids = list(sample.token_ids[:length])
    text = tokenizer.decode(ids, skip_special_tokens=True)
    return Sample(token_ids=ids, logprobs=list(sample.logprobs[:length]), text=text, finish_reason=finish_reason)
