"""The abstract pieces of an adversarial-inference model: encoder, decoder, critic, prior, game, evaluator.

Names follow the ALI paper: the encoder Gz(x) gives q(z|x), the decoder Gx(z) gives p(x|z), the critic
D(x, z) tells data pairs (x, Gz(x)) from model pairs (Gx(z), z), and the game turns critic logits into the
critic's and the generator's (encoder + decoder) losses.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from advinf.data import Dataset


class Posterior:
    """What an encoder returns for a batch: q(z|x) with a reparameterised ``sample()``.

    ``features`` holds hidden activations a probe (e.g. the paper's linear SVM) may read.
    """

    def __init__(self, mean: Tensor, features: Sequence[Tensor] = ()):
        self.mean = mean
        self.features = list(features)

    def sample(self) -> Tensor:
        """A draw from q(z|x) through which gradients flow."""
        raise NotImplementedError


class GaussianPosterior(Posterior):
    """N(mu, sigma^2) parameterised by mu and log sigma (not log sigma^2), as in the original ALI code."""

    def __init__(self, mean: Tensor, log_sigma: Tensor, features: Sequence[Tensor] = ()):
        super().__init__(mean, features)
        self.log_sigma = log_sigma

    def sample(self) -> Tensor:
        # One independent noise value per latent dimension and example.
        return self.mean + self.log_sigma.exp() * torch.randn_like(self.mean)


class DeterministicPosterior(Posterior):
    """A point mass (BiGAN's encoder): its sample is its mean."""

    def sample(self) -> Tensor:
        return self.mean


class ImplicitPosterior(Posterior):
    """A posterior known only through one reparameterised draw z = f(x, eps) (change of variables).

    ``mean`` is that same draw; it is the best point estimate such an encoder offers without
    extra forward passes.
    """

    def __init__(self, draw: Tensor, features: Sequence[Tensor] = ()):
        super().__init__(draw, features)

    def sample(self) -> Tensor:
        return self.mean


class Encoder(nn.Module, abc.ABC):
    """Gz: maps data x (and an optional condition y) to a posterior over z."""

    @abc.abstractmethod
    def forward(self, x: Tensor, y: Tensor | None = None) -> Posterior: ...


class Decoder(nn.Module, abc.ABC):
    """Gx: maps a latent z (and an optional condition y) to data x."""

    @abc.abstractmethod
    def forward(self, z: Tensor, y: Tensor | None = None) -> Tensor: ...


class JointCritic(nn.Module, abc.ABC):
    """D(x, z): logits of shape (B,) (or (B, K+1) for a semi-supervised critic).

    A marginal critic (plain GAN) sets ``uses_z = False`` and ignores z.
    """

    uses_z: bool = True

    @abc.abstractmethod
    def forward(self, x: Tensor, z: Tensor | None, y: Tensor | None = None) -> Tensor: ...


class Prior(abc.ABC):
    """p(z): what the decoder is fed. ``latent_shape`` is the shape of one z (without the batch)."""

    latent_shape: tuple[int, ...]

    @abc.abstractmethod
    def sample(self, n: int, device: torch.device | str = "cpu", generator: torch.Generator | None = None
               ) -> Tensor: ...


@dataclass
class Networks:
    """The trainable networks and the prior a game plays with."""

    prior: Prior
    decoder: Decoder
    critic: JointCritic
    encoder: Encoder | None = None

    def modules(self) -> dict[str, nn.Module]:
        mods: dict[str, nn.Module] = {"decoder": self.decoder, "critic": self.critic}
        if self.encoder is not None:
            mods["encoder"] = self.encoder
        return mods

    def generator_parameters(self) -> list[nn.Parameter]:
        enc = list(self.encoder.parameters()) if self.encoder is not None else []
        return [p for p in enc + list(self.decoder.parameters()) if p.requires_grad]

    def critic_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.critic.parameters() if p.requires_grad]

    def train(self, mode: bool = True) -> None:
        for m in self.modules().values():
            m.train(mode)


@dataclass
class Batch:
    """One minibatch, already on the training device, as floats in the model's data range."""

    x: Tensor
    y: Tensor | None = None


@dataclass
class GameLosses:
    """The critic's loss, the generator's (encoder + decoder) loss, and detached scalars to log."""

    critic: Tensor
    generator: Tensor
    scalars: dict[str, Tensor] = field(default_factory=dict)


class Game(abc.ABC):
    """An adversarial game on (x, z): computes both players' losses from one forward pass."""

    #: Whether the game trains an encoder (ALI, BiGAN) or not (GAN).
    uses_encoder: bool = True

    def check(self, nets: Networks) -> None:
        """Raise a UserError if the networks cannot play this game (called once before training)."""

    @abc.abstractmethod
    def losses(self, nets: Networks, batch: Batch) -> GameLosses: ...


@dataclass
class TrainedModel:
    """A trained prior and networks in eval mode, on ``device``: what evaluators and users read."""

    prior: Prior
    decoder: Decoder
    critic: JointCritic
    encoder: Encoder | None
    device: torch.device


class Evaluator(abc.ABC):
    """Reads a trained model and its data, returns named metrics; may write pictures into ``out_dir``."""

    @abc.abstractmethod
    def evaluate(self, model: TrainedModel, data: Dataset, out_dir: Path) -> dict[str, Any]: ...
