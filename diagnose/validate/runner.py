"""`diagnose validate RUN_DIR`: does the configuration with the higher alignment train better?

For every arm (the run's configurations, plus the ideal, GRPO and shuffled-teacher references) and every
training seed: reset the student to its starting weights, run `steps` steps of on-policy training (sample
rollouts from the current student, apply the arm's direction d to its logits, one AdamW step), then measure
pass@1 on held-out questions. Each (arm, seed) is written as shards when it finishes (samples first, its
`validation` row last), so a killed validation resumes with the arms that are missing.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .. import atomic, engines, tasks
from ..engines.base import SamplingParams, render_prompt
from ..errors import DiagnoseError
from ..estimate import EstimateConfig, EstimateQuestion
from ..estimate.generate import Generator, derive_seed
from ..estimate.rollouts import sample_rollouts
from ..pipeline.config import RunConfig
from ..pipeline.progress import Progress
from ..pipeline.rundir import CONFIG_FILE
from ..pipeline.teachers import load_teacher_engines
from ..tables import completed_shards, has_table, read_table, standard_metadata, write_table
from ..teachers import parse_teacher
from .arms import Arm, GRPODirections, IdealDirections, ObjectiveDirections, StepBatch
from .config import ValidateConfig
from .policy import TrainablePolicy
from .stats import ESTIMANDS, Replicates, interval, ranking, separated_pairs, verdict

SETTINGS_FILE = "validation.json"
TABLES = ("validation_samples", "validation", "validation_arms")
START = "start"  # the arm name of the evaluation at the starting weights


def _shard(index: int, seed: int) -> str:
    return f"a{index:03d}-s{seed}"


class Validation:
    """A validation of one finished run directory: its arms, questions, and the loaded student."""

    def __init__(self, run_dir, cfg: ValidateConfig | None = None):
        self.run_dir = Path(run_dir).expanduser()
        self.cfg = cfg or ValidateConfig()
        self.cfg.validate()
        self.run_cfg = _read_run(self.run_dir)
        self.rollouts = self.cfg.rollouts or self.run_cfg.rollouts
        self.task = tasks.get(self.run_cfg.task)
        self.arms = self._arms()
        self.eval_questions, self.train_questions = question_split(self.task, self.run_cfg, self.cfg)
        self.progress = Progress(enabled=self.cfg.progress)
        self.engine = None

    # ---- arms --------------------------------------------------------------------------------------
    def _arms(self) -> list[Arm]:
        from ..tables import read_summary

        table = read_summary(self.run_dir).table
        table = table[table["metric"] == self.cfg.metric].sort_values("config")
        known = list(table["config"])
        chosen = self.cfg.configs or known
        missing = [c for c in chosen if c not in known]
        if missing:
            raise DiagnoseError(f"configuration {missing[0]!r} is not in the run; it has: {', '.join(known)}")
        rows = table.set_index("config")
        arms = []
        for label in chosen:
            r = rows.loc[label]
            measured = (float(r["mean"]), float(r["ci_low"]), float(r["ci_high"]))
            if str(r["objective"]) == "grpo_ref":
                # The run scored the GRPO direction itself (objective grpo_ref, no teacher): the grpo arm trains
                # on exactly that direction, so it carries the run's alignment and joins the rank correlation.
                arms.append(Arm("grpo", "grpo", "", "grpo_ref", *measured))
            else:
                arms.append(Arm(label, "config", str(r["teacher"]), str(r["objective"]), *measured))
        # the control shuffles the teacher of the first chosen configuration that has one (else the run's first)
        with_teacher = [c for c in [*chosen, *known] if rows.loc[c, "objective"] != "grpo_ref"]
        for ref in self.cfg.references:
            if ref == "control":
                if not with_teacher:
                    raise DiagnoseError("the control arm shuffles a teacher, and the run has no configuration with "
                                        "a teacher; drop it with --reference ideal --reference grpo")
                r = rows.loc[with_teacher[0]]
                arms.append(Arm("control", "control", str(r["teacher"]), str(r["objective"])))
            elif not any(a.kind == ref for a in arms):
                arms.append(Arm(ref, ref, "", "grpo_ref" if ref == "grpo" else ""))
        return arms

    # ---- loading -----------------------------------------------------------------------------------
    def load(self) -> None:
        """The student (through the hf engine: training needs its torch model) and the arms' teachers."""
        if self.engine is not None:
            return
        with self.progress.status(f"loading student {self.run_cfg.student}"):
            engine_name = "hf" if self.run_cfg.engine == "vllm" else self.run_cfg.engine
            self.engine = engines.load(engine_name, self.run_cfg.student)
            self.policy = TrainablePolicy(self.engine, self.cfg.train_layers, self.run_cfg.temperature)
            teachers = {a.teacher for a in self.arms if a.kind in ("config", "control")}
            self.teacher_cfgs = {t: parse_teacher(t) for t in teachers}
            self.teacher_engines = load_teacher_engines(
                list(self.teacher_cfgs.values()), self.engine, engine_name, self.run_cfg.teacher_dtype
            )
        self.summaries = self._summaries()

    def _summaries(self) -> dict:
        """Reference-solution summaries for `self:summary` teachers, written once by the starting student."""
        if not any(t.context == "summary" for t in self.teacher_cfgs.values()):
            return {}
        from ..teachers.summaries import summarize

        todo = [q for q in self.train_questions if q.solution and not q.meta.get("summary")]
        texts = summarize(self.engine, [q.solution for q in todo], self.run_dir / "cache" / "summaries",
                          self.run_cfg.seed) if todo else []
        return {q.id: s for q, s in zip(todo, texts, strict=True)}

    def sampling(self, seed: int) -> SamplingParams:
        return SamplingParams(temperature=self.run_cfg.temperature, max_new_tokens=self.run_cfg.max_new_tokens,
                              stop=tuple(self.task.stop), seed=int(seed))

    def estimate_questions(self, questions) -> list[EstimateQuestion]:
        return [
            EstimateQuestion(id=q.id, prompt_ids=render_prompt(self.engine.tokenizer, q.prompt),
                             verify=lambda text, q=q: self.task.verify(q, text))
            for q in questions
        ]

    def estimate_config(self) -> EstimateConfig:
        return replace(self.run_cfg.estimate_config(stop=self.task.stop), rollouts_per_question=self.rollouts)

    # ---- measuring ---------------------------------------------------------------------------------
    def evaluate(self) -> np.ndarray:
        """[eval questions, eval samples] verdicts of the current student (the same draws every time)."""
        gen = Generator(self.engine, self.sampling(derive_seed(self.run_cfg.seed, "validate-eval", self.cfg.seed)))
        rollouts = sample_rollouts(gen, self.estimate_questions(self.eval_questions), self.cfg.eval_samples)
        out = np.zeros((len(self.eval_questions), self.cfg.eval_samples), dtype=bool)
        for r in rollouts:
            out[r.question, r.index] = r.correct
        return out

    def schedule(self, seed: int) -> list[list]:
        """The training questions of each step for one training seed (every arm sees the same ones)."""
        order = list(range(len(self.train_questions)))
        random.Random(f"validate-order:{self.cfg.seed}:{seed}").shuffle(order)
        b = self.cfg.batch
        pick = lambda k: [self.train_questions[order[(k * b + i) % len(order)]] for i in range(b)]  # noqa: E731
        return [pick(k) for k in range(self.cfg.steps)]

    def directions(self, arm: Arm):
        if arm.kind in ("config", "control"):
            tc = self.teacher_cfgs[arm.teacher]
            return ObjectiveDirections(tc, arm.objective, self.teacher_engines[tc.model],
                                       shuffle=arm.kind == "control", summaries=self.summaries,
                                       temperature=self.estimate_config().scoring_temperature)
        if arm.kind == "grpo":
            return GRPODirections()
        return IdealDirections(self.engine, self.estimate_config(), lambda b: self.estimate_questions(b.questions))

    def train(self, arm: Arm, seed: int, bar=None) -> dict:
        """Train one arm with one seed from the starting weights; returns its cost and training record."""
        policy, cfg = self.policy, self.cfg
        policy.reset()
        opt = torch.optim.AdamW(policy.parameters, lr=cfg.lr, weight_decay=0.0)
        dirs = self.directions(arm)
        generated = positions_trained = 0
        rewards: list[float] = []
        for step, questions in enumerate(self.schedule(seed)):
            step_seed = derive_seed(self.run_cfg.seed, "validate-step", cfg.seed, seed, step)
            eq = self.estimate_questions(questions)
            rollouts = sample_rollouts(Generator(self.engine, self.sampling(step_seed)), eq, self.rollouts)
            generated += sum(len(r.token_ids) for r in rollouts)
            rewards.extend(float(r.correct) for r in rollouts)
            batch = StepBatch(rollouts, questions, step, step_seed)
            dirs.prepare(batch)
            positions = dirs.positions(batch)
            rows = [i for i, p in enumerate(positions) if p]
            total = sum(len(positions[i]) for i in rows)
            positions_trained += total
            for a in range(0, len(rows), cfg.micro_batch):
                index = rows[a : a + cfg.micro_batch]
                pos = [positions[i] for i in index]
                seqs = [rollouts[i].prompt_ids + rollouts[i].token_ids for i in index]
                absolute = [[len(rollouts[i].prompt_ids) + t for t in p] for i, p in zip(index, pos, strict=True)]
                with torch.enable_grad():
                    z = policy.logits(seqs, absolute)
                    d = dirs.direction(batch, index, pos, z.detach())
                    # d = -dL/dz per token: this surrogate's gradient is the mean token loss's gradient.
                    (-(z * d.to(z.dtype)).sum() / total).backward()
            if total:
                torch.nn.utils.clip_grad_norm_(policy.parameters, cfg.max_grad_norm)
                opt.step()
            opt.zero_grad(set_to_none=True)
            if bar is not None:
                bar(1)
        return {
            "train_pass_rate": float(np.mean(rewards)) if rewards else float("nan"),
            "positions_trained": int(positions_trained),
            "generated_tokens": int(generated),
            "continuation_tokens": int(getattr(dirs, "continuation_tokens", 0)),
            "teacher_tokens": int(getattr(dirs, "teacher_tokens", 0)),
            "weight_change": policy.distance(),
        }

    # ---- the whole validation ----------------------------------------------------------------------
    def settings(self) -> dict:
        return {"validate": self.cfg.identity(), "digest": self.cfg.digest(), "run_digest": self.run_cfg.digest(),
                "arms": [a.label for a in self.arms]}

    def _open(self) -> None:
        """Check an earlier validation's settings (resume only with the same ones), or discard it (--restart)."""
        path = self.run_dir / SETTINGS_FILE
        if self.cfg.restart:
            for name in TABLES:
                shutil.rmtree(self.run_dir / name, ignore_errors=True)
            path.unlink(missing_ok=True)
        if path.exists():
            try:
                old = json.loads(path.read_text())
            except ValueError:
                old = {}
            if old.get("digest") != self.cfg.digest() or old.get("run_digest") != self.run_cfg.digest():
                diff = sorted(k for k, v in self.cfg.identity().items() if old.get("validate", {}).get(k) != v)
                raise DiagnoseError(
                    f"{self.run_dir} holds a validation with other settings (differs in: {', '.join(diff) or 'run'}); "
                    "rerun with the same settings to resume, or pass --restart to discard it"
                )

    def todo(self) -> list[tuple[int, int]]:
        done = set(completed_shards(self.run_dir, "validation")) if has_table(self.run_dir, "validation") else set()
        return [(i, s) for i in range(len(self.arms)) for s in range(self.cfg.seeds) if _shard(i, s) not in done]

    def run(self):
        """Run (or resume) every arm and seed, then write `validation_arms` and re-render the report."""
        self._open()
        todo = self.todo()
        start_done = has_table(self.run_dir, "validation_samples") and START in completed_shards(
            self.run_dir, "validation_samples")
        if todo or not start_done:
            self.load()  # a model that fails to load leaves nothing behind: the settings are written after it
        atomic.write_text(self.run_dir / SETTINGS_FILE, json.dumps(self.settings(), indent=1))
        total = len(self.arms) * self.cfg.seeds * self.cfg.steps
        done_steps = total - len(todo) * self.cfg.steps
        with self.progress.bar("validate (training steps)", total=total, completed=done_steps) as bar:
            if not start_done:
                self.policy.reset()
                self._write_samples(START, -1, START, self.evaluate())
            before = self._outcomes(START, -1)
            for i, s in todo:
                arm = self.arms[i]
                t0 = time.time()
                record = self.train(arm, s, bar)
                after = self.evaluate()
                record["wall_time_s"] = round(time.time() - t0, 3)
                self._write_samples(_shard(i, s), s, arm.label, after)
                write_table(self.run_dir, "validation", self._row(arm, s, before, after, record),
                            shard=_shard(i, s), metadata=self.metadata())
        result = self.summarize()
        from ..report import render_report

        with self.progress.status("report"):
            render_report(self.run_dir)
        return result

    # ---- tables ------------------------------------------------------------------------------------
    def metadata(self) -> dict:
        return standard_metadata(models={"student": self.run_cfg.student}, seeds={"seed": self.cfg.seed},
                                 config_hash=self.cfg.digest(), validate=self.cfg.identity(),
                                 run_config_hash=self.run_cfg.digest(), temperature=self.run_cfg.temperature,
                                 teacher_temperature=self.estimate_config().scoring_temperature)

    def _write_samples(self, shard: str, seed: int, label: str, outcomes: np.ndarray) -> None:
        qs, js = np.nonzero(np.ones_like(outcomes))
        frame = pd.DataFrame({
            "arm": label, "seed": seed,
            "question_id": [self.eval_questions[q].id for q in qs],
            "sample": js.astype(np.int32), "correct": outcomes[qs, js],
        })
        write_table(self.run_dir, "validation_samples", frame, shard=shard, metadata=self.metadata())

    def _outcomes(self, label: str, seed: int) -> np.ndarray:
        df = read_table(self.run_dir, "validation_samples")
        df = df[(df["arm"] == label) & (df["seed"] == seed)]
        index = {q.id: i for i, q in enumerate(self.eval_questions)}
        out = np.zeros((len(self.eval_questions), self.cfg.eval_samples), dtype=bool)
        if len(df) != out.size:
            raise DiagnoseError(f"validation samples of {label!r} (seed {seed}) are incomplete; pass --restart")
        out[df["question_id"].map(index).to_numpy(), df["sample"].to_numpy()] = df["correct"].to_numpy(bool)
        return out

    def _row(self, arm: Arm, seed: int, before: np.ndarray, after: np.ndarray, record: dict) -> pd.DataFrame:
        rep = Replicates(1, *before.shape, n_boot=self.cfg.n_boot, seed=self.cfg.seed)
        both = np.stack([before[None], after[None]])  # [2, S=1, Q, J]
        r = rep.pass_rate(both)  # [B, 2]
        level = self.cfg.level
        row = {
            "arm": arm.label, "kind": arm.kind, "teacher": arm.teacher, "objective": arm.objective,
            "seed": int(seed), "steps": int(self.cfg.steps), "lr": float(self.cfg.lr),
            "pass_before": float(before.mean()), "pass_before_ci_low": interval(r[:, 0], level)[0],
            "pass_before_ci_high": interval(r[:, 0], level)[1],
            "pass_after": float(after.mean()), "pass_after_ci_low": interval(r[:, 1], level)[0],
            "pass_after_ci_high": interval(r[:, 1], level)[1],
            "gain": float(after.mean() - before.mean()),
            "gain_ci_low": interval(r[:, 1] - r[:, 0], level)[0],
            "gain_ci_high": interval(r[:, 1] - r[:, 0], level)[1],
            "alignment": arm.alignment, "alignment_ci_low": arm.alignment_low,
            "alignment_ci_high": arm.alignment_high, **record,
        }
        return pd.DataFrame([row])

    def alignment_replicates(self) -> np.ndarray:
        """[n_boot, arms] bootstrap replicates of each arm's alignment (NaN for arms without one), from the run's
        own tables: the question-cluster replicates of its summary (diagnose.estimate.summary.alignment_replicates,
        this validation's n_boot, the run's seed). The rank correlation resamples them jointly with the gains."""
        from ..estimate.summary import alignment_replicates

        self.alignment_stale = False  # the run's summary `mean` differs from the recomputed one
        out = np.full((self.cfg.n_boot, len(self.arms)), np.nan)
        wanted = {k: a for k, a in enumerate(self.arms) if a.kind == "config" and np.isfinite(a.alignment)}
        if not wanted:
            return out
        nodes = read_table(self.run_dir, "nodes") if has_table(self.run_dir, "nodes") else None
        points, reps = alignment_replicates(read_table(self.run_dir, "alignment"), read_table(self.run_dir, "rollouts"),
                                            nodes, self.cfg.metric, self.cfg.n_boot, self.run_cfg.seed)
        for k, arm in wanted.items():
            if arm.label in reps:
                out[:, k] = reps[arm.label].to_numpy(float)
                self.alignment_stale |= not np.isclose(points[arm.label], arm.alignment, rtol=0, atol=1e-6)
        return out

    def summarize(self) -> ValidationResult:
        """Per arm over seeds: gain with its interval (fixed held-out set: seeds and samples resampled, not
        questions) and verdict; among the distillation configurations only: Spearman's rho with its joint
        interval and permutation p-value, grpo beside it; ideal minus control."""
        cfg = self.cfg
        before = self._outcomes(START, -1)
        after = np.stack([np.stack([self._outcomes(a.label, s) for s in range(cfg.seeds)]) for a in self.arms])
        rep = Replicates(cfg.seeds, *before.shape, n_boot=cfg.n_boot, seed=cfg.seed)
        after_reps = rep.pass_rate(after)  # [B, A]
        before_reps = rep.pass_rate(before[None], resample_seeds=False)  # [B]
        gains = after.mean(axis=(1, 2, 3)) - before.mean()
        gain_reps = after_reps - before_reps[:, None]
        rows = []
        for k, arm in enumerate(self.arms):
            lo, hi = interval(gain_reps[:, k], cfg.level)
            plo, phi = interval(after_reps[:, k], cfg.level)
            rows.append({
                "arm": arm.label, "kind": arm.kind, "teacher": arm.teacher, "objective": arm.objective,
                "seeds": int(cfg.seeds), "steps": int(cfg.steps), "pass_before": float(before.mean()),
                "pass_after": float(after[k].mean()), "pass_after_ci_low": plo, "pass_after_ci_high": phi,
                "gain": float(gains[k]), "gain_ci_low": lo, "gain_ci_high": hi, "verdict": verdict(lo, hi),
                "alignment": arm.alignment, "alignment_ci_low": arm.alignment_low,
                "alignment_ci_high": arm.alignment_high,
            })
        table = pd.DataFrame(rows)
        # rho among the distillation configurations only (kind `config`), the alignment resampled with the gains;
        # grpo (RL on the rollouts' verdicts) is reported beside it, the ideal and control arms as references
        n_dist = sum(a.kind == "config" and np.isfinite(a.alignment) for a in self.arms)
        self.alignment_stale = False
        align_reps = self.alignment_replicates() if n_dist >= 3 else None  # below 3, rho is undefined anyway
        rho = ranking(table, gain_reps, align_reps, cfg.level)
        if self.alignment_stale:
            rho["note"] += ("; the run's summary `mean` differs from the alignment recomputed from its tables "
                            "(run `diagnose report` on it again)")
        refs = {a.kind: k for k, a in enumerate(self.arms)}
        ideal_vs_control = None
        if "ideal" in refs and "control" in refs:
            # the same replicates as each arm's gain (same seeds and samples): the difference is paired
            diff = gain_reps[:, refs["ideal"]] - gain_reps[:, refs["control"]]
            lo, hi = interval(diff, cfg.level)
            ideal_vs_control = {"difference": float(gains[refs["ideal"]] - gains[refs["control"]]),
                                "ci": [lo, hi], "verdict": verdict(lo, hi)}
        conclusions = {**rho, "ideal_vs_control": ideal_vs_control, "estimands": ESTIMANDS,
                       "resampling": "fixed held-out set: training seeds and the samples within each held-out "
                       "question (questions not resampled), each part rescaled by sqrt(n/(n-1)); paired across "
                       "arms, seeds, before and after",
                       "settings": {**asdict(cfg), "level": cfg.level, "student": self.run_cfg.student,
                                    "task": self.run_cfg.task, "trainable_parameters": None}}
        if self.engine is not None:
            conclusions["settings"]["trainable_parameters"] = self.policy.numel()
        write_table(self.run_dir, "validation_arms", table, metadata={**self.metadata(), "validation": conclusions})
        return ValidationResult(read_table(self.run_dir, "validation_arms"), conclusions, self.run_dir)


