"""Teacher scoring: one pass per (teacher, rollout) gives q at every selected node of that rollout.

The teacher sees its own prompt (student prompt + context, chat template applied) followed by the student's
response tokens, so its distribution at response position t is conditioned on the same y_<t the student
produced. The payload follows what the configured objectives need: full logits when any needs them (and
the engine can), else top-k log-probs plus the log-probs of requested ids, densified with the leftover mass
spread uniformly so known entries keep their exact probability.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..engines.base import render_prompt
from ..errors import DiagnoseError
from ..objectives.base import NEEDS_LOGITS


@dataclass
class TeacherScores:
    """Teacher logits (or densified log-probs) [P, V] at the requested response positions of one rollout."""

    positions: list[int]  # response positions (0 = first generated token)
    logits: torch.Tensor
    prompt_len: int  # length of the teacher prompt in tokens


def payload_for(objectives: Sequence) -> str:
    return "logits" if any(o.needs == NEEDS_LOGITS for o in objectives) else "topk"


def densify(topk_ids, topk_logprobs, vocab: int, extra_ids=None, extra_logprobs=None) -> torch.Tensor:
    """[P, k] log-probs (+ requested ids) -> [P, V] log-probs: known entries exact, the rest uniform."""
    rows = topk_ids.shape[0]
    ids = topk_ids.long()
    lps = topk_logprobs.float()
    if extra_ids is not None:
        ids = torch.cat([ids, extra_ids.long()], 1)
        lps = torch.cat([lps, extra_logprobs.float()], 1)
    known = torch.zeros(rows, vocab, dtype=torch.bool).scatter_(1, ids, True)
    dense = torch.zeros(rows, vocab).scatter_(1, ids, lps)
    mass = torch.where(known, dense.exp(), torch.zeros_like(dense)).sum(1).clamp(max=1.0)
    n_unknown = (~known).sum(1).clamp_min(1)
    rest = torch.log((1.0 - mass).clamp_min(1e-30) / n_unknown)
    return torch.where(known, dense, rest[:, None].expand(rows, vocab))


def max_context(engine) -> int | None:
    """The longest prompt + response the engine accepts (its protocol's max_model_len); None: no limit."""
    return int(engine.max_model_len) if engine.max_model_len else None


def score_rollouts(
    engine,
    messages: Sequence[list[dict]],
    responses: Sequence[Sequence[int]],
    positions: Sequence[Sequence[int]],
    payload: str = "logits",
    topk: int = 20,
    token_ids: Sequence[Sequence[Sequence[int]]] | None = None,
    teacher_name: str = "teacher",
) -> list[TeacherScores]:
    """Score each rollout's response under the teacher's prompt, at the given response positions."""
    prompts = [render_prompt(engine.tokenizer, m) for m in messages]
    limit = max_context(engine)
    sequences, abs_positions = [], []
    for prompt, resp, pos in zip(prompts, responses, positions, strict=False):
        seq = list(prompt) + list(resp)
        if limit is not None and len(seq) > limit:
            raise DiagnoseError(
                f"teacher {teacher_name}: its prompt ({len(prompt)} tokens) plus the rollout ({len(resp)}) "
                f"exceed its context window of {limit} tokens; use a shorter context"
            )
        sequences.append(seq)
        abs_positions.append([len(prompt) + int(t) for t in pos])
    if payload == "logits":
        scores = engine.score(sequences, abs_positions, topk=None)
    else:
        scores = engine.score(sequences, abs_positions, topk=topk, token_ids=token_ids)
    out = []
    for prompt, pos, sc in zip(prompts, positions, scores, strict=False):
        if sc.logits is not None:
            logits = sc.logits.float()
        else:
            extra = None if sc.token_logprobs is None else torch.as_tensor(sc.token_logprobs)
            req = None
            if extra is not None and token_ids is not None:
                req = torch.as_tensor([list(x) for x in token_ids[len(out)]])
            logits = densify(sc.topk_ids, sc.topk_logprobs, engine.vocab_size, req, extra)
        out.append(TeacherScores(positions=list(pos), logits=logits, prompt_len=len(prompt)))
    return out
