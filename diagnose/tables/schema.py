"""The run tables' schemas: every column's type, nullability, documentation, keys and value ranges.

Every layer that writes or reads a run table imports its layout from here (one row layout for all); the
difficulty bands and the `teacher|objective` config label are part of that layout.
"""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa

from ..errors import DiagnoseError

SCHEMA_VERSION = 1
META_KEY = b"diagnose"  # schema-metadata key holding the run metadata as JSON
BANDS = ("hard", "medium", "easy")
DEFAULT_BAND_EDGES = (1 / 3, 2 / 3)
PROXIES = ("kl_pq", "kl_qp", "js", "tv", "cos_pq", "entropy_student", "entropy_teacher")
METRICS = ("cos_full", "cos_support")
SHARD_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


def _f(name, type_, doc, nullable=False):
    return pa.field(name, type_, nullable=nullable, metadata={"doc": doc})


_S, _I, _F, _D, _B = pa.string(), pa.int32(), pa.float32(), pa.float64(), pa.bool_()
_ROLLOUT_KEY = [
    _f("question_id", _S, "Question identifier (stable across runs of the same task)."),
    _f("rollout_idx", _I, "Index of the student rollout for this question (0-based)."),
]
_NODE_KEY = _ROLLOUT_KEY + [
    _f(
        "position",
        _I,
        "Index of the node's token in the response (`token_ids[position]`); the node is the "
        "prefix prompt + response[:position].",
    ),
]