class ValidationResult:
    """Per-arm gains and the rank correlation with alignment; `.describe()` says it in words."""

    def __init__(self, table: pd.DataFrame, conclusions: dict, run_dir: Path):
        self.table, self.conclusions, self.run_dir = table, conclusions, run_dir

    @property
    def spearman(self) -> float:
        return float(self.conclusions["spearman"])

    def gain(self, kind_or_label: str) -> float:
        t = self.table
        row = t[(t["arm"] == kind_or_label) | (t["kind"] == kind_or_label)]
        return float(row["gain"].iloc[0]) if len(row) else float("nan")

    def ranking_summary(self) -> dict:
        """The ranking test in one dict (benchmarks/validate.py prints it): how many distillation configurations
        entered rho, how many pairs of them the run's alignment intervals separate, rho among them with its
        interval and permutation p-value, and the ideal and control arms' gains (NaN when absent)."""
        c, t = self.conclusions, self.table
        dist = t[(t["kind"] == "config") & np.isfinite(t["alignment"].to_numpy(float))]
        return {
            "distill_configs": int(len(dist)),
            "separated_pairs": separated_pairs(dist["alignment_ci_low"], dist["alignment_ci_high"]),
            "spearman_distill": float(c["spearman"]),
            "spearman_distill_ci": [float(x) for x in c["spearman_ci"]],
            "perm_p": float(c["spearman_p"]),
            "ideal_gain": self.gain("ideal"),
            "control_gain": self.gain("control"),
            "grpo_gain": self.gain("grpo"),
            "arms": int(len(t)),
        }

    def describe(self) -> str:
        from ..report.validation import grpo_sentence, ranking_sentence

        c = self.conclusions
        t = self.table
        seeds = int(t["seeds"].iloc[0])
        lines = [f"validation of {self.run_dir}: change in pass@1 on the fixed held-out set after "
                 f"{int(t['steps'].iloc[0])} steps (from {t['pass_before'].iloc[0]:.3f}), mean over {seeds} "
                 f"seed{'s' if seeds != 1 else ''}; intervals resample seeds and samples, not questions"]
        for _, r in self.table.iterrows():
            align = "" if not np.isfinite(r["alignment"]) else f"  alignment {r['alignment']:+.3f}"
            lines.append(f"  {r['arm']:<40} gain {r['gain']:+.3f} [{r['gain_ci_low']:+.3f}, {r['gain_ci_high']:+.3f}]"
                         f"  {r['verdict']}{align}")
        lines.append(ranking_sentence(c))
        grpo = grpo_sentence(c)
        if grpo:
            lines.append(grpo)
        ivc = c.get("ideal_vs_control")
        if ivc:
            lines.append(f"ideal minus control: {ivc['difference']:+.3f} [{ivc['ci'][0]:+.3f}, {ivc['ci'][1]:+.3f}]"
                         f" ({ivc['verdict']})")
        return "\n".join(lines)

    def show(self):
        print(self.describe())

    def __repr__(self) -> str:
        return self.describe()


