"""Token sampling shared by the torch engines: temperature and top-p applied to a batch of logits, the
log-prob of each chosen token under that same distribution, and per-row stop detection."""

from __future__ import annotations

from typing import Sequence

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


def draw(logp: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One token per row from log-probs [R, V]; returns (ids [R], their log-probs [R])."""
    ids = torch.multinomial(logp.exp(), 1, generator=generator)
    return ids.squeeze(-1), logp.gather(-1, ids).squeeze(-1)


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