SCHEMAS: dict[str, pa.Schema] = {
    "rollouts": pa.schema(
        _ROLLOUT_KEY
        + [
            _f("prompt", _S, "Prompt text given to the student (chat template applied)."),
            _f("response", _S, "The student's sampled response text."),
            _f("token_ids", pa.list_(_I), "Response token ids."),
            _f(
                "tokens",
                pa.list_(_S),
                "Response token strings (decoded one by one; same length as token_ids).",
            ),
            _f("student_logprobs", pa.list_(_F), "Student log-probability of each sampled response token."),
            _f("n_tokens", _I, "Number of response tokens."),
            _f("correct", _B, "Verifier verdict on the final answer."),
            _f("pass_rate", _F, "Fraction of this question's rollouts that are correct (in [0, 1])."),
            _f("difficulty", _S, "Difficulty band from pass_rate: hard (< 1/3), medium, easy (> 2/3)."),
            _f("reference", _S, "Reference answer, if the task has one.", nullable=True),
            _f("extracted_answer", _S, "Answer the verifier extracted from the response.", nullable=True),
        ]
    ),
    "nodes": pa.schema(
        _NODE_KEY
        + [
            _f("token_id", _I, "Observed (sampled) token id at the node."),
            _f("token", _S, "Observed token string."),
            _f("p_token", _F, "Student probability of the observed token."),
            _f("entropy_student", _F, "Student entropy at the node (nats, full vocabulary)."),
            _f(
                "v_hat",
                _F,
                "Estimated value V-hat = sum_C p Q-hat / p(C) (success probability from the prefix).",
            ),
            _f("n_candidates", _I, "Size of the candidate set C."),
            _f("n_continuations", _I, "Continuations spent at this node (sum of n over candidates)."),
            _f("degenerate", _B, "All Q-hat equal on C: g* = 0 and every cosine at this node is undefined."),
            _f(
                "weight",
                _D,
                "Tokens this node stands for: m / c for c nodes chosen among the m positions of its stratum "
                "(rollout x window), times the window's tokens over the tokens of its strata that have a node "
                "(rollouts of the same question and verdict stand in for those without): 1 / inclusion_prob "
                "times that rescaling; with --frontier < 1, times the question's frontier-plan weight (1 for "
                "a question with both verdicts, about 1 / its inclusion probability for one whose rollouts "
                "agree). Every per-token figure weights nodes by it.",
            ),
            _f(
                "inclusion_prob",
                _D,
                "Probability that node selection picks this position given the count chosen in its stratum: "
                "c / m, in (0, 1] (selection takes a uniformly random subset of each stratum, in tokens too), "
                "times the probability the frontier plan (if any) estimated its question; approximate for `refine`'s "
                "bisection nodes.",
            ),
            _f(
                "negligible",
                _B,
                "Adaptive allocation stopped here because |g*| is confidently below its tolerance: the "
                "cosine rests on a few continuations and is left out of per-token means (pooled figures "
                "keep the node at its small weight).",
            ),
            _f("g_sq", _D, "|g*-hat|^2 (squared norm of the estimated ideal gradient)."),
            _f(
                "g_sq_unbiased",
                _D,
                "|g*|^2 with the binomial noise of Q-hat subtracted (may be <= 0 when noise dominates).",
                nullable=True,
            ),
        ]
    ),
    "candidates": pa.schema(
        _NODE_KEY
        + [
            _f("token_id", _I, "Candidate token id."),
            _f("token", _S, "Candidate token string."),
            _f("p", _F, "Student probability of the candidate."),
            _f("q_hat", _F, "Q-hat: fraction of verified-correct continuations after forcing this token."),
            _f(
                "n",
                _I,
                "Continuations drawn after this token (the original rollout counts for the observed one).",
            ),
            _f("successes", _I, "Verified-correct continuations among n."),
            _f("observed", _B, "This candidate is the token the rollout actually sampled."),
            _f(
                "source",
                _S,
                "Why it is a candidate: student / teacher / observed (joined by '+').",
                nullable=True,
            ),
        ]
    ),
    "alignment": pa.schema(
        _NODE_KEY
        + [
            _f("config", _S, "Configuration label 'teacher|objective' (e.g. 'self:solution|jsd:beta=0.5')."),
            _f("teacher", _S, "Teacher label (model name, or self:<context>)."),
            _f("objective", _S, "Objective label as the registry spells it (e.g. 'jsd:beta=0.5')."),
            _f("cos_full", _F, "cos(g*, d) with d over the whole vocabulary (0 when degenerate)."),
            _f(
                "cos_full_ci_low",
                _F,
                "Lower end of the 95% interval of cos_full (bootstrap over continuations).",
            ),
            _f("cos_full_ci_high", _F, "Upper end of the 95% interval of cos_full."),
            _f("cos_support", _F, "cos(g*, d restricted to the candidate set C)."),
            _f("cos_support_ci_low", _F, "Lower end of the 95% interval of cos_support."),
            _f("cos_support_ci_high", _F, "Upper end of the 95% interval of cos_support."),
            _f(
                "cos_bias_corrected",
                _F,
                "cos_full with |g*|^2 replaced by its noise-corrected estimate; null where "
                "the corrected norm is not positive.",
                nullable=True,
            ),
            _f(
                "cos_support_bias_corrected",
                _F,
                "cos_support with the noise-corrected |g*|^2; null where the corrected norm is not positive.",
                nullable=True,
            ),
            _f("teacher_advantage", _F, "TA = sum_k (q_k - p_k)(Q_k - V)."),
            _f("ta_ci_low", _F, "Lower end of the 95% interval of the teacher advantage."),
            _f("ta_ci_high", _F, "Upper end of the 95% interval of the teacher advantage."),
            _f("q_token", _F, "Teacher probability of the observed token; null without a teacher (GRPO arm).",
               nullable=True),
            _f("kl_pq", _F, "KL(p || q), full vocabulary (nats); null without a teacher.", nullable=True),
            _f("kl_qp", _F, "KL(q || p); null without a teacher.", nullable=True),
            _f("js", _F, "Jensen-Shannon divergence of p and q; null without a teacher.", nullable=True),
            _f("tv", _F, "Total variation distance of p and q; null without a teacher.", nullable=True),
            _f("cos_pq", _F, "Cosine between the probability vectors p and q; null without a teacher.",
               nullable=True),
            _f("entropy_student", _F, "Student entropy (nats); null on the GRPO arm's rows.", nullable=True),
            _f("entropy_teacher", _F, "Teacher entropy (nats); null without a teacher.", nullable=True),
            _f("param_cos", _F, "Parameter-space cosine cos(J^T g*, J^T d), when computed.", nullable=True),
            _f("dot", _D, "<g*, d> (the same on both supports, since g* is zero off C)."),
            _f(
                "dot_half0",
                _D,
                "<g*, d> from the even-numbered continuations of each candidate alone (one half of the evidence, "
                "independent of dot_half1; the headroom chooses on one half and scores on the other); null where "
                "a candidate has none.",
                nullable=True,
            ),
            _f("dot_half1", _D, "<g*, d> from the odd-numbered continuations alone; null where a candidate has none.",
               nullable=True),
            _f("d_sq", _D, "|d|^2 over the whole vocabulary."),
            _f("d_sq_support", _D, "|d restricted to C|^2."),
            _f("weight", _F, "Per-node weight w scaling d (1 unless a weighting scheme is configured)."),
            _f(
                "degenerate",
                _B,
                "Cosine undefined here (g* = 0, d = 0, or no signal): reported as 0 and left out of every mean.",
            ),
            _f(
                "signal_ratio",
                _D,
                "|d| over the rms |d| toward rounding twins of the student's logits (z + u max|z| xi, u the unit "
                "roundoff of the coarser precision): how far the teacher is from the student beyond rounding "
                "(inf for the GRPO reference arm).",
            ),
            _f(
                "no_signal",
                _B,
                "signal_ratio <= 5 (or d = 0): the direction is rounding noise; its cosine is undefined and the "
                "row counts in n_no_signal, never in a mean or ranking.",
            ),
        ]
    ),
    "summary": pa.schema(
        [
            _f("config", _S, "Configuration label 'teacher|objective'."),
            _f("teacher", _S, "Teacher label."),
            _f("objective", _S, "Objective label."),
            _f("metric", _S, "Which per-node cosine is summarised: cos_full or cos_support."),
            _f(
                "rank",
                _I,
                "Rank of the configuration by `mean` within the metric (1 = best); null where `mean` is null "
                "(unresolved: never ranked).",
                nullable=True,
            ),
            _f("n_nodes", _I, "Nodes with a defined per-node cosine (not degenerate, not negligible)."),
            _f("n_degenerate", _I, "Degenerate nodes (g* = 0 or d = 0: cosine undefined)."),
            _f("n_no_signal", _I, "Nodes where the direction is no larger than rounding noise (no_signal)."),
            _f(
                "n_negligible",
                _I,
                "Nodes adaptive allocation stopped as |g*| ~ 0 (kept in `mean`, out of per-token means).",
            ),
            _f(
                "n_effective",
                _F,
                "Kish effective node count, nodes weighted by token weight x noise-corrected |g*|^2.",
                nullable=True,
            ),
            _f(
                "mean",
                _F,
                "Alignment of the configuration: cos(concatenated g*, concatenated unit d) over the tokens of "
                "all rollouts, nodes weighted by the tokens they stand for, |g*|^2 noise-corrected "
                "(estimates E[|g*| cos] / sqrt(E|g*|^2 E[d != 0]) per token; consistent at any number of "
                "continuations). Null when the noise leaves no signal.",
                nullable=True,
            ),
            _f(
                "ci_low",
                _F,
                "Lower end of the 95% interval of `mean` (bootstrap over questions, each with all its rollouts).",
                nullable=True,
            ),
            _f("ci_high", _F, "Upper end of the 95% interval of `mean`.", nullable=True),
            _f(
                "mean_per_token",
                _F,
                "Token-weighted mean of the per-node cosine estimates (descriptive: noise shrinks it).",
                nullable=True,
            ),
            _f("mean_per_token_ci_low", _F, "Lower end of its 95% interval.", nullable=True),
            _f("mean_per_token_ci_high", _F, "Upper end of its 95% interval.", nullable=True),
        ]
        + [
            field
            for split in ("correct", "incorrect")
            for field in (
                _f(
                    f"mean_per_token_{split}",
                    _F,
                    f"The paper-style figure: mean_per_token over the nodes of {split} rollouts (raw per-node "
                    "cosines; noise shrinks it more where |g*| is small, so compare mean_" + split + ").",
                    nullable=True,
                ),
                _f(f"mean_per_token_ci_low_{split}", _F, "Lower end of its 95% interval.", nullable=True),
                _f(f"mean_per_token_ci_high_{split}", _F, "Upper end of its 95% interval.", nullable=True),
            )
        ]
        + [
            _f(
                "diff_per_token",
                _F,
                "mean_per_token_correct - mean_per_token_incorrect: the raw split, not noise-consistent (compare "
                "diff_correct_incorrect).",
                nullable=True,
            ),
            _f("diff_per_token_ci_low", _F, "Lower end of the 95% interval of diff_per_token.", nullable=True),
            _f("diff_per_token_ci_high", _F, "Upper end of its 95% interval.", nullable=True),
            _f("frac_positive", _F, "Token-weighted share of nodes with positive alignment.", nullable=True),
            _f(
                "mean_bias_corrected",
                _F,
                "Token-weighted mean of the bias-corrected per-node cosine where it is resolved.",
                nullable=True,
            ),
            _f(
                "diff_correct_incorrect",
                _F,
                "mean_correct - mean_incorrect (noise-consistent, so not an artefact of |g*| differing).",
                nullable=True,
            ),
            _f("diff_ci_low", _F, "Lower end of the 95% interval of the difference.", nullable=True),
            _f("diff_ci_high", _F, "Upper end of the 95% interval of the difference.", nullable=True),
        ]
        + [
            field
            for split in ("correct", "incorrect") + BANDS
            for field in (
                _f(
                    f"mean_{split}",
                    _F,
                    f"Alignment (as `mean`) over the tokens of {split} rollouts."
                    if split in ("correct", "incorrect")
                    else f"Alignment (as `mean`) over the tokens of questions in the {split} band.",
                    nullable=True,
                ),
                _f(f"ci_low_{split}", _F, f"Lower end of the interval of mean_{split}.", nullable=True),
                _f(f"ci_high_{split}", _F, f"Upper end of the interval of mean_{split}.", nullable=True),
                _f(f"n_{split}", _I, f"Nodes with a defined cosine behind mean_{split}."),
            )
        ]
        + [
            _f(
                "rollout_cos",
                _F,
                "Unweighted mean over rollouts of the raw rollout-level cosine (concatenated g* vs w*d): a "
                "per-rollout, not a per-token, figure; descriptive.",
                nullable=True,
            ),
            _f(
                "rollout_cos_ci_low",
                _F,
                "Lower end of the interval of rollout_cos (bootstrap over questions).",
                nullable=True,
            ),
            _f("rollout_cos_ci_high", _F, "Upper end of the interval of rollout_cos.", nullable=True),
            _f("n_rollouts", _I, "Rollouts with a defined rollout-level cosine."),
            _f("teacher_advantage", _F, "Token-weighted mean teacher advantage over all nodes.", nullable=True),
            _f("ta_ci_low", _F, "Lower end of its interval.", nullable=True),
            _f("ta_ci_high", _F, "Upper end of its interval.", nullable=True),
        ]
        + [
            _f(
                f"rho_{name}",
                _F,
                f"Spearman rank correlation of {name} with the alignment, over this configuration's nodes.",
                nullable=True,
            )
            for name in PROXIES + ("teacher_advantage",)
        ]
    ),
}

