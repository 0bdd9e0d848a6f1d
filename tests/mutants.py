"""Mutation testing: can the fast tests still fail? (`make mutants`; docs/testing.md)

Each mutant is one plausible bug, written as an exact search/replace on one source file: (name, file, old
text, new text). The harness

1. checks that every old text occurs exactly once in its file (a mutant whose code moved fails loudly here
   instead of silently testing nothing),
2. copies the repository (without .venv, .git, reports, caches) into a scratch directory and checks that the
   unmutated copy imports from there and passes the fast tests (the baseline; it aborts if not),
3. applies every mutant to its own fresh copy of that tree, never to the working tree, and runs the fast test
   files relevant to the mutated module (`TESTS`) with `pytest -x`, at most `--jobs` at a time,
4. prints one line per mutant, then one JSON line last: {"killed": k, "total": n, "survivors": [names]}.

A mutant is killed when pytest fails (exit status 1, or 2 for a collection error the mutant caused; the
baseline shows the harness itself collects cleanly). A mutant that runs past `--timeout` counts as a
survivor with status "timeout": the suite did not show that it fails. Exit status: 0 when every mutant is
killed, 1 when some survive, 2 when the harness cannot run (rotten mutant, failing baseline).

The package is imported from the scratch copy through PYTHONPATH. `diagnose.kernels` is the top-level
`kernels/` folder (pyproject's package-dir); the editable install would map it back to the working tree, so
the scratch copy gets diagnose/kernels -> ../kernels, and the import check verifies both paths.

This file is not collected by pytest (only test_*.py are). Usage:

    .venv/bin/python tests/mutants.py                 # everything (what `make mutants` runs)
    .venv/bin/python tests/mutants.py --list          # names, files and test files
    .venv/bin/python tests/mutants.py --check         # only check that every old text is found once
    .venv/bin/python tests/mutants.py --only stats.noise_term_doubled --keep
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The CPU-fast test files (the browser test in test_report.py is deselected by DESELECT).
FAST = (
    "tests/test_objectives.py",
    "tests/test_ideal_alignment.py",
    "tests/test_estimator_exact.py",
    "tests/test_exact_engine.py",
    "tests/test_validity.py",
    "tests/test_report.py",
    "tests/test_kernels.py",
    "tests/test_statistics_units.py",
    "tests/test_temperature.py",
    "tests/test_silent_rows.py",
    "tests/test_cost.py",
    "tests/test_signal.py",
    "tests/test_headroom.py",
    "tests/test_validate_stats.py",
    "tests/test_adaptive_unbiased.py",
    "tests/test_inclusion.py",
)
DESELECT = "not chromium and not slow"  # the browser test and test_signal.py's embedded-model runs

# Which fast test files run against a mutant of a module (longest matching prefix wins). Ordered so that the
# file most likely to fail, and quick to fail, comes first (pytest -x stops at the first failure).
TESTS = {
    "diagnose/objectives/": ("tests/test_objectives.py", "tests/test_kernels.py", "tests/test_ideal_alignment.py"),
    "diagnose/ideal.py": ("tests/test_ideal_alignment.py", "tests/test_objectives.py", "tests/test_estimator_exact.py"),
    "diagnose/alignment.py": ("tests/test_ideal_alignment.py", "tests/test_kernels.py", "tests/test_report.py"),
    "diagnose/estimate/": (
        "tests/test_inclusion.py",
        "tests/test_statistics_units.py",
        "tests/test_adaptive_unbiased.py",
        "tests/test_estimator_exact.py",
        "tests/test_validity.py",
    ),
    "diagnose/estimate/stats.py": (
        "tests/test_statistics_units.py",
        "tests/test_estimator_exact.py",
        "tests/test_validity.py",
        "tests/test_report.py",
    ),
    "diagnose/estimate/summary.py": (
        "tests/test_headroom.py",
        "tests/test_silent_rows.py",
        "tests/test_statistics_units.py",
        "tests/test_report.py",
        "tests/test_validity.py",
    ),
    "diagnose/estimate/resample.py": (
        "tests/test_headroom.py",
        "tests/test_silent_rows.py",
        "tests/test_statistics_units.py",
        "tests/test_report.py",
        "tests/test_validity.py",
    ),
    "diagnose/estimate/directions.py": (
        "tests/test_temperature.py",
        "tests/test_statistics_units.py",
        "tests/test_estimator_exact.py",
    ),
    "diagnose/estimate/signal.py": ("tests/test_signal.py", "tests/test_temperature.py"),
    "diagnose/estimate/generate.py": ("tests/test_cost.py", "tests/test_estimator_exact.py"),
    "diagnose/pipeline/runner.py": ("tests/test_cost.py",),
    "diagnose/pipeline/plan_work.py": ("tests/test_plan.py",),
    "diagnose/report/sections.py": ("tests/test_cost.py",),
    "diagnose/validate/": ("tests/test_validate_stats.py",),
    "kernels/": ("tests/test_kernels.py", "tests/test_validity.py", "tests/test_estimator_exact.py"),
}

# Copied into the scratch tree: everything but these (names matched at any depth).
SKIP = {".venv", ".git", "reports", "shared", "build", "dist", "__pycache__", ".pytest_cache", ".ruff_cache"}


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str  # relative to the repository root
    old: str  # exact text, found exactly once in the file
    new: str
    bug: str  # the plausible bug it stands for

    @property
    def tests(self) -> tuple[str, ...]:
        keys = [k for k in TESTS if self.path.startswith(k)]
        if not keys:
            raise SystemExit(f"mutants: no test files mapped for {self.path} (mutant {self.name}); add it to TESTS")
        return TESTS[max(keys, key=len)]


OBJ_DIV = "diagnose/objectives/divergences.py"
OBJ_TOPK = "diagnose/objectives/topk.py"
OBJ_SAMPLED = "diagnose/objectives/sampled.py"
IDEAL = "diagnose/ideal.py"
ALIGN = "diagnose/alignment.py"
STATS = "diagnose/estimate/stats.py"
NODES = "diagnose/estimate/nodes.py"
Q = "diagnose/estimate/q.py"
GEN = "diagnose/estimate/generate.py"
PIPE = "diagnose/estimate/pipeline.py"
SUMMARY = "diagnose/estimate/summary.py"
RESAMPLE = "diagnose/estimate/resample.py"

MUTANTS = [
    # ---- objectives: d = -dL/dz
    Mutant(
        "objectives.rkl_mode_shift_dropped",
        OBJ_DIV,
        "    l = l - l.gather(-1, logp.argmax(-1, keepdim=True))\n",
        "",
        "rkl's log-ratio not shifted at the student's mode (same d in exact arithmetic; cancels on peaked rows)",
    ),
    Mutant(
        "objectives.fkl_sign_flipped",
        OBJ_DIV,
        "return log_probs(teacher_logits).exp() - log_probs(student_logits).exp()",
        "return log_probs(student_logits).exp() - log_probs(teacher_logits).exp()",
        "forward KL direction written p - q instead of q - p (the gradient, not minus the gradient)",
    ),
    Mutant(
        "objectives.jsd_beta_as_one_minus_beta",
        OBJ_DIV,
        "logm = torch.logaddexp(logq + torch.log(torch.tensor(beta)), logp + torch.log(torch.tensor(1 - beta)))",
        "logm = torch.logaddexp(logq + torch.log(torch.tensor(1 - beta)), logp + torch.log(torch.tensor(beta)))",
        "JSD mixture m built with beta and 1 - beta swapped",
    ),
    Mutant(
        "objectives.jsd_weight_dropped",
        OBJ_DIV,
        "return (1.0 - beta) * rkl_from_logprobs(logp, logm)",
        "return rkl_from_logprobs(logp, logm)",
        "JSD direction without its (1 - beta) factor",
    ),
    Mutant(
        "objectives.fkl_clipped_no_renormalisation",
        OBJ_DIV,
        "return q_unclipped - p * q_unclipped.sum(-1, keepdim=True)",
        "return q_unclipped - p",
        "clipped forward KL: the softmax coupling p * q(U) replaced by p",
    ),
    Mutant(
        "objectives.topk_student_support_uses_teacher",
        OBJ_TOPK,
        'if support == "student":\n        return topk_mask(student_logits, k)',
        'if support == "student":\n        return topk_mask(teacher_logits, k)',
        "top-k support `student` taken from the teacher's logits",
    ),
    Mutant(
        "objectives.rkl_topk_unnorm_normaliser_dropped",
        OBJ_TOPK,
        "inner = (p_s * l).sum(-1, keepdim=True) + p_s.sum(-1, keepdim=True)",
        "inner = (p_s * l).sum(-1, keepdim=True)",
        "unnormalised top-k rkl: the p(S) term of the normaliser's coupling dropped",
    ),
    Mutant(
        "objectives.k3_advantage_sign",
        OBJ_SAMPLED,
        "return torch.exp(_gather(logq - logp, tokens)) - 1.0",
        "return 1.0 - torch.exp(_gather(logq - logp, tokens))",
        "k3 advantage with the wrong sign (r - 1 written 1 - r)",
    ),
    # ---- ideal gradient g* = p (Q - V)
    Mutant(
        "ideal.v_not_renormalised_by_pc",
        IDEAL,
        "v = (p * q).sum(-1) / mass.clamp_min(EPS)",
        "v = (p * q).sum(-1)",
        "V = sum_C p Q without dividing by p(C)",
    ),
    Mutant(
        "ideal.p_not_restricted_to_candidates",
        IDEAL,
        "p = torch.where(mask, torch.as_tensor(p, dtype=torch.float64), 0.0)",
        "p = torch.as_tensor(p, dtype=torch.float64)",
        "p(C) summed over the whole vocabulary (Q := 0 off the candidates instead of Q := V)",
    ),
    Mutant(
        "ideal.ties_left_to_round_off",
        IDEAL,
        "v = torch.where(tied, hi, v)",
        "v = v",
        "g* on a node whose candidates all have the same Q left at round-off instead of exactly zero",
    ),
    Mutant(
        "ideal.padding_overwrites_token0",
        IDEAL,
        "ids = torch.where(ids >= 0, ids, torch.full_like(ids, vocab))",
        "ids = ids.clamp_min(0)",
        "-1 padding scattered onto token 0",
    ),
    # ---- alignment
    Mutant(
        "alignment.ta_p_minus_q",
        ALIGN,
        "return ((q - p) * (q_dense.float() - value.float()[:, None])).sum(-1)",
        "return ((p - q) * (q_dense.float() - value.float()[:, None])).sum(-1)",
        "teacher advantage computed with p - q",
    ),
    Mutant(
        "alignment.proxy_kl_direction_swapped",
        ALIGN,
        '"kl_pq": (p * (logp - logq)).sum(-1),',
        '"kl_pq": (q * (logq - logp)).sum(-1),',
        "proxy kl_pq computed as KL(q || p)",
    ),
    Mutant(
        "alignment.support_cosine_uses_full_norm",
        ALIGN,
        "support, deg_support = safe_cosine(dot, g_sq, (d_c * d_c).sum(-1))",
        "support, deg_support = safe_cosine(dot, g_sq, (d * d).sum(-1))",
        "support cosine normalised by |d| over the whole vocabulary",
    ),
    # ---- estimate/stats: noise correction, pooled alignment, intervals
    Mutant(
        "stats.noise_correction_dropped",
        STATS,
        "    gc = g_sq - noise\n",
        "    gc = g_sq\n",
        "corrected cosine without subtracting the noise term",
    ),
    Mutant(
        "stats.noise_term_doubled",
        STATS,
        "return (noise_weights(p, mask) * q_variance(successes, counts)).sum(-1)",
        "return 2 * (noise_weights(p, mask) * q_variance(successes, counts)).sum(-1)",
        "noise term counted twice",
    ),
    Mutant(
        "stats.q_variance_plugin",
        STATS,
        "q * (1 - q) / (n - 1).clamp_min(1)",
        "q * (1 - q) / n.clamp_min(1)",
        "Var(Q-hat) by the biased plug-in Q(1-Q)/n instead of /(n-1)",
    ),
    Mutant(
        "stats.noise_weights_without_v_noise",
        STATS,
        "return torch.where(mask, p * p * (1 - 2 * pi) + pi * pi * s2, 0.0)",
        "return torch.where(mask, p * p, 0.0)",
        "noise weights ignore V-hat's own noise (only p_k^2)",
    ),
    Mutant(
        "stats.pooled_without_noise_term",
        STATS,
        "b = torch.where(on, w * (g_sq - noise), 0.0).sum(-1)",
        "b = torch.where(on, w * g_sq, 0.0).sum(-1)",
        "pooled alignment with the raw |g-hat|^2 (no noise term)",
    ),
    Mutant(
        "stats.pooled_without_live_fraction",
        STATS,
        "out = np.clip(a / np.sqrt(np.where(ok, b * u, np.nan)), -1.0, 1.0)",
        "out = np.clip(a / np.sqrt(np.where(ok, b, np.nan)), -1.0, 1.0)",
        "pooled alignment A / sqrt(B) without the U (live directions) normaliser",
    ),
    Mutant(
        "stats.bootstrap_unresolved_as_nan",
        STATS,
        '_, rep, _ = corrected_cosine(dot_b, gsq_b, noise_b, dsq, unresolved="sign")',
        '_, rep, _ = corrected_cosine(dot_b, gsq_b, noise_b, dsq, unresolved="nan")',
        "unresolved bootstrap replicates left as NaN instead of the far end sign(dot)",
    ),
    Mutant(
        "stats.round_off_decides_resolution",
        STATS,
        "    gc = unbiased_g_sq(g_sq, noise)\n    resolved = gc > 0",
        "    gc = g_sq - noise\n    resolved = gc > 0",
        "|g-hat|^2 - N left to float64 round-off where N = |g-hat|^2 exactly: the corrected cosine +-1 or NaN by luck",
    ),
    Mutant(
        "stats.degenerate_absolute_epsilon",
        STATS,
        "degenerate = (g_sq <= 0) | (d_sq <= 0)",
        "degenerate = (g_sq <= 1e-12) | (d_sq <= 1e-12)",
        "degenerate rule with an absolute epsilon (|g*|^2 ~ 1e-20 on peaked rows is real signal)",
    ),
    Mutant(
        "stats.rollout_weights_not_squared",
        STATS,
        '"d_sq": w * w * d_sq,',
        '"d_sq": w * d_sq,',
        "rollout cosine: |w d|^2 summed as w |d|^2",
    ),
    Mutant(
        "stats.ta_point_p_minus_q",
        STATS,
        "ta = ((tq - p) * torch.where(mask, q_hat - v[:, None], 0.0)).sum(-1)",
        "ta = ((p - tq) * torch.where(mask, q_hat - v[:, None], 0.0)).sum(-1)",
        "per-node teacher advantage point estimate with p - q (its interval still q - p)",
    ),
    # ---- estimate: nodes, weights, continuations, seeds
    Mutant(
        "nodes.design_weights_ignored",
        NODES,
        'if strategy == "every":\n        return [1.0] * len(nodes)',
        "if True:\n        return [1.0] * len(nodes)",
        "design weights ignored: every node weighs 1 whatever the selection",
    ),
    Mutant(
        "nodes.design_weights_no_window_rescale",
        NODES,
        "out.append(tokens[key] / chosen[key] * total_w[gw] / covered_w[gw])",
        "out.append(tokens[key] / chosen[key])",
        "uncovered strata not represented by the rollouts of their group (no rescaling by covered tokens)",
    ),
    Mutant(
        "nodes.window_index_off_by_one",
        NODES,
        "return (offset + 1).bit_length() - 1",
        "return offset.bit_length()",
        "window index off by one (windows 1, 1, 2, 4, ... instead of 1, 2, 4, ...)",
    ),
    Mutant(
        "q.prefix_off_by_one",
        Q,
        "prefix = tuple(ro.prompt_ids) + tuple(ro.token_ids[: est.node.position])",
        "prefix = tuple(ro.prompt_ids) + tuple(ro.token_ids[: est.node.position + 1])",
        "continuation prefix includes the observed token (node position off by one)",
    ),
    Mutant(
        "q.length_limit_not_applied",
        Q,
        "max_new_tokens=limit - est.node.position,",
        "max_new_tokens=limit,",
        "continuations from position t get the full max_new_tokens instead of max_new_tokens - t",
    ),
    Mutant(
        "q.verdict_counted_as_outcome",
        Q,
        "        if free:\n            est.outcomes[0].append(int(ro.correct))",
        "        if True:\n            est.outcomes[0].append(int(ro.correct))",
        "the rollout's own verdict counted as an outcome of its observed token even with free=False",
    ),
    Mutant(
        "estimate.free_sample_default_on",
        PIPE,
        "    free_sample: bool = False\n",
        "    free_sample: bool = True\n",
        "the free rollout sample back on by default (biased Q-hat within correct/incorrect splits)",
    ),
    Mutant(
        "generate.seed_ignored",
        GEN,
        "seed=derive_seed(self.params.seed, start)",
        "seed=derive_seed(0, start)",
        "the sampling seed ignored for generated blocks",
    ),
    # ---- estimate/summary: the per-configuration table and its intervals
    Mutant(
        "summary.resample_rollouts_ignoring_questions",
        RESAMPLE,
        "k = rng.multinomial(len(qs), np.full(len(qs), 1 / len(qs)), size=self.n_boot)  # [B, Q]",
        "k = np.ones((self.n_boot, len(qs)), dtype=np.int64)  # [B, Q]",
        "intervals without resampling: every question kept once in every replicate",
    ),
    Mutant(
        "summary.two_stage_bootstrap",
        RESAMPLE,
        "w = k[:, codes].astype(float)  # every rollout of a drawn question, as often as it was drawn",
        "w = rng.multinomial(len(keys), np.full(len(keys), 1 / len(keys)), size=self.n_boot).astype(float)",
        "rollouts resampled on their own, not whole questions",
    ),
    Mutant(
        "summary.headroom_in_sample_choice",
        SUMMARY,
        "oracle = 0.5 * (u1[idx, c0] + u0[idx, c1])  # ... scored on the other",
        "oracle = in_oracle  # ... scored on the other",
        "headroom: the per-token best chosen and scored on the same continuations (winner's curse)",
    ),
    Mutant(
        "summary.headroom_single_in_sample",
        SUMMARY,
        "single = 0.5 * (u1[:, b0] + u0[:, b1])",
        "single = in_single",
        "headroom: the best single configuration chosen and scored on the same continuations",
    ),
    Mutant(
        "q.generated_ignores_pilot",
        Q,
        "        pilot = len(self.pilot[k]) if self.pilot else 0\n",
        "        pilot = 0\n",
        "estimation continuations numbered from 0 again: they reuse the pilot samples that chose their number",
    ),
    Mutant(
        "nodes.select_greedy_own_cost",
        NODES,
        "            if planned + c > share + 1e-9:\n                break\n",
        "            c = cost_fn(n.rollout, n.position)\n            if planned + c > share + 1e-9:\n                continue\n",
        "token budgets: greedy fill at each node's own cost favours cheap late positions",
    ),
    Mutant(
        "pipeline.token_bound_rollout_length",
        "diagnose/estimate/pipeline.py",
        "return self.budget.node_cost(self.cfg.max_new_tokens - t, candidates)",
        "return self.budget.node_cost(len(self.rollouts[r].token_ids) - t, candidates)",
        "token cost bound from the rollout's remaining length, not max_new_tokens - t",
    ),
    # ---- the plan's point estimates: what the calibration measured must reach them
    Mutant(
        "plan.expected_nominal_candidates",
        "diagnose/pipeline/plan_work.py",
        "budget_model(cfg).nominal_candidates if candidates is None else candidates, budgets),",
        "budget_model(cfg).nominal_candidates, budgets),",
        "point estimates at the nominal candidate set, not the measured one",
    ),
    Mutant(
        "plan.expected_mean_lengths",
        "diagnose/pipeline/plan_work.py",
        "one = expected_question(replace(cfg, budget=b), groups[i % len(groups)], candidates)",
        "one = expected_question(replace(cfg, budget=b), [round(sum(groups[0]) / len(groups[0]))] * 4, candidates)",
        "point estimates on mean-length rollouts, not the calibration's real lengths",
    ),
    # ---- validate: which arms the ranking test ranks, and the estimand of the gain's interval
    Mutant(
        "validate.grpo_in_rho",
        "diagnose/validate/stats.py",
        "    dist = kinds == \"config\"\n",
        "    dist = np.isin(kinds, (\"config\", \"grpo\"))\n",
        "the RL arm ranked with the distillation configurations",
    ),
    Mutant(
        "validate.questions_resampled_for_fixed_set",
        "diagnose/validate/stats.py",
        "        if self.resample_questions:\n",
        "        if True:\n",
        "the fixed held-out set resampled as if drawn from a population",
    ),
    Mutant(
        "summary.pooled_B_without_noise",
        SUMMARY,
        'g_corr = group["g_sq"].to_numpy(float) - group["_noise"].to_numpy(float)  # noise-corrected |g*|^2',
        'g_corr = group["g_sq"].to_numpy(float)',
        "summary's pooled alignment without the noise term",
    ),
    Mutant(
        "summary.node_weights_ignored",
        SUMMARY,
        'w = group["node_weight"].to_numpy(float)\n        use',
        "w = np.ones(len(group))\n        use",
        "summary ignores the design weights (a mean over early tokens)",
    ),
    Mutant(
        "summary.diff_sign_flipped",
        SUMMARY,
        'row["diff_correct_incorrect"] = mc - mi',
        'row["diff_correct_incorrect"] = mi - mc',
        "correct-minus-incorrect difference computed the other way round",
    ),
    Mutant(
        "summary.clear_ignores_min_questions",
        SUMMARY,
        '"clear": bool(enough and np.isfinite(lo) and lo > 0),',
        '"clear": bool(np.isfinite(lo) and lo > 0),',
        "a clear winner declared from a single question",
    ),
    Mutant(
        "summary.interval_alpha_not_halved",
        RESAMPLE,
        "    reps = reps[ok]\n    alpha = (1 - level) / 2\n",
        "    reps = reps[ok]\n    alpha = 1 - level\n",
        "percentile interval at 90% instead of 95% (alpha not split between the tails)",
    ),
    Mutant(
        "summary.small_sample_factor_dropped",
        RESAMPLE,
        "        return small_sample_factor(self.n_questions, level)",
        "        return 1.0",
        "intervals not widened for few questions (the bootstrap's plug-in variance and normal tails)",
    ),
    Mutant(
        "summary.interval_not_bias_corrected",
        RESAMPLE,
        "sstats.norm.cdf([2 * z0 - z, 2 * z0 + z])",
        "sstats.norm.cdf([-z, z])",
        "plain percentile ends where the replicates sit off the estimate (no bias correction)",
    ),
    # ---- fused kernels (diagnose.kernels)
    Mutant(
        "kernels.pivot_dropped",
        "kernels/fused.py",
        "piv64 = torch.where(piv_ok, lp_a - lq_a, 0.0)",
        "piv64 = torch.zeros_like(lp_a - lq_a)",
        "kernels: the log-ratio pivot at the student's mode dropped",
    ),
    Mutant(
        "kernels.d_zero_rule_exact",
        "kernels/types.py",
        "deg_f, deg_s = g_zero | (d_sq <= scale), g_zero | (d_sup <= scale)",
        "deg_f, deg_s = g_zero | (d_sq <= 0), g_zero | (d_sup <= 0)",
        "kernels: d = 0 tested exactly, so rounding noise of d gets a full-size cosine",
    ),
    # ---- temperature, no-signal floor, silent rows
    Mutant(
        "directions.teacher_untempered",
        "diagnose/estimate/directions.py",
        "    return logits if t == 1.0 else logits / t\n",
        "    return logits\n",
        "teacher logits scored at temperature 1 beside a tempered student: an identical teacher reads as signal",
    ),
    Mutant(
        "signal.twins_random_signs_only",
        "diagnose/estimate/signal.py",
        "        xi = xi.to(z.device).scatter(-1, peaks, signs.to(z.device).expand(peaks.shape).contiguous())\n",
        "        xi = xi.to(z.device)\n",
        "rounding twins with random signs on the peaks: a two-peaked node's twin vanishes by luck",
    ),
    Mutant(
        "summary.silent_rows_in_denominator",
        SUMMARY,
        "np.where(live, w * g_corr, 0.0),  # B",
        "w * g_corr,  # B",
        "no-signal rows' |g*|^2 kept in the pooled denominator: a teacher silent at f of nodes shrinks by sqrt(1-f)",
    ),
    Mutant(
        "summary.unresolved_configs_ranked",
        SUMMARY,
        'resolved = table["mean"].notna().to_numpy(bool)',
        "resolved = np.ones(len(table), bool)",
        "configurations with a null mean ranked by label: a silent teacher can stand at rank 1",
    ),
    # ---- cost.json
    Mutant(
        "runner.elapsed_is_the_question_sum",
        "diagnose/pipeline/runner.py",
        'total = {"elapsed_s": round(_union_seconds(intervals), 3),',
        'total = {"elapsed_s": round(total.get("question_seconds_sum", 0), 3),',
        "elapsed time reported as the sum of per-question times over the questions in flight",
    ),
    Mutant(
        "report.question_sum_shown_as_wall_time",
        "diagnose/report/sections.py",
        '"question_seconds_sum": "question time, summed",',
        '"question_seconds_sum": "wall time",',
        "the report labels the per-question sum as wall time",
    ),
    Mutant(
        "generate.cache_hits_counted_as_generated",
        "diagnose/estimate/generate.py",
        "hits = set(found)  #",
        "hits = set()  #",
        "continuations read from the cache counted as generated",
    ),
]


# ---------------------------------------------------------------- harness


def check_mutants(mutants, root: Path = ROOT) -> list[str]:
    """Problems with the mutant list against the tree at `root`: duplicate names, old texts not found exactly
    once, no-op mutations."""
    problems, seen = [], set()
    for m in mutants:
        if m.name in seen:
            problems.append(f"{m.name}: duplicate name")
        seen.add(m.name)
        path = root / m.path
        if not path.is_file():
            problems.append(f"{m.name}: no file {m.path}")
            continue
        count = path.read_text(encoding="utf-8").count(m.old)
        if count != 1:
            problems.append(f"{m.name}: old text found {count} times in {m.path} (must be exactly once): {m.old!r}")
        if m.old == m.new:
            problems.append(f"{m.name}: new text equals old text")
        m.tests  # noqa: B018 - raises if the module has no test files
    return problems


def _ignore(directory, names):
    return [n for n in names if n in SKIP or n.endswith(".egg-info")]


def make_pristine(scratch: Path, head: bool = False) -> Path:
    """The unmutated tree every mutant starts from: a copy of the working tree, or (head=True) of the last
    commit (`git archive HEAD`, read-only), so that edits in progress elsewhere do not enter the run."""
    tree = scratch / "pristine"
    if not head:
        shutil.copytree(ROOT, tree, ignore=_ignore, symlinks=True)
        return tree
    tree.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "HEAD"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    for name in SKIP:
        shutil.rmtree(tree / name, ignore_errors=True)
    return tree


def make_tree(pristine: Path, dest: Path, mutant: Mutant | None) -> Path:
    """A fresh copy of the pristine tree with `mutant` applied (never touches the working tree)."""
    shutil.copytree(pristine, dest, symlinks=True)
    if mutant is not None:
        target = dest / mutant.path
        text = target.read_text(encoding="utf-8")
        assert text.count(mutant.old) == 1, mutant.name
        target.write_text(text.replace(mutant.old, mutant.new), encoding="utf-8")
    link = dest / "diagnose" / "kernels"
    if not link.exists():
        link.symlink_to(Path("..") / "kernels", target_is_directory=True)
    return dest


def env_for(tree: Path, jobs: int) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(tree) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    threads = str(max(1, (os.cpu_count() or 1) // max(1, jobs)))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(var, threads)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


def check_imports(tree: Path, jobs: int) -> None:
    """The scratch tree, not the working tree, is what the tests import."""
    code = "import diagnose, diagnose.kernels; print(diagnose.__file__); print(diagnose.kernels.__file__)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tree, env=env_for(tree, jobs), capture_output=True, text=True, timeout=300
    )
    paths = out.stdout.split()
    inside = len(paths) == 2 and all(Path(p).resolve().is_relative_to(tree.resolve()) for p in paths)
    if out.returncode != 0 or not inside:
        raise SystemExit(
            f"mutants: the scratch copy {tree} is not what gets imported (got {paths or out.stderr.strip()!r}); "
            "aborting so that no mutant is tested against the working tree"
        )


def run_pytest(tree: Path, files, timeout: float, jobs: int, stop_first: bool = True):
    """(status, seconds, first failing test or '') for pytest on `files` inside `tree`."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", DESELECT]
    if stop_first:
        cmd.append("-x")
    cmd += ["--basetemp", str(tree / ".pytest-tmp"), *files]
    t0 = time.monotonic()
    try:
        out = subprocess.run(cmd, cwd=tree, env=env_for(tree, jobs), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", time.monotonic() - t0, "", ""
    dt = time.monotonic() - t0
    log = out.stdout + out.stderr
    failed = re.findall(r"^(?:FAILED|ERROR) (.+?)(?: - .*)?$", log, flags=re.M)
    status = {0: "survived", 1: "killed", 2: "killed"}.get(out.returncode, f"error (pytest exit {out.returncode})")
    return status, dt, failed[0] if failed else "", log


def report_rot(problems) -> int:
    """Print the problems of the mutant list; 2 if there are any."""
    if problems:
        print("mutants: the mutant list has rotted (fix the old texts to match the code):", file=sys.stderr)
        for p in problems:
            print("  " + p, file=sys.stderr)
    return 2 if problems else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--jobs", type=int, default=2, help="mutants run at once (default 2)")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per mutant (default 600)")
    ap.add_argument("--only", nargs="+", metavar="NAME", help="run only these mutants")
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    ap.add_argument("--check", action="store_true", help="only check that every old text is found exactly once")
    ap.add_argument("--head", action="store_true", help="mutate the last commit instead of the working tree")
    ap.add_argument("--no-baseline", action="store_true", help="skip the unmutated run (development only)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch trees (and print where)")
    args = ap.parse_args(argv)

    mutants = MUTANTS
    if args.only:
        unknown = set(args.only) - {m.name for m in MUTANTS}
        if unknown:
            print(f"mutants: unknown name(s): {', '.join(sorted(unknown))}", file=sys.stderr)
            return 2
        mutants = [m for m in MUTANTS if m.name in args.only]
    if args.list:
        for m in mutants:
            print(f"{m.name:48s} {m.path:34s} {' '.join(Path(t).name for t in m.tests)}\n    {m.bug}")
        return 0
    if args.check and not args.head:
        if report_rot(check_mutants(MUTANTS)):
            return 2
        print(f"mutants: all {len(MUTANTS)} old texts found exactly once")
        return 0

    start = time.monotonic()
    scratch = Path(tempfile.mkdtemp(prefix="diagnose-mutants-"))
    try:
        pristine = make_pristine(scratch, args.head)
        if report_rot(check_mutants(MUTANTS, pristine)):
            return 2
        if args.check:
            print(f"mutants: all {len(MUTANTS)} old texts found exactly once in HEAD")
            return 0
        base = make_tree(pristine, scratch / "baseline", None)
        check_imports(base, args.jobs)
        if not args.no_baseline:
            status, dt, first, log = run_pytest(base, FAST, max(args.timeout, 1800.0), 1, stop_first=False)
            if status != "survived":
                print(log[-4000:], file=sys.stderr)
                what = "tests fail" if status == "killed" else status
                print(
                    f"mutants: the UNMUTATED baseline does not pass ({what}, first failure {first or '-'}); "
                    "fix the tests or the environment first: no mutant was run",
                    file=sys.stderr,
                )
                return 2
            print(f"baseline: the fast tests pass on the unmutated copy ({dt:.0f}s)", flush=True)
        results: dict[str, tuple] = {}
        lock = threading.Lock()

        def one(i_m):
            i, m = i_m
            tree = make_tree(pristine, scratch / f"m{i:03d}", m)
            status, dt, first, _ = run_pytest(tree, m.tests, args.timeout, args.jobs)
            if not args.keep:
                shutil.rmtree(tree, ignore_errors=True)
            with lock:
                results[m.name] = (status, dt, first)
                print(f"[{len(results):2d}/{len(mutants)}] {status:9s} {m.name:48s} {dt:6.1f}s  {first}", flush=True)

        with cf.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            list(pool.map(one, enumerate(mutants)))
    finally:
        if args.keep:
            print(f"mutants: scratch trees kept in {scratch}", file=sys.stderr)
        else:
            shutil.rmtree(scratch, ignore_errors=True)

    killed = [m.name for m in mutants if results[m.name][0] == "killed"]
    survivors = [m.name for m in mutants if results[m.name][0] != "killed"]
    errors = [n for n in survivors if results[n][0].startswith("error")]
    print(f"mutants: {len(killed)}/{len(mutants)} killed in {time.monotonic() - start:.0f}s", flush=True)
    for n in survivors:
        print(f"  survivor: {n} ({results[n][0]})", flush=True)
    print(json.dumps({"killed": len(killed), "total": len(mutants), "survivors": survivors}), flush=True)
    if errors:
        return 2
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
