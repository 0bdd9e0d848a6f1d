"""Validation benchmark: among distillation configurations, does the one with higher alignment train better?

Three stages on the embedded SmolLM2-135M student and generated one-digit arithmetic (temperature 0.7, 32 new
tokens: the calibrated demo setting, pass rate about 0.4), each resumable (rerun the command to continue):
  1. `diagnose teachers build --for-run`: teachers fine-tuned from the student on its own verified-correct
     responses (rft-4, rft-12, rft-32: a ladder above the student's pass@1) and on its verified-incorrect ones
     (incorrect-12, below it), trained on questions disjoint from the diagnosis's and from validate's held-out
     ones; cached under $DIAGNOSE_HOME/teachers;
  2. `diagnose run`: the three teachers fixed in advance (the ladder's lowest and highest rung, and the
     incorrect one) x {rkl, fkl}, plus self:solution x {rkl, fkl}: 8 distillation configurations, and the GRPO
     direction (grpo_ref) beside them;
  3. `diagnose validate`: the 8 configurations plus the GRPO, ideal and shuffled-teacher control arms,
     `--seeds` training seeds each, `--steps` AdamW steps on the last 2 decoder blocks, held-out pass@1 on
     `--eval-questions` x `--eval-samples`.
Baseline named in the output: the control arm (a teacher whose vocabulary is shuffled) and the starting weights.
The finding is whatever rho comes out; the teachers, steps and seeds are fixed above, not tuned toward it.

Run: python benchmarks/validate.py [--out DIR] [--seeds 2] [--steps 6] [--questions 16] [--budget 100]
The last line printed is JSON: {"distill_configs", "separated_pairs", "spearman_distill",
"spearman_distill_ci", "perm_p", "ideal_gain", "control_gain", "arms", ...}; docs/validate.md holds a
measured run.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP threads slow a small shared box


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "diagnose-bench-validate"))
    ap.add_argument("--questions", type=int, default=16, help="questions of the diagnosis")
    ap.add_argument("--budget", type=int, default=100, help="continuations per question of the diagnosis")
    ap.add_argument("--continuations", type=int, default=2, help="continuations per candidate token")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--lr", type=float, default=3e-5)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--eval-questions", type=int, default=64)
    ap.add_argument("--eval-samples", type=int, default=4)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--build-questions", type=int, default=80,
                    help="training questions of the teacher build (one-digit arithmetic has about 200 in all)")
    ap.add_argument("--teachers", default="", help="folder of built teachers (default: built and cached)")
    ap.add_argument("--restart", action="store_true", help="discard an earlier validation in --out")
    args = ap.parse_args()

    from diagnose.pipeline import RunConfig, Runner
    from diagnose.teachers.build import BuildConfig, TeacherBuilder
    from diagnose.validate import ValidateConfig, Validation
    from diagnose.validate.runner import evaluation_prompts

    t0 = time.perf_counter()
    run = dict(task="arithmetic", temperature=0.7, max_new_tokens=32, questions=args.questions, rollouts=4,
               budget=args.budget, continuations=args.continuations, top_k=2, out=args.out)
    cfg = ValidateConfig(steps=args.steps, lr=args.lr, batch=args.batch, eval_questions=args.eval_questions,
                         eval_samples=args.eval_samples, seeds=args.seeds, restart=args.restart)
    cfg.validate()
    # 1. teachers, away from every question the diagnosis and the validation evaluate on
    draft = RunConfig.from_sources(None, run)
    build = BuildConfig(task="arithmetic", temperature=0.7, max_new_tokens=32, questions=args.build_questions)
    builder = TeacherBuilder(build, exclude=evaluation_prompts(draft, cfg), out=args.teachers or None, log=print)
    ladder = {t.name: t for t in builder.build()}
    built_s = time.perf_counter() - t0
    for t in ladder.values():
        print(f"{t.name}: pass@1 {t.pass_at_1:.3f} [{t.pass_ci[0]:.3f}, {t.pass_ci[1]:.3f}] "
              f"(student {t.student_pass_at_1:.3f}) {t.path}")
    chosen = [ladder[f"rft-{min(builder.cfg.steps)}"], ladder[f"rft-{max(builder.cfg.steps)}"],
              ladder[f"incorrect-{builder.cfg.incorrect_steps}"]]
    # 2. the diagnosis
    run_cfg = RunConfig.from_sources(None, dict(
        run, teachers=[t.spec for t in chosen] + ["self:solution"], objectives=["rkl", "fkl", "grpo_ref"]))
    Runner(run_cfg).run()
    diagnosed_s = time.perf_counter() - t0 - built_s
    # 3. the validation
    result = Validation(args.out, cfg).run()
    print(result.describe())
    out = result.ranking_summary()
    c = result.conclusions
    out.update({
        "ideal_minus_control_ci": [round(x, 4) for x in (c["ideal_vs_control"] or {}).get("ci", [])],
        "pass_before": round(float(result.table["pass_before"].iloc[0]), 4),
        "teachers": {t.name: round(t.pass_at_1, 4) for t in chosen},
        "student_pass": round(chosen[0].student_pass_at_1, 4),
        "teachers_s": round(built_s, 1), "diagnosis_s": round(diagnosed_s, 1),
        "total_s": round(time.perf_counter() - t0, 1),
    })
    print(json.dumps(out))


if __name__ == "__main__":
    main()
