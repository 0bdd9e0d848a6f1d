"""Teachers with real signal, built from the student itself: rejection-sampling fine-tuning (RFT).

`diagnose teachers build` samples the student on training questions (disjoint from every evaluation question
it is told about), keeps the verified-correct responses, and fine-tunes a copy of the student on them
(cross-entropy on the response tokens), saving a checkpoint after each step count of a ladder: the more
steps, the stronger the teacher. One more teacher is fine-tuned on the verified-incorrect responses (weaker
than the student). Each checkpoint is an ordinary Hugging Face folder with the student's tokenizer, usable as
`--teacher model=<path>`, with `teacher.json` beside its weights: pass@1 on held-out questions (with a
question-cluster bootstrap interval), the student's pass@1 on the same draws, and the build cost.

Everything is reproducible from the seed, and cached: a second build with the same settings returns the
checkpoints already there.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from .. import atomic, engines, tasks
from ..engines.base import SamplingParams, render_prompt
from ..errors import DiagnoseError
from ..estimate.generate import Generator, derive_seed
from ..estimate.rollouts import EstimateQuestion, Rollout, sample_rollouts

INDEX_FILE = "ladder.json"
INFO_FILE = "teacher.json"
_DONE = ".built"  # written last into a checkpoint folder: a folder without it is an interrupted build


@dataclass
class BuildConfig:
    """How the teachers are built. Sampling settings (temperature, length) should match the run they serve."""

    task: str = "arithmetic"
    student: str = "embedded"
    temperature: float = 0.7  # sampling temperature of the training samples and of the pass@1 measurement
    max_new_tokens: int = 32
    steps: list[int] = field(default_factory=lambda: [4, 12, 32])  # the ladder: checkpoints after these steps
    incorrect_steps: int = 12  # one teacher fine-tuned on verified-incorrect responses; 0 = none
    questions: int = 80  # training questions (disjoint from the excluded and the pass@1 questions)
    rollouts: int = 4  # samples per training question
    batch: int = 16  # responses per optimizer step
    lr: float = 5e-5  # AdamW learning rate
    train_layers: int = 0  # 0 = every parameter; N = the last N decoder blocks and the final norm
    eval_questions: int = 40  # held-out questions for each teacher's pass@1
    eval_samples: int = 4
    n_boot: int = 1000
    seed: int = 0

    def validate(self) -> None:
        for name in ("questions", "rollouts", "batch", "eval_questions", "eval_samples", "max_new_tokens", "n_boot"):
            if int(getattr(self, name)) < 1:
                raise DiagnoseError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not self.steps or any(int(s) < 1 for s in self.steps):
            raise DiagnoseError(f"--steps needs step counts >= 1, got {self.steps}")
        self.steps = sorted({int(s) for s in self.steps})
        for name in ("incorrect_steps", "train_layers"):
            if int(getattr(self, name)) < 0:
                raise DiagnoseError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if not self.temperature > 0:
            raise DiagnoseError(f"--temperature must be > 0, got {self.temperature}")
        if not self.lr > 0:
            raise DiagnoseError(f"--lr must be > 0, got {self.lr}")
        tasks.get(self.task)  # an unknown task is one error line here, before any model loads

    def digest(self, exclude: Sequence[str]) -> str:
        ident = {**asdict(self), "exclude": sorted(set(exclude))}
        return hashlib.sha1(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:12]


@dataclass
class BuiltTeacher:
    """One checkpoint of the ladder and what was measured on it."""

    name: str  # rft-<steps> or incorrect-<steps>
    path: str
    kind: str  # "correct" (fine-tuned on verified-correct responses) or "incorrect"
    steps: int
    pass_at_1: float
    pass_ci: tuple[float, float]
    student_pass_at_1: float
    train_seconds: float  # optimizer steps up to this checkpoint (cumulative within its kind)
    measure_seconds: float  # its pass@1 measurement

    @property
    def spec(self) -> str:
        """The teacher spec a run takes."""
        return f"model={self.path}"


def default_dir(cfg: BuildConfig, exclude: Sequence[str]) -> Path:
    from ..models import home

    slug = cfg.task.replace(":", "-").replace("=", "-").replace("/", "-").replace(",", "-")
    return home() / "teachers" / f"{slug}-{cfg.digest(exclude)}"


def load_ladder(out: str | Path) -> list[BuiltTeacher]:
    """The teachers of a finished build folder (DiagnoseError when it holds none)."""
    path = Path(out) / INDEX_FILE
    if not path.is_file():
        raise DiagnoseError(f"{out} holds no built teachers (no {INDEX_FILE}); run `diagnose teachers build`")
    return [BuiltTeacher(**{**t, "pass_ci": tuple(t["pass_ci"])}) for t in json.loads(path.read_text())["teachers"]]


def pass_interval(outcomes: np.ndarray, n_boot: int, seed: int, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of pass@1 over a [questions, samples] verdict array, resampling questions."""
    rng = np.random.default_rng(seed)
    per_q = outcomes.mean(axis=1)
    reps = per_q[rng.integers(0, len(per_q), size=(n_boot, len(per_q)))].mean(axis=1)
    a = (1 - level) / 2
    return float(np.quantile(reps, a)), float(np.quantile(reps, 1 - a))


