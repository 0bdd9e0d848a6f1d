"""Frontier plan benchmark: live nodes per continuation token with the plan (`--frontier`, default 0.25) against
every question estimated at its budget (`frontier = 1`, RunConfig's default: the baseline, measured in the
same process).

A node is live when g-hat != 0 there (some candidate's continuations disagree): the only nodes an alignment
can be read from. Where the student always or never solves a question, its nodes are almost all dead, so the
plan estimates a share `frontier` of such questions (weighted up to stand for the rest: figures keep their
meaning, docs/estimator.md) and gives the budget they free to the questions with both verdicts.

Settings, each run twice with the same seed on the hf engine and the embedded student:
  demo         reports/demo.toml (one-digit arithmetic, T 0.7, 32 tokens, 16 questions, budget 100);
  two_digit    two-digit addition (`arithmetic:digits=2,ops=+`, pass rate about 0.1 at T 0.7, a third of the
               questions with both verdicts: a task of mixed difficulty for this student), same settings
               but 48 tokens.
Printed per setting: live nodes per 1,000 continuation tokens with and without the plan, their ratio (goal
>= 1.5), and the median 95% interval width of the configurations' alignment (the price of the weights).

Run: python benchmarks/frontier.py [--settings demo,two_digit] [--questions N] [--frontier 0.25]
The last line printed is JSON: {setting: {"live_per_1k": [plan, baseline], "ratio": r,
"median_ci_width": [plan, baseline], ...}, ...}.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP threads slow a small shared box

DEMO = str(Path(__file__).resolve().parent.parent / "reports" / "demo.toml")
SETTINGS = {
    "demo": {},
    "two_digit": {"task": "arithmetic:digits=2,ops=+", "max_new_tokens": 48},
}


def one_run(overrides: dict, engine=None) -> dict:
    from diagnose.pipeline import RunConfig, Runner
    from diagnose.tables import read_table

    out = tempfile.mkdtemp(prefix="bench-frontier-")
    cfg = RunConfig.from_sources(DEMO, {**overrides, "out": out, "progress": False})
    runner = Runner(cfg, progress=False)
    if engine is not None:  # the student loaded once for both runs of a setting
        runner.engine = engine
        runner.load_teachers()
    t0 = time.perf_counter()
    runner.run()
    seconds = time.perf_counter() - t0
    cost = json.loads((Path(out) / "cost.json").read_text())
    summary = read_table(out, "summary")
    summary = summary[summary["metric"] == "cos_full"]
    widths = (summary["ci_high"] - summary["ci_low"]).dropna()
    return {
        "engine": runner.engine,
        "live_nodes": cost["live_nodes"],
        "nodes": cost["nodes"],
        "continuation_tokens": cost["continuation_tokens"],
        "live_per_1k": 1000 * cost["live_nodes"] / max(cost["continuation_tokens"], 1),
        "median_ci_width": float(widths.median()) if len(widths) else float("nan"),
        "seconds": round(seconds, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--questions", type=int, default=None)
    ap.add_argument("--frontier", type=float, default=0.25, help="the plan's share of agreeing questions")
    args = ap.parse_args()

    results = {}
    engine = None
    for name in [s for s in args.settings.split(",") if s]:
        base = dict(SETTINGS[name])
        if args.questions:
            base["questions"] = args.questions
        plan = one_run({**base, "frontier": args.frontier}, engine)
        engine = plan.pop("engine")
        baseline = one_run({**base, "frontier": 1.0}, engine)
        baseline.pop("engine")
        results[name] = {
            "live_per_1k": [round(plan["live_per_1k"], 2), round(baseline["live_per_1k"], 2)],
            "ratio": round(plan["live_per_1k"] / max(baseline["live_per_1k"], 1e-9), 3),
            "live_nodes": [plan["live_nodes"], baseline["live_nodes"]],
            "nodes": [plan["nodes"], baseline["nodes"]],
            "continuation_tokens": [plan["continuation_tokens"], baseline["continuation_tokens"]],
            "median_ci_width": [round(plan["median_ci_width"], 3), round(baseline["median_ci_width"], 3)],
            "seconds": [plan["seconds"], baseline["seconds"]],
        }
        print(name, json.dumps(results[name]), flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