# `diagnose validate`: short on-policy trainings of each configuration (and reference arms) from the same
# starting weights, scored by the change in held-out pass@1 (diagnose/validate/stats.py names each estimand).
_ARM = [
    _f("arm", _S, "Arm: a configuration label (teacher|objective) of the run, or ideal, grpo, control."),
    _f("kind", _S, "config, ideal (trains on estimated g*), grpo (grpo_ref), control (shuffled teacher)."),
    _f("teacher", _S, "Teacher of the arm (control: the teacher whose vocabulary is shuffled); empty if none."),
    _f("objective", _S, "Objective of the arm; empty for ideal."),
]
_ALIGN = [
    _f("alignment", _F, "The run's alignment of this arm (summary `mean`): configurations, and grpo when the run "
       "scored grpo_ref; NaN for the other reference arms.", nullable=True),
    _f("alignment_ci_low", _F, "Lower end of the run's interval of `alignment`.", nullable=True),
    _f("alignment_ci_high", _F, "Upper end of the run's interval of `alignment`.", nullable=True),
]


def _interval_fields(name: str, doc: str) -> list:
    return [
        _f(name, _F, doc),
        _f(f"{name}_ci_low", _F, f"Lower end of the interval of {name} (bootstrap over training seeds and over "
           "samples within each held-out question; the held-out set is fixed).", nullable=True),
        _f(f"{name}_ci_high", _F, f"Upper end of the interval of {name}.", nullable=True),
    ]


