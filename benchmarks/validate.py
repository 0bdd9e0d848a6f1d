"""Validation benchmark: does the configuration with the higher alignment train better on the embedded model?

Two stages, both resumable (rerun the command to continue after a kill):
  1. `diagnose run` on generated one-digit arithmetic with the embedded SmolLM2-135M student (temperature 0.7,
     32 new tokens: the calibrated demo setting, pass rate about 0.4): 2 self-distillation teachers x 2
     objectives = 4 configurations, plus the GRPO direction (objective grpo_ref, no teacher), so the run
     measures the alignment of 5 of the arms;
  2. `diagnose validate` of that run: the 4 configurations plus the GRPO, ideal and shuffled-teacher control
     arms (7 arms), 2 training seeds each, `--steps` AdamW steps on the last 2 decoder blocks, held-out pass@1
     on `--eval-questions` x `--eval-samples`.
Baseline named in the output: the control arm (a teacher whose vocabulary is shuffled) and the starting
weights. Goals: the ideal arm gains more than the control with non-overlapping intervals, and the ranking
among the 4 distillation configurations (Spearman's rho of alignment vs gain, grpo reported beside it, not in
it) positive with a small permutation p-value. Whatever it measures is printed.

Run: python benchmarks/validate.py [--out DIR] [--steps 6] [--lr 3e-5] [--questions 16]
The last line printed is JSON: {"spearman", "spearman_ci", "spearman_p", "ideal_gain", "control_gain",
"grpo_gain", "arms", "spearman_arms" (distillation configurations in rho), ...}.
Measured: 33 minutes on a 2-core CPU (the diagnosis 3.3 of them); the result is in docs/validate.md.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "diagnose-bench-validate"))
    ap.add_argument("--questions", type=int, default=16, help="questions of the diagnosis")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--lr", type=float, default=3e-5)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--eval-questions", type=int, default=64)
    ap.add_argument("--eval-samples", type=int, default=4)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--restart", action="store_true", help="discard an earlier validation in --out")
    args = ap.parse_args()

    from diagnose.pipeline import RunConfig, Runner
    from diagnose.validate import ValidateConfig, Validation

    t0 = time.perf_counter()
    run_cfg = RunConfig.from_sources(
        None,
        dict(
            task="arithmetic",
            temperature=0.7,
            max_new_tokens=32,
            questions=args.questions,
            rollouts=4,
            budget=100,
            continuations=2,
            top_k=2,
            teachers=["self:answer", "self:solution"],
            objectives=["rkl", "fkl", "grpo_ref"],
            out=args.out,
        ),
    )
    Runner(run_cfg).run()
    diagnosed = time.perf_counter() - t0
    cfg = ValidateConfig(
        steps=args.steps,
        lr=args.lr,
        batch=args.batch,
        eval_questions=args.eval_questions,
        eval_samples=args.eval_samples,
        seeds=args.seeds,
        restart=args.restart,
    )
    cfg.validate()
    result = Validation(args.out, cfg).run()
    print(result.describe())
    c = result.conclusions
    print(
        json.dumps(
            {
                "spearman": round(c["spearman"], 3),
                "spearman_ci": [round(x, 3) for x in c["spearman_ci"]],
                "spearman_p": c.get("spearman_p"),
                "ideal_gain": round(result.gain("ideal"), 4),
                "control_gain": round(result.gain("control"), 4),
                "grpo_gain": round(result.gain("grpo"), 4),
                "ideal_minus_control_ci": [round(x, 4) for x in (c["ideal_vs_control"] or {}).get("ci", [])],
                "pass_before": round(float(result.table["pass_before"].iloc[0]), 4),
                "arms": int(len(result.table)),
                "spearman_arms": int(c["n"]),
                "diagnosis_s": round(diagnosed, 1),
                "total_s": round(time.perf_counter() - t0, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
