"""advinf: adversarial inference (ALI, BiGAN, GAN) with plugins, recipes and a fast training loop."""

from typing import Literal, overload

from torch import nn

from advinf.atomic import atomic_path
from advinf.batches import MAIN, BatchSource, StreamSource, stream_seed
from advinf.build import Built, build
from advinf.conditions import Condition, ConditionEmbedding, embedding_for, example_conditions, with_condition
from advinf.data import DataAccess, Dataset, Split, StreamingSplit, data_access_keys
from advinf.divergences import Divergence, critic_pairs
from advinf.errors import PluginError, RecipeError, UserError
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
from advinf.version import __version__


@overload
def create(kind: Literal["game"], name: str, ctx: BuildContext | None = None, /,
           **options: object) -> Game: ...
@overload
def create(kind: Literal["encoder"], name: str, ctx: BuildContext | None = None, /,
           **options: object) -> Encoder: ...
@overload
def create(kind: Literal["decoder"], name: str, ctx: BuildContext | None = None, /,
           **options: object) -> Decoder: ...
@overload
def create(kind: Literal["critic"], name: str, ctx: BuildContext | None = None, /,
           **options: object) -> JointCritic: ...
@overload
def create(kind: Literal["prior"], name: str, ctx: BuildContext | None = None, /,
           **options: object) -> Prior: ...
@overload
def create(kind: Literal["dataset"], name: str, ctx: BuildContext | None = None, /,
           **options: object) -> Dataset: ...
@overload
def create(kind: Literal["evaluator"], name: str, ctx: BuildContext | None = None, /,
           **options: object) -> Evaluator: ...
@overload
def create(kind: Literal["divergence"], name: str, ctx: BuildContext | None = None, /,
           **options: object) -> Divergence: ...
@overload
def create(kind: Literal["feature_network"], name: str, ctx: BuildContext | None = None, /,
           **options: object) -> nn.Module: ...
@overload
def create(kind: Literal["logger"], name: str, ctx: BuildContext | None = None, /,
           **options: object) -> Logger: ...
@overload
def create(kind: str, name: str, ctx: BuildContext | None = None, /, **options: object) -> object: ...


def create(kind: str, name: str, ctx: BuildContext | None = None, /, **options: object) -> object:
    """Build a registered component by kind and name, e.g. ``create("game", "ali")``; typed by kind for checkers.
    Options are checked as a recipe's are (unknown keys, bounds, booleans posing as numbers), as a RecipeError."""
    return default_host().create(kind, name, ctx, **options)


__all__ = [
    "Batch", "BatchSource", "BuildContext", "Built", "CRITIC", "Condition", "ConditionEmbedding", "Dataset",
    "Decoder", "DeterministicPosterior", "Divergence", "Encoder", "Evaluator", "GENERATOR", "Game", "GameLosses",
    "GaussianPosterior", "ImplicitPosterior", "JointCritic", "JsonlLogger", "LoadedRun", "Logger", "Networks",
    "OptimizerSpec", "Player", "PluginError", "PluginHost", "Posterior", "Prior", "Recipe", "RecipeError",
    "RegisteredName", "RunOutcome", "ScheduleSpec", "Split", "Stream", "StreamingSplit", "TrainResult", "TrainSpec",
    "TrainedModel", "Trainer", "TrainingDiverged", "UserError", "WELL_KNOWN", "__version__", "build",
    "check_networks", "checks_machine", "create", "critic_pairs", "default_host", "flatten_results", "hookimpl",
    "load_recipe", "load_run", "run_recipe",
    # helpers for plugins (docs/plugins.md, "Helpers for plugins"): what the built-in plugins use, no more
    "DataAccess", "MAIN", "StreamSource", "atomic_path", "data_access_keys", "embedding_for", "evaluating",
    "example_conditions", "flat_latent_dim", "origin_of", "save_grid", "saved_recipe", "spectral_normalise",
    "stream_seed", "with_condition",
]
