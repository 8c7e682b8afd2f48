"""Training progress: a rich bar on a terminal, plain periodic lines otherwise."""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class ProgressReporter:
    """Shows step, losses, samples/s and ETA. ``mode``: auto | bar | lines | none."""

    def __init__(self, total: int, mode: str = "auto", start: int = 0):
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "lines"
        self.mode, self.total = mode, total
        self._console = Console(stderr=True)
        self._bar: Progress | None = None
        if mode == "bar":
            self._bar = Progress(TextColumn("[bold]step"), MofNCompleteColumn(), BarColumn(),
                                 TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("ETA"),
                                 TimeRemainingColumn(), console=self._console, transient=False)
            self._task = self._bar.add_task("train", total=total, completed=start, info="")
            self._bar.start()

    def update(self, step: int, record: dict[str, Any]) -> None:
        info = "  ".join(f"{k} {v:.4g}" for k, v in record.items()
                         if k not in ("step", "epoch", "time") and isinstance(v, float))
        if self._bar is not None:
            self._bar.update(self._task, completed=step, info=info)
        elif self.mode == "lines":
            print(f"step {step}/{self.total}  {info}", file=sys.stderr, flush=True)

    def message(self, text: str) -> None:
        if self.mode != "none":
            self._console.print(text)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
