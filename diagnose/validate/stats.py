"""What a validation reports, and the intervals around it.

Estimands (also stored in the `validation_arms` table's metadata):

- `pass_before` / `pass_after`: pass@1 over the held-out question set, i.e. the mean over questions of the
  probability that one sample at the run's temperature is verified correct, at the starting weights / after
  the arm's training with one seed.
- `gain` of an arm: the expected change in that pass@1 after `steps` steps, averaged over training seeds.
- `spearman`: the rank correlation, across the arms whose alignment the run measured, between their
  alignment (the run's summary `mean`) and their gain. Those arms are the run's configurations, plus the grpo
  arm when the run scored the objective `grpo_ref` (the same direction the arm trains on). The ideal and
  control arms are shown beside it, not in it: the run does not measure their alignment.

Intervals are percentile bootstraps over the independent units: training seeds, then held-out questions,
then samples within each drawn question. The before and after samples of a question share their random
draws (same sampling keys), and every arm is resampled with the same indices, so gains and the differences
between arms are paired. The run's alignments are held at their point estimates: the interval of rho
reflects the uncertainty of the gains only.
"""

from __future__ import annotations

import numpy as np

from ..report.summary import spearman

ESTIMANDS = {
    "pass_before": "pass@1 over the held-out questions (mean over questions of P(one sample is correct)) at the "
    "starting weights",
    "pass_after": "the same pass@1 after `steps` training steps of the arm with one training seed",
    "gain": "expected change in held-out pass@1 after `steps` steps of the arm, averaged over training seeds",
    "spearman": "rank correlation, across the arms whose alignment the run measured (its configurations, and grpo "
    "when the run scored grpo_ref), between alignment (run summary `mean`) and gain; ideal and control excluded",
    "intervals": "percentile bootstrap: training seeds, then held-out questions, then samples within each "
    "drawn question; paired across arms and between before and after; alignments held fixed",
}


class Replicates:
    """One set of bootstrap indices shared by every arm: seeds [B, S], questions [B, Q], samples [B, Q, J]."""

    def __init__(self, seeds: int, questions: int, samples: int, n_boot: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.seeds = rng.integers(seeds, size=(n_boot, seeds))
        self.questions = rng.integers(questions, size=(n_boot, questions))
        self.samples = rng.integers(samples, size=(n_boot, questions, samples))

    def pass_rate(self, outcomes: np.ndarray, resample_seeds: bool = True) -> np.ndarray:
        """outcomes [..., S, Q, J] -> replicate pass@1 [B, ...] (averaged over the resampled seeds)."""
        o = np.asarray(outcomes, dtype=float)
        lead = o.shape[:-3]
        out = np.empty((len(self.questions),) + lead)
        for b, (sb, qb, jb) in enumerate(zip(self.seeds, self.questions, self.samples, strict=True)):
            sel = o[..., sb if resample_seeds else slice(None), :, :]
            sel = sel[..., qb[:, None], jb]  # [..., S, Q, J]
            out[b] = sel.mean(axis=(-3, -2, -1))
        return out


def interval(reps: np.ndarray, level: float) -> tuple[float, float]:
    reps = np.asarray(reps, dtype=float)
    reps = reps[np.isfinite(reps)]
    if reps.size == 0:
        return float("nan"), float("nan")
    a = (1 - level) / 2
    return float(np.quantile(reps, a)), float(np.quantile(reps, 1 - a))


def verdict(low: float, high: float) -> str:
    """`gain` / `loss` when the interval excludes 0, else `within noise`."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return "unknown"
    if low > 0:
        return "gain"
    if high < 0:
        return "loss"
    return "within noise"


def rank_correlation(alignment, gains_reps: np.ndarray, gains: np.ndarray, level: float) -> dict:
    """Spearman rho of alignment vs gain over the arms with an alignment, and its interval from the replicate
    gains [B, A]. NaN (with a reason) when fewer than 3 arms are usable."""
    x = np.asarray(alignment, dtype=float)
    ok = np.isfinite(x)
    if ok.sum() < 3:
        return {"spearman": float("nan"), "spearman_ci": [float("nan"), float("nan")], "n": int(ok.sum()),
                "note": "fewer than 3 arms with an alignment: no rank correlation"}
    rho = spearman(x[ok], np.asarray(gains, dtype=float)[ok])
    reps = np.array([spearman(x[ok], g[ok]) for g in np.asarray(gains_reps)])
    lo, hi = interval(reps, level)
    if not np.isfinite(lo):
        note = "the gains are tied in every replicate: no ranking"
    elif lo > 0:
        note = "higher alignment went with larger gains (the interval of rho excludes 0)"
    elif hi < 0:
        note = "higher alignment went with smaller gains (the interval of rho excludes 0)"
    else:
        note = "not confirmed at this size: the interval of rho includes 0"
    return {"spearman": rho, "spearman_ci": [lo, hi], "n": int(ok.sum()), "note": note}
