"""Calibrate the demo's task: the embedded student's pass rate on generated arithmetic at the demo's settings.

The demo is only informative when the student sometimes succeeds and sometimes fails (pass rate 0.3-0.7):
at a pass rate near 0 or 1, Q is 0 or 1 almost everywhere and nearly every node is degenerate (g* = 0).
For each task spec, 64 questions x 4 rollouts are sampled with the run's settings (the given temperature and
max_new_tokens, the task's stop strings) on the hf engine and verified; printed: pass rate with a
standard error that resamples questions, the share of questions with mixed verdicts (where nodes can be
live), and the mean response length.

Run: python benchmarks/demo_task.py [--questions 64] [--rollouts 4] [--max-new-tokens 48] [--temperature 1]
     [SPEC ...]
The last line printed is JSON: {spec: {"pass_rate": r, "se": s, "mixed": m, "mean_tokens": t}, ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

DEFAULT_SPECS = ["arithmetic:digits=1,ops=+,terms=2", "arithmetic:digits=2,ops=+,terms=2",
                 "arithmetic:digits=1,ops=+*,terms=3", "arithmetic"]


def pass_rate(
    engine, spec: str, questions: int, rollouts: int, max_new_tokens: int, temperature: float = 1.0, seed: int = 0
) -> dict:
    from diagnose import tasks
    from diagnose.engines import SamplingParams, render_prompt

    task = tasks.get(spec)
    qs = task.questions(questions, seed=seed)
    prompts = [render_prompt(engine.tokenizer, q.prompt) for q in qs]
    params = SamplingParams(temperature=temperature, max_new_tokens=max_new_tokens, stop=tuple(task.stop), seed=seed)
    out = engine.sample(prompts, rollouts, params)
    per_q = [[task.verify(q, s.text) for s in samples] for q, samples in zip(qs, out, strict=True)]
    rates = [sum(v) / len(v) for v in per_q]
    lengths = [len(s.token_ids) for samples in out for s in samples]
    return {
        "pass_rate": round(statistics.fmean(rates), 3),
        "se": round(statistics.pstdev(rates) / len(rates) ** 0.5, 3),
        "mixed": round(sum(0 < r < 1 for r in rates) / len(rates), 3),
        "mean_tokens": round(statistics.fmean(lengths), 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("specs", nargs="*", default=DEFAULT_SPECS)
    ap.add_argument("--questions", type=int, default=64)
    ap.add_argument("--rollouts", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--temperature", type=float, default=1.0)
    args = ap.parse_args()
    from diagnose import engines

    engine = engines.load("hf", "embedded")
    results = {}
    for spec in args.specs:
        results[spec] = pass_rate(
            engine, spec, args.questions, args.rollouts, args.max_new_tokens, args.temperature
        )
        print(spec, json.dumps(results[spec]), flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
