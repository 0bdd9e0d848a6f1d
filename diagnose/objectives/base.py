"""Objective base class and the shared numerics (stable log-probs, top-k masks, one-hots).

An objective maps (student logits z, teacher logits z_T, sampled tokens) at N nodes to the update direction
d = -dL/dz, float32 [N, V]. Everything is computed in float32 from log-softmax, never from log(softmax).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

# Log-probabilities are floored here: exp(-1e4) is exactly 0 in float32, yet log-ratios of masked (-inf)
# entries stay finite, so 0 * (-inf - -inf) never produces NaN.
LOG_FLOOR = -1.0e4

# What an objective needs from the teacher at each node.
NEEDS_LOGITS = "logits"  # full-vocabulary logits
NEEDS_TOPK = "topk"  # the teacher's top-k log-probs (plus the student's top-k ids)
NEEDS_TOKEN = "token"  # the teacher's log-prob of the sampled token only
NEEDS_NONE = "none"  # no teacher at all (RL reference arm)


def log_probs(logits: torch.Tensor) -> torch.Tensor:
    """float32 log-softmax over the last axis, floored at LOG_FLOOR (so -inf logits stay finite)."""
    return torch.log_softmax(logits.float(), dim=-1).clamp_min(LOG_FLOOR)


def topk_mask(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean [N, V] mask of each row's k largest logits (k is capped at V)."""
    k = min(int(k), logits.shape[-1])
    idx = logits.float().topk(k, dim=-1).indices
    return torch.zeros(logits.shape, dtype=torch.bool, device=logits.device).scatter_(-1, idx, True)


def masked_logits(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Logits with entries outside `mask` set to -inf (renormalising on the mask)."""
    return logits.float().masked_fill(~mask, float("-inf"))


def one_hot(tokens: torch.Tensor, vocab: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(tokens.long(), vocab).float()


def policy_gradient_direction(p: torch.Tensor, tokens: torch.Tensor, advantage: torch.Tensor) -> torch.Tensor:
    """d = A (e_a - p): the ascent direction of the surrogate A.detach() * log p_a."""
    return advantage.float()[:, None] * (one_hot(tokens, p.shape[-1]) - p)


def expected_policy_gradient(logp: torch.Tensor, weighted_advantage: torch.Tensor) -> torch.Tensor:
    """E_{a~p}[A_a (e_a - p)] = p*A - p <p, A>, given p*A (passed directly to keep p_a = 0 entries finite)."""
    p = logp.exp()
    return weighted_advantage - p * weighted_advantage.sum(-1, keepdim=True)


@dataclass
class Objective:
    """A distillation objective: `direction` gives d = -dL/dz per node; `needs` names the teacher payload."""

    name: ClassVar[str] = ""
    needs: ClassVar[str] = NEEDS_LOGITS
    sampled: ClassVar[bool] = False  # True: d depends on the sampled token (has expected_direction)
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        self.check_params()

    def check_params(self) -> None:
        """Refuse parameter values the objective cannot use (ValueError), when it is built: a bad spec such as
        `jsd:beta=2` fails before any model loads, not in the middle of a run."""

    @property
    def label(self) -> str:
        """Stable display name, e.g. `jsd:beta=0.5` (same syntax the CLI parses)."""
        if not self.params:
            return self.name
        return self.name + ":" + ",".join(f"{k}={v}" for k, v in sorted(self.params.items()))

    def direction(self, student_logits, teacher_logits=None, tokens=None, **kw) -> torch.Tensor:
        raise NotImplementedError

    def _check(self, student_logits, teacher_logits, tokens):
        if student_logits.dim() != 2:
            raise ValueError(f"{self.name}: student logits must be [N, V], got {tuple(student_logits.shape)}")
        if self.needs != NEEDS_NONE:
            if teacher_logits is None:
                raise ValueError(f"{self.name}: needs teacher logits")
            if teacher_logits.shape != student_logits.shape:
                raise ValueError(
                    f"{self.name}: teacher logits {tuple(teacher_logits.shape)} do not match "
                    f"student logits {tuple(student_logits.shape)}"
                )
        if self.sampled and tokens is None:
            raise ValueError(f"{self.name}: needs the sampled tokens")

    def __repr__(self) -> str:  # pragma: no cover - cosmetic
        return f"Objective({self.label})"
