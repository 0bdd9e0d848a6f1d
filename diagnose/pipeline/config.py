"""The run configuration: defaults < TOML file < command-line flags, validated up front, saved as config.toml.

Everything that changes a number is in here, so a run directory's config.toml repeats the run exactly, and
a rerun into the same directory with a different config is refused rather than silently mixed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..errors import DiagnoseError
from ..estimate import EstimateConfig
from ..estimate.budget import ALLOCATIONS, BUDGET_UNITS, Budget
from ..estimate.nodes import STRATEGIES

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

DEFAULT_TEACHERS = ["self:answer", "self:solution", "self:contrastive"]
DEFAULT_OBJECTIVES = ["rkl", "fkl", "rkl_sampled", "jsd:beta=0.5", "rkl_topk"]
TEACHER_DTYPES = ("auto", "float32", "bfloat16", "float16")
# Where and how the questions are worked on (Ray workers, job-array shards, cache location): they change no
# number, so a run started one way may be resumed another; they are not saved in config.toml either.
EXECUTION = ("workers", "ray_address", "gpus_per_worker", "teacher_placement", "shard", "cache_dir")
# Keys that do not change any number (where the output goes, how it is shown): excluded from the identity.
NON_IDENTITY = {"out", "progress", "in_flight", *EXECUTION}
CONFIG_FILE = "config.toml"  # a run directory's saved configuration
TEACHER_PLACEMENTS = ("colocate", "pool")
# EstimateConfig fields whose RunConfig key has another name (every other shared name is copied as is).
RENAMED = {"rollouts_per_question": "rollouts", "k_student": "top_k", "k_teacher": "top_k"}


def estimate_default(name: str):
    """EstimateConfig's default for field `name`: the one default of a setting RunConfig shares with it."""
    return next(f.default for f in fields(EstimateConfig) if f.name == name)
# Keys with a fixed set of values, checked when the config is built.
CHOICES = {
    "nodes": STRATEGIES,
    "allocation": ALLOCATIONS,
    "budget_unit": BUDGET_UNITS,
    "teacher_placement": TEACHER_PLACEMENTS,
    "teacher_dtype": TEACHER_DTYPES,
}
# Keys added after runs were already being made: at their defaults they stay out of the identity, so the digest
# (and with it resuming, and cache folders under --cache-dir) of a run made before they existed is unchanged.
LATER_KEYS = (
    "top_p", "budget_unit", "allocation", "target_half_width", "level", "n_boot", "teacher_temperature", "frontier"
)
# Questions processed at once when `in_flight` is 0 (auto): enough rows per engine call to keep it busy.
AUTO_IN_FLIGHT = {"hf": 8, "vllm": 32}


