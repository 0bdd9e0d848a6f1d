"""The frontier plan's record in a run directory: frontier.json holds every question's rollout verdicts and
tokens, from which `diagnose.estimate.frontier.plan_budgets` makes the plan (the same on every resume and
`--shard`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from .. import atomic

PLAN_FILE = "frontier.json"


def save_verdicts(
    out: Path, verdicts: Sequence[Sequence[bool]], tokens: Sequence[int], ids: Sequence[str]
) -> None:
    """frontier.json: every question's rollout verdicts and rollout tokens, what the plan is made from (read
    back on resume). Written once: a process that finds one already there (a `--shard` sibling's) leaves it,
    and all use it."""
    rows = [
        {"question_id": q, "verdicts": [bool(x) for x in v], "tokens": int(t)}
        for q, v, t in zip(ids, verdicts, tokens, strict=True)
    ]
    atomic.create_text(out / PLAN_FILE, json.dumps({"questions": rows}))


def load_verdicts(out: Path, ids: Sequence[str]) -> tuple[list[list[bool]], list[int]] | None:
    """(verdicts, rollout tokens) per question that a previous invocation planned from, when frontier.json
    holds exactly these questions; else None."""
    path = out / PLAN_FILE
    try:
        rows = json.loads(path.read_text())["questions"]
        if [r.get("question_id") for r in rows] != list(ids):
            return None
        return [list(map(bool, r["verdicts"])) for r in rows], [int(r["tokens"]) for r in rows]
    except (OSError, ValueError, KeyError, TypeError):
        return None
