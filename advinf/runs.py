"""Using a trained run: ``load_run(RUN_DIR)`` gives the trained model (networks in eval mode, with its game)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from advinf import checkpoint as ckpt
from advinf.atomic import write_json
from advinf.build import Built, build, build_evaluators
from advinf.data import Dataset
from advinf.errors import UserError
from advinf.evaluation import evaluate
from advinf.interfaces import BuildContext, TrainedModel, check_networks
from advinf.plugins import PluginHost, default_host
from advinf.recipe import Recipe, validate_recipe
from advinf.rundir import CHECKPOINTS_DIR, EVAL_FILE, RECIPE_FILE, is_run_dir
from advinf.settings import resolve_device


@dataclass(kw_only=True)
class LoadedRun(TrainedModel):
    """A trained run: the model (eval mode) plus the recipe, dataset and step it comes from."""

    recipe: Recipe
    dataset: Dataset
    step: int
    run_dir: Path
    built: Built


def load_run(run_dir: str | Path, device: str | torch.device | None = None, checkpoint: str | Path | None = None,
             host: PluginHost | None = None, plugins: Sequence[str | Path] = ()) -> LoadedRun:
    """Load the newest checkpoint of ``run_dir`` (or ``checkpoint``), rebuilt from the recipe it was trained with.

    With ``train.ema`` the averaged networks are loaded (what samples and evaluation used). Sampling, encoding
    and reconstruction go through the run's game (``run.sample(...)``, ``run.reconstruct(x, y)``), so a
    conditional model is used with its conditions.

    Nothing is unpickled and nothing is imported: weights come from safetensors, the recipe from JSON, and the
    run's local plugins (code) are loaded only when named in ``plugins`` (the CLI's ``--plugin``). ``device``
    defaults to the recipe's ``train.device`` (``auto``).
    """
    run_dir = Path(run_dir)
    if not is_run_dir(run_dir):
        raise UserError(f"{run_dir} is not an advinf run directory (no {RECIPE_FILE})")
    path = Path(checkpoint) if checkpoint is not None else ckpt.latest_checkpoint(run_dir / CHECKPOINTS_DIR)
    if path is None:
        raise UserError(f"{run_dir} has no checkpoint yet (nothing under {run_dir / CHECKPOINTS_DIR})")
    loaded = ckpt.load_checkpoint(path)
    host = host or default_host()
    for plugin in plugins:
        host.load_local(str(plugin))
    recipe = recipe_of(loaded, run_dir, host)
    dev = resolve_device(device if device is not None else recipe.spec.train.device)
    built = build(recipe, host=host, device=dev, init=False)
    tensors = loaded.tensors["model"]
    for name, module in built.nets.items():
        prefix = ckpt.network_prefix(tensors, name)
        ckpt.load_module_state(module, prefix or name, tensors, path)
    check_networks(built.game, built.nets)
    built.nets.to(dev).train(False)
    return LoadedRun(nets=built.nets, game=built.game, device=dev, condition=built.condition, recipe=recipe,
                     dataset=built.dataset, step=loaded.step, run_dir=run_dir, built=built)


def evaluate_run(run_dir: str | Path, names: Sequence[str] | None = None, overrides: Sequence[str] = (), *,
                 device: str | torch.device | None = None, plugins: Sequence[str | Path] = (),
                 host: PluginHost | None = None) -> dict[str, Any]:
    """Run evaluators on a trained run and merge their results into its eval.json (earlier entries are kept).

    ``names`` picks registered evaluators (the run's recipe's options where it configures them, else their
    defaults; None: the recipe's own); ``overrides`` are ``evaluators.NAME.key=value`` settings.
    """
    run_dir = Path(run_dir)
    run = load_run(run_dir, device=device, plugins=plugins, host=host)
    data = run.recipe.resolved(run_dir)
    configured = data.get("evaluators", {})
    data["evaluators"] = dict(configured) if names is None else {n: configured.get(n, {}) for n in names}
    bad = [o for o in overrides if not o.strip().startswith("evaluators.")]
    if bad:
        raise UserError(f"--set with advinf evaluate changes evaluators only (evaluators.NAME.key=value), not: "
                        f"{', '.join(bad)}")
    recipe = validate_recipe(data, overrides, source=f"{run_dir / RECIPE_FILE} (with --with/--set)",
                             base_dir=run_dir, host=host, load_plugins=False)
    ctx = BuildContext(dataset=run.dataset, prior=run.prior, device=run.device, seed=recipe.spec.seed)
    evaluators = build_evaluators(recipe, ctx, host)
    results = evaluate(run, evaluators, run.dataset.to(run.device), run_dir)
    path = run_dir / EVAL_FILE
    try:
        earlier = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (ValueError, OSError):
        earlier = {}
    write_json(path, {**(earlier if isinstance(earlier, dict) else {}), **results})
    return results


def recipe_of(loaded: ckpt.Checkpoint, run_dir: Path, host: PluginHost | None = None) -> Recipe:
    """The recipe a checkpoint was trained with (stored in it as JSON)."""
    data: dict[str, Any] | None = loaded.state.get("recipe")
    if data is None:
        raise UserError(f"{loaded.path} holds no recipe; it was not written by advinf run")
    return validate_recipe(data, source=f"{loaded.path}/state.json", base_dir=run_dir, host=host, load_plugins=False)
