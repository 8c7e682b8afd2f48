"""The one evaluation path: evaluators read a trained model (through its game) during training, at its end,
and later from a run directory (``advinf evaluate``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from advinf.data import Dataset
from advinf.errors import UserError
from advinf.interfaces import Evaluator, TrainedModel, evaluating
from advinf.rundir import EVAL_STAMPS


def evaluate(model: TrainedModel, evaluators: Mapping[str, Evaluator], data: Dataset, out_dir: Path
             ) -> dict[str, Any]:
    """Every evaluator's metrics by name. The global RNG is left as it was (evaluating during training does not
    change the training run), and the networks' train/eval modes are restored."""
    devices = [model.device.index or 0] if model.device.type == "cuda" else []
    results: dict[str, Any] = {}
    with torch.random.fork_rng(devices=devices), evaluating(model.nets):
        for name, ev in evaluators.items():
            results[name] = ev.evaluate(model, data, out_dir)
            taken = sorted(set(EVAL_STAMPS) & set(results[name])) if isinstance(results[name], dict) else []
            if taken:
                raise UserError(f"evaluator '{name}' returned metric(s) named {', '.join(taken)}: advinf stamps each "
                                f"eval.json entry with the step, options and data changes it was computed with, "
                                f"under those names; rename the metric in the plugin")
    return results
