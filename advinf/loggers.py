"""Where a run's metrics go: ``JsonlLogger``, the run directory's own ``metrics.jsonl`` and ``evals.jsonl`` (the
default), and the helpers other loggers share. The interface, ``Logger``, is in advinf/interfaces.py.

The trainer hands every logger the same three things, on rank 0 only: the averaged scalars of each log interval,
the evaluators' results, and each fixed-noise sample picture (the PNG it wrote under ``samples/``). Loggers are
chosen by name in a recipe (``[train] loggers = ["jsonl", "tensorboard"]``) and registered by plugins with the
``register_loggers`` hook; a library user passes instances (``Trainer(..., loggers=[...])``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from advinf.interfaces import Logger
from advinf.rundir import EVALS_FILE, METRICS_FILE, append_jsonl


class JsonlLogger(Logger):
    """The run directory's ``metrics.jsonl`` (one JSON object per log interval) and ``evals.jsonl`` (one per
    evaluation during training). Resuming drops the lines of steps after the checkpoint (``RunDir.truncate_after``);
    ``advinf plot`` and ``advinf compare`` read these files."""

    def __init__(self) -> None:
        self._dir: Path | None = None

    def open(self, run_dir: Path, start_step: int) -> None:
        self._dir = Path(run_dir)

    def _path(self, name: str) -> Path:
        assert self._dir is not None, "JsonlLogger.open was not called"
        return self._dir / name

    def log_metrics(self, step: int, metrics: Mapping[str, Any]) -> None:
        append_jsonl(self._path(METRICS_FILE), dict(metrics))

    def log_evaluation(self, step: int, results: Mapping[str, Mapping[str, Any]], final: bool) -> None:
        if not final:  # the final results are the run's eval.json
            append_jsonl(self._path(EVALS_FILE), {"step": step, **results})


def flatten_results(results: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The numbers of nested evaluation results as ``evaluator/metric`` -> float (booleans and text left out):
    what a logger of scalars (CSV columns, TensorBoard tags) writes."""
    out: dict[str, float] = {}
    for key, value in results.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_results(value, name + "/"))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[name] = float(value)
    return out
