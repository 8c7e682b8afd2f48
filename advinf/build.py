"""Turn a validated recipe into live components: dataset, prior, networks, game, evaluators."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from advinf.data import Dataset
from advinf.errors import PluginError, UserError
from advinf.interfaces import Decoder, Encoder, Evaluator, Game, JointCritic, Networks, Prior
from advinf.plugins import PluginHost, default_host
from advinf.recipe import Recipe

_EXPECTED: dict[str, type] = {"dataset": Dataset, "prior": Prior, "encoder": Encoder, "decoder": Decoder,
                              "critic": JointCritic, "game": Game, "evaluator": Evaluator}


@dataclass
class BuildContext:
    """What a component factory may read: the pieces built before it, the device and the seed."""

    dataset: Dataset | None = None
    prior: Prior | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seed: int = 0

    @property
    def latent_shape(self) -> tuple[int, ...] | None:
        return None if self.prior is None else tuple(self.prior.latent_shape)

    @property
    def sample_shape(self) -> tuple[int, ...] | None:
        return None if self.dataset is None else self.dataset.sample_shape


@dataclass
class Built:
    """Everything a recipe describes, built and ready to train."""

    recipe: Recipe
    dataset: Dataset
    nets: Networks
    game: Game
    evaluators: dict[str, Evaluator]


def resolve_device(spec: str) -> torch.device:
    """``auto`` -> CUDA if present else CPU; ``cuda[:n]`` checked for availability."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"train.device = '{spec}' but CUDA is not available here; use 'auto' or 'cpu'")
        dev = torch.device(spec)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(f"train.device = '{spec}' but only {torch.cuda.device_count()} GPU(s) are visible")
        return dev
    return torch.device(spec)


def build(recipe: Recipe, host: PluginHost | None = None, device: torch.device | None = None) -> Built:
    """Build every component of ``recipe`` in order; network initialisation is seeded by ``recipe.seed``."""
    host = host or default_host()
    device = device or resolve_device(recipe.spec.train.device)
    ctx = BuildContext(device=device, seed=recipe.spec.seed)
    torch.manual_seed(recipe.spec.seed)

    def make(section: str, kind: str) -> Any:
        found = recipe.component(section)
        if found is None:
            return None
        name, options = found
        comp = host.get(kind, name)
        obj = comp.factory(options, ctx)
        if not isinstance(obj, _EXPECTED[kind]):
            raise PluginError(f"the factory of {kind} '{name}' (plugin '{comp.plugin}') returned "
                              f"{type(obj).__name__}, not a {_EXPECTED[kind].__name__}")
        return obj

    ctx.dataset = make("dataset", "dataset")
    ctx.prior = make("prior", "prior")
    encoder, decoder, critic = make("encoder", "encoder"), make("decoder", "decoder"), make("critic", "critic")
    game = make("game", "game")
    game_name = recipe.spec.game.name
    if game.uses_encoder and encoder is None:
        raise UserError(f"{recipe.source}: game '{game_name}' trains an encoder; add an [encoder] section")
    if not game.uses_encoder and encoder is not None:
        raise UserError(f"{recipe.source}: game '{game_name}' has no encoder; remove the [encoder] section")
    nets = Networks(prior=ctx.prior, decoder=decoder, critic=critic, encoder=encoder)
    for m in nets.modules().values():
        m.to(device)
    game.check(nets)
    evaluators = {name: make(f"evaluators.{name}", "evaluator") for name in recipe.spec.evaluators}
    return Built(recipe, ctx.dataset, nets, game, evaluators)
