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


def param_cosines(engine, result, objectives, params: str | None = None) -> dict:
    """{(teacher label, objective label, node id): parameter-space cosine} for every node of one estimate
    (an EstimateResult: its rollouts, nodes, and the student and teacher logits it scored there)."""
    model = engine.model
    if model is None or not hasattr(model, "config"):
        raise DiagnoseError("--param-space needs the hf engine (a torch model to differentiate)")
    subset = params or default_subset(model)
    out: dict = {}
    by_rollout: dict[int, list[int]] = {}
    for i, e in enumerate(result.nodes):
        by_rollout.setdefault(e.node.rollout, []).append(i)
    z_all, teacher_logits = result.student_logits, result.teacher_logits
    configs = [(label, obj) for obj in objectives if obj.needs != NEEDS_NONE for label in teacher_logits]
    if not configs or z_all is None:
        return out
    vocab = z_all.shape[-1]
    for r, idx in by_rollout.items():
        ro = result.rollouts[r]
        ids = torch.tensor([list(ro.prompt_ids) + list(ro.token_ids)], device=model.device)
        nodes = [result.nodes[i] for i in idx]
        pos = torch.tensor([len(ro.prompt_ids) + e.node.position - 1 for e in nodes])
        g = torch.zeros(len(nodes), vocab)
        for j, e in enumerate(nodes):
            gs, _ = e.ideal()
            g[j, torch.tensor(e.cand_ids)] = torch.tensor(gs, dtype=torch.float32)
        z = z_all[idx]
        tokens = torch.tensor([e.observed for e in nodes])
        dirs = torch.stack(
            [
                obj.direction(z, teacher_logits[label][idx], tokens)
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
