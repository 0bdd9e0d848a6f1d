"""What a validation reports, and the intervals around it.

Estimands (also stored in the `validation_arms` table's metadata):

- `pass_before` / `pass_after`: pass@1 over the FIXED held-out question set, i.e. the mean over those
  questions of the probability that one sample at the run's temperature is verified correct, at the starting
  weights / after the arm's training with one seed. The held-out questions are not treated as a sample from a
  population: the claim is about this set (a claim about other questions needs more held-out questions).
- `gain` of an arm: the expected change in that pass@1 after `steps` steps, the expectation taken over
  training seeds.
- `spearman`: the rank correlation, among the run's DISTILLATION configurations only (teacher x objective),
  between their alignment (the run's summary `mean`) and their gain. The grpo arm (reinforcement learning on
  the rollouts' verdicts, not distillation) is reported beside it with its alignment and gain, never in it:
  with grpo in, rho mostly says that RL gained more than self-distillation. The ideal and control arms are
  beside it too (the run does not measure their alignment). Undefined with fewer than 3 configurations.

Intervals of pass@1 and gains are percentile bootstraps over the random parts of the fixed-set estimand:
training seeds, and the samples of each held-out question (every question in every replicate; resampling
questions would add their between-question spread, which is not noise for a fixed set); see `Replicates`.
Sample j of a question draws the same random numbers before and after training, in every arm and every seed
(same sampling keys), so sample j of a question is one resampling unit across all of them: gains and the
differences between arms are paired. The interval of rho resamples the run's alignment (question-cluster
replicates of the diagnosis) jointly with the gains; its p-value permutes the gains (see `permutation_p`).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd

from ..estimate.resample import bootstrap_interval
from ..estimate.stats import spearman

ESTIMANDS = {
    "pass_before": "pass@1 over the fixed held-out question set (mean over those questions of P(one sample is "
    "correct)) at the starting weights",
    "pass_after": "the same pass@1 after `steps` training steps of the arm with one training seed",
    "gain": "expected change in pass@1 over the fixed held-out question set after `steps` steps of the arm, "
    "expectation over training seeds (the questions are fixed, not a sample from a population)",
    "spearman": "rank correlation, among the run's distillation configurations only (teacher x objective), "
    "between alignment (run summary `mean`) and gain; grpo (RL on the rollouts' verdicts), ideal and control "
    "are reported beside it, not in it; undefined with fewer than 3 configurations",
    "spearman_ci": "percentile bootstrap: the run's alignment replicates (question-cluster bootstrap of the "
    "diagnosis) resampled jointly with the gains' replicates",
    "spearman_p": "one-sided permutation p-value for rho > 0: the share of orderings of the gains whose rho is at "
    "least the observed one (all n! orderings when n <= 8, else random ones), rho on point estimates",
    "ideal_vs_control": "gain of the ideal arm minus gain of the control, same fixed-set estimand",
    "intervals": "percentile bootstrap for the fixed held-out set: a resampling of training seeds plus an "
    "independent resampling of the samples within each held-out question (questions not resampled), each "
    "rescaled by sqrt(n/(n-1)); paired across arms, seeds and between before and after",
}

EXACT_PERMUTATIONS = 8  # up to this many configurations the p-value enumerates every ordering of the gains
RANDOM_PERMUTATIONS = 20_000


class Replicates:
    """One set of bootstrap indices shared by every arm: seeds [B, S], questions [B, Q], samples [B, Q, J].

    Fixed held-out set (`resample_questions=False`, the default; the ESTIMANDS): every question is in every
    replicate, and a replicate adds two independent resamplings of the random parts of the estimate: training
    seeds (with all samples) and the samples within each question (with all seeds). Each part is rescaled by
    sqrt(n / (n - 1)) (n = S or J): the plain bootstrap variance of a mean of n draws is (n - 1) / n of the
    unbiased one, which at the validation's sizes (2 seeds, 4 samples) undercovers (0.76-0.89 for a nominal 0.9
    in simulation). With one seed the seed part is 0: the interval is conditional on that seed's weights.

    `resample_questions=True` is the population bootstrap (pass@1 over the population the questions were drawn
    from): seeds, then questions, then samples within each drawn question, unscaled. It is kept to compare the
    two on the same draws (same `seed`, same sample indices)."""

    def __init__(self, seeds: int, questions: int, samples: int, n_boot: int, seed: int = 0,
                 resample_questions: bool = False):
        rng = np.random.default_rng(seed)
        self.seeds = rng.integers(seeds, size=(n_boot, seeds))
        self.questions = rng.integers(questions, size=(n_boot, questions))
        self.samples = rng.integers(samples, size=(n_boot, questions, samples))
        self.resample_questions = resample_questions
        self.n_boot = n_boot

    @staticmethod
    def _scale(n: int) -> float:
        return math.sqrt(n / (n - 1)) if n > 1 else 0.0

    def _means(self, o: np.ndarray, seeds, questions, samples) -> np.ndarray:
        """Replicate means of o [..., S, Q, J] at index arrays broadcasting to [B, S, Q, J] -> [B, ...]."""
        out = np.empty((self.n_boot,) + o.shape[:-3])
        step = max(1, 4_000_000 // max(1, o.size))  # chunks of replicates bound the memory
        for a in range(0, self.n_boot, step):
            b = slice(a, a + step)
            sel = o[..., seeds[b], questions[b], samples[b]]  # [..., b, S, Q, J]
            out[b] = np.moveaxis(sel.mean(axis=(-3, -2, -1)), -1, 0)
        return out

    def pass_rate(self, outcomes: np.ndarray, resample_seeds: bool = True) -> np.ndarray:
        """outcomes [..., S, Q, J] -> replicate pass@1 [B, ...] (averaged over the seeds). resample_seeds=False
        for outcomes without a seed axis of their own (the starting weights: S = 1)."""
        o = np.asarray(outcomes, dtype=float)
        S, Q, J = o.shape[-3:]
        every_seed = np.broadcast_to(np.arange(S), (self.n_boot, S))[:, :, None, None]
        every_q = np.broadcast_to(np.arange(Q), (self.n_boot, Q))[:, None, :, None]
        every_j = np.broadcast_to(np.arange(J), (self.n_boot, Q, J))[:, None, :, :]
        seeds = self.seeds[:, :, None, None] if resample_seeds else every_seed
        samples = self.samples[:, None, :, :]
        if self.resample_questions:
            return self._means(o, seeds, self.questions[:, None, :, None], self.samples[:, None, :, :])
        point = o.mean(axis=(-3, -2, -1))
        out = point + self._scale(J) * (self._means(o, every_seed, every_q, samples) - point)
        if resample_seeds and S > 1:
            out = out + self._scale(S) * (self._means(o, seeds, every_q, every_j) - point)
        return out


def interval(reps: np.ndarray, level: float) -> tuple[float, float]:
    """The central percentile interval of the defined replicates (the summary's bootstrap_interval, which
    drops undefined ones here instead of refusing)."""
    return bootstrap_interval(reps, level, min_defined=0.0)


def verdict(low: float, high: float) -> str:
    """`gain` / `loss` when the interval excludes 0, else `within noise`."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return "unknown"
    if low > 0:
        return "gain"
    if high < 0:
        return "loss"
    return "within noise"


