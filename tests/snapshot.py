"""Are the tables unchanged by a refactor? Run fixed configurations with one checkout, then another, and compare.

    python tests/snapshot.py run  /path/to/checkout  /tmp/before   # e.g. a `git worktree` of the old commit
    python tests/snapshot.py run  .                  /tmp/after
    python tests/snapshot.py compare /tmp/before /tmp/after

The configurations: the exact engine (uniform, adaptive, a token budget, refine; 4 questions, 2 external
teachers, 3 objectives) and the embedded model (2 questions, 2 self-distillation teachers). `compare` prints,
per run and table, "bit-identical" or the largest relative difference of any float column (and names every
column beyond 1e-6, or whose NaN pattern or non-float values differ). Not a test: a tool, like mutants.py.
"""

from __future__ import annotations

import os
import sys

EXACT = dict(
    engine="exact", student="exact", task="digitsum", teachers=["model=exact:seed=1", "model=exact:seed=2"],
    objectives=["rkl", "fkl", "jsd:beta=0.5"], questions=4, rollouts=4, max_new_tokens=8, n_boot=100,
)
RUNS = {
    "uniform": dict(EXACT, budget=120),
    "adaptive": dict(EXACT, budget=200, allocation="adaptive"),
    "tokens": dict(EXACT, budget=600, budget_unit="tokens"),
    "refine": dict(EXACT, budget=150, nodes="refine"),
    "embedded": dict(
        student="embedded", engine="hf", task="arithmetic", teachers=["self:answer", "self:solution"],
        objectives=["rkl", "fkl"], questions=2, rollouts=2, max_new_tokens=16, budget=24, temperature=0.7, n_boot=100,
    ),
}
TABLES = ("rollouts", "nodes", "candidates", "alignment", "summary")


def run(repo: str, out: str, names: list[str]) -> None:
    sys.path.insert(0, os.path.abspath(repo))
    import diagnose

    assert diagnose.__file__.startswith(os.path.abspath(repo)), f"imported {diagnose.__file__}, not {repo}'s"
    from diagnose.pipeline import RunConfig, Runner

    for name in names or list(RUNS):
        Runner(RunConfig(**RUNS[name], out=os.path.join(out, name), progress=False), progress=False).run()
        print(name, "done", flush=True)


def compare(a: str, b: str) -> int:
    import numpy as np

    from diagnose.tables import read_table

    worst = 0.0
    for name in sorted(os.listdir(a)):
        for table in TABLES:
            x, y = read_table(os.path.join(a, name), table), read_table(os.path.join(b, name), table)
            if list(x.columns) != list(y.columns) or len(x) != len(y):
                print(f"{name:9s} {table:11s} shape differs: {x.shape} vs {y.shape}")
                worst = float("inf")
                continue
            same, rel = True, 0.0
            for col in x.columns:
                if x[col].dtype.kind in "fc":
                    u, v = x[col].to_numpy(float), y[col].to_numpy(float)
                    if not np.array_equal(np.isnan(u), np.isnan(v)):
                        print(f"  {name} {table}.{col}: NaN pattern differs")
                        same, rel = False, float("inf")
                        continue
                    m = ~np.isnan(u)
                    if not np.array_equal(u[m], v[m]):
                        r = float(np.max(np.abs(u[m] - v[m]) / np.maximum(1e-12, np.abs(u[m]))))
                        same, rel = False, max(rel, r)
                        if r > 1e-6:
                            print(f"  {name} {table}.{col}: largest relative difference {r:.2e}")
                elif not all(str(p) == str(q) for p, q in zip(x[col], y[col], strict=True)):
                    print(f"  {name} {table}.{col}: values differ")
                    same, rel = False, float("inf")
            worst = max(worst, rel)
            print(f"{name:9s} {table:11s} {'bit-identical' if same else f'largest relative difference {rel:.2e}'}")
    return 0 if worst <= 1e-6 else 1


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if len(sys.argv) >= 4 and sys.argv[1] == "run":
        run(sys.argv[2], sys.argv[3], sys.argv[4:])
    elif len(sys.argv) == 4 and sys.argv[1] == "compare":
        sys.exit(compare(sys.argv[2], sys.argv[3]))
    else:
        sys.exit(__doc__)
