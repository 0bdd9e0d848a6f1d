"""Scored sequences remembered: the final hidden states of each sequence the hf engine scored, so scoring it
again at other positions (the estimator's next selection pass, the same rollout under the same teacher
context) costs one vocabulary projection per position instead of a prefill of the whole sequence.

Bounded by bytes (least recently used first out) and forgotten whenever the model's weights change in place
(validate trains the student it scores with): every parameter's version counter is read at each lookup.
"""

from __future__ import annotations

from collections import OrderedDict

import torch


def pick(offset: int, hidden: torch.Tensor, positions) -> torch.Tensor:
    """Rows of `hidden` (a sequence's states from token `offset` on) at positions t: hidden index t - 1."""
    index = torch.tensor([int(t) - 1 - offset for t in positions], device=hidden.device)
    return hidden.index_select(0, index)


class HiddenCache:
    """sequence (token tuple) -> (offset, hidden [len - offset, H]): the hidden states of the sequence's
    tokens from index `offset` on (a shared stem's tokens before it were not kept)."""

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict[tuple[int, ...], tuple[int, torch.Tensor]] = OrderedDict()
        self._bytes = 0
        self._version: int | None = None
        self.hits = self.misses = 0

    def sync(self, model: torch.nn.Module) -> None:
        """Forget everything if any parameter was modified in place since the last call (an optimizer step)."""
        version = sum(p._version for p in model.parameters())
        if version != self._version:
            self.clear()
            self._version = version

    def clear(self) -> None:
        self._items.clear()
        self._bytes = 0

    def covers(self, seq: tuple[int, ...], positions) -> bool:
        """Whether every position t (the distribution after ids[:t]: hidden index t - 1) is held."""
        item = self._items.get(seq)
        if item is None:
            return False
        offset, _ = item
        return all(int(t) - 1 >= offset for t in positions)

    def rows(self, seq: tuple[int, ...], positions) -> torch.Tensor:
        """The hidden states at the positions asked for, [P, H] (the sequence must be `covers`ed)."""
        offset, hidden = self._items[seq]
        self._items.move_to_end(seq)
        return pick(offset, hidden, positions)

    def put(self, seq: tuple[int, ...], offset: int, hidden: torch.Tensor) -> None:
        size = hidden.numel() * hidden.element_size()
        if size > self.max_bytes:
            return
        old = self._items.pop(seq, None)
        if old is not None:
            self._bytes -= old[1].numel() * old[1].element_size()
        self._items[seq] = (int(offset), hidden)
        self._bytes += size
        while self._bytes > self.max_bytes:
            _, (_, dropped) = self._items.popitem(last=False)
            self._bytes -= dropped.numel() * dropped.element_size()
