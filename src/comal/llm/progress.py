"""Progress of the pipeline's stages: items done of the total, their rate and the time left.

A *bar* is ``bar(description, total)``, a context manager that yields ``advance(count)``. The
stages take one and report what they count (sequences sampled, judge asks, log-prob sequences,
optimiser steps); :func:`no_bar` is the silent default and :func:`rich_bars` draws them on a
terminal, or prints one line per finished stage when the output is a log file.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)
from rich.text import Text

Advance = Callable[[int], None]
Bar = Callable[[str, int], AbstractContextManager[Advance]]


@contextmanager
def no_bar(description: str, total: int) -> Iterator[Advance]:
    yield lambda count=1: None


class RateColumn(ProgressColumn):
    """Items per second (per minute when slower than one a second)."""

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        if not speed:
            return Text("–/s", style="progress.data.speed")
        return Text(f"{speed:.1f}/s" if speed >= 1 else f"{60 * speed:.1f}/min", style="progress.data.speed")


def prefixed(bar: Bar, prefix: str) -> Bar:
    """``bar`` with ``prefix`` before every description (the iteration and policy of a stage)."""
    return lambda description, total: bar(f"{prefix} {description}", total)


def rich_bars(console: Console) -> Bar:
    """Bars on ``console``: description, bar, done/total, rate, time left, time spent."""

    @contextmanager
    def bar(description: str, total: int) -> Iterator[Advance]:
        done, started = 0, time.perf_counter()
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), RateColumn(),
                      TimeRemainingColumn(), TimeElapsedColumn(), console=console, transient=True,
                      disable=not console.is_terminal) as progress:
            task = progress.add_task(description, total=total)

            def advance(count: int = 1) -> None:
                nonlocal done
                done += count
                progress.advance(task, count)

            yield advance
        seconds = time.perf_counter() - started
        rate = f", {done / seconds:.1f}/s" if seconds > 0 and done else ""
        console.print(f"[dim]{description}: {done}/{total} in {seconds:.1f} s{rate}[/]", highlight=False,
                      soft_wrap=True)

    return bar
