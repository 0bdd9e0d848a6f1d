"""Token sampling shared by the torch engines: temperature and top-p applied to a batch of logits, the
log-prob of each chosen token under that same distribution, counter-based draws, and per-row stop detection.

Counter-based sampling: every sample owns a 64-bit key (a hash of seed, prefix, forced token and sample
index) and its draw at generation step t is the inverse CDF of a uniform hashed from (key, t). A sample's
tokens therefore depend on nothing but its own key and its own logits: not on the other rows of the batch,
the batch size, or which rows were dropped from the cache mid-decode.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np
import torch


def processed_logprobs(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """Log-probs of the sampling policy ([R, V] float32): logits / T, then the top-p nucleus (others -inf).

    Temperature 0 is greedy: all mass on the arg-max.
    """
    logits = logits.float()
    if temperature <= 0:
        out = torch.full_like(logits, float("-inf"))
        return out.scatter_(-1, logits.argmax(-1, keepdim=True), 0.0)
    logp = torch.log_softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_logp, order = logp.sort(dim=-1, descending=True)
        cum = sorted_logp.exp().cumsum(dim=-1)
        # keep a token if the mass strictly before it is below top_p (the top token is always kept)
        drop_sorted = (cum - sorted_logp.exp()) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)
        logp = torch.log_softmax(logp.masked_fill(drop, float("-inf")), dim=-1)
    return logp


def _hash64(parts: tuple) -> int:
    """A 64-bit hash of a tuple of ints, stable across runs, processes and platforms (no PYTHONHASHSEED)."""
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "little")


def request_key(seed: int, prefix: Sequence[int], token: int = -1) -> int:
    """The key of one request: (seed, prefix, forced token or -1 for a free sample)."""
    return _hash64(("request", int(seed), tuple(int(t) for t in prefix), int(token)))


def sample_key(request: int, j: int) -> int:
    """The key of sample j of a request (from `request_key`)."""
    return _hash64(("sample", int(request), int(j)))


def row_key(seed: int, prefix: Sequence[int], token: int, j: int) -> int:
    """The 64-bit key of sample j of (seed, prefix, forced token or -1)."""
    return sample_key(request_key(seed, prefix, token), j)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """Vectorised splitmix64 finaliser on uint64 arrays (wrap-around arithmetic is intended)."""
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def uniforms(keys: Sequence[int] | np.ndarray, step: int) -> np.ndarray:
    """One uniform in the open interval (0, 1) per key for generation step `step` (float64, 53-bit)."""
    keys = np.asarray(keys, dtype=np.uint64)
    with np.errstate(over="ignore"):
        bits = _splitmix64(keys ^ _splitmix64(np.full_like(keys, int(step) + 1)))
    return ((bits >> np.uint64(11)).astype(np.float64) + 0.5) / float(1 << 53)


def draw(logp: torch.Tensor, keys: Sequence[int] | np.ndarray, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One token per row from log-probs [R, V] by inverse CDF of the row's uniform for (key, step).

    Returns (ids [R], their log-probs [R]). The CDF is a float64 cumulative sum on logp's device; the pick
    is the first token with positive probability whose CDF exceeds u x total, so rounding (or a parallel
    scan that is not exactly monotone) never selects a zero-probability token; should no such token pass,
    the last token with positive probability is taken.
    """
    if logp.shape[0] != len(keys):
        raise ValueError(f"draw: {logp.shape[0]} rows but {len(keys)} keys")
    p = logp.double().exp()
    cdf = p.cumsum(-1)
    u = torch.from_numpy(uniforms(keys, step)).to(logp.device)
    target = (u * cdf[:, -1]).unsqueeze(-1)
    positive = p > 0
    hit = (cdf > target) & positive
    first = hit.to(torch.uint8).argmax(-1)  # argmax returns the first maximal index
    last = p.shape[-1] - 1 - positive.flip(-1).to(torch.uint8).argmax(-1)
    ids = torch.where(hit.any(-1), first, last)
    return ids, logp.gather(-1, ids.unsqueeze(-1)).squeeze(-1)


class StopChecker:
    """Finds rows whose generated text now contains a stop string, decoding only a short tail per step."""

    def __init__(self, tokenizer, stop: Sequence[str], eos_ids: set[int]):
        self.tokenizer = tokenizer
        self.stop = tuple(s for s in stop if s)
        self.eos_ids = eos_ids
        # every token decodes to at least one character except partial UTF-8 bytes: keep a margin
        self.window = max((len(s) for s in self.stop), default=0) + 4

    def hit(self, token_ids: list[int]) -> bool:
        """True if the last token is an end-of-sequence id or completes a stop string."""
        if token_ids and token_ids[-1] in self.eos_ids:
            return True
        if not self.stop:
            return False
        tail = self.tokenizer.decode(token_ids[-self.window :], skip_special_tokens=False)
        return any(s in tail for s in self.stop)

    def text(self, token_ids: list[int]) -> str:
        """The sample's text, cut just after the first stop string (which stays in, as vLLM's
        include_stop_str_in_output does)."""
        text = self.tokenizer.decode(token_ids, skip_special_tokens=True)
        cuts = [text.find(s) + len(s) for s in self.stop if s in text]
        return text[: min(cuts)] if cuts else text
