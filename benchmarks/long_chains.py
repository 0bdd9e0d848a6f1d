"""Long chains: does a whole `diagnose run` stay affordable as the chain of thought gets long?

For each rollout limit (max_new_tokens; default 128, 512, 1024), in one process and at one budget, runs
`benchmarks/pipeline.py`'s `bench_engine` (load the models, a whole `diagnose run` into a fresh directory timed
from after model loading to the written report, then the same engine's plain `sample` at 32 rows on the run's
prompts with the same sampling settings) and reads the run directory it wrote:

  continuation_tokens_per_node  cost.json's continuation_tokens / nodes (what one node costs, in tokens)
  seconds_per_node              run seconds / nodes
  efficiency                    pipeline.py's: (rollout + continuation tokens / run seconds) over the plain
                                generate's tokens/s, measured in the same process
  plan_error                    |predicted - measured| / measured continuation tokens, predicted = `diagnose
                                plan`'s point estimate (work.expected: the estimator's selection replayed on
                                the calibration's rollouts, which are the run's own first questions' rollouts
                                on an engine with per-request seeds, with the candidate-set size measured
                                there), from `plan.plan` on the same RunConfig, run before the run
  plan_range_error              the same for the middle of the plan's continuation-token bounds
  rollout_tokens_mean           mean rollout length, with the share of rollouts that reached the limit

The default task is GSM8K from the local file ../shared/data/gsm8k/test.jsonl (beside the repository): its
prompt asks the student to "Think step by step" before the "Answer:" line, and the embedded student at
RunConfig's temperature (1.0) writes long, often rambling chains (see docs/pipeline.md, "Long chains").

Run: python benchmarks/long_chains.py [--limits 128,512,1024] [--questions N] [--budget B] [--engine hf]
                                      [--task SPEC] [--rollouts R]
The last line printed is JSON: {"limits": [...], "continuation_tokens_per_node": [...], "seconds_per_node":
[...], "efficiency": [...], "plan_error": [...], ...}, one entry per limit in every list.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import shutil
import sqlite3
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP threads distort timings on small boxes

HERE = Path(__file__).resolve().parent
DEFAULT_LIMITS = (128, 512, 1024)


def default_task() -> str:
    """GSM8K test from the local copy of the shared data: $DIAGNOSE_SHARED_DATA, else shared/data beside the
    repository, else inside it (where tests/conftest.py looks too)."""
    env = os.environ.get("DIAGNOSE_SHARED_DATA")
    folders = [Path(env)] if env else [HERE.parent.parent / "shared" / "data", HERE.parent / "shared" / "data"]
    path = next((f / "gsm8k" / "test.jsonl" for f in folders if (f / "gsm8k" / "test.jsonl").is_file()), None)
    return f"gsm8k:path={path or folders[0] / 'gsm8k' / 'test.jsonl'}"


def _pipeline_bench():
    """benchmarks/pipeline.py as a module (its bench_engine and plain_generate are reused, not copied)."""
    spec = importlib.util.spec_from_file_location("benchmarks_pipeline", HERE / "pipeline.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    return module


def overrides_for(limit: int, args: argparse.Namespace) -> dict:
    """RunConfig overrides of the run at one limit (everything else: RunConfig's defaults)."""
    values = {
        "task": args.task,
        "questions": args.questions,
        "budget": args.budget,
        "rollouts": args.rollouts,
        "teachers": args.teachers,
        "objectives": args.objectives,
        "max_new_tokens": limit,
    }
    return {k: v for k, v in values.items() if v is not None}


def planned(cfg) -> dict:
    """`diagnose plan`'s bill for this config (plan.plan, as the command calls it: it loads the models,
    calibrates and creates nothing), as its JSON-ready dict."""
    from diagnose.pipeline.plan import plan

    return plan(cfg, progress=False).to_dict()


def plan_error(work: dict, cost: dict) -> float:
    """|the plan's point estimate of continuation tokens - measured| / measured."""
    measured = cost["continuation_tokens"]
    return abs(work["expected"]["continuation_tokens"] - measured) / measured if measured else math.nan


def range_error(work: dict, cost: dict) -> float:
    """|middle of the plan's continuation-token range - measured| / measured."""
    lo, hi = work["continuation_tokens"]
    measured = cost["continuation_tokens"]
    return abs((lo + hi) / 2 - measured) / measured if measured else math.nan


def continuation_samples(run_dir: Path, rollout_ids) -> list[dict]:
    """The continuations in the run's caches (cache/qNNNNN.sqlite), as {"tokens": n, "finish": reason}. The
    caches hold the rollouts too, keyed by a hash: each rollout's sample (same token ids) is left out once."""
    rollouts: dict[tuple, int] = {}
    for ids in rollout_ids:
        rollouts[tuple(ids)] = rollouts.get(tuple(ids), 0) + 1
    out = []
    for path in sorted((run_dir / "cache").glob("q*.sqlite")):
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            for (value,) in db.execute("SELECT value FROM samples"):
                d = json.loads(value)
                ids = tuple(d["t"])
                if rollouts.get(ids, 0) > 0:
                    rollouts[ids] -= 1
                    continue
                out.append({"tokens": len(ids), "finish": d["f"]})
        finally:
            db.close()
    return out


def left_at_nodes(nodes, rollouts) -> float:
    """Mean tokens the rollouts themselves had left (n - t, the token at t included) at the run's nodes, each
    node counted once per continuation it got: the plan's model of a continuation's length, at the real nodes
    of the real rollouts (so the plan's error splits into where nodes land and how far continuations run)."""
    length = {(q, r): n for q, r, n in zip(rollouts.question_id, rollouts.rollout_idx, rollouts.n_tokens, strict=True)}
    weights = list(nodes.n_continuations)
    left = [length[(q, r)] - t for q, r, t in zip(nodes.question_id, nodes.rollout_idx, nodes.position, strict=True)]
    return sum(w * x for w, x in zip(weights, left, strict=True)) / max(1, sum(weights))


def measure(limit: int, args: argparse.Namespace, bench) -> dict:
    """One limit: `diagnose plan`'s bill for the RunConfig (plan.plan), then bench_engine's run and plain
    generate on it."""
    from diagnose.pipeline import RunConfig
    from diagnose.tables import read_table

    overrides = overrides_for(limit, args)
    scratch = Path(tempfile.mkdtemp(prefix="bench-long-chains-"))
    bill = planned(RunConfig.from_sources(None, {**overrides, "engine": args.engine, "out": str(scratch / "plan"),
                                                 "progress": False}))
    work = bill["work"]
    old = tempfile.tempdir
    tempfile.tempdir = str(scratch)  # bench_engine makes its run directory with mkdtemp: here, so it is found
    try:
        # one plain call: at 1024 tokens it alone takes ~14 minutes on this CPU (pipeline.py takes the best of 3)
        result = bench.bench_engine(args.engine, overrides, plain_repeats=1)
    finally:
        tempfile.tempdir = old
    try:
        (run_dir,) = [p for p in scratch.iterdir() if p.name.startswith(f"bench-pipeline-{args.engine}-")]
        cost = json.loads((run_dir / "cost.json").read_text())
        rollouts = read_table(run_dir, "rollouts")
        budgets = [json.loads(p.read_text())["budget"] for p in sorted((run_dir / "cost").glob("q*.json"))]
        lengths = list(rollouts.n_tokens)
        at_nodes = left_at_nodes(read_table(run_dir, "nodes"), rollouts)
        conts = continuation_samples(run_dir, [list(ids) for ids in rollouts.token_ids])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    nodes = max(1, cost["nodes"])
    per_continuation = cost["continuation_tokens"] / max(1, cost["continuations"])
    lo, hi = work["continuation_tokens"]
    return {
        "limit": limit,
        "continuation_tokens_per_node": round(cost["continuation_tokens"] / nodes, 1),
        "seconds_per_node": round(result["run_seconds"] / nodes, 2),
        "efficiency": result["efficiency"],
        "plan_error": round(plan_error(work, cost), 3),
        "plan_expected_continuation_tokens": work["expected"]["continuation_tokens"],
        "plan_range_error": round(range_error(work, cost), 3),
        "plan_continuation_tokens": [round(lo), round(hi)],
        # the calibration sampled the run's own rollouts (same lengths, question by question)
        "plan_saw_run_rollouts": sorted(sum(bill["calibration"]["lengths"], [])) == sorted(
            int(n) for n in rollouts.n_tokens[: sum(map(len, bill["calibration"]["lengths"]))]),
        "continuation_tokens": cost["continuation_tokens"],
        "continuations": cost["continuations"],
        "plan_continuations": list(work["continuations"]),
        "plan_expected_continuations": work["expected"]["continuations"],
        "plan_candidates_per_node": work["expected"]["candidates_per_node"],
        "continuation_budget": sum(budgets),  # budget_unit continuations: the bound on `continuations`
        "tokens_per_continuation": round(per_continuation, 1),
        "plan_tokens_per_continuation": work["expected"]["tokens_per_continuation"],
        "plan_error_per_continuation": round(abs(work["expected"]["tokens_per_continuation"] / per_continuation - 1), 3)
        if per_continuation
        else math.nan,
        # what the chosen nodes' own rollouts had left: measured / this > 1 means continuations outran them
        "rollout_left_at_nodes": round(at_nodes, 1),
        "continuation_tokens_max": max((c["tokens"] for c in conts), default=0),
        # continuations cut by their limit (max_new_tokens - position): the chain ran on to the end
        "continuations_at_limit": round(sum(c["finish"] == "length" for c in conts) / max(1, len(conts)), 3),
        "rollout_tokens_mean": round(sum(lengths) / max(1, len(lengths)), 1),
        "rollouts_at_limit": round(sum(n >= limit for n in lengths) / max(1, len(lengths)), 3),
        "nodes": cost["nodes"],
        "live_nodes": cost.get("live_nodes"),
        "questions": cost["questions"],
        "run_seconds": result["run_seconds"],
        "engine_s": cost.get("engine_s", {}),  # busy seconds per stage: rollouts, scoring, continuations
        "tokens_per_s": result["tokens_per_s"],
        "plain_tokens_per_s": result["plain_tokens_per_s"],
        "pass_rate": round(float(rollouts.correct.mean()), 3),
    }


def goals(rows: list[dict]) -> dict:
    """The issue's goals, checked on what was measured."""
    first = rows[0]
    ratio0 = first["continuation_tokens_per_node"] / first["limit"]
    return {
        # cost per node at most linear in the limit: tokens per node per limit token never above the first's
        "cost_per_node_at_most_linear": all(r["continuation_tokens_per_node"] / r["limit"] <= ratio0 for r in rows),
        "budget_bounds_total": all(r["continuations"] <= r["continuation_budget"] for r in rows),
        "efficiency_ge_0.6_at_longest": rows[-1]["efficiency"] >= 0.6,
        "plan_error_le_0.25": all(r["plan_error"] <= 0.25 for r in rows),
    }


def run(args: argparse.Namespace) -> dict:
    bench = _pipeline_bench()
    rows = []
    for limit in args.limits:
        row = measure(limit, args, bench)
        print(json.dumps(row), flush=True)
        rows.append(row)
    keys = [k for k in rows[0] if k != "limit"]
    summary = {"limits": [r["limit"] for r in rows], **{k: [r[k] for r in rows] for k in keys}}
    summary.update(
        task=args.task, engine=args.engine, budget=args.budget, budget_unit="continuations",
        teachers=args.teachers, objectives=args.objectives,
        plan_error_of="continuation tokens (the plan's point estimate, work.expected, from plan.plan before the run)",
        goals=goals(rows),
    )
    return summary


def parse_args(argv=None) -> argparse.Namespace:
    from diagnose.pipeline import RunConfig

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limits", default=",".join(map(str, DEFAULT_LIMITS)), help="max_new_tokens values")
    ap.add_argument("--questions", type=int, default=4)
    ap.add_argument("--budget", type=int, default=RunConfig.budget, help="continuations per question")
    ap.add_argument("--rollouts", type=int, default=None, help="rollouts per question (default: RunConfig's)")
    ap.add_argument("--teacher", dest="teachers", action="append", help="repeatable (default: RunConfig's)")
    ap.add_argument("--objective", dest="objectives", action="append", help="repeatable (default: RunConfig's)")
    ap.add_argument("--engine", default="hf")
    ap.add_argument("--task", default=None, help="task spec (default: gsm8k from ../shared/data/gsm8k/test.jsonl)")
    args = ap.parse_args(argv)
    args.limits = [int(x) for x in str(args.limits).split(",") if x]
    args.task = args.task or default_task()
    return args


def main(argv=None) -> dict:
    summary = run(parse_args(argv))
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    main()
