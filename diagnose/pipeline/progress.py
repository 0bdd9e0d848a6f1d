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

    @contextlib.contextmanager
    def bar(self, description: str, total: int, completed: int = 0):
        """Yields `advance()`; shows done/total, elapsed and ETA."""
        if not self.enabled:
            yield lambda n=1: None
            return
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
        )
        with RichProgress(*columns, console=self.console) as prog:
            task = prog.add_task(description, total=total, completed=completed)
            yield lambda n=1: prog.advance(task, n)
