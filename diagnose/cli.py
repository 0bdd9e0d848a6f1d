"""The `diagnose` command line (Typer)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

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


@app.command("report")
def report_cmd(
    run_dir: Path = typer.Argument(..., help="Run directory holding the Parquet tables."),
    out: Optional[Path] = typer.Option(None, help="HTML file to write (default: RUN_DIR/report.html)."),
    metric: str = typer.Option("cos_full", help="Per-token cosine to report: cos_full or cos_support."),
    resummarize: bool = typer.Option(False, "--resummarize", help="Recompute the summary table if present."),
):
    """Write a run's summary table (if missing) and its offline HTML report; print the bottom line."""
    from . import report
    from .errors import DiagnoseError

    try:
        if resummarize or not report.has_table(run_dir, "summary"):
            report.write_summary(run_dir)
        res = report.load(run_dir, metric=metric)
        path = res.report(out)
    except DiagnoseError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None
    typer.echo(res.describe())
    typer.echo(f"report: {path}")


def main():
    app()


if __name__ == "__main__":
    main()
