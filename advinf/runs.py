"""Using a trained run: ``load_run(RUN_DIR)`` gives the prior and networks in eval mode."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from advinf import checkpoint as ckpt
from advinf.build import Built, build, resolve_device
from advinf.data import Dataset
from advinf.errors import UserError
from advinf.interfaces import TrainedModel
from advinf.plugins import PluginHost
from advinf.recipe import Recipe, validate_recipe
from advinf.rundir import CHECKPOINTS_DIR, RECIPE_FILE, is_run_dir


@dataclass
class LoadedRun(TrainedModel):
    """A trained run: the networks (eval mode) plus the recipe, dataset and step they come from."""

    recipe: Recipe
    dataset: Dataset
    step: int
    run_dir: Path
    built: Built


def load_run(run_dir: str | Path, device: str | torch.device | None = None, checkpoint: str | Path | None = None,
             host: PluginHost | None = None) -> LoadedRun:
    """Load the newest checkpoint of ``run_dir`` (or ``checkpoint``), rebuilt from the recipe it was trained with.

    With ``train.ema`` the encoder and decoder hold the moving-average weights (what samples and evaluation used).

    Nothing is unpickled: weights come from safetensors, the recipe from JSON. ``device`` defaults to the
    recipe's ``train.device`` (``auto``).
    """
    run_dir = Path(run_dir)
    if not is_run_dir(run_dir):
        raise UserError(f"{run_dir} is not an advinf run directory (no {RECIPE_FILE})")
    path = Path(checkpoint) if checkpoint is not None else ckpt.latest_checkpoint(run_dir / CHECKPOINTS_DIR)
    if path is None:
        raise UserError(f"{run_dir} has no checkpoint yet (nothing under {run_dir / CHECKPOINTS_DIR})")
    loaded = ckpt.load_checkpoint(path)
    recipe = recipe_of(loaded, run_dir, host)
    dev = torch.device(device) if device is not None else resolve_device(recipe.spec.train.device)
    built = build(recipe, host=host, device=dev)
    tensors = loaded.tensors["model"]
    for name, module in built.nets.modules().items():
        # with train.ema the moving average is the trained model; its keys are "ema_NAME.module.*"
        ema = f"ema_{name}.module"
        use_ema = any(k.startswith(ema + ".") for k in tensors)
        ckpt.load_module_state(module, ema if use_ema else name, tensors, path)
        module.eval()
    nets = built.nets
    return LoadedRun(nets.prior, nets.decoder, nets.critic, nets.encoder, dev, recipe, built.dataset, loaded.step,
                     run_dir, built)


def recipe_of(loaded: ckpt.Checkpoint, run_dir: Path, host: PluginHost | None = None) -> Recipe:
    """The recipe a checkpoint was trained with (stored in it as JSON)."""
    data: dict[str, Any] | None = loaded.state.get("recipe")
    if data is None:
        raise UserError(f"{loaded.path} holds no recipe; it was not written by advinf run")
    return validate_recipe(data, source=f"{loaded.path}/state.json", base_dir=run_dir, host=host)
