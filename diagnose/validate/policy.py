"""The student as a trainable policy: a chosen parameter subset, its starting weights (every arm starts from
them), and the student's logits at a rollout's response positions with gradients attached.

The engine keeps sampling with the same module, so each step's rollouts come from the current weights:
training is on-policy without copying weights anywhere.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..engines.hf import eos_token_ids, pad_token_id, splits_head
from ..errors import DiagnoseError


class TrainablePolicy:
    """`train_layers` > 0: the last N decoder blocks and the final norm train (the rest is frozen); 0: every
    parameter. Logits come at the sampling temperature (z / T), the same logits the diagnosis scores."""

    def __init__(self, engine, train_layers: int, temperature: float):
        model = engine.model
        if not isinstance(model, torch.nn.Module):
            raise DiagnoseError(
                f"validate trains the student with torch: the {engine.name} engine has no torch "
                "model (use --engine hf)"
            )
        self.engine, self.model, self.temperature = engine, model, float(temperature)
        self.device = next(model.parameters()).device
        self.named = self._select(int(train_layers))
        for p in model.parameters():
            p.requires_grad_(False)
        for _, p in self.named:
            p.requires_grad_(True)
        self.start = {name: p.detach().clone() for name, p in self.named}
        # read off the model and tokenizer as the hf engine does: no probing for one engine's attributes
        self.split_head = splits_head(model)
        self.pad_id = pad_token_id(engine.tokenizer, eos_token_ids(model, engine.tokenizer))

    def _select(self, n: int) -> list[tuple[str, torch.nn.Parameter]]:
        named = dict(self.model.named_parameters())
        if n == 0:
            return list(named.items())
        decoder = self.model.get_decoder() if hasattr(self.model, "get_decoder") else None
        layers = getattr(decoder, "layers", None)
        if layers is None:
            raise DiagnoseError("--train-layers needs a model with decoder blocks (model.get_decoder().layers); use 0")
        if n > len(layers):
            raise DiagnoseError(f"--train-layers {n}: the student has {len(layers)} decoder blocks")
        chosen = {id(p) for block in list(layers)[-n:] for p in block.parameters()}
        norm = getattr(decoder, "norm", None)
        if norm is not None:
            chosen |= {id(p) for p in norm.parameters()}
        return [(name, p) for name, p in named.items() if id(p) in chosen]

    @property
    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for _, p in self.named]

    def numel(self) -> int:
        return sum(p.numel() for p in self.parameters)

    def reset(self) -> None:
        """Back to the starting weights (every arm and seed begins here)."""
        with torch.no_grad():
            for name, p in self.named:
                p.copy_(self.start[name])
            for p in self.parameters:
                p.grad = None

    def distance(self) -> float:
        """L2 distance of the trainable weights from the start (a training that moved nothing shows 0)."""
        with torch.no_grad():
            return float(sum(((p - self.start[n]) ** 2).sum() for n, p in self.named).sqrt())

    def logits(self, sequences: Sequence[Sequence[int]], positions: Sequence[Sequence[int]]) -> torch.Tensor:
        """[sum of len(positions[i]), V] float32 logits / T, with gradients: row (i, t) is the distribution of
        sequences[i][t] given sequences[i][:t] (t >= 1), as `engine.score` defines positions."""
        length = max(len(s) for s in sequences)
        ids = torch.full((len(sequences), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), length), dtype=torch.long)
        for i, s in enumerate(sequences):
            ids[i, : len(s)] = torch.tensor([int(t) for t in s])
            mask[i, : len(s)] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        rows = torch.tensor([i for i, pos in enumerate(positions) for _ in pos], device=self.device)
        cols = torch.tensor([int(t) - 1 for pos in positions for t in pos], device=self.device)
        if self.split_head:
            # The vocabulary projection only where a direction is applied: the prompt's positions cost no
            # [*, V] logits (right padding: positions need no shift).
            hidden = self.model.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state
            logits = self.model.get_output_embeddings()(hidden[rows, cols])
        else:
            logits = self.model(input_ids=ids, attention_mask=mask).logits[rows, cols]
        return logits.float() / self.temperature
