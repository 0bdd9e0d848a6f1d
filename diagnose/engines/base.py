"""The engine protocol: everything the estimator and the teachers ask of a language model.

Three calls cover the whole method: (a) `sample` n rollouts per prompt, (b) `continue_from` many
(prefix, forced token) pairs with m free continuations each, (c) `score` sequences, returning next-token
distributions at chosen positions (full logits, or top-k log-probs plus the log-probs of requested ids).
All prompts are token ids; the chat template is applied in one place, `render_prompt`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence, runtime_checkable

import torch

from ..errors import DiagnoseError


@dataclass(frozen=True)
class SamplingParams:
    """Sampling settings shared by every engine (same seed + same settings = same distribution)."""

    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    stop: tuple[str, ...] = ()  # generation halts once the decoded text contains one of these
    seed: int = 0

    def key(self) -> tuple:
        """What determines a continuation (for caches)."""
        return (self.temperature, self.top_p, self.max_new_tokens, tuple(self.stop), self.seed)


@dataclass
class Sample:
    """One generated sequence: new token ids (not the prompt), each one's log-prob under the sampling policy."""

    token_ids: list[int]
    logprobs: list[float]
    text: str = ""
    finish_reason: str = "length"  # "stop" (eos or stop string) or "length"


@dataclass(frozen=True)
class Continuation:
    """A targeted-rollout request: continue `prefix` (prompt + response so far) after forcing `token`."""

    prefix: tuple[int, ...]
    token: int
    # This request's length limit (forced token included); None: the call's params.max_new_tokens. Engines
    # may stop the row there; the estimator cuts every sample at it anyway.
    max_new_tokens: int | None = None


@dataclass
class Scores:
    """Next-token distributions of one sequence at the requested positions (rows follow `positions`).

    Position t means: the distribution of the token at index t given ids[:t]. Exactly one of `logits`
    (full vocabulary, [P, V]) or `topk_ids`/`topk_logprobs` ([P, k]) is set; `token_logprobs` [P, R] holds
    the log-probs of the requested token ids when asked for.
    """

    positions: list[int]
    logits: torch.Tensor | None = None
    topk_ids: torch.Tensor | None = None
    topk_logprobs: torch.Tensor | None = None
    token_logprobs: torch.Tensor | None = None
    extra: dict = field(default_factory=dict)


@runtime_checkable
class Engine(Protocol):
    """What callers may read of any engine besides the three calls; every back end sets all of these."""

    name: str
    model_id: str
    vocab_size: int
    tokenizer: object  # a transformers tokenizer (decode, eos_token_id, chat template)
    # The precision its logits are computed in (sizes rounding noise: estimate/signal.py; external teachers
    # load in the student's); None: exact arithmetic (the exact engine), sized as float32.
    dtype: torch.dtype | None
    device: str  # where it computes: "cpu", "cuda", "cuda:0", ... (cost.json, the plan's ETA)
    # The in-process torch model, where there is one to differentiate (--param-space, validate's training);
    # None for engines that hold none in this process (vllm, exact).
    model: torch.nn.Module | None
    max_model_len: int | None  # longest prompt + response it accepts; None: no limit

    def sample(self, prompts: Sequence[Sequence[int]], n: int, params: SamplingParams) -> list[list[Sample]]:
        """n samples per prompt; result[i][j] is prompt i's j-th sample."""

    def continue_from(
        self, requests: Sequence[Continuation], m: int, params: SamplingParams
    ) -> list[list[Sample]]:
        """m continuations per request; each Sample's token_ids start with the forced token."""

    def score(
        self,
        sequences: Sequence[Sequence[int]],
        positions: Sequence[Sequence[int]],
        topk: int | None = None,
        token_ids: Sequence[Sequence[Sequence[int]]] | None = None,
    ) -> list[Scores]:
        """Distributions at positions; topk=None gives full logits, else top-k log-probs.

        token_ids[i][j] lists extra ids whose log-probs are wanted at sequence i, position j.
        """


PROTOCOL_ATTRIBUTES = ("name", "model_id", "vocab_size", "tokenizer", "dtype", "device", "model", "max_model_len")


def precision(engine) -> str:
    """An engine's dtype as a loader argument: "bfloat16", "float32", ...; "auto" where it has none."""
    return "auto" if engine.dtype is None else str(engine.dtype).replace("torch.", "")


def check_protocol(engine, name: str) -> None:
    """Refuse an engine (a user-registered back end, say) that lacks an attribute the protocol declares."""
    missing = [a for a in PROTOCOL_ATTRIBUTES if not hasattr(engine, a)]
    missing += [c for c in ("sample", "continue_from", "score") if not callable(getattr(engine, c, None))]
    if missing:
        raise DiagnoseError(
            f"engine {name!r} does not follow the engine protocol: it lacks {', '.join(missing)} "
            "(diagnose.engines.base.Engine lists what every engine sets)"
        )


def render_prompt(tokenizer, messages: Sequence[dict] | str, add_generation_prompt: bool = True) -> list[int]:
    """The one place the chat template is applied. A plain string is one user message."""
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(
            list(messages), add_generation_prompt=add_generation_prompt, tokenize=True
        )
        if hasattr(ids, "input_ids"):  # transformers 5 returns a BatchEncoding
            ids = ids["input_ids"]
        return [int(i) for i in ids]
    text = "\n\n".join(m["content"] for m in messages)
    return [int(i) for i in tokenizer(text, add_special_tokens=True)["input_ids"]]