SCHEMAS.update(
    {
        "validation_samples": pa.schema(
            [
                _f("arm", _S, "Arm label, or `start` for the starting weights."),
                _f("seed", _I, "Training seed (-1 for `start`)."),
                _f("question_id", _S, "Held-out question."),
                _f("sample", _I, "Sample index (the same index draws the same random numbers in every arm)."),
                _f("correct", _B, "Whether this sample's response was verified correct."),
            ]
        ),
        "validation": pa.schema(
            _ARM
            + [
                _f("seed", _I, "Training seed."),
                _f("steps", _I, "Optimizer steps."),
                _f("lr", _D, "AdamW learning rate."),
            ]
            + _interval_fields("pass_before", "Held-out pass@1 at the starting weights.")
            + _interval_fields("pass_after", "Held-out pass@1 after training with this seed.")
            + _interval_fields("gain", "pass_after - pass_before (paired: the same draws before and after).")
            + _ALIGN
            + [
                _f("train_pass_rate", _F, "Fraction of the training rollouts that were correct.", nullable=True),
                _f("positions_trained", _I, "Response tokens that received a direction, over all steps."),
                _f("generated_tokens", _I, "Tokens of the training rollouts."),
                _f("continuation_tokens", _I, "Tokens of targeted continuations (the ideal arm)."),
                _f("teacher_tokens", _I, "Tokens the teacher scored."),
                _f("weight_change", _F, "L2 distance of the trained weights from the start."),
                _f("wall_time_s", _F, "Seconds for training and evaluation."),
            ]
        ),
        "validation_arms": pa.schema(
            _ARM
            + [
                _f("seeds", _I, "Training seeds averaged."),
                _f("steps", _I, "Optimizer steps."),
                _f("pass_before", _F, "Held-out pass@1 at the starting weights."),
            ]
            + _interval_fields("pass_after", "Held-out pass@1 after training, mean over seeds.")
            + _interval_fields("gain", "Expected change in held-out pass@1 after training, mean over seeds.")
            + [_f("verdict", _S, "gain / loss when the interval of `gain` excludes 0, else `within noise`.")]
            + _ALIGN
        ),
    }
)

