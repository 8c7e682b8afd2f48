"""The one evaluation path: evaluators read a trained model (through its game) during training, at its end,
and later from a run directory (``advinf evaluate``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from advinf.data import Dataset
from advinf.interfaces import Evaluator, Networks, TrainedModel


@contextlib.contextmanager
def evaluating(nets: Networks) -> Iterator[None]:
    """Eval mode and no gradients for ``nets``; restores each network's mode afterwards."""
    modes = {name: m.training for name, m in nets.items()}
    for m in nets.values():
        m.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for name, m in nets.items():
            m.train(modes[name])


def evaluate(model: TrainedModel, evaluators: Mapping[str, Evaluator], data: Dataset, out_dir: Path
             ) -> dict[str, Any]:
    """Every evaluator's metrics by name. The global RNG is left as it was (evaluating during training does not
    change the training run), and the networks' train/eval modes are restored."""
    devices = [model.device.index or 0] if model.device.type == "cuda" else []
    results: dict[str, Any] = {}
    with torch.random.fork_rng(devices=devices), evaluating(model.nets):
        for name, ev in evaluators.items():
            results[name] = ev.evaluate(model, data, out_dir)
    return results
