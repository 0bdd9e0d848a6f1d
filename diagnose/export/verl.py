"""verl's on-policy distillation: the `distillation` section of its trainer config (plus the rollout settings
it depends on), as YAML, with the same settings as command-line overrides in its header.

verl's distillation losses are a forward KL over the teacher's top k (`forward_kl_topk`, backpropagated
directly) and single-sample estimators of the reverse KL on the sampled token (`k1`, `k3`, ...), either
backpropagated directly or used as a policy-gradient reward (`use_policy_gradient`). Mapped here:
`fkl_topk:k=K` (forward_kl_topk: the same direction at every token, scaled by the teacher's top-k mass),
`rkl_sampled` (k1 as a reward) and `k3_loss` (k3 backpropagated). The teacher scores the student's own
prompt and response, so no self-distillation context can be given to it, and it scores at temperature 1
whatever the rollout temperature.
"""

from __future__ import annotations

from typing import Any

from .base import Exporter, Unsupported, flatten, header, override_scalar, yaml_lines
from .spec import TrainingSpec

LOSSES = {
    "fkl_topk": ("forward_kl_topk", False),
    "rkl_sampled": ("k1", True),
    "k3_loss": ("k3", False),
}


class VerlExporter(Exporter):
    name = "verl"
    title = "verl on-policy distillation"
    filename = "verl_distillation.yaml"

    def settings(self, spec: TrainingSpec) -> dict[str, Any]:
        obj = spec.objective
        if obj.name not in LOSSES:
            raise Unsupported(
                "its distillation losses are the forward KL on the teacher's top k (fkl_topk) and sampled-token "
                f"estimators (k1 as a reward: rkl_sampled; k3 as a loss: k3_loss), and {obj.label} is none of them"
            )
        if spec.context != "none":
            raise Unsupported(
                f"its teacher scores the student's own prompt and response, so it cannot build the "
                f"self-distillation context {spec.context}"
            )
        mode, policy_gradient = LOSSES[obj.name]
        loss: dict[str, Any] = {"loss_mode": mode}
        if mode == "forward_kl_topk":
            loss["topk"] = int(obj.params["k"])
        loss.update(use_policy_gradient=policy_gradient, use_task_rewards=False)
        return {
            "data": {"max_response_length": spec.max_new_tokens},
            "actor_rollout_ref": {
                "model": {"path": spec.student_model},
                "actor": {"use_kl_loss": False},
                "rollout": {"temperature": spec.temperature, "top_p": spec.top_p},
            },
            "algorithm": {"use_kl_in_reward": False},
            "distillation": {
                "enabled": True,
                "distillation_loss": loss,
                "teacher_models": {"teacher_model": {"model_path": spec.teacher_model}},
            },
        }

    def warnings(self, spec: TrainingSpec) -> list[str]:
        if spec.teacher_temperature != 1.0:
            return [
                "verl computes the teacher's log-probabilities at temperature 1 whatever the rollout temperature; "
                f"the run scored the teacher at {spec.teacher_temperature:g}: diagnose with --teacher-temperature 1 "
                "for a run that matches it"
            ]
        return []

    def render(self, spec: TrainingSpec, settings: dict[str, Any], warnings: list[str]) -> str:
        lines = header(spec, self, warnings)
        if spec.objective.name == "fkl_topk":
            lines += [
                "# forward_kl_topk keeps the teacher's top-k log-probabilities unrenormalised: its update is the",
                "# diagnosed fkl_topk direction scaled by the teacher's top-k mass at each token (and verl clamps",
                "# a negative top-k KL to 0, which stops the update at that token).",
            ]
        lines += [
            "# Merge into verl's trainer config; set distillation.nnodes / n_gpus_per_node for the teacher pool.",
            "# The same settings as command-line overrides:",
        ]
        lines += [f"#   {key}={override_scalar(value)}" for key, value in flatten(settings).items()]
        return "\n".join(lines + yaml_lines(settings)) + "\n"
