"""The `diagnose` command line (Typer)."""

from __future__ import annotations

import typer

app = typer.Typer(help="Training-free diagnostics for on-policy distillation.", no_args_is_help=True)
ls_app = typer.Typer(help="List what is registered.", no_args_is_help=True)
app.add_typer(ls_app, name="ls")


@ls_app.command("objectives")
def ls_objectives():
    """Registered distillation objectives and their default parameters."""
    from . import objectives

    for name in objectives.available():
        params = objectives.defaults(name)
        typer.echo(name + ("  " + " ".join(f"{k}={v}" for k, v in params.items()) if params else ""))


@ls_app.command("tasks")
def ls_tasks():
    """Registered tasks and their options (file-backed ones need path=...)."""
    from . import tasks

    for name in tasks.available():
        opts = tasks.defaults(name)
        shown = " ".join(f"{k}={'...' if v is None else v}" for k, v in opts.items())
        typer.echo(name + ("  " + shown if shown else ""))


def main():
    app()


if __name__ == "__main__":
    main()
