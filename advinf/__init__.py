"""advinf: adversarial inference (ALI, BiGAN, GAN) with plugins, recipes and a fast training loop.

The names below are imported when first used (PEP 562), so that ``advinf --help`` and other commands that need
no torch start without importing it; ``from advinf import X`` and ``advinf.X`` work as with eager imports.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from advinf.version import __version__

if TYPE_CHECKING:
    from advinf.atomic import atomic_path, open_append, regular_file
    from advinf.batches import MAIN, BatchSource, StreamSource, stream_seed
    from advinf.builder import Built, build
    from advinf.components import create
    from advinf.conditions import Condition, ConditionEmbedding, embedding_for, example_conditions, with_condition
    from advinf.data import DataAccess, Dataset, Split, StreamingSplit, data_access_keys
    from advinf.divergences import Divergence, critic_pairs
    from advinf.errors import OptionError, PluginError, RecipeError, UserError
    from advinf.hookspecs import hookimpl
    from advinf.interfaces import (
        CRITIC,
        GENERATOR,
        WELL_KNOWN,
        Batch,
        BuildContext,
        Decoder,
        DeterministicPosterior,
        Encoder,
        Evaluator,
        Game,
        GameLosses,
        GaussianPosterior,
        ImplicitPosterior,
        JointCritic,
        Logger,
        Networks,
        Player,
        Posterior,
        Prior,
        RegisteredName,
        Stream,
        TrainedModel,
        check_networks,
        checks_machine,
        evaluating,
        flat_latent_dim,
    )
    from advinf.loggers import JsonlLogger, flatten_results
    from advinf.pictures import save_grid
    from advinf.plugins import PluginHost, default_host
    from advinf.provenance import origin_of
    from advinf.recipe import Recipe, load_recipe
    from advinf.regularisers import spectral_normalise
    from advinf.runs import LoadedRun, load_run, saved_recipe
    from advinf.session import RunOutcome, run_recipe
    from advinf.settings import OptimizerSpec, ScheduleSpec, TrainSpec
    from advinf.trainer import Trainer, TrainingDiverged, TrainResult


#: Each public name and the module that defines it.
_LAZY: dict[str, str] = {
    "create": "advinf.components",
    "atomic_path": "advinf.atomic",
    "open_append": "advinf.atomic",
    "regular_file": "advinf.atomic",
    "MAIN": "advinf.batches",
    "BatchSource": "advinf.batches",
    "StreamSource": "advinf.batches",
    "stream_seed": "advinf.batches",
    "Built": "advinf.builder",
    "build": "advinf.builder",
    "Condition": "advinf.conditions",
    "ConditionEmbedding": "advinf.conditions",
    "embedding_for": "advinf.conditions",
    "example_conditions": "advinf.conditions",
    "with_condition": "advinf.conditions",
    "DataAccess": "advinf.data",
    "Dataset": "advinf.data",
    "Split": "advinf.data",
    "StreamingSplit": "advinf.data",
    "data_access_keys": "advinf.data",
    "Divergence": "advinf.divergences",
    "critic_pairs": "advinf.divergences",
    "OptionError": "advinf.errors",
    "PluginError": "advinf.errors",
    "RecipeError": "advinf.errors",
    "UserError": "advinf.errors",
    "hookimpl": "advinf.hookspecs",
    "CRITIC": "advinf.interfaces",
    "GENERATOR": "advinf.interfaces",
    "WELL_KNOWN": "advinf.interfaces",
    "Batch": "advinf.interfaces",
    "BuildContext": "advinf.interfaces",
    "Decoder": "advinf.interfaces",
    "DeterministicPosterior": "advinf.interfaces",
    "Encoder": "advinf.interfaces",
    "Evaluator": "advinf.interfaces",
    "Game": "advinf.interfaces",
    "GameLosses": "advinf.interfaces",
    "GaussianPosterior": "advinf.interfaces",
    "ImplicitPosterior": "advinf.interfaces",
    "JointCritic": "advinf.interfaces",
    "Logger": "advinf.interfaces",
    "Networks": "advinf.interfaces",
    "Player": "advinf.interfaces",
    "Posterior": "advinf.interfaces",
    "Prior": "advinf.interfaces",
    "RegisteredName": "advinf.interfaces",
    "Stream": "advinf.interfaces",
    "TrainedModel": "advinf.interfaces",
    "check_networks": "advinf.interfaces",
    "checks_machine": "advinf.interfaces",
    "evaluating": "advinf.interfaces",
    "flat_latent_dim": "advinf.interfaces",
    "JsonlLogger": "advinf.loggers",
    "flatten_results": "advinf.loggers",
    "save_grid": "advinf.pictures",
    "PluginHost": "advinf.plugins",
    "default_host": "advinf.plugins",
    "origin_of": "advinf.provenance",
    "Recipe": "advinf.recipe",
    "load_recipe": "advinf.recipe",
    "spectral_normalise": "advinf.regularisers",
    "LoadedRun": "advinf.runs",
    "load_run": "advinf.runs",
    "saved_recipe": "advinf.runs",
    "RunOutcome": "advinf.session",
    "run_recipe": "advinf.session",
    "OptimizerSpec": "advinf.settings",
    "ScheduleSpec": "advinf.settings",
    "TrainSpec": "advinf.settings",
    "Trainer": "advinf.trainer",
    "TrainingDiverged": "advinf.trainer",
    "TrainResult": "advinf.trainer",
}


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use; ``advinf.runs`` and the other modules too."""
    module = _LAZY.get(name)
    if module is None:
        try:
            return importlib.import_module(f"{__name__}.{name}")  # sets the attribute itself
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module 'advinf' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "Batch", "BatchSource", "BuildContext", "Built", "CRITIC", "Condition", "ConditionEmbedding", "Dataset",
    "Decoder", "DeterministicPosterior", "Divergence", "Encoder", "Evaluator", "GENERATOR", "Game", "GameLosses",
    "GaussianPosterior", "ImplicitPosterior", "JointCritic", "JsonlLogger", "LoadedRun", "Logger", "Networks",
    "OptimizerSpec", "OptionError", "Player", "PluginError", "PluginHost", "Posterior", "Prior", "Recipe",
    "RecipeError", "RegisteredName", "RunOutcome", "ScheduleSpec", "Split", "Stream", "StreamingSplit", "TrainResult",
    "TrainSpec", "TrainedModel", "Trainer", "TrainingDiverged", "UserError", "WELL_KNOWN", "__version__", "build",
    "check_networks", "checks_machine", "create", "critic_pairs", "default_host", "flatten_results", "hookimpl",
    "load_recipe", "load_run", "run_recipe",
    # helpers for plugins (docs/plugins.md, "Helpers for plugins"): what the built-in plugins use, no more
    "DataAccess", "MAIN", "StreamSource", "atomic_path", "data_access_keys", "embedding_for", "evaluating",
    "example_conditions", "flat_latent_dim", "open_append", "origin_of", "regular_file", "save_grid", "saved_recipe",
    "spectral_normalise", "stream_seed", "with_condition",
]