def setting(default, help: str, **extra):
    """A config field (RunConfig, ValidateConfig): its default and the help text its command-line flag shows
    (the CLI options are generated from these fields, so a key and its flag cannot drift apart). `flag=`: the
    flag's name where it differs from the key; `cli=False`: no flag; `path=True`: the flag takes a path."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **extra})
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class RunConfig:
    """Every setting of a run: what it diagnoses, how the estimate is made (the EstimateConfig it builds), and
    how it executes (EXECUTION keys, which change no number)."""

    student: str = setting("embedded", "Student: `embedded` (default), a Hugging Face id or a path.")
    task: str = setting("arithmetic", "Task spec, e.g. arithmetic, countdown, gsm8k, math, gsm8k:path=test.jsonl.")
    teachers: list[str] = setting(
        DEFAULT_TEACHERS,
        "Teacher spec (repeatable): self:answer, self:solution, self:summary, self:contrastive, "
        "self:system=<text>, self:template=<path>, model=<id-or-path>[:<context>].",
        flag="teacher",
    )
    objectives: list[str] = setting(
        DEFAULT_OBJECTIVES,
        "Objective (repeatable), with parameters like jsd:beta=0.5 or rkl_topk:k=8,support=union.",
        flag="objective",
    )
    questions: int = setting(4, "Number of questions.")
    rollouts: int = setting(estimate_default("rollouts_per_question"), "Student rollouts per question.")
    continuations: int = setting(
        estimate_default("continuations"), "Continuations per candidate token (the first round, when adaptive)."
    )
    top_k: int = setting(
        estimate_default("k_student"), "Candidates: student top-k ∪ each teacher's top-k ∪ observed token."
    )
    budget: int = setting(
        int(estimate_default("budget")),
        "Continuations (or tokens, see --budget-unit) per question, across its selected nodes.",
    )
    budget_unit: str = setting(estimate_default("budget_unit"), "What --budget counts: continuations or tokens.")
    nodes: str = setting(
        estimate_default("nodes"), "Node selection: windows (exponential widths), windows_end, uniform, every, refine."
    )
    allocation: str = setting(
        estimate_default("allocation"),
        "Continuations per candidate: uniform, or adaptive (a 2-per-candidate pilot plans the rest, which goes "
        "where it sharpens g* most; Q-hat uses only the planned continuations, so it stays unbiased).",
    )
    target_half_width: float = setting(
        0.0,
        "Adaptive allocation: plan no more for a node once its predicted interval half-width is below this "
        "(0: spend the budget).",
    )
    frontier: float = setting(
        1.0,
        "Share of the questions whose rollouts all agree (all correct or all wrong: g* is 0 at most of their "
        "tokens) that are estimated, weighted up to stand for the rest, so every figure keeps its meaning; the "
        "budget they free goes to the questions with both verdicts. 1 (default): every question at --budget.",
    )
    engine: str = setting("hf", "Engine: hf, vllm or exact.")
    teacher_dtype: str = setting(
        "auto",
        "Precision of external teachers: auto (the student's; default), float32, bfloat16, float16. A coarser "
        "teacher differs from the student by rounding; rows where that is all are 'no signal'.",
    )
    seed: int = setting(estimate_default("seed"), "Random seed (same seed, same tables).")
    temperature: float = setting(
        estimate_default("temperature"), "Sampling temperature of the student (rollouts and continuations)."
    )
    teacher_temperature: float = setting(
        0.0,
        "Temperature the teacher's logits are divided by before the objectives (0: the sampling temperature, "
        "as TRL's and ms-swift's GKD do; set it only if your trainer scores the teacher otherwise).",
    )
    top_p: float = setting(estimate_default("top_p"), "Nucleus sampling of the student (1: off).")
    max_new_tokens: int = setting(
        estimate_default("max_new_tokens"), "Response length limit (rollouts and continuations)."
    )
    level: float = setting(estimate_default("level"), "Confidence level of the per-node intervals.")
    n_boot: int = setting(estimate_default("n_boot"), "Bootstrap replicates of the per-node intervals.")
    param_space: bool = setting(False, "Also score cos(J^T g*, J^T d) on the student's last block (hf; slower).")
    # Questions in flight at once (their engine calls merged); 0 = auto (per engine). Execution only: it
    # changes no number, so a run may be resumed with another value.
    in_flight: int = setting(
        0,
        "Questions worked on at once, their engine calls merged (0: auto, 8 on hf, 32 on vllm). Changes no "
        "number: a run may be resumed with another value.",
    )
    # Scale-out (execution only, see EXECUTION).
    workers: int = setting(
        0,
        "Ray workers, each with its own model copy (0: this process, no Ray). With --ray-address 0 means one per "
        "GPU of the cluster. Execution only: a run may be resumed with other scale-out settings.",
    )
    ray_address: str = setting("", "Join a Ray cluster (auto, or host:port) instead of starting a local one.")
    gpus_per_worker: float = setting(
        1.0, "GPUs each Ray worker holds (default 1; more runs vLLM tensor-parallel inside the worker)."
    )
    teacher_placement: str = setting(
        "colocate",
        "External teachers on Ray: colocate (a copy in every worker; default) or pool (one server per teacher "
        "model that the workers call).",
    )
    shard: str = setting(
        "",
        "i/N: work on the i-th of N disjoint slices of the questions (0 <= i < N), e.g. one per Slurm array task "
        "into the same --out; the last to finish writes the report (or run `diagnose report`).",
    )
    cache_dir: str = setting(
        "",
        "Continuation caches (SQLite; keep off network file systems). Default: OUT/cache, or each Ray worker's "
        "local temp folder.",
        path=True,
    )
    out: str = setting("reports/run", "Run directory (rerun into it to resume).", path=True)
    progress: bool = setting(True, "Progress bars (the CLI's --quiet turns them off).", cli=False)

    # ---- construction ----
    @classmethod
    def load(cls, run_dir: str | Path) -> RunConfig:
        """The config a run directory was made with (its config.toml; keys it lacks take their defaults, which
        are what runs made before those keys did). One DiagnoseError line when there is none or it cannot be
        read."""
        path = Path(run_dir) / CONFIG_FILE
        if not path.is_file():
            raise DiagnoseError(f"{run_dir} has no {CONFIG_FILE}: is it a diagnose run directory?")
        try:
            return cls(**load_toml(path))
        except (TypeError, DiagnoseError) as err:
            raise DiagnoseError(f"{path} is unreadable by this version of diagnose: {err}") from None

    @classmethod
    def from_sources(cls, toml_path: str | Path | None = None, overrides: dict[str, Any] | None = None):
        return build_config(cls, toml_path, overrides, "config")

    def validate(self) -> None:
        """Cheap checks that need no model: numbers in range, names registered, specs parseable."""
        from .. import engines, objectives
        from ..tasks import get as get_task
        from ..teachers import parse_teacher

        if self.budget <= 0:
            raise DiagnoseError(f"--budget must be > 0, got {self.budget}")
        if self.in_flight < 0:
            raise DiagnoseError(f"--in-flight must be >= 0 (0: auto), got {self.in_flight}")
        for name in ("rollouts", "continuations", "questions", "top_k", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise DiagnoseError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        budget = Budget(self.estimate_config(), len(self.teachers))  # the estimator's own cost model
        node_cost = budget.first_round(budget.nominal_candidates)
        if budget.node_budget < node_cost:
            spend = "--budget" if self.allocation == "uniform" else (
                f"the {budget.node_budget:g} of it adaptive's node selection spends (the rest is its reserve)"
            )
            raise DiagnoseError(
                f"--budget {self.budget} buys no node: one node costs up to {node_cost} continuations "
                f"((1 + top_k + top_k x {len(self.teachers)} teachers) x {budget.per_candidate} continuations), "
                f"more than {spend}; raise --budget or lower --top-k / --continuations"
            )
        if self.workers < 0:
            raise DiagnoseError(f"--workers must be >= 0 (0: no Ray, this process), got {self.workers}")
        if self.gpus_per_worker < 0:
            raise DiagnoseError(f"--gpus-per-worker must be >= 0, got {self.gpus_per_worker}")
        self.shard_slice()
        if self.shard and self.uses_ray():
            raise DiagnoseError("--shard splits a run across separate processes; it cannot be combined with Ray "
                                "(--workers / --ray-address), which splits it by itself")
        if not self.temperature > 0:
            raise DiagnoseError(f"--temperature must be > 0, got {self.temperature}")
        if not self.teacher_temperature >= 0:
            raise DiagnoseError(
                f"--teacher-temperature must be > 0 (or 0: the sampling temperature), got {self.teacher_temperature}"
            )
        if not 0 < self.top_p <= 1:
            raise DiagnoseError(f"--top-p must lie in (0, 1], got {self.top_p}")
        if not 0 < self.level < 1:
            raise DiagnoseError(f"--level must lie in (0, 1), got {self.level}")
        if not 0 < self.frontier <= 1:
            raise DiagnoseError(
                f"--frontier must lie in (0, 1] (the least chance a question is estimated), got {self.frontier}"
            )
        if self.n_boot < 1 or self.target_half_width < 0:
            raise DiagnoseError("--n-boot must be >= 1 and --target-half-width >= 0")
        for name, choices in CHOICES.items():
            if getattr(self, name) not in choices:
                raise DiagnoseError(
                    f"--{name.replace('_', '-')} must be one of {', '.join(choices)}, got {getattr(self, name)!r}"
                )
        engines.check(self.engine)  # an unknown engine: one line listing the registered ones
        for spec in self.objectives:
            try:
                objectives.parse(spec)
            except (KeyError, ValueError) as err:
                raise DiagnoseError(str(err).strip("'\"")) from None
        for spec in self.teachers:
            parse_teacher(spec)
        get_task(self.task)
        if not self.teachers:
            raise DiagnoseError("at least one --teacher is needed")
        if not self.objectives:
            raise DiagnoseError("at least one --objective is needed")

    def estimate_config(self, stop=()):
        """The estimator settings this run uses (stop strings come from the task)."""
        from ..estimate import EstimateConfig

        shared = {f.name for f in fields(EstimateConfig)} & {f.name for f in fields(self)}
        values = {name: getattr(self, name) for name in shared}
        values.update({estimate: getattr(self, run) for estimate, run in RENAMED.items()})
        values["budget"] = float(self.budget)
        values["target_half_width"] = self.target_half_width or None
        values["teacher_temperature"] = self.teacher_temperature or None
        return EstimateConfig(**values, stop=tuple(stop))

    def questions_in_flight(self) -> int:
        """How many questions run at once: `in_flight`, or the engine's automatic choice."""
        return self.in_flight or AUTO_IN_FLIGHT.get(self.engine, 4)

    def uses_ray(self) -> bool:
        """Whether the questions go to Ray workers (`workers` > 0 or a cluster address)."""
        return self.workers > 0 or bool(self.ray_address)

    def shard_slice(self) -> tuple[int, int] | None:
        """(i, N) from `shard` = "i/N" (0 <= i < N): this process takes the questions whose index is i mod N."""
        if not self.shard:
            return None
        i, sep, n = str(self.shard).partition("/")
        try:
            i, n = int(i), int(n)
        except ValueError:
            i, n = -1, 0
        if not sep or n < 1 or not 0 <= i < n:
            raise DiagnoseError(
                f"--shard must be i/N with 0 <= i < N (e.g. 0/4 .. 3/4 for a 4-task job array), got {self.shard!r}"
            )
        return i, n

    # ---- identity and persistence ----
    def identity(self) -> dict[str, Any]:
        defaults = {f.name: f.default for f in fields(self)}
        out = {
            k: v
            for k, v in asdict(self).items()
            if k not in NON_IDENTITY and not (k in LATER_KEYS and v == defaults[k])
        }
        if self.temperature != 1.0:
            # Runs made before teachers were scored at the sampling temperature scored them untempered; at
            # T != 1 the scoring temperature is part of the identity, so such a run is not resumed and mixed.
            out["teacher_temperature"] = self.teacher_temperature or self.temperature
        return out

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:16]

    def to_toml(self) -> str:
        lines = ["# diagnose run configuration (repeat with: diagnose run --config config.toml)"]
        for key, value in asdict(self).items():
            if key in EXECUTION:
                continue
            lines.append(f"{key} = {_toml_value(value)}")
        return "\n".join(lines) + "\n"


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))  # a JSON string literal is a valid TOML basic string


