"""NeMo-RL's on-policy distillation: the overrides of its distillation config (policy, teacher, distillation
and loss_fn sections), as YAML.

Its loss is a KL over the teacher's top k (`distillation.topk_logits_k`): `loss_fn.kl_type` forward, reverse
or mixed (a weighted sum of the two). With `zero_outside_topk: false` both models are renormalised on the
teacher's top k, which for reverse is `rkl_topk:support=teacher`; with `zero_outside_topk: true` the student
keeps its full-vocabulary log-probabilities, which for forward is `fkl_topk`. Each model's logits are divided
by its own `generation.temperature`. The teacher scores the student's own tokens: no self-distillation context.
"""

from __future__ import annotations

from typing import Any

from .base import Exporter, Unsupported, header, yaml_lines
from .spec import TrainingSpec


class NemoRLExporter(Exporter):
    name = "nemo-rl"
    title = "NeMo-RL on-policy distillation"
    filename = "nemo_rl_distillation.yaml"

    def settings(self, spec: TrainingSpec) -> dict[str, Any]:
        obj = spec.objective
        if obj.name == "rkl_topk" and obj.params.get("support") == "teacher":
            loss = {"kl_type": "reverse", "zero_outside_topk": False}
        elif obj.name == "fkl_topk":
            loss = {"kl_type": "forward", "zero_outside_topk": True}
        else:
            raise Unsupported(
                "its loss is a KL on the teacher's top k (reverse with both renormalised: "
                f"rkl_topk:support=teacher; forward with the full student: fkl_topk), and {obj.label} is neither"
            )
        if spec.context != "none":
            raise Unsupported(
                f"its teacher scores the student's own tokens, so it cannot build the self-distillation "
                f"context {spec.context}"
            )
        return {
            "policy": {
                "model_name": spec.student_model,
                "generation": {
                    "temperature": spec.temperature, "top_p": spec.top_p, "max_new_tokens": spec.max_new_tokens,
                },
            },
            "teacher": {"model_name": spec.teacher_model, "generation": {"temperature": spec.teacher_temperature}},
            "distillation": {"topk_logits_k": int(obj.params["k"])},
            "loss_fn": loss,
        }

    def render(self, spec: TrainingSpec, settings: dict[str, Any], warnings: list[str]) -> str:
        lines = header(spec, self, warnings) + [
            "# Overrides of NeMo-RL's distillation config: merge them into yours (or pass each as key=value).",
        ]
        return "\n".join(lines + yaml_lines(settings)) + "\n"
