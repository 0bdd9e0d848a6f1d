"""Alignment in parameter space: cos(J^T g*, J^T d) per node, J = dz/dtheta at the node (see docs/kernels.md).

The network couples tokens, so the parameter update a logit direction induces can align differently from
the direction itself. One forward pass per batch of sequences; `torch.func.vjp` gives the pullback and
`torch.func.vmap` maps it over every (node, vector) pair, so no per-node backward loop runs in Python.
Optionally restricted to a parameter subset (names matched by regex, e.g. the last block and the head).

    >>> from diagnose.param_space import param_space_alignment
    >>> out = param_space_alignment(model, input_ids, node_batch, node_pos, g, directions,
    ...                             params=r"layers\\.29\\.|lm_head|embed_tokens")
    >>> out.cos   # [M, D]: node m, direction j
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch.func import functional_call, vjp, vmap

from .alignment import safe_cosine


@dataclass
class ParamAlignment:
    """Per node m and direction j: <J^T g*, J^T d_j>, |J^T g*|^2, |J^T d_j|^2 and their cosine."""

    dot: torch.Tensor  # [M, D]
    g_sq: torch.Tensor  # [M]
    d_sq: torch.Tensor  # [M, D]
    cos: torch.Tensor  # [M, D]
    degenerate: torch.Tensor  # [M, D] bool
    params: list  # names of the parameters the gradients live on


def select_params(model: torch.nn.Module, include=None) -> dict[str, torch.Tensor]:
    """Trainable parameters whose name matches `include` (a regex, or a list of regexes / name prefixes;
    None = all). Tied parameters appear once, under the first matching name."""
    if include is None:
        patterns = None
    elif isinstance(include, str):
        patterns = [re.compile(include)]
    else:
        patterns = [
            re.compile(p if any(c in p for c in "^$\\|()[]*+?") else "^" + re.escape(p)) for p in include
        ]
    chosen, seen = {}, set()
    for name, prm in model.named_parameters(remove_duplicate=False):
        if not prm.requires_grad or id(prm) in seen:
            continue
        if patterns is None or any(p.search(name) for p in patterns):
            chosen[name] = prm
            seen.add(id(prm))
    if not chosen:
        raise ValueError(f"no trainable parameter matches {include!r}")
    return chosen


def param_space_alignment(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    node_batch: torch.Tensor,
    node_pos: torch.Tensor,
    g: torch.Tensor,
    directions: torch.Tensor,
    params=None,
    attention_mask: torch.Tensor | None = None,
    chunk: int | None = 8,
) -> ParamAlignment:
    """cos(J^T g*, J^T d) for M nodes and D directions per node.

    input_ids [B, T]; node m reads the logits at (node_batch[m], node_pos[m]) (the position whose output
    predicts the node's token). g [M, V] is g* (dense; see `densify`), directions [M, D, V] the d's.
    `params` selects the parameter subset (see `select_params`); `chunk` bounds how many pullbacks run
    at once (whole nodes at a time; memory ~ chunk x the subset's size). Gradients are taken in float32
    with the model in eval mode.
    """
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
    m_nodes, vocab = g.shape
    if directions.shape[0] != m_nodes or directions.shape[-1] != vocab or directions.dim() != 3:
        raise ValueError(f"directions must be [M={m_nodes}, D, V={vocab}], got {tuple(directions.shape)}")
    chosen = select_params(model, params)
    seen = {id(t) for t in chosen.values()}  # tied aliases follow the first name given (tie_weights=True)
    others = {}
    for n, t in model.named_parameters(remove_duplicate=False):
        if id(t) not in seen:
            others[n] = t.detach()
            seen.add(id(t))
    others.update(dict(model.named_buffers()))
    primals = {n: t.detach() for n, t in chosen.items()}
    node_batch = torch.as_tensor(node_batch, device=input_ids.device).long()
    node_pos = torch.as_tensor(node_pos, device=input_ids.device).long()
    kwargs = {"use_cache": False}
    if attention_mask is not None:
        kwargs["attention_mask"] = attention_mask

    def node_logits(p):
        out = functional_call(model, {**others, **p}, (input_ids,), kwargs)
        logits = out.logits if hasattr(out, "logits") else out
        return logits[node_batch, node_pos].float()  # [M, V]

    was_training = model.training
    model.eval()
    try:
        _, pull = vjp(node_logits, primals)
        vecs = torch.cat([g[:, None].float(), directions.float()], 1)  # [M, 1 + D, V]
        n_vec = vecs.shape[1]
        eye = torch.eye(m_nodes, device=g.device)

        def pullback(row, vec):  # J_row^T vec: cotangent vec on the node's row, zero elsewhere
            return pull(eye[row][:, None] * vec[None, :])[0]

        dots = torch.zeros(m_nodes, n_vec, dtype=torch.float64, device=g.device)
        sq = torch.zeros_like(dots)
        per_group = max(1, (chunk or m_nodes * n_vec) // n_vec)
        for m0 in range(0, m_nodes, per_group):
            ms = torch.arange(m0, min(m0 + per_group, m_nodes), device=g.device)
            rows = ms.repeat_interleave(n_vec)
            grads = vmap(pullback)(rows, vecs[ms].reshape(-1, vocab))  # name -> [len(ms) (1 + D), *shape]
            for t in grads.values():
                t = t.reshape(len(ms), n_vec, -1).double()
                sq[ms] += (t * t).sum(-1)
                dots[ms] += (t[:, :1] * t).sum(-1)
            del grads
    finally:
        model.train(was_training)
    g_sq, d_sq, dot = sq[:, 0], sq[:, 1:], dots[:, 1:]
    cos, degenerate = safe_cosine(dot, g_sq[:, None].expand_as(d_sq), d_sq)
    return ParamAlignment(
        dot=dot.float(),
        g_sq=g_sq.float(),
        d_sq=d_sq.float(),
        cos=cos.float(),
        degenerate=degenerate,
        params=list(chosen),
    )


def densify(cand_ids: torch.Tensor, g_cand: torch.Tensor, vocab: int) -> torch.Tensor:
    """g* [M, V] from candidate ids [M, K] (-1 = padding) and values [M, K]."""
    from diagnose.kernels import dense_candidates

    return dense_candidates(cand_ids, g_cand, vocab)[0]
