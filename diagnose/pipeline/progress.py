"""Progress display for long work: rich bars with ETA on a terminal (stderr), silent when disabled."""

from __future__ import annotations

import contextlib
import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress


class Progress:
    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.console = Console(file=sys.stderr)

    @contextlib.contextmanager
    def status(self, message: str):
        if not self.enabled:
            yield
            return
        with self.console.status(message):
            yield
        self.console.print(f"[green]✓[/green] {message}")

    def note(self, message: str) -> None:
        """One line on stderr (nothing when progress is off)."""
        if self.enabled:
            self.console.print(message)

    @contextlib.contextmanager
    def bar(self, description: str, total: int, completed: int = 0):
        """Yields a `Bar`: call it to advance; `.update(advance=, tokens_per_s=, rows=)` from any thread.
        Shows done/total, elapsed, ETA, and the engine's work so far (rollouts, continuations, tokens/s)."""
        if not self.enabled:
            yield Bar(None, None)
            return
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[work]}"),
        )
        with RichProgress(*columns, console=self.console) as prog:
            task = prog.add_task(description, total=total, completed=completed, work="")
            yield Bar(prog, task)


class Bar:
    """Handle on one progress bar (a no-op when progress is off). Rich's Progress is thread-safe."""

    def __init__(self, prog, task):
        self.prog, self.task = prog, task

    def __call__(self, n: int = 1) -> None:
        self.update(advance=n)

    def update(self, advance: int = 0, tokens_per_s: float | None = None, rows: dict | None = None) -> None:
        if self.prog is None:
            return
        fields = {}
        if rows is not None or tokens_per_s is not None:
            rows = rows or {}
            fields["work"] = (
                f"{rows.get('sample', 0)} rollouts · {rows.get('continue', 0)} continuations · "
                f"{tokens_per_s or 0:.0f} tok/s"
            )
        self.prog.update(self.task, advance=advance, **fields)
