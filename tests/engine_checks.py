"""Shared engine checks for the engine tests: continuation log-probs against scoring from scratch."""

from __future__ import annotations

import torch


def rescored(engine, requests, out):
    """Each continuation in `out` (from engine.continue_from(requests, ...)) as a full sequence, with its
    tokens' log-probs when prefix + continuation is scored from scratch: (sequences, Scores)."""
    seqs, positions, ids = [], [], []
    for req, conts in zip(requests, out, strict=True):
        for c in conts:
            seqs.append(list(req.prefix) + c.token_ids)
            positions.append([len(req.prefix) + j for j in range(len(c.token_ids))])
            ids.append([[t] for t in c.token_ids])
    return seqs, engine.score(seqs, positions, topk=1, token_ids=ids)


def recomputation_error(engine, requests, out) -> tuple[int, float]:
    """(number of log-probs, largest |difference|) between every continuation log-prob in `out` and the
    log-prob of the same token scored from scratch."""
    _, scores = rescored(engine, requests, out)
    got = torch.tensor([lp for conts in out for c in conts for lp in c.logprobs])
    want = torch.cat([s.token_logprobs[:, 0] for s in scores])
    assert got.shape == want.shape
    return got.numel(), (got - want).abs().max().item()
