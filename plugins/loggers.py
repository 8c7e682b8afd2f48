"""Loggers ``jsonl`` (the run directory's metrics.jsonl and evals.jsonl), ``csv`` (metrics.csv and evals.csv) and
``tensorboard`` (event files under RUN/tensorboard; needs ``pip install advinf[tensorboard]``).

Chosen with ``[train] loggers = ["jsonl", "tensorboard"]`` or ``advinf run --logger NAME``. ``wandb`` is in
advinf_plugins.wandb_logger (it needs the wandb package).
"""

from __future__ import annotations

import csv
import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from advinf import (
    BuildContext,
    JsonlLogger,
    Logger,
    UserError,
    atomic_path,
    flatten_results,
    hookimpl,
    open_append,
    regular_file,
)

METRICS_CSV = "metrics.csv"
EVALS_CSV = "evals.csv"
TENSORBOARD_DIR = "tensorboard"


class CsvLogger(Logger):
    """``metrics.csv`` (one row per log interval) and ``evals.csv`` (one row per evaluation during training, the
    evaluators' numbers as ``evaluator/metric`` columns). A resumed run drops the rows of later steps; a column
    that appears later (a new scalar) rewrites the file with it (earlier rows leave it empty)."""

    def __init__(self) -> None:
        self._dir: Path | None = None
        self._headers: dict[str, list[str]] = {}  # each file's columns, read once (appends do not reread it)

    def open(self, run_dir: Path, start_step: int) -> None:
        self._dir = Path(run_dir)
        for name in (METRICS_CSV, EVALS_CSV):
            header, rows = _read_csv(self._dir / name)
            kept = [r for r in rows if _step(r) is not None and _step(r) <= start_step]  # type: ignore[operator]
            if header and len(kept) != len(rows):
                _write_csv(self._dir / name, header, kept)
            self._headers[name] = header

    def log_metrics(self, step: int, metrics: Mapping[str, Any]) -> None:
        self._append(METRICS_CSV, {k: v for k, v in metrics.items() if _scalar(v)})

    def log_evaluation(self, step: int, results: Mapping[str, Mapping[str, Any]], final: bool) -> None:
        if not final:  # the final results are the run's eval.json
            self._append(EVALS_CSV, {"step": step, **flatten_results(results)})

    def _append(self, name: str, row: dict[str, Any]) -> None:
        assert self._dir is not None, "CsvLogger.open was not called"
        path = self._dir / name
        header = self._headers.get(name, [])
        if header and all(k in header for k in row):
            with open_append(path, newline="") as fh:  # never through a link planted in the run directory
                csv.DictWriter(fh, header).writerow(row)
            return
        _, rows = _read_csv(path)  # a new column: the file is written again with it
        header = header + [k for k in row if k not in header]
        _write_csv(path, header, [*rows, {k: str(v) for k, v in row.items()}])
        self._headers[name] = header


def _scalar(value: Any) -> bool:
    return isinstance(value, int | float | str) and not isinstance(value, bool)


def _step(row: dict[str, str]) -> int | None:
    try:
        return int(row.get("step", ""))
    except ValueError:
        return None  # a torn last row (a crash)


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    if not regular_file(path):  # a link or a FIFO in its place: an error, never followed
        return [], []
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def _write_csv(path: Path, header: list[str], rows: list[dict[str, str]]) -> None:
    # a fresh temporary file, renamed onto the file: a link planted under a fixed name is never written through
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, header)
        writer.writeheader()
        writer.writerows(rows)


class TensorBoardOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    flush_secs: int = Field(30, ge=1, le=3600, description="how often pending events are written to disk (seconds)")


class TensorBoardLogger(Logger):
    """TensorBoard event files under ``RUN/tensorboard`` (``tensorboard --logdir RUN``): every metric as a scalar
    (``loss_critic``, ``samples_per_s``, ...), evaluations as ``eval/EVALUATOR/METRIC`` (``final_eval/...`` at the
    end), and the sample pictures as images. A resumed run tells TensorBoard to drop its events after the
    checkpoint's step (``purge_step``)."""

    def __init__(self, flush_secs: int = 30) -> None:
        if importlib.util.find_spec("tensorboard") is None:
            raise UserError("the tensorboard logger needs the tensorboard package: pip install advinf[tensorboard] "
                            "(or pip install tensorboard)")
        self.flush_secs = flush_secs
        self._writer: Any = None

    def open(self, run_dir: Path, start_step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(str(Path(run_dir) / TENSORBOARD_DIR), flush_secs=self.flush_secs,
                                     purge_step=start_step + 1 if start_step else None)

    def log_metrics(self, step: int, metrics: Mapping[str, Any]) -> None:
        for key, value in metrics.items():
            if key != "step" and _scalar(value) and not isinstance(value, str):
                self._writer.add_scalar(key, value, step)

    def log_evaluation(self, step: int, results: Mapping[str, Mapping[str, Any]], final: bool) -> None:
        prefix = "final_eval" if final else "eval"
        for key, value in flatten_results(results).items():
            self._writer.add_scalar(f"{prefix}/{key}", value, step)

    def log_image(self, step: int, name: str, path: Path) -> None:
        import numpy as np
        from PIL import Image

        with Image.open(path, formats=("PNG",)) as picture:  # the picture advinf wrote, read as nothing else
            self._writer.add_image(name, np.asarray(picture.convert("RGB")), step, dataformats="HWC")

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _jsonl(options: BaseModel, ctx: BuildContext) -> JsonlLogger:
    """metrics.jsonl and evals.jsonl in the run directory (what advinf plot and compare read)."""
    return JsonlLogger()


def _csv(options: BaseModel, ctx: BuildContext) -> CsvLogger:
    """metrics.csv and evals.csv in the run directory."""
    return CsvLogger()


def _tensorboard(options: TensorBoardOptions, ctx: BuildContext) -> TensorBoardLogger:
    """TensorBoard event files under RUN/tensorboard (pip install advinf[tensorboard])."""
    return TensorBoardLogger(options.flush_secs)


@hookimpl
def register_loggers(register) -> None:
    register("jsonl", _jsonl)
    register("csv", _csv)
    register("tensorboard", _tensorboard, TensorBoardOptions)
