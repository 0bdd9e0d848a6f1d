"""The run option `param_space`: cos(J^T g*, J^T d) per node and configuration, on a parameter subset of the
student (default: its last transformer block and final norm), next to the logit-space cosine."""

from __future__ import annotations

import torch

from ..errors import DiagnoseError
from ..objectives.base import NEEDS_NONE
from ..param_space import param_space_alignment


def default_subset(model) -> str:
    n = int(getattr(model.config, "num_hidden_layers", 1))
    return rf"layers\.{n - 1}\.|(^|\.)norm\.weight$"


def param_cosines(engine, est, fns: dict, objectives, params: str | None = None) -> dict:
    """{(teacher label, objective label, node id): parameter-space cosine} for every node of one estimate."""
    model = getattr(engine, "model", None)
    if model is None or not hasattr(model, "config"):
        raise DiagnoseError("--param-space needs the hf engine (a torch model to differentiate)")
    subset = params or default_subset(model)
    out: dict = {}
    by_rollout: dict[int, list[int]] = {}
    for i, e in enumerate(est.estimates):
        by_rollout.setdefault(e.node.rollout, []).append(i)
    z_all = torch.stack(est._student_logits)
    vocab = z_all.shape[-1]
    configs = [(label, obj) for obj in objectives if obj.needs != NEEDS_NONE for label in fns]
    if not configs:
        return out
    for r, idx in by_rollout.items():
        ro = est.rollouts[r]
        ids = torch.tensor([list(ro.prompt_ids) + list(ro.token_ids)], device=model.device)
        nodes = [est.estimates[i] for i in idx]
        pos = torch.tensor([len(ro.prompt_ids) + e.node.position - 1 for e in nodes])
        g = torch.zeros(len(nodes), vocab)
        for j, e in enumerate(nodes):
            gs, _ = e.ideal()
            g[j, torch.tensor(e.cand_ids)] = torch.tensor(gs, dtype=torch.float32)
        z = z_all[idx]
        tokens = torch.tensor([e.observed for e in nodes])
        dirs = torch.stack(
            [
                obj.direction(z, torch.stack([fns[label].kept[(r, e.node.position)] for e in nodes]), tokens)
                for label, obj in configs
            ],
            1,
        )  # [M, D, V]
        res = param_space_alignment(
            model, ids, torch.zeros(len(nodes), dtype=torch.long), pos, g, dirs, params=subset, chunk=4
        )
        for j, e in enumerate(nodes):
            for c, (label, obj) in enumerate(configs):
                out[(label, obj.label, e.id)] = float(res.cos[j, c])
    return out