class TeacherBuilder:
    """Build (or find cached) the ladder of RFT teachers and the incorrect teacher for one task."""

    def __init__(self, cfg: BuildConfig, exclude: Iterable[str] = (), out: str | Path | None = None,
                 log: Callable[[str], None] = lambda msg: None, bar=None):
        cfg.validate()
        self.cfg, self.exclude = cfg, sorted(set(exclude))
        self.out = Path(out).expanduser() if out else default_dir(cfg, self.exclude)
        self.log, self.bar = log, bar
        self.task = tasks.get(cfg.task)
        self.engine = None

    # ---- questions ---------------------------------------------------------------------------------
    def split(self) -> tuple[list, list]:
        """(pass@1 questions, training questions): distinct prompts of a draw of their own, none excluded,
        the two sets disjoint."""
        cfg = self.cfg
        need = cfg.eval_questions + cfg.questions
        excluded = set(self.exclude)
        pool = self.task.questions(4 * need + len(excluded), seed=derive_seed(cfg.seed, "teachers"))
        unique: dict[str, object] = {}
        for q in pool:
            if q.prompt not in excluded:
                unique.setdefault(q.prompt, q)
        if len(unique) < need:
            raise DiagnoseError(
                f"task {cfg.task!r} has {len(unique)} distinct questions outside the {len(excluded)} excluded ones; "
                f"the build needs --eval-questions + --questions = {need}"
            )
        chosen = list(unique.values())
        return chosen[: cfg.eval_questions], chosen[cfg.eval_questions : need]

    def questions(self, qs) -> list[EstimateQuestion]:
        return [EstimateQuestion(id=q.id, prompt_ids=render_prompt(self.engine.tokenizer, q.prompt),
                                 verify=lambda text, q=q: self.task.verify(q, text)) for q in qs]

    def params(self, seed: int) -> SamplingParams:
        return SamplingParams(temperature=self.cfg.temperature, max_new_tokens=self.cfg.max_new_tokens,
                              stop=tuple(self.task.stop), seed=int(seed))

    # ---- measuring ---------------------------------------------------------------------------------
    def measure(self, eval_qs) -> np.ndarray:
        """[questions, samples] verdicts of the current weights (the same draws for every model: paired)."""
        gen = Generator(self.engine, self.params(derive_seed(self.cfg.seed, "teachers-eval")))
        out = np.zeros((len(eval_qs), self.cfg.eval_samples), dtype=bool)
        for r in sample_rollouts(gen, eval_qs, self.cfg.eval_samples):
            out[r.question, r.index] = r.correct
        return out

    # ---- training ----------------------------------------------------------------------------------
    def _trainable(self) -> list[torch.nn.Parameter]:
        model = self.engine.model
        n = int(self.cfg.train_layers)
        if n == 0:
            return [p for p in model.parameters()]
        layers = model.get_decoder().layers
        if n > len(layers):
            raise DiagnoseError(f"--train-layers {n}: the student has {len(layers)} decoder blocks")
        chosen = [p for block in list(layers)[-n:] for p in block.parameters()]
        norm = getattr(model.get_decoder(), "norm", None)
        return chosen + (list(norm.parameters()) if norm is not None else [])

    def sft_loss(self, batch: Sequence[Rollout]) -> torch.Tensor:
        """Mean cross-entropy of the response tokens given prompt and earlier response (temperature 1)."""
        model, device = self.engine.model, next(self.engine.model.parameters()).device
        seqs = [r.prompt_ids + r.token_ids for r in batch]
        length = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), length), int(self.engine.pad_id), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        rows = torch.tensor([i for i, r in enumerate(batch) for _ in r.token_ids])
        cols = torch.tensor([len(r.prompt_ids) + t - 1 for r in batch for t in range(len(r.token_ids))])
        targets = torch.tensor([t for r in batch for t in r.token_ids])
        ids, mask = ids.to(device), mask.to(device)
        # the vocabulary projection only at the response positions (the prompt's rows cost no [*, V] logits)
        hidden = model.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state
        logits = model.get_output_embeddings()(hidden[rows.to(device), cols.to(device)]).float()
        return torch.nn.functional.cross_entropy(logits, targets.to(device))

    def train(self, kind: str, examples: list[Rollout], stops: list[int], eval_qs, start: dict, student_pass):
        """Fine-tune from the starting weights on `examples`, saving and measuring at each step count."""
        cfg, model = self.cfg, self.engine.model
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(start[name])
        params = self._trainable()
        for p in model.parameters():
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
        order = list(range(len(examples)))
        rng = random.Random(f"teachers-sft:{cfg.seed}:{kind}")
        rng.shuffle(order)
        built, trained, cursor = [], 0.0, 0
        for step in range(1, max(stops) + 1):
            t0 = time.perf_counter()
            pick = []
            for _ in range(min(cfg.batch, len(examples))):
                if cursor == len(order):  # an epoch done: a new order
                    rng.shuffle(order)
                    cursor = 0
                pick.append(examples[order[cursor]])
                cursor += 1
            with torch.enable_grad():
                loss = self.sft_loss(pick)
                loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            trained += time.perf_counter() - t0
            if self.bar is not None:
                self.bar(1)
            if step in stops:
                built.append(self._checkpoint(kind, step, trained, eval_qs, student_pass))
        for p in model.parameters():
            p.requires_grad_(False)
        return built

    def _checkpoint(self, kind: str, step: int, trained: float, eval_qs, student_pass) -> BuiltTeacher:
        name = f"{'rft' if kind == 'correct' else 'incorrect'}-{step}"
        t0 = time.perf_counter()
        with torch.inference_mode():
            outcomes = self.measure(eval_qs)
        measured = time.perf_counter() - t0
        target = self.out / name
        teacher = BuiltTeacher(
            name=name, path=str(target), kind=kind, steps=step, pass_at_1=float(outcomes.mean()),
            pass_ci=pass_interval(outcomes, self.cfg.n_boot, self.cfg.seed),
            student_pass_at_1=float(student_pass.mean()), train_seconds=round(trained, 2),
            measure_seconds=round(measured, 2),
        )
        with atomic.replacing(target) as tmp:
            self.engine.model.save_pretrained(tmp)
            self.engine.tokenizer.save_pretrained(tmp)
            (tmp / INFO_FILE).write_text(json.dumps({**asdict(teacher), "settings": asdict(self.cfg)}, indent=1))
            (tmp / _DONE).write_text("")
        self.log(f"{name}: pass@1 {teacher.pass_at_1:.3f} [{teacher.pass_ci[0]:.3f}, {teacher.pass_ci[1]:.3f}] "
                 f"(student {teacher.student_pass_at_1:.3f}) -> {target}")
        return teacher

    # ---- the whole build ---------------------------------------------------------------------------
    def cached(self) -> list[BuiltTeacher] | None:
        index = self.out / INDEX_FILE
        if not index.is_file():
            return None
        try:
            data = json.loads(index.read_text())
        except ValueError:
            return None
        if data.get("digest") != self.cfg.digest(self.exclude):
            raise DiagnoseError(f"{self.out} holds teachers built with other settings; choose another --out "
                                "or remove it")
        teachers = load_ladder(self.out)
        if all((Path(t.path) / _DONE).is_file() for t in teachers):
            return teachers
        return None

    def total_steps(self) -> int:
        return max(self.cfg.steps) + int(self.cfg.incorrect_steps)

    def build(self) -> list[BuiltTeacher]:
        found = self.cached()
        if found is not None:
            self.log(f"teachers already built in {self.out}")
            return found
        cfg = self.cfg
        t_all = time.perf_counter()
        self.engine = engines.load("hf", cfg.student)
        eval_set, train_set = self.split()
        eval_qs, train_qs = self.questions(eval_set), self.questions(train_set)
        t0 = time.perf_counter()
        with torch.inference_mode():
            samples = sample_rollouts(Generator(self.engine, self.params(derive_seed(cfg.seed, "teachers-train"))),
                                      train_qs, cfg.rollouts)
            student_pass = self.measure(eval_qs)
        sampled = time.perf_counter() - t0
        correct = [r for r in samples if r.correct and r.token_ids]
        incorrect = [r for r in samples if not r.correct and r.token_ids]
        self.log(f"student: {len(correct)} correct and {len(incorrect)} incorrect of {len(samples)} training "
                 f"samples; pass@1 {student_pass.mean():.3f} on {len(eval_set)} held-out questions")
        if len(correct) < 2 or (cfg.incorrect_steps and len(incorrect) < 2):
            raise DiagnoseError(
                f"the student wrote {len(correct)} correct and {len(incorrect)} incorrect responses to "
                f"{len(train_set)} training questions: too few to fine-tune on (raise --questions or --rollouts, "
                "or pick a task it solves sometimes)"
            )
        self.out.mkdir(parents=True, exist_ok=True)
        start = {name: p.detach().clone() for name, p in self.engine.model.named_parameters()}
        teachers = self.train("correct", correct, cfg.steps, eval_qs, start, student_pass)
        if cfg.incorrect_steps:
            teachers += self.train("incorrect", incorrect, [int(cfg.incorrect_steps)], eval_qs, start,
                                   student_pass)
        with torch.no_grad():  # leave the loaded student as it was
            for name, p in self.engine.model.named_parameters():
                p.copy_(start[name])
        index = {
            "digest": cfg.digest(self.exclude), "settings": asdict(cfg), "excluded_questions": len(self.exclude),
            "train_questions": [q.id for q in train_set], "eval_questions": [q.id for q in eval_set],
            "train_samples": {"correct": len(correct), "incorrect": len(incorrect)},
            "student_pass_at_1": float(student_pass.mean()),
            "cost_s": {"sampling": round(sampled, 2), "total": round(time.perf_counter() - t_all, 2)},
            "teachers": [{**asdict(t), "pass_ci": list(t.pass_ci)} for t in teachers],
        }
        atomic.write_text(self.out / INDEX_FILE, json.dumps(index, indent=1))
        return teachers


def remove(out: str | Path) -> None:
    """Delete a build folder (used by `--force`)."""
    shutil.rmtree(Path(out), ignore_errors=True)
