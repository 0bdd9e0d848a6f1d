"""`make demo`: the main job on the embedded default. Until the run pipeline lands this scores every
objective against a known ideal gradient on seeded synthetic nodes and prints the ranking."""

from __future__ import annotations

import torch
from rich.console import Console
from rich.table import Table

from . import alignment, objectives
from .ideal import ideal_gradient


def main(n: int = 256, vocab: int = 1000, k: int = 8, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    z = 2 * torch.randn(n, vocab, generator=g)
    # a teacher that knows which candidates succeed, blurred by noise
    cand = torch.stack([torch.randperm(vocab, generator=g)[:k] for _ in range(n)])
    q = torch.rand(n, k, generator=g)
    zt = z + 0.5 * torch.randn(n, vocab, generator=g)
    zt.scatter_add_(1, cand, 3 * (q - 0.5))
    star = ideal_gradient(z, cand, q)
    tokens = torch.multinomial(torch.softmax(z, -1), 1, generator=g)[:, 0]
    table = Table(title=f"alignment with g* over {n} synthetic nodes (V={vocab})")
    for col in ("objective", "cos full", "cos support"):
        table.add_column(col)
    for name in objectives.available():
        if name == "grpo_ref":
            continue
        d = objectives.get(name).direction(z, zt, tokens)
        cos = alignment.cosines(star.g, d, star.candidates)
        table.add_row(objectives.get(name).label, f"{cos.full.mean():+.3f}", f"{cos.support.mean():+.3f}")
    Console().print(table)


if __name__ == "__main__":
    main()