def _ranks(a: np.ndarray) -> np.ndarray:
    """Average ranks along the last axis (ties share their mean rank), as `spearman` ranks."""
    a = np.asarray(a, dtype=float)
    return pd.DataFrame(a.reshape(-1, a.shape[-1])).rank(axis=1).to_numpy().reshape(a.shape)


def _pearson_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson correlation of matching rows; NaN where a row is constant."""
    x = x - x.mean(-1, keepdims=True)
    y = y - y.mean(-1, keepdims=True)
    den = np.sqrt((x * x).sum(-1) * (y * y).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (x * y).sum(-1) / np.where(den > 0, den, 1.0), np.nan)


def permutation_p(alignment, gains, seed: int = 0) -> tuple[float, str]:
    """One-sided permutation p-value of Spearman's rho > 0 (no information: every ordering of the gains across
    the configurations equally likely), rho computed on the point estimates. Exact when n <= 8: the share of
    all n! orderings whose rho is at least the observed (4 perfectly ordered configurations: 1/24). Above,
    (1 + hits) / (1 + M) over M random orderings. Returns (p, how it was computed)."""
    rx, ry = _ranks(np.asarray(alignment, dtype=float)), _ranks(np.asarray(gains, dtype=float))
    n = len(rx)
    observed = float(_pearson_rows(rx, ry))
    if not np.isfinite(observed):
        return float("nan"), "rho is undefined (constant alignment or gains): no p-value"
    tol = 1e-9  # orderings that tie the observed rho count as at least as large
    if n <= EXACT_PERMUTATIONS:
        perms = np.array(list(itertools.permutations(range(n))))
        rho = _pearson_rows(rx[None, :], ry[perms])
        return float(np.mean(rho >= observed - tol)), (
            f"one-sided (rho > 0), exact over all {math.factorial(n)} orderings of the gains, rho on point estimates"
        )
    rng = np.random.default_rng(seed)
    perms = rng.permuted(np.tile(ry, (RANDOM_PERMUTATIONS, 1)), axis=1)
    hits = int(np.sum(_pearson_rows(rx[None, :], perms) >= observed - tol))
    return (1 + hits) / (1 + RANDOM_PERMUTATIONS), (
        f"one-sided (rho > 0), {RANDOM_PERMUTATIONS} random orderings of the gains, rho on point estimates"
    )


def rank_correlation(alignment, gains, gains_reps: np.ndarray, alignment_reps: np.ndarray | None = None,
                     level: float = 0.95) -> dict:
    """Spearman rho of alignment vs gain over the given configurations, its interval and its p-value.

    The interval resamples both sides jointly: replicate b pairs the alignment replicate b [B, n] (the run's
    question-cluster bootstrap) with the gain replicate b [B, n] (the validation's bootstrap); the two come
    from disjoint data, so pairing them by index draws them independently. `alignment_reps=None` holds the
    alignment at its point estimates (the note says so). The p-value permutes the gains (`permutation_p`).
    Fewer than 3 configurations with an alignment: rho is undefined (NaN, and the note says so)."""
    x = np.asarray(alignment, dtype=float)
    g = np.asarray(gains, dtype=float)
    ok = np.isfinite(x) & np.isfinite(g)
    n = int(ok.sum())
    nan = float("nan")
    if n < 3:
        return {"spearman": nan, "spearman_ci": [nan, nan], "spearman_p": nan, "p_method": "", "n": n,
                "alignment_resampled": alignment_reps is not None,
                "note": f"{n} distillation configuration{'s' if n != 1 else ''} with an alignment, and a ranking "
                        "needs at least 3: no rank correlation"}
    rho = spearman(x[ok], g[ok])
    gr = np.asarray(gains_reps, dtype=float)[:, ok]
    xr = np.broadcast_to(x[ok], gr.shape) if alignment_reps is None else np.asarray(alignment_reps, float)[:, ok]
    reps = _pearson_rows(_ranks(xr), _ranks(gr))
    lo, hi = interval(reps, level)
    p, how = permutation_p(x[ok], g[ok])
    if not np.isfinite(rho):
        note = "rho is undefined: the alignments or the gains are all tied"
    elif not np.isfinite(lo):
        note = "the replicates are tied in every draw: no interval"
    elif lo > 0:
        note = "higher alignment went with larger gains (the interval of rho excludes 0)"
    elif hi < 0:
        note = "higher alignment went with smaller gains (the interval of rho excludes 0)"
    else:
        note = "not confirmed at this size: the interval of rho includes 0"
    if alignment_reps is None:
        note += "; the alignments were held at their point estimates"
    return {"spearman": rho, "spearman_ci": [lo, hi], "spearman_p": p, "p_method": how, "n": n,
            "alignment_resampled": alignment_reps is not None, "note": note}


def ranking(arms: pd.DataFrame, gains_reps: np.ndarray, alignment_reps: np.ndarray | None = None,
            level: float = 0.95) -> dict:
    """The rank correlation among the distillation configurations of a per-arm table (columns arm, kind,
    alignment, gain, gain_ci_low/high, alignment_ci_low/high, verdict), with grpo reported beside it.

    Only arms of kind `config` enter rho; gains_reps and alignment_reps are [B, arms] aligned with the table's
    rows (the alignment replicates of the other arms are ignored). `grpo` holds the grpo arm's alignment and
    gain with their intervals, or None when there is no grpo arm."""
    kinds = arms["kind"].to_numpy()
    dist = kinds == "config"
    x = arms["alignment"].to_numpy(float)
    g = arms["gain"].to_numpy(float)
    measured = dist & np.isfinite(x)
    gr = np.asarray(gains_reps, dtype=float)[:, measured]
    xr = None if alignment_reps is None else np.asarray(alignment_reps, dtype=float)[:, measured]
    out = rank_correlation(x[measured], g[measured], gr, xr, level)
    out["configs"] = [str(a) for a in arms["arm"][measured]]
    out["grpo"] = None
    grpo = arms[kinds == "grpo"]
    if len(grpo):
        r = grpo.iloc[0]
        out["grpo"] = {
            "arm": str(r["arm"]), "alignment": float(r["alignment"]),
            "alignment_ci": [float(r["alignment_ci_low"]), float(r["alignment_ci_high"])],
            "gain": float(r["gain"]), "gain_ci": [float(r["gain_ci_low"]), float(r["gain_ci_high"])],
            "verdict": str(r["verdict"]),
        }
    return out


def separated_pairs(low, high) -> int:
    """Pairs of configurations whose alignment intervals do not overlap (the evidence a ranking test needs:
    configurations the diagnosis tells apart)."""
    lo, hi = np.asarray(low, dtype=float), np.asarray(high, dtype=float)
    n = len(lo)
    return int(sum(hi[i] < lo[j] or hi[j] < lo[i] for i in range(n) for j in range(i + 1, n)))
