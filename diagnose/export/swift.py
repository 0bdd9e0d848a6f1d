"""ms-swift (`swift rlhf`): the command-line flags, as a shell script that passes on its own arguments.

Two paths. GKD (`--rlhf_type gkd`): ms-swift's generalized JSD with `--beta` in TRL's convention (0 forward,
1 reverse KL), both models' logits divided by `--temperature`; with `--gkd_logits_topk K` both are
renormalised on the teacher's top K, which is `rkl_topk:support=teacher` at beta 1. OPD-RL (`--rlhf_type grpo`
with a teacher and no reward function): the teacher's log-ratio on the sampled token is the advantage, which
is `rkl_sampled`; there `--beta` is GRPO's reference-model KL and is set to 0. A self-distillation context is
a `teacher_prompt` column of the data set (ms-swift's OPSD): it replaces the student's last user message in
the teacher's view, and without `--teacher_model` the teacher is the student's current weights.
"""

from __future__ import annotations

import json
import shlex
from typing import Any

from .base import Exporter, Unsupported, header
from .spec import TrainingSpec

BETA = {"rkl": 1.0, "fkl": 0.0}
USER_ONLY = ("answer", "solution", "summary", "template")  # contexts whose teacher view is one user message


def teacher_prompt(spec: TrainingSpec) -> str | None:
    """The teacher_prompt template of a self-distillation context (None: the student's own prompt)."""
    if spec.context == "none":
        return None
    name = spec.context.partition("=")[0]
    if name not in USER_ONLY:
        why = {
            "system": "adds a system message, and a teacher_prompt only replaces the student's last user message",
            "contrastive": "draws examples from the student's own verified rollouts, which a fixed teacher_prompt "
            "column cannot hold",
        }.get(name, "is not a single user message")
        raise Unsupported(f"the self-distillation context {spec.context} {why}")
    messages = spec.teacher_messages() or []
    if len(messages) != 1 or messages[0].get("role") != "user":
        raise Unsupported(f"the self-distillation context {spec.context} is not a single user message")
    return str(messages[0]["content"])


class SwiftExporter(Exporter):
    name = "swift"
    title = "ms-swift (swift rlhf)"
    filename = "swift_rlhf.sh"

    def settings(self, spec: TrainingSpec) -> dict[str, Any]:
        obj = spec.objective
        flags: dict[str, Any] = {}
        if obj.name in BETA or obj.name == "jsd":
            flags.update(rlhf_type="gkd", beta=BETA.get(obj.name, float(obj.params.get("beta", 0.5))), lmbda=1.0)
        elif obj.name == "rkl_topk":
            if obj.params.get("support") != "teacher":
                raise Unsupported(
                    f"its top-k GKD renormalises both models on the teacher's top k, and {obj.label} uses the "
                    f"{obj.params.get('support')}'s (rkl_topk:support=teacher is the one it implements)"
                )
            flags.update(rlhf_type="gkd", beta=1.0, lmbda=1.0, gkd_logits_topk=int(obj.params["k"]))
        elif obj.name == "rkl_sampled":
            # OPD-RL: advantage = teacher_kl_coef * (log q_a - log p_a); --beta is GRPO's reference KL here
            flags.update(rlhf_type="grpo", beta=0.0, teacher_kl_coef=1.0)
        else:
            raise Unsupported(
                f"its GKD loss is the generalized JSD (full vocabulary, or renormalised on the teacher's top k) "
                f"and its OPD-RL the sampled-token log-ratio, and {obj.label} is neither"
            )
        prompt = teacher_prompt(spec)
        flags = {"rlhf_type": flags.pop("rlhf_type"), "model": spec.student_model, **flags}
        if not spec.teacher.is_self:
            flags["teacher_model"] = spec.teacher_model
        elif flags["rlhf_type"] == "grpo":
            flags["teacher_model"] = spec.teacher_model  # OPD-RL needs one; the student's weights, frozen
        flags.update(temperature=spec.temperature, top_p=spec.top_p, max_completion_length=spec.max_new_tokens)
        return {"flags": flags, "teacher_prompt": prompt}

    def warnings(self, spec: TrainingSpec) -> list[str]:
        if spec.teacher_temperature != spec.temperature:
            return [
                f"ms-swift divides both models' logits by --temperature {spec.temperature:g}; the run scored the "
                f"teacher at {spec.teacher_temperature:g}"
            ]
        return []

    def render(self, spec: TrainingSpec, settings: dict[str, Any], warnings: list[str]) -> str:
        lines = ["#!/usr/bin/env bash"] + header(spec, self, warnings)
        lines.append(f"# Add your data and training flags as arguments: bash {self.filename} --dataset DATA "
                     "--output_dir OUT")
        flags = settings["flags"]
        if flags["rlhf_type"] == "grpo":
            lines.append("# OPD-RL: no --reward_funcs, so the teacher's log-ratio on each sampled token is the whole "
                         "advantage.")
        if settings["teacher_prompt"] is not None:
            lines += [
                "# Self-distillation (OPSD): every row of --dataset needs a `teacher_prompt` column, the teacher's",
                "# user message, built from this template (a JSON string) with the row's own values:",
                f"#   {json.dumps(settings['teacher_prompt'])}",
            ]
            if spec.teacher.is_self and flags["rlhf_type"] == "gkd":
                lines.append("# No --teacher_model: the teacher is the student's current weights (pass "
                             "--teacher_model with the student's path for frozen initial weights).")
        lines.append("swift rlhf \\")
        for key, value in flags.items():
            shown = repr(value) if isinstance(value, float) else str(value)
            lines.append(f"    --{key} {shlex.quote(shown)} \\")
        lines.append('    "$@"')
        return "\n".join(lines) + "\n"