def build_config(cls, toml_path: str | Path | None, overrides: dict[str, Any] | None, what: str):
    """A config dataclass from a TOML file, then the overrides that are not None (flags win), validated:
    an unknown key is one error line naming it (`what` says whose keys, e.g. "config", "validate")."""
    values: dict[str, Any] = {}
    if toml_path is not None:
        values.update(load_toml(toml_path))
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key] = value
    unknown = set(values) - {f.name for f in fields(cls)}
    if unknown:
        raise DiagnoseError(f"unknown {what} keys: {', '.join(sorted(unknown))}")
    cfg = cls(**values)
    cfg.validate()
    return cfg


def load_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise DiagnoseError(f"config file not found: {path}")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise DiagnoseError(f"malformed TOML in {path}: {err}") from None
    # [[teacher]] tables and singular keys are accepted as in the CLI
    if "teacher" in data:
        data["teachers"] = [t if isinstance(t, str) else _teacher_table(t) for t in _as_list(data.pop("teacher"))]
    if "objective" in data:
        data["objectives"] = _as_list(data.pop("objective"))
    return data


def _as_list(value):
    return value if isinstance(value, list) else [value]


def _teacher_table(table: dict) -> str:
    from ..teachers import parse_teacher

    return parse_teacher(table).label
