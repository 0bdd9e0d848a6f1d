"""Run directories for the tests of the output layer (tables, summary, RunResult, report), made by the real
pipeline (`diagnose.pipeline.run`) on the exact engine: nothing is re-implemented or planted, and a run takes
a few seconds (no model to load; rollouts are at most 6 tokens, the engine's horizon).

The exact engine's student is a seeded table of logits. `model=exact:scale=...` rebuilds that table with the
same seed at another scale, so SHARPER is the student's logits times 2 and FLATTER times 0.5. Under rkl a
teacher with logits c z gives d = (c - 1) p (z - E_p z): the two directions are exact opposites at every node,
so each alignment figure of one configuration is minus the other's. OTHERS are unrelated models.
"""

from __future__ import annotations

from pathlib import Path

from diagnose.pipeline import run

SHARPER = "model=exact:scale=4.0"
FLATTER = "model=exact:scale=1.0"
OTHERS = ("model=exact:seed=1", "model=exact:seed=2,scale=1.5")
EXACT = dict(student="exact", engine="exact", task="digitsum", max_new_tokens=8, progress=False)


def exact_run(out, **values) -> Path:
    """Run the pipeline on the exact engine into `out` (tables, summary, report.html) and return it."""
    run(**{**EXACT, "out": str(out), **values})
    return Path(out)
