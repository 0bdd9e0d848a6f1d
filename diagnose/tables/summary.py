"""The stored `summary` table as an object: the table plus its run-level conclusions, and what each column
estimates (ESTIMANDS, also written into the table's metadata). Computed by diagnose.estimate.summary."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from .io import read_metadata, read_table


@dataclass
class Summary:
    """The summary table plus run-level conclusions (stored as the summary table's metadata)."""

    table: pd.DataFrame
    recommendation: dict[str, Any] = field(
        default_factory=dict
    )  # metric -> {"overall": {...}, "bands": {...}}
    headroom: dict[str, Any] = field(default_factory=dict)  # metric -> {...}
    proxy_pooled: dict[str, Any] = field(default_factory=dict)  # metric -> {proxy: rho}
    settings: dict[str, Any] = field(default_factory=dict)

    def to_metadata(self) -> dict[str, Any]:
        return {
            "recommendation": self.recommendation,
            "headroom": self.headroom,
            "proxy_pooled": self.proxy_pooled,
            "settings": self.settings,
        }

    @classmethod
    def from_metadata(cls, table: pd.DataFrame, meta: dict[str, Any]) -> Summary:
        s = meta.get("summary", {})
        return cls(
            table=table,
            recommendation=s.get("recommendation", {}),
            headroom=s.get("headroom", {}),
            proxy_pooled=s.get("proxy_pooled", {}),
            settings=s.get("settings", {}),
        )


ESTIMANDS = {
    "mean": "alignment over the group's live tokens (d != 0, not no_signal): cos(concatenated g*, concatenated "
    "unit d) over them, token-weighted, noise-corrected |g*|^2 (consistent at any number of continuations); "
    "null when unresolved",
    "rank": "order of `mean` (1 = best; mostly silent configurations last); null where `mean` is null",
    "ci_low/ci_high": "95% bootstrap over questions (each with all its rollouts and nodes): bias-corrected "
    "percentile ends widened about the estimate by sqrt(G/(G-1)) t_{G-1}/z for G questions",
    "mean_per_token": "token-weighted mean of per-node cosine estimates (descriptive: noise shrinks it to 0)",
    "mean_per_token_correct": "the paper-style figure: mean_per_token over the nodes of correct (incorrect) "
    "rollouts; it estimates E[cos(g-hat, d)] at this run's continuations, which noise pulls toward 0 more where "
    "|g*| is small (correct rollouts), so its split is not noise-consistent",
    "diff_per_token": "mean_per_token_correct - mean_per_token_incorrect (raw; compare diff_correct_incorrect)",
    "diff_correct_incorrect": "mean over correct-rollout tokens minus mean over incorrect-rollout tokens",
    "teacher_advantage": "token-weighted mean of TA = sum_C (q - p)(Q - V) (unbiased per node)",
    "rollout_cos": "per-rollout figure, not token-weighted: unweighted mean over rollouts of each rollout's raw "
    "cosine of g* and w d concatenated over its nodes (attenuated by noise; descriptive, never ranked)",
    "n_effective": "Kish effective count of nodes weighted by token weight x corrected |g*|^2",
    "headroom": "what choosing the configuration per token adds over the best single one, over nodes where every "
    "ranked configuration is live; cross-fitted over continuation halves (unbiased for 0 with no per-node winner), "
    "interval from a lower to an upper bound of the exact headroom",
    "margin": "paired difference of `mean` between the best configuration and the runner-up; clear when "
    "its interval excludes 0",
}


def read_summary(run_dir) -> Summary:
    """The stored summary of a run directory (table and run-level conclusions)."""
    return Summary.from_metadata(read_table(run_dir, "summary"), read_metadata(run_dir, "summary"))


def no_summary(run_dir) -> str:
    """The one-line error for a run directory that has no summary table to render."""
    return (f"{run_dir} has no summary table yet (an unfinished run?): `diagnose report {run_dir}` computes "
            "and writes it, `diagnose.load` computes it without writing")


EASIER = "make the task easier or the student stronger (or raise --max-new-tokens or --temperature)"
HARDER = "make the task harder (or the student weaker)"


def verdict_note(correct, question_ids=None) -> str | None:
    """What to say when the student's verdicts leave nothing to learn from: it solved none (or all) of its
    rollouts, so Q is 0 (or 1) almost everywhere, g* vanishes and no teacher can be scored; with
    `question_ids`, also when fewer than a fifth of the questions have both verdicts. None when neither."""
    correct = pd.Series(list(correct), dtype=bool)
    n = len(correct)
    if n == 0:
        return None
    if not correct.any():
        return f"the student solved none of its {n} rollouts: g* is 0 at every node, no teacher can be scored; {EASIER}"
    if correct.all():
        return f"the student solved all {n} of its rollouts: g* is 0 at almost every node; {HARDER}"
    if question_ids is not None:
        by_q = pd.DataFrame({"q": list(question_ids), "c": correct}).groupby("q")["c"].nunique()
        mixed = int((by_q == 2).sum())
        if mixed < 0.2 * len(by_q):
            what = EASIER if correct.mean() < 0.5 else HARDER
            return (f"only {mixed} of {len(by_q)} questions have both verdicts among their rollouts (pass rate "
                    f"{correct.mean():.2f}): most nodes meet g* = 0; {what}")
    return None
