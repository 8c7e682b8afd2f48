"""Turn a validated recipe into live components: dataset, prior, game, networks, evaluators.

Build order: dataset, prior, game, then the networks the game needs (a network the game feeds labels to is
built with ``ctx.condition`` set), then evaluators. Networks are initialised from the recipe's seed, or from
another run (``init_from``), and frozen where the recipe says ``trainable = false``. Nothing is moved to the
device or checked against the game here: that happens once, where the networks meet their game (the
trainer, ``load_run``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from advinf import checkpoint as ckpt
from advinf.conditions import Condition
from advinf.data import Dataset
from advinf.errors import Problem, RecipeError, UserError, described
from advinf.interfaces import (
    BuildContext,
    Evaluator,
    Game,
    Logger,
    Networks,
)
from advinf.plugins import COMPONENT_TYPES, PluginHost, a_or_an, default_host
from advinf.provenance import Origin, mark
from advinf.recipe import NetworkSpec, Recipe, build_game
from advinf.rundir import CHECKPOINTS_DIR, is_run_dir
from advinf.settings import resolve_device


@dataclass
class Built:
    """Everything a recipe describes, built and ready to train."""

    recipe: Recipe
    dataset: Dataset
    nets: Networks
    game: Game
    evaluators: dict[str, Evaluator]
    condition: Condition | None
    device: torch.device
    loggers: list[Logger] = dataclasses.field(default_factory=list)


def build(recipe: Recipe, host: PluginHost | None = None, device: torch.device | str | None = None, *,
          init: bool = True, dataset: Dataset | None = None, evaluators: bool = True, loggers: bool = True
          ) -> Built:
    """Build every component of ``recipe``; network initialisation is seeded by ``recipe.seed``.

    ``init = False`` skips ``init_from`` (the weights are about to come from a checkpoint anyway). ``dataset``
    replaces the recipe's (``advinf bench`` times a recipe on random data when its own is not on the machine).
    ``evaluators`` / ``loggers`` = False leave those out (empty): loading a trained run for sampling must not need
    what only training and evaluation use (Inception weights, the tensorboard package).
    """
    host = host or default_host()
    device = resolve_device(device if device is not None else recipe.spec.train.device)
    spec = recipe.spec
    ctx = BuildContext(device=device, seed=spec.seed, host=host)
    torch.manual_seed(spec.seed)

    def make(section: str, kind: str, context: BuildContext) -> Any:
        return _make(recipe, host, section, kind, context)

    ctx.dataset = dataset if dataset is not None else make("dataset", "dataset", ctx)
    ctx.prior = make("prior", "prior", ctx)
    game = build_game(spec, recipe.options, host, ctx)
    ctx.game = game
    if game.reads_labels and not ctx.dataset.labelled:
        raise RecipeError(recipe.source, [Problem("dataset.name", f"game '{spec.game.name}' needs labelled data, "
                                                  f"but dataset '{spec.dataset.name}' has no labels")])
    condition = Condition.for_game(game, ctx.dataset, spec.seed) if game.conditioned else None
    modules: dict[str, nn.Module] = {}
    for name, (section, kind, _nspec) in spec.network_specs().items():
        takes_y = condition if name in game.conditioned else None
        modules[name] = make(section, kind, dataclasses.replace(ctx, condition=takes_y, network=name))
    nets = Networks(ctx.prior, modules)
    for name, (section, _kind, nspec) in spec.network_specs().items():
        if init and nspec.init_from is not None:
            init_network(nets[name], name, nspec, section, recipe.source)
        if not nspec.trainable:
            nets.freeze(name)
    built_evaluators = build_evaluators(recipe, ctx, host) if evaluators else {}
    built_loggers = ([_make(recipe, host, f"loggers.{name}", "logger", ctx) for name in spec.train.loggers]
                     if loggers else [])
    return Built(recipe, ctx.dataset, nets, game, built_evaluators, condition, device, built_loggers)


def build_dataset(recipe: Recipe, host: PluginHost | None = None, device: torch.device | str | None = None
                  ) -> Dataset:
    """The recipe's dataset alone (a recipe error at ``dataset.KEY`` when it cannot be loaded)."""
    host = host or default_host()
    device = resolve_device(device if device is not None else recipe.spec.train.device)
    return _make(recipe, host, "dataset", "dataset", BuildContext(device=device, seed=recipe.spec.seed, host=host))


def build_evaluators(recipe: Recipe, ctx: BuildContext, host: PluginHost | None = None) -> dict[str, Evaluator]:
    """The recipe's evaluators, built with ``ctx`` (its dataset and prior)."""
    host = host or default_host()
    if ctx.host is None:
        ctx = dataclasses.replace(ctx, host=host)
    return {name: _make(recipe, host, f"evaluators.{name}", "evaluator", ctx) for name in recipe.spec.evaluators}


def _make(recipe: Recipe, host: PluginHost, section: str, kind: str, context: BuildContext) -> Any:
    """One component of ``recipe`` by its factory; what goes wrong is a recipe error naming the section."""
    name, options = recipe.component(section)  # type: ignore[misc]
    comp = host.get(kind, name)
    key = ("train.loggers" if section.startswith("loggers.") else
           section if section.startswith("evaluators.") else f"{section}.name")
    try:
        obj = comp.factory(options, context)
    except UserError as exc:  # the factory's own message, e.g. sizes that do not fit the data
        where = f"{section}.{exc.option}" if exc.option else key
        raise RecipeError(recipe.source, [Problem(where, str(exc))]) from None
    except Exception as exc:  # e.g. an allocation that fails: before training, naming the section
        raise RecipeError(recipe.source, [Problem(key, f"building {kind} '{name}' (plugin '{comp.plugin}') "
                                                        f"failed: {described(exc)}")]) from exc
    if not isinstance(obj, COMPONENT_TYPES[kind]):
        raise RecipeError(recipe.source, [Problem(key, f"the factory of {kind} '{name}' (plugin '{comp.plugin}') "
                                                       f"returned {type(obj).__name__}, not "
                                                       f"{a_or_an(COMPONENT_TYPES[kind].__name__)}: a bug in that "
                                                       "plugin")])
    mark(obj, Origin(kind, name, options.model_dump(mode="json", exclude_none=True)))  # as advinf.create does
    return obj


def init_network(module: nn.Module, name: str, nspec: NetworkSpec, section: str, source: str) -> None:
    """Load the initial weights of network ``name`` from the run ``nspec.init_from`` (its latest checkpoint;
    the moving average when the run kept one). Problems are recipe errors at ``SECTION.init_from``."""
    key = f"{section}.init_from"
    run = Path(nspec.init_from)  # type: ignore[arg-type]

    def fail(message: str) -> RecipeError:
        return RecipeError(source, [Problem(key, message, nspec.init_from, True)])

    if not is_run_dir(run):
        raise fail("not an advinf run directory (no recipe.toml); give the --out of a trained run")
    path = ckpt.latest_checkpoint(run / CHECKPOINTS_DIR)
    if path is None:
        raise fail("that run has no checkpoint yet")
    try:
        tensors = ckpt.load_checkpoint(path).tensors["model"]
        source_name = nspec.init_network or name
        prefix = ckpt.network_prefix(tensors, source_name)
        if prefix is None:
            raise UserError(f"{path} holds no network '{source_name}' (it holds: "
                            f"{', '.join(ckpt.network_names(tensors)) or 'none'}); set {section}.init_network")
        ckpt.load_module_state(module, prefix, tensors, path, name)
    except UserError as exc:
        raise fail(str(exc)) from None
