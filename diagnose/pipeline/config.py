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
TEACHER_PLACEMENTS = ("colocate", "pool")
# Questions processed at once when `in_flight` is 0 (auto): enough rows per engine call to keep it busy.
AUTO_IN_FLIGHT = {"hf": 8, "vllm": 32}


@dataclass
class RunConfig:
    student: str = "embedded"
    task: str = "arithmetic"
    teachers: list[str] = field(default_factory=lambda: list(DEFAULT_TEACHERS))
    objectives: list[str] = field(default_factory=lambda: list(DEFAULT_OBJECTIVES))
    questions: int = 4
    rollouts: int = 4  # student rollouts per question
    continuations: int = 2  # per candidate
    top_k: int = 2  # candidates: student top-k ∪ each teacher's top-k ∪ observed token
    budget: int = 40  # continuations per question, across the nodes of its rollouts
    nodes: str = "windows"  # node selection: windows (exponential widths), windows_end, uniform, every, refine
    engine: str = "hf"
    teacher_dtype: str = "auto"  # external teachers' precision; auto = the student's (see estimate/signal.py)
    seed: int = 0
    temperature: float = 1.0
    max_new_tokens: int = 64
    param_space: bool = False
    # Questions in flight at once (their engine calls merged); 0 = auto (per engine). Execution only: it
    # changes no number, so a run may be resumed with another value.
    in_flight: int = 0
    # Scale-out (execution only, see EXECUTION): Ray workers (0 = this process), a Ray cluster to join, GPUs
    # per worker, where external teachers run, this process's slice `i/N` of the questions, and where the
    # continuation caches live (default: the run directory, or each Ray worker's local temp folder).
    workers: int = 0
    ray_address: str = ""
    gpus_per_worker: float = 1.0
    teacher_placement: str = "colocate"
    shard: str = ""
    cache_dir: str = ""
    out: str = "reports/run"
    progress: bool = True

    # ---- construction ----
    @classmethod
    def from_sources(cls, toml_path: str | Path | None = None, overrides: dict[str, Any] | None = None):
        values: dict[str, Any] = {}
        if toml_path is not None:
            values.update(load_toml(toml_path))
        for key, value in (overrides or {}).items():
            if value is not None:
                values[key] = value
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise DiagnoseError(f"unknown config keys: {', '.join(sorted(unknown))}")
        cfg = cls(**values)
        cfg.validate()
        return cfg

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
        node_cost = (1 + self.top_k + self.top_k * len(self.teachers)) * self.continuations
        if self.budget < node_cost:
            raise DiagnoseError(
                f"--budget {self.budget} buys no node: one node costs up to {node_cost} continuations "
                f"((1 + top_k + top_k x {len(self.teachers)} teachers) x {self.continuations} continuations); "
                "raise --budget or lower --top-k / --continuations"
            )
        if self.workers < 0:
            raise DiagnoseError(f"--workers must be >= 0 (0: no Ray, this process), got {self.workers}")
        if self.gpus_per_worker < 0:
            raise DiagnoseError(f"--gpus-per-worker must be >= 0, got {self.gpus_per_worker}")
        if self.teacher_placement not in TEACHER_PLACEMENTS:
            raise DiagnoseError(
                f"--teacher-placement must be one of {', '.join(TEACHER_PLACEMENTS)}, got {self.teacher_placement!r}"
            )
        self.shard_slice()
        if self.shard and self.uses_ray():
            raise DiagnoseError("--shard splits a run across separate processes; it cannot be combined with Ray "
                                "(--workers / --ray-address), which splits it by itself")
        if self.teacher_dtype not in TEACHER_DTYPES:
            raise DiagnoseError(
                f"--teacher-dtype must be one of {', '.join(TEACHER_DTYPES)}, got {self.teacher_dtype!r}"
            )
        if not self.temperature > 0:
            raise DiagnoseError(f"temperature must be > 0, got {self.temperature}")
        if self.engine not in engines.available():
            raise DiagnoseError(f"unknown engine {self.engine!r}; available: {', '.join(engines.available())}")
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

        return EstimateConfig(
            rollouts_per_question=self.rollouts,
            temperature=self.temperature,
            max_new_tokens=self.max_new_tokens,
            stop=tuple(stop),
            seed=self.seed,
            k_student=self.top_k,
            k_teacher=self.top_k,
            continuations=self.continuations,
            budget=float(self.budget),
            nodes=self.nodes,
        )

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
        return {k: v for k, v in asdict(self).items() if k not in NON_IDENTITY}

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
