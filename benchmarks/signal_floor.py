"""Where the no-signal floor sits: |d| / |d toward rounding twins| on real nodes of the embedded model.

A teacher that is the student in bfloat16 (same weights) must read as no signal at every node; a system-prompt
hint must keep its signal at the student's precision (float32, as a run scores a self-distillation context);
the same hint sized against bfloat16 rounding (as if the whole run were in bfloat16) shows the hard case. All
go through the estimator as a run does (Estimator.add_nodes: student and teachers scored at every position of
the rollouts, twins from estimate/signal.py), at the demo's temperature,
for every registered objective that reads a teacher (k1_loss aside: the teacher does not enter its gradient).
Nodes are also split by shape: "two-peaked" where the top two tokens hold >= 0.9 of the mass and the second
holds >= 0.2 (where two random twins used to give the floor away a quarter of the time).

For comparison it recomputes the ratio the old way (two twins with random signs everywhere). Prints the
quantiles and the floor's live fractions; the last line is JSON: {"nodes", "two_peaked", "null_max",
"null_q999", "null_q99", "null_max_two_peaked", "hint_q01", "hint_q10", "hint_median", "floor",
"null_live_frac", "null_live_frac_two_peaked", "hint_live_frac", "hint_bf16_q10", "hint_bf16_median",
"hint_bf16_live_frac", "old_null_max", "old_null_max_two_peaked", "old_null_live_frac"}.

Run: python benchmarks/signal_floor.py [--questions 12] [--rollouts 4] [--max-new-tokens 32]  (about 3 minutes)
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

HINT = "self:system=The answer is a single number; think step by step."


def _old_ratio(z, zt, u, cand, objs, tokens, seed):
    """The previous rule: two twins with random signs at every entry, |d| over their rms."""
    from diagnose import kernels
    from diagnose.estimate.signal import signal_ratio

    finite = torch.isfinite(z)
    eta = u * torch.where(finite, z.abs(), torch.zeros_like(z)).amax(-1, keepdim=True)
    gen = torch.Generator().manual_seed(seed)
    tw = []
    for _ in range(2):
        xi = torch.randint(0, 2, z.shape, generator=gen).float() * 2 - 1
        tw.append(torch.where(finite, z + eta * xi, z))
    st = kernels.node_stats(z, [zt, *tw], cand, torch.zeros(cand.shape, dtype=torch.float64), objs, tokens=tokens,
                            backend="chunked")
    return torch.stack([signal_ratio(st.d_sq[0, o], st.d_sq[1:, o]) for o in range(len(objs))])  # [O, N]


def measure(student, bf16, questions: int, rollouts: int, max_new_tokens: int, temperature: float, seed: int = 0):
    """Signal ratios at every position of the rollouts of `questions` arithmetic questions: per objective x
    node, for the bfloat16 copy (null), the hint, and the bfloat16 copy under the old two-twin rule; plus
    which nodes are two-peaked. Returns (objectives, null, hint, hint_bf16, old, peaked): ratios [O, N] for
    the bfloat16 copy, the hint at the student's precision (as a run scores it), the hint sized against
    bfloat16 rounding, the bfloat16 copy under the old rule; peaked [N]."""
    from diagnose import objectives, tasks
    from diagnose.engines.base import render_prompt
    from diagnose.estimate import EstimateConfig, EstimateQuestion, Estimator
    from diagnose.estimate.nodes import Node
    from diagnose.estimate.signal import roundoff
    from diagnose.objectives.base import NEEDS_NONE
    from diagnose.teachers import parse_teacher
    from diagnose.teachers.at_nodes import TeacherAtNodes

    task = tasks.get("arithmetic")
    objs = [objectives.parse(o) for o in objectives.available()]
    objs = [o for o in objs if o.needs != NEEDS_NONE and o.name != "k1_loss"]
    cfg = EstimateConfig(temperature=temperature, max_new_tokens=max_new_tokens, seed=seed,
                         rollouts_per_question=rollouts, stop=tuple(task.stop),
                         k_student=4, k_teacher=4, continuations=8, budget=2000.0)
    null_r, hint_r, hint16_r, old_r, peaked = [], [], [], [], []
    for q in task.questions(questions, seed=seed):
        eq = EstimateQuestion(id=q.id, prompt_ids=render_prompt(student.tokenizer, q.prompt),
                              verify=lambda text, q=q: task.verify(q, text))
        teachers = {
            "bf16": TeacherAtNodes(parse_teacher("model=embedded"), bf16, q),
            "hint": TeacherAtNodes(parse_teacher(HINT), student, q),
            "hint_bf16": TeacherAtNodes(parse_teacher(HINT), student, q),
        }
        # The same hint sized against bfloat16 rounding (as if the run were in bfloat16): the hard case.
        teachers["hint_bf16"].roundoff = roundoff("bfloat16")
        est = Estimator(student, [eq], teachers, objs, cfg)
        est.sample()
        nodes = [Node(r, t) for r, ro in enumerate(est.rollouts) for t in range(len(ro.token_ids))]
        if not nodes:
            continue
        est.add_nodes(nodes, continuations=False)
        res = est.results()
        z = res.student_logits
        top2 = torch.softmax(z.double(), -1).topk(2, -1).values
        peaked.extend(((top2.sum(-1) >= 0.9) & (top2[:, 1] >= 0.2)).tolist())
        null_r.append(np.array([est.directions[("bf16", o.label)].signal for o in objs]))
        hint_r.append(np.array([est.directions[("hint", o.label)].signal for o in objs]))
        hint16_r.append(np.array([est.directions[("hint_bf16", o.label)].signal for o in objs]))
        cand = torch.nn.utils.rnn.pad_sequence([torch.tensor(e.cand_ids) for e in est.estimates], batch_first=True)
        tokens = torch.tensor([est.rollouts[e.node.rollout].token_ids[e.node.position] for e in est.estimates])
        zt = res.teacher_logits["bf16"]  # already at the scoring temperature, as the estimator scored it
        old_r.append(_old_ratio(z, zt, roundoff("bfloat16"), cand, objs, tokens, seed=seed).numpy())
    null, hint, hint16, old = (np.concatenate(x, axis=1) for x in (null_r, hint_r, hint16_r, old_r))
    return objs, null, hint, hint16, old, np.array(peaked, bool)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--questions", type=int, default=12)
    ap.add_argument("--rollouts", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from diagnose import engines, models
    from diagnose.estimate.signal import SIGNAL_FLOOR

    models.prepare(log=lambda m: None)
    path = models.resolve_model(models.EMBEDDED)
    student = engines.load("hf", path, dtype="float32")
    bf16 = engines.load("hf", path, dtype="bfloat16")
    objs, null, hint, hint16, old, peaked = measure(
        student, bf16, args.questions, args.rollouts, args.max_new_tokens, args.temperature, args.seed
    )
    n = null.shape[1]
    worst = null.max(0)  # per node, the largest ratio over objectives
    out = {
        "nodes": int(n),
        "two_peaked": int(peaked.sum()),
        "null_max": float(null.max()),
        "null_q999": float(np.quantile(null, 0.999)),
        "null_q99": float(np.quantile(null, 0.99)),
        "null_max_two_peaked": float(worst[peaked].max()) if peaked.any() else None,
        "hint_q01": float(np.quantile(hint, 0.01)),
        "hint_q10": float(np.quantile(hint, 0.10)),
        "hint_median": float(np.median(hint)),
        "floor": SIGNAL_FLOOR,
        "null_live_frac": float((null > SIGNAL_FLOOR).mean()),
        "null_live_frac_two_peaked": float((null[:, peaked] > SIGNAL_FLOOR).mean()) if peaked.any() else None,
        "hint_live_frac": float((hint > SIGNAL_FLOOR).mean()),
        "hint_bf16_q10": float(np.quantile(hint16, 0.10)),
        "hint_bf16_median": float(np.median(hint16)),
        "hint_bf16_live_frac": float((hint16 > SIGNAL_FLOOR).mean()),
        "old_null_max": float(old.max()),
        "old_null_max_two_peaked": float(old.max(0)[peaked].max()) if peaked.any() else None,
        "old_null_live_frac": float((old > SIGNAL_FLOOR).mean()),
    }
    for i, o in enumerate(objs):
        print(f"{o.label:38s} null max {null[i].max():6.2f} q99 {np.quantile(null[i], .99):6.2f}   "
              f"hint q01 {np.quantile(hint[i], .01):8.2f} median {np.median(hint[i]):8.2f}   "
              f"hint@bf16 median {np.median(hint16[i]):6.2f}   "
              f"old null max {old[i].max():6.2f}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
