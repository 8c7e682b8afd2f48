"""BiGAN's MNIST networks (Donahue et al. 2017; ``jeffdonahue/bigan``, ``net.py``: ``mnist_mlp`` and
``deconvnet_mnist_mlp`` at size 64, run with ``--nogain --nobias``; ali-reference §7). Fully connected, for data
of any shape (flattened: 784 for MNIST) and a latent of shape (dim,) (BiGAN: 50 dimensions, uniform on [-1, 1]).

* ``bigan_mnist_encoder``: FC 1024 -> LReLU(0.2) -> FC 1024 -> BN -> LReLU -> FC z_dim -> 2 sigmoid(a) - 1.
  Deterministic (``DeterministicPosterior``: its sample is its mean), bounded to (-1, 1) as BiGAN's uniform
  latent is (``logits_to_recon`` of its ``UniformDistribution``). ``posterior.features`` holds the last hidden
  layer after its LReLU, what BiGAN's ``NNC_e-`` reads (its ``NNC_e`` reads E(x), the probes' ``mean``).
* ``bigan_mnist_decoder``: FC(z) 1024 -> BN -> ReLU -> [FC 1024 + W_z z] -> BN -> ReLU -> FC x_dim -> sigmoid,
  reshaped to the data's shape: data in [0, 1], no output bias.
* ``bigan_mnist_critic``: FC(x) 1024 -> LReLU(0.2) -> [FC 1024 + W_z z] -> BN -> LReLU -> FC 1, the last layer
  zero-initialised (so every first logit is 0 and the first loss 2 ln 2).

**How z enters** the critic and the decoder: no separate D(z) branch and no concatenation. At every layer but
the first, z is projected by a learned linear map W_z (no bias) to that layer's width and added to its
pre-activation as a per-example bias, before the batch norm (BiGAN's ``apply_cond`` with ``multifc``; one latent
distribution, so its weight is 1).

As ``--nogain --nobias``: no Linear has a bias and batch norm has no scale or shift (``affine = False``), with
BiGAN's epsilon 1e-8. Weights start N(0, 0.02^2) (BiGAN's ``weight_init``), the z projections too (0.02 k^2 with
k = 1 for fully connected layers), the critic's last layer at 0. BiGAN ran the critic on data and model pairs in
separate passes (separate batch statistics): ``joint_batch = false`` in the game. Not reproduced: BiGAN
recomputed the batch-norm population statistics before each evaluation by averaging 1,000 training batches
(``deploy``); here eval mode uses torch's running averages (``bn_momentum``).
"""

from __future__ import annotations

import math

import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveInt
from torch import Tensor, nn

from advinf import Decoder, DeterministicPosterior, Encoder, JointCritic, UserError, flat_latent_dim, hookimpl


class BiganOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hidden: int = Field(1024, gt=0, le=1_000_000, description="units of both hidden layers (BiGAN: 16 x 64)")
    slope: float = Field(0.2, ge=0, le=1, description="LeakyReLU slope (encoder and critic)")
    init_std: float = Field(0.02, gt=0, le=10, description="std of the N(0, std^2) weights")
    z_init_std: float = Field(0.02, gt=0, le=10, description="std of the z projections' weights (critic, decoder)")
    bn_eps: float = Field(1e-8, gt=0, le=1, description="batch-norm epsilon (BiGAN: 1e-8)")
    bn_momentum: float = Field(0.1, gt=0, le=1, description="batch-norm running-statistics momentum (eval mode)")
    x_shape: list[PositiveInt] | None = Field(None, min_length=1, max_length=4,
                                      description="shape of one example (default: from the dataset)")
    z_dim: int | None = Field(None, gt=0, le=1_000_000, description="latent dimensions (default: from the prior)")


def _bn(o: BiganOptions) -> nn.BatchNorm1d:
    return nn.BatchNorm1d(o.hidden, eps=o.bn_eps, momentum=o.bn_momentum, affine=False)


def _linear(n_in: int, n_out: int, std: float) -> nn.Linear:
    layer = nn.Linear(n_in, n_out, bias=False)
    if std == 0:
        nn.init.zeros_(layer.weight)
    else:
        nn.init.normal_(layer.weight, 0.0, std)
    return layer


class BiganEncoder(Encoder):
    """E(x) = 2 sigmoid(a) - 1: a deterministic code in (-1, 1)^z_dim."""

    def __init__(self, x_shape: tuple[int, ...], z_dim: int, o: BiganOptions):
        super().__init__()
        self.x_shape, self.z_dim, self.options = x_shape, z_dim, o
        self.fc1 = nn.Linear(math.prod(x_shape), o.hidden, bias=False)
        self.fc2 = nn.Linear(o.hidden, o.hidden, bias=False)
        self.bn2 = _bn(o)
        self.out = nn.Linear(o.hidden, z_dim, bias=False)
        self.act = nn.LeakyReLU(o.slope)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """BiGAN's initialisation: every weight N(0, init_std^2); running statistics reset."""
        for layer in (self.fc1, self.fc2, self.out):
            nn.init.normal_(layer.weight, 0.0, self.options.init_std)
        self.bn2.reset_running_stats()

    def forward(self, x: Tensor, y: Tensor | None = None) -> DeterministicPosterior:
        h = self.act(self.fc1(x.flatten(1)))
        h = self.act(self.bn2(self.fc2(h)))
        return DeterministicPosterior(2 * torch.sigmoid(self.out(h)) - 1, features=[h])


