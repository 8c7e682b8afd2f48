"""Training progress: a rich display on a terminal, plain periodic lines otherwise.

The display has two parts: one line that always fits (step, bar, samples/s, elapsed time, ETA; the bar takes what
width is left, so at 80 columns everything else stays visible) and the latest metrics on their own line(s) below.
It moves with the step counter, a host value: ``advance`` is called every step and costs no device
synchronisation; the metrics change only at log intervals, when the trainer has read them anyway.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

from rich.console import Console, ConsoleOptions, RenderableType, RenderResult
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
from rich.table import Column
from rich.text import Text

#: How often (seconds) the step counter is handed to the display at most: steps faster than this move it ten
#: times a second, slower steps every step.
_MIN_INTERVAL = 0.1


class _SamplesPerSecond(ProgressColumn):
    """Samples per second from the display's own step rate (host time and the host step counter)."""

    def __init__(self, batch_size: int):
        super().__init__(table_column=Column(no_wrap=True))
        self.batch_size = batch_size

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("– samples/s" if speed is None else f"{_rate(speed * self.batch_size)} samples/s")


def _rate(value: float) -> str:
    """At most 7 characters: ``12,345``, ``123k``, ``12.3M``."""
    if value < 1e5:
        return f"{value:,.0f}"
    return f"{value / 1e3:.0f}k" if value < 1e6 else f"{value / 1e6:.1f}M"


class _Metrics:
    """``name value`` items packed into as many lines of the console's width as they need (an item is never
    split across lines)."""

    def __init__(self, items: list[str]):
        self.items = items

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        line = ""
        for item in self.items:
            if line and len(line) + 2 + len(item) > options.max_width:
                yield Text(line, style="dim")
                line = ""
            line = f"{line}  {item}" if line else item
        if line:
            yield Text(line, style="dim")


class _Display(Progress):
    """A progress line plus the latest metrics below it."""

    metrics: list[str] = []

    def get_renderables(self) -> Iterable[RenderableType]:
        yield self.make_tasks_table(self.tasks)
        if self.metrics:
            yield _Metrics(self.metrics)


class ProgressReporter:
    """Shows step, samples/s, elapsed time and ETA (moving every step, at most ten times a second) and the latest
    metrics (every log interval). ``mode``: auto (``bar`` on a terminal, else ``lines``) | bar | lines | none.
    ``console``: where the bar is drawn (default: stderr)."""

    def __init__(self, total: int, mode: str = "auto", start: int = 0, batch_size: int = 1,
                 console: Console | None = None):
        self._console = console or Console(stderr=True)
        if mode == "auto":
            mode = "bar" if (self._console.is_terminal if console is not None else sys.stderr.isatty()) else "lines"
        self.mode, self.total = mode, total
        self._bar: _Display | None = None
        self._shown = -1.0
        if mode == "bar":
            fixed = Column(no_wrap=True)  # everything but the bar keeps its width; the bar takes the rest
            self._bar = _Display(TextColumn("[bold]step", table_column=fixed), MofNCompleteColumn(table_column=fixed),
                                 BarColumn(bar_width=None), _SamplesPerSecond(batch_size),
                                 TimeElapsedColumn(table_column=fixed), TextColumn("ETA", table_column=fixed),
                                 TimeRemainingColumn(table_column=fixed), console=self._console, transient=False,
                                 expand=True)
            self._task = self._bar.add_task("train", total=total, completed=start)
            self._bar.start()

    def advance(self, step: int) -> None:
        """The trainer reached ``step`` (called every step; a host integer, no device work)."""
        if self._bar is None:
            return
        now = time.perf_counter()
        if now - self._shown >= _MIN_INTERVAL or step >= self.total:
            self._shown = now
            self._bar.update(self._task, completed=step)

    def update(self, step: int, record: dict[str, Any]) -> None:
        """The metrics of a log interval (``record`` as metrics.jsonl gets it)."""
        if self._bar is not None:
            self._bar.metrics = metric_items(record, with_rate=False)
            self._bar.update(self._task, completed=step)
        elif self.mode == "lines":
            with self._unless_closed():
                print(f"step {step}/{self.total}  {'  '.join(metric_items(record))}", file=sys.stderr, flush=True)

    def message(self, text: str) -> None:
        if self.mode != "none":
            with self._unless_closed():
                self._console.print(text)

    @contextlib.contextmanager
    def _unless_closed(self) -> Iterator[None]:
        """Where the reader went away (``advinf run ... 2>&1 | head``), nothing more is shown and training goes on:
        the lines are also in metrics.jsonl, and a run must not end for want of a reader."""
        try:
            yield
        except BrokenPipeError:
            self.mode = "none"
            discard_output(sys.stderr)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def discard_output(stream: Any) -> None:
    """After a write to ``stream`` met a closed pipe (the reader went away): point its file descriptor at
    /dev/null, so that later writes, and the flush of what is left in its buffer at exit, succeed silently."""
    with contextlib.suppress(OSError, ValueError, AttributeError):  # not a real file (a test's capture)
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, stream.fileno())
        finally:
            os.close(devnull)


def metric_items(record: dict[str, Any], with_rate: bool = True) -> list[str]:
    """``["epoch 3", "loss_critic 1.386", ...]``: a log record for people (samples/s only ``with_rate``; the bar
    shows its own)."""
    skip = {"step", "epoch", "time", "steps_averaged", *(() if with_rate else ("samples_per_s",))}
    items = [f"epoch {record['epoch']}"] if "epoch" in record else []
    return items + [f"{k} {v:.4g}" for k, v in record.items() if k not in skip and isinstance(v, float)]
