"""Rich progress bars with a rate column (chips/s, windows/s) shared by long-running stages."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text


class RateColumn(ProgressColumn):
    """Items per second, named after the unit (e.g. ``12.3 chips/s``)."""

    def __init__(self, unit: str):
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.1f} {self.unit}/s" if speed else f"– {self.unit}/s",
                    style="progress.data.speed")


def progress_enabled() -> bool:
    """Bars are drawn on a terminal, never in CI logs unless TERRASTILL_PROGRESS=1."""
    flag = os.environ.get("TERRASTILL_PROGRESS")
    if flag is not None:
        return flag not in ("0", "", "false")
    return sys.stderr.isatty()


@contextmanager
def progress_bar(unit: str, console: Console | None = None) -> Iterator[Progress]:
    """A progress bar for counting ``unit`` items, with rate and ETA."""
    prog = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(unit),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console or Console(stderr=True),
        disable=not progress_enabled(),
        transient=False,
    )
    with prog:
        yield prog