KEYS: dict[str, list[str]] = {
    "rollouts": ["question_id", "rollout_idx"],
    "nodes": ["question_id", "rollout_idx", "position"],
    "candidates": ["question_id", "rollout_idx", "position", "token_id"],
    "alignment": ["question_id", "rollout_idx", "position", "config"],
    "summary": ["config", "metric"],
    "validation_samples": ["arm", "seed", "question_id", "sample"],
    "validation": ["arm", "seed"],
    "validation_arms": ["arm"],
}

# Value ranges checked on write (a tolerance absorbs float32 rounding).
_UNIT = (0.0, 1.0)
_COS = (-1.0, 1.0)
RANGES: dict[str, dict[str, tuple[float, float]]] = {
    "rollouts": {"pass_rate": _UNIT},
    "nodes": {"p_token": _UNIT, "v_hat": _UNIT},
    "candidates": {"p": _UNIT, "q_hat": _UNIT},
    "alignment": {
        c: _COS
        for c in (
            "cos_full",
            "cos_full_ci_low",
            "cos_full_ci_high",
            "cos_support",
            "cos_support_ci_low",
            "cos_support_ci_high",
            "cos_bias_corrected",
            "cos_support_bias_corrected",
            "cos_pq",
            "param_cos",
        )
    }
    | {"q_token": _UNIT, "tv": _UNIT},
    "summary": {c: _COS for c in ("mean", "ci_low", "ci_high", "mean_per_token")},
    "validation": {c: _UNIT for c in ("pass_before", "pass_after")} | {"gain": _COS},
    "validation_arms": {c: _UNIT for c in ("pass_before", "pass_after")} | {"gain": _COS},
}
VALUE_CHOICES = {("rollouts", "difficulty"): BANDS, ("summary", "metric"): METRICS}


def schema(name: str) -> pa.Schema:
    if name not in SCHEMAS:
        raise DiagnoseError(f"unknown table {name!r}; tables are: {', '.join(SCHEMAS)}")
    return SCHEMAS[name]


def difficulty_band(pass_rate, edges=DEFAULT_BAND_EDGES):
    """Band of a question's pass rate: 'hard' below edges[0], 'easy' above edges[1], else 'medium'."""
    r = np.asarray(pass_rate, dtype=float)
    out = np.where(r < edges[0], "hard", np.where(r > edges[1], "easy", "medium"))
    return out.item() if out.ndim == 0 else out


def config_label(teacher: str, objective: str) -> str:
    """The 'teacher|objective' label used as the `config` key."""
    if "|" in teacher or "|" in objective:
        raise DiagnoseError(f"'|' is reserved as the separator of config labels: {teacher!r}, {objective!r}")
    return f"{teacher}|{objective}"


# ---------------------------------------------------------------- documentation


def describe_markdown() -> str:
    """Markdown tables of every schema's columns (docs/tables.md embeds this text verbatim)."""
    out = []
    for name, sch in SCHEMAS.items():
        out.append(f"### `{name}`\n\nKey: {', '.join(f'`{k}`' for k in KEYS[name])}\n")
        out.append("| column | type | null | meaning |\n|---|---|---|---|")
        for field in sch:
            doc = field.metadata[b"doc"].decode().replace("|", "\\|")
            out.append(f"| `{field.name}` | {field.type} | {'yes' if field.nullable else ''} | {doc} |")
        out.append("")
    return "\n".join(out)
