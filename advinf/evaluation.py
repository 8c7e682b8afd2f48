"""The one evaluation path: evaluators read a trained model (through its game) during training, at its end,
and later from a run directory (``advinf evaluate``)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from advinf.data import Dataset
from advinf.errors import UserError
from advinf.interfaces import Evaluator, TrainedModel, evaluating
from advinf.provenance import qualname
from advinf.rundir import EVAL_STAMPS


class EvaluationFailed(UserError):
    """Evaluators failed: a bug in their plugin, a problem they report (a UserError), or results that are not
    metrics. ``results`` holds the metrics of the evaluators that did not fail, which callers keep (eval.json,
    evals.jsonl) before the error goes on; ``failed`` names the evaluators that did."""

    def __init__(self, message: str, results: dict[str, Any], failed: list[str]):
        super().__init__(message)
        self.results, self.failed = results, failed


def evaluate(model: TrainedModel, evaluators: Mapping[str, Evaluator], data: Dataset, out_dir: Path
             ) -> dict[str, Any]:
    """Every evaluator's metrics by name. The global RNG is left as it was (evaluating during training does not
    change the training run), and the networks' train/eval modes are restored. An evaluator that fails does not
    cost the others' results: they are all run, then :class:`EvaluationFailed` carries what the others gave."""
    devices = [model.device.index or 0] if model.device.type == "cuda" else []
    results: dict[str, Any] = {}
    failures: list[tuple[str, str, BaseException | None]] = []
    with torch.random.fork_rng(devices=devices), evaluating(model.nets):
        for name, ev in evaluators.items():
            try:
                metrics = ev.evaluate(model, data, out_dir)
            except UserError as exc:  # meant for the user: where it names an option, that is the recipe's key
                key = f"evaluators.{name}.{exc.option}: " if exc.option else ""
                failures.append((name, f"evaluator '{name}': {key}{exc}", exc))
                continue
            except OSError:
                raise  # the file system's refusal (a full disk), told as such; eval.json could not be written
            except Exception as exc:  # noqa: BLE001 -- a bug in the evaluator's plugin; the others still run
                text = " ".join(str(exc).split())[:400]
                failures.append((name, f"evaluator '{name}' ({qualname(ev)}) failed: {type(exc).__name__}: "
                                       f"{text}", exc))
                continue
            try:
                results[name] = checked_metrics(name, metrics)
            except UserError as exc:  # results that are not metrics: its message names the evaluator
                failures.append((name, str(exc), exc))
    if failures:
        error = EvaluationFailed("; ".join(f for _, f, _ in failures), results, [n for n, _, _ in failures])
        raise error from failures[0][2]
    return results


def checked_metrics(name: str, metrics: Any) -> dict[str, Any]:
    """An evaluator's result as eval.json keeps it: a table of JSON values with string keys. A 0-dim tensor or
    NumPy scalar is taken as its number; a non-finite number is kept as null (JSON has no NaN), with a
    warning; anything else that is not JSON, and names advinf stamps entries with, are refused, naming the
    evaluator."""
    if not isinstance(metrics, dict):
        raise UserError(f"evaluator '{name}' returned {type(metrics).__name__}, not a dict of metrics by name "
                        "(return e.g. {\"accuracy\": 0.93})")
    taken = sorted(set(EVAL_STAMPS) & set(metrics))
    if taken:
        raise UserError(f"evaluator '{name}' returned metric(s) named {', '.join(taken)}: advinf stamps each "
                        f"eval.json entry with the step, options and data changes it was computed with, "
                        f"under those names; rename the metric in the plugin")
    return {key: _json_value(name, key, value) for key, value in metrics.items()}


def _json_value(name: str, key: Any, value: Any) -> Any:
    if not isinstance(key, str):
        raise UserError(f"evaluator '{name}' returned a metric named {key!r}: metric names are strings")
    if isinstance(value, np.generic) or (isinstance(value, torch.Tensor | np.ndarray) and value.ndim == 0):
        value = value.item()
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        warnings.warn(f"evaluator '{name}' returned {value} for '{key}': kept as null (JSON has no {value})",
                      stacklevel=4)
        return None
    if isinstance(value, list | tuple):
        return [_json_value(name, f"{key}[{i}]", v) for i, v in enumerate(value)]
    if isinstance(value, dict):
        bad = [k for k in value if not isinstance(k, str)]
        if bad:
            raise UserError(f"evaluator '{name}' returned a table under '{key}' with the key {bad[0]!r}: keys are "
                            "strings")
        return {k: _json_value(name, f"{key}.{k}", v) for k, v in value.items()}
    what = f"a tensor of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor | np.ndarray) \
        else type(value).__name__
    raise UserError(f"evaluator '{name}' returned {what} for '{key}': metrics are numbers, strings, booleans, "
                    "null, and lists and tables of them (a tensor: .item() or .tolist())")