class BiganDecoder(Decoder):
    """G(z): two hidden layers, z added again as a learned bias at the second; sigmoid output of the data's shape."""

    def __init__(self, x_shape: tuple[int, ...], z_dim: int, o: BiganOptions):
        super().__init__()
        self.x_shape = x_shape
        self.fc1 = _linear(z_dim, o.hidden, o.init_std)
        self.bn1 = _bn(o)
        self.fc2 = _linear(o.hidden, o.hidden, o.init_std)
        self.z2 = _linear(z_dim, o.hidden, o.z_init_std)
        self.bn2 = _bn(o)
        self.out = _linear(o.hidden, math.prod(x_shape), o.init_std)

    def forward(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        z = z.flatten(1)
        h = torch.relu(self.bn1(self.fc1(z)))
        h = torch.relu(self.bn2(self.fc2(h) + self.z2(z)))
        return torch.sigmoid(self.out(h)).view(-1, *self.x_shape)


class BiganCritic(JointCritic):
    """D(x, z): x through two hidden layers, z a learned bias of the second; one logit per example, shape (B,)."""

    def __init__(self, x_shape: tuple[int, ...], z_dim: int, o: BiganOptions):
        super().__init__()
        self.fc1 = _linear(math.prod(x_shape), o.hidden, o.init_std)
        self.fc2 = _linear(o.hidden, o.hidden, o.init_std)
        self.z2 = _linear(z_dim, o.hidden, o.z_init_std)
        self.bn2 = _bn(o)
        self.out = _linear(o.hidden, 1, 0.0)  # BiGAN's BinaryClassifier: zero-initialised, no bias
        self.act = nn.LeakyReLU(o.slope)

    def forward(self, x: Tensor, z: Tensor | None, y: Tensor | None = None) -> Tensor:
        if z is None:
            raise ValueError("BiGAN's critic is joint (D(x, z)) and needs z")
        h = self.act(self.fc1(x.flatten(1)))
        h = self.act(self.bn2(self.fc2(h) + self.z2(z.flatten(1))))
        return self.out(h).reshape(x.shape[0])


def _shapes(o: BiganOptions, ctx, what: str) -> tuple[tuple[int, ...], int]:
    """(x_shape, z_dim) from the options, else the dataset and prior; checks they agree."""
    sample = getattr(ctx, "sample_shape", None)
    x_shape = tuple(o.x_shape) if o.x_shape is not None else (tuple(sample) if sample is not None else None)
    if x_shape is None:
        raise UserError(f"{what}: give x_shape, or build it from a recipe with a dataset")
    if any(d <= 0 for d in x_shape):
        raise UserError(f"{what}: x_shape = {list(x_shape)} must hold positive sizes")
    if sample is not None and tuple(sample) != x_shape:
        raise UserError(f"{what}: x_shape = {list(x_shape)}, but the dataset's examples have shape {tuple(sample)}: "
                        "leave x_shape out (it is read from the data) or set it to match", option="x_shape")
    return x_shape, flat_latent_dim(ctx, o.z_dim, what)


def bigan_mnist_encoder(options: BiganOptions, ctx) -> Encoder:
    """BiGAN's MNIST encoder: 1024-unit MLP, deterministic, bounded to (-1, 1) by 2 sigmoid - 1."""
    return BiganEncoder(*_shapes(options, ctx, "encoder 'bigan_mnist_encoder'"), options)


def bigan_mnist_decoder(options: BiganOptions, ctx) -> Decoder:
    """BiGAN's MNIST generator: 1024-unit MLP, z also a learned bias of the second layer, sigmoid output."""
    return BiganDecoder(*_shapes(options, ctx, "decoder 'bigan_mnist_decoder'"), options)


def bigan_mnist_critic(options: BiganOptions, ctx) -> JointCritic:
    """BiGAN's MNIST discriminator D(x, z): 1024-unit MLP on x, z a learned bias of the second layer."""
    return BiganCritic(*_shapes(options, ctx, "critic 'bigan_mnist_critic'"), options)


@hookimpl
def register_encoders(register) -> None:
    register("bigan_mnist_encoder", bigan_mnist_encoder, BiganOptions)


@hookimpl
def register_decoders(register) -> None:
    register("bigan_mnist_decoder", bigan_mnist_decoder, BiganOptions)


@hookimpl
def register_critics(register) -> None:
    register("bigan_mnist_critic", bigan_mnist_critic, BiganOptions)