def question_split(task, run_cfg: RunConfig, cfg: ValidateConfig) -> tuple[list, list]:
    """(held-out questions, training questions) of a validation: distinct prompts of one seeded draw, the first
    `eval_questions` held out. Also what `diagnose teachers build --for-run` keeps its teachers away from."""
    need = cfg.eval_questions + cfg.batch
    pool = task.questions(cfg.eval_questions + cfg.batch * cfg.steps,
                          seed=derive_seed(run_cfg.seed, "validate", cfg.seed))
    unique = {q.prompt: q for q in pool}
    if len(unique) < need:
        raise DiagnoseError(
            f"task {run_cfg.task!r} has {len(unique)} distinct questions; validate needs at least "
            f"--eval-questions + --batch = {need}"
        )
    pool = list(unique.values())
    return pool[: cfg.eval_questions], pool[cfg.eval_questions :]


def evaluation_prompts(run_cfg: RunConfig, cfg: ValidateConfig | None = None) -> list[str]:
    """Every prompt a run evaluates on: its own questions and the held-out questions `diagnose validate` (with
    these settings) measures pass@1 on. Teachers built for the run are trained away from all of them."""
    task = tasks.get(run_cfg.task)
    held_out, _ = question_split(task, run_cfg, cfg or ValidateConfig())
    return sorted({q.prompt for q in task.questions(run_cfg.questions, seed=run_cfg.seed)} |
                  {q.prompt for q in held_out})


def _read_run(run_dir: Path) -> RunConfig:
    if not (run_dir / CONFIG_FILE).is_file():
        raise DiagnoseError(f"{run_dir} is not a run directory (no {CONFIG_FILE}); run `diagnose run` first")
    cfg = RunConfig.load(run_dir)
    if not has_table(run_dir, "summary"):
        raise DiagnoseError(f"{run_dir} is not a finished run (no summary table): finish it with `diagnose run` "
                            "or `diagnose report` first")
    return cfg


def validate(run_dir, config: ValidateConfig | None = None, **overrides) -> ValidationResult:
    """Run (or resume) the validation of a finished run directory; returns its result."""
    cfg = config if config is not None else ValidateConfig.from_sources(None, overrides)
    if config is not None and overrides:
        cfg = ValidateConfig.from_sources(None, {**asdict(config), **overrides})
    return Validation(run_dir, cfg).run()
