"""advinf: adversarial inference (ALI, BiGAN, GAN) with plugins, recipes and a fast training loop."""

from advinf.batches import BatchSource
from advinf.build import Built, build
from advinf.conditions import Condition, ConditionEmbedding
from advinf.data import Dataset, Split, StreamingSplit
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
)
from advinf.loggers import JsonlLogger, flatten_results
from advinf.plugins import PluginHost, default_host
from advinf.recipe import Recipe, load_recipe
from advinf.runs import LoadedRun, load_run
from advinf.session import RunOutcome, run_recipe
from advinf.settings import OptimizerSpec, ScheduleSpec, TrainSpec
from advinf.trainer import Trainer, TrainingDiverged, TrainResult
from advinf.version import __version__


def create(kind: str, name: str, ctx: BuildContext | None = None, /, **options: object) -> object:
    """Build a registered component by kind and name, e.g. ``create("game", "ali")``."""
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
]
