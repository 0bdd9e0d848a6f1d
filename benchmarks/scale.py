"""Scale-out benchmark: a whole `diagnose run` on Ray workers against the same run in one process.

On the exact engine (a known-Q Markov model whose work is CPU-bound Python, so one process uses one core),
in one process:
  serial    `diagnose run` with the default in-process execution (questions in flight on threads);
  workers   the same config with `--workers N` on a local Ray started beforehand (as a cluster would be);
            worker start-up and model loading are inside the timing.
Both are timed from the call to the written report, into fresh run directories, and their tables are
checked equal. speed-up = serial seconds / workers seconds; goal >= 1.6 with 2 workers on 2 cores.

Run: python benchmarks/scale.py [--workers 2] [--questions 96] [--budget 200]
The last line printed is JSON: {"workers2_speedup": s, "serial_s": a, "workers_s": b, ...}.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time

import pandas as pd


def config(out: str, args, **extra):
    from diagnose.pipeline import RunConfig

    values = dict(
        student="exact:horizon=10",
        engine="exact",
        task="digitsum",
        teachers=["model=exact:horizon=10,seed=1", "model=exact:horizon=10,seed=2,scale=1.5"],
        objectives=["rkl", "fkl", "rkl_sampled", "jsd:beta=0.5"],
        questions=args.questions,
        rollouts=8,
        max_new_tokens=12,
        budget=args.budget,
        progress=False,
        out=out,
        **extra,
    )
    return RunConfig.from_sources(None, values)


def timed_run(cfg) -> float:
    from diagnose.pipeline import Runner

    t0 = time.perf_counter()
    Runner(cfg).run()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--questions", type=int, default=96)
    ap.add_argument("--budget", type=int, default=200)
    args = ap.parse_args()

    import ray

    from diagnose.tables import read_table

    with tempfile.TemporaryDirectory() as tmp:
        serial_dir, workers_dir = os.path.join(tmp, "serial"), os.path.join(tmp, "workers")
        serial_s = timed_run(config(serial_dir, args))
        ray.init(num_cpus=max(args.workers, os.cpu_count() or 1), include_dashboard=False,
                 logging_level=logging.ERROR, log_to_driver=False)
        try:
            workers_s = timed_run(config(workers_dir, args, workers=args.workers))
        finally:
            ray.shutdown()
        for name in ("rollouts", "nodes", "candidates", "alignment"):
            pd.testing.assert_frame_equal(read_table(serial_dir, name), read_table(workers_dir, name))
        cost = json.loads(open(os.path.join(serial_dir, "cost.json")).read())
    speedup = serial_s / workers_s
    print(f"serial {serial_s:.1f} s, --workers {args.workers} {workers_s:.1f} s: speed-up {speedup:.2f} "
          f"({cost['nodes']} nodes, {cost['continuations']} continuations over {args.questions} questions; "
          "tables equal)")
    print(json.dumps({f"workers{args.workers}_speedup": round(speedup, 3), "serial_s": round(serial_s, 2),
                      "workers_s": round(workers_s, 2), "questions": args.questions, "nodes": cost["nodes"],
                      "cpus": os.cpu_count()}))


if __name__ == "__main__":
    main()
