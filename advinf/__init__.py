"""advinf: adversarial inference (ALI, BiGAN, GAN) with plugins, recipes and a fast training loop."""

from advinf.build import BuildContext, Built, build
from advinf.data import Dataset, Split, StreamingSplit
from advinf.errors import PluginError, RecipeError, UserError
from advinf.hookspecs import hookimpl
from advinf.interfaces import (
    Batch,
    Decoder,
    DeterministicPosterior,
    Encoder,
    Evaluator,
    Game,
    GameLosses,
    GaussianPosterior,
    ImplicitPosterior,
    JointCritic,
    Networks,
    Posterior,
    Prior,
    TrainedModel,
)
from advinf.plugins import PluginHost, default_host
from advinf.recipe import OptimizerSpec, Recipe, TrainSpec, load_recipe
from advinf.runs import LoadedRun, load_run
from advinf.trainer import Trainer, TrainingDiverged, TrainResult

__version__ = "0.1.0"


def create(kind: str, name: str, ctx: BuildContext | None = None, /, **options: object) -> object:
    """Build a registered component by kind and name, e.g. ``create("game", "ali")``."""
    return default_host().create(kind, name, ctx, **options)


__all__ = [
    "Batch", "BuildContext", "Built", "Dataset", "Decoder", "DeterministicPosterior", "Encoder", "Evaluator",
    "Game", "GameLosses", "GaussianPosterior", "ImplicitPosterior", "JointCritic", "Networks",
    "OptimizerSpec", "PluginError", "PluginHost", "Posterior", "Prior", "Recipe", "RecipeError", "Split",
    "StreamingSplit",
    "TrainResult", "TrainSpec", "TrainedModel", "Trainer", "UserError", "build", "create", "default_host",
    "hookimpl", "load_recipe", "load_run", "LoadedRun", "TrainingDiverged", "__version__",
]
