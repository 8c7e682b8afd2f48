"""The paper's toy networks for 2-D data (ali-reference §4): change-of-variables encoder, 4x400 decoder,
maxout critic with 5 pieces. All Linear weights start N(0, init_std^2), biases 0.

Each is conditional when a conditional game builds it (``ctx.condition``): the embedding of y is concatenated
to the network's input.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from advinf import (
    Condition,
    Decoder,
    Encoder,
    ImplicitPosterior,
    JointCritic,
    UserError,
    embedding_for,
    hookimpl,
    spectral_normalise,
    with_condition,
)


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid")
    x_dim: int | None = Field(None, gt=0, le=1_000_000, description="data dimensions (default: from the dataset)")
    z_dim: int | None = Field(None, gt=0, le=1_000_000, description="latent dimensions (default: from the prior)")
    init_std: float = Field(0.02, gt=0, description="std of the Gaussian weight initialisation")


class MlpOptions(_Options):
    hidden: int = Field(400, gt=0)
    bn_eps: float = Field(1e-4, gt=0)
    bn_momentum: float = Field(0.05, gt=0, le=1)


class EncoderOptions(MlpOptions):
    layers: int = Field(2, ge=1, description="hidden layers")
    noise_dim: int = Field(2, ge=1, description="dimensions of the noise concatenated to x")


class DecoderOptions(MlpOptions):
    layers: int = Field(4, ge=1, description="hidden layers")


class CriticOptions(_Options):
    hidden: int = Field(200, gt=0)
    layers: int = Field(3, ge=1, description="maxout layers")
    pieces: int = Field(5, ge=1, description="maxout pieces")
    joint: bool = Field(True, description="D(x, z); false gives the GAN's marginal critic D(x)")
    spectral_norm: bool = Field(False, description="spectrally normalise every linear and conv weight "
                                "(torch's parametrisation; advinf.regularisers.spectral_normalise)")


def _mlp(in_dim: int, out_dim: int, o: MlpOptions, layers: int) -> nn.Sequential:
    mods: list[nn.Module] = [nn.Linear(in_dim, o.hidden, bias=False)]
    for i in range(layers):
        mods += [nn.BatchNorm1d(o.hidden, eps=o.bn_eps, momentum=o.bn_momentum), nn.ReLU()]
        last = i == layers - 1
        mods.append(nn.Linear(o.hidden, out_dim if last else o.hidden, bias=last))
    return nn.Sequential(*mods)


def init_gaussian(module: nn.Module, std: float) -> None:
    """Linear weights ~ N(0, std^2), biases 0; BatchNorm keeps scale 1, shift 0."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class ToyEncoder(Encoder):
    """z = f(x, eps), eps ~ N(0, I): a stochastic encoder by change of variables (not mu/sigma)."""

    def __init__(self, x_dim: int, z_dim: int, o: EncoderOptions, condition: Condition | None = None):
        super().__init__()
        self.noise_dim = o.noise_dim
        self.net = _mlp(x_dim + o.noise_dim + (condition.embedding_dim if condition else 0), z_dim, o, o.layers)
        init_gaussian(self, o.init_std)
        self.embed = embedding_for(condition)  # after init_gaussian: the embedding keeps its own initialisation
        self.conditional = condition is not None

    def forward(self, x: Tensor, y: Tensor | None = None) -> ImplicitPosterior:
        eps = torch.randn(x.shape[0], self.noise_dim, device=x.device, dtype=x.dtype)
        return ImplicitPosterior(self.net(with_condition(torch.cat([x, eps], dim=1), self.embed, y)))


class ToyDecoder(Decoder):
    """x = g(z): Linear -> [BN -> ReLU -> Linear] x layers, identity output."""

    def __init__(self, z_dim: int, x_dim: int, o: DecoderOptions, condition: Condition | None = None):
        super().__init__()
        self.net = _mlp(z_dim + (condition.embedding_dim if condition else 0), x_dim, o, o.layers)
        init_gaussian(self, o.init_std)
        self.embed = embedding_for(condition)
        self.conditional = condition is not None

    def forward(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        return self.net(with_condition(z, self.embed, y))


class LinearMaxout(nn.Module):
    """Linear to units x pieces, then the maximum over each group of consecutive pieces."""

    def __init__(self, in_dim: int, units: int, pieces: int):
        super().__init__()
        self.units, self.pieces = units, pieces
        self.linear = nn.Linear(in_dim, units * pieces)

    def forward(self, x: Tensor) -> Tensor:
        # max(...).values, not amax: same values and gradients (but on exact ties), and amax's backward is
        # the slowest op of the toy step on CPU (about 1 ms of ~20 per call).
        return self.linear(x).view(x.shape[0], self.units, self.pieces).max(dim=2).values


class ToyCritic(JointCritic):
    """D(x, z) = Linear(maxout^layers(concat(x, z))); with joint = false, D(x) only."""

    def __init__(self, x_dim: int, z_dim: int, o: CriticOptions, condition: Condition | None = None):
        super().__init__()
        self.uses_z = o.joint
        dims = [x_dim + (z_dim if o.joint else 0) + (condition.embedding_dim if condition else 0)]
        dims += [o.hidden] * o.layers
        self.body = nn.Sequential(*(LinearMaxout(dims[i], o.hidden, o.pieces) for i in range(o.layers)))
        self.out = nn.Linear(o.hidden, 1)
        init_gaussian(self, o.init_std)
        self.embed = embedding_for(condition)
        self.conditional = condition is not None

    def forward(self, x: Tensor, z: Tensor | None, y: Tensor | None = None) -> Tensor:
        h = torch.cat([x, z], dim=1) if self.uses_z else x
        return self.out(self.body(with_condition(h, self.embed, y))).squeeze(1)


def _dims(o: _Options, ctx, what: str) -> tuple[int, int]:
    data = _flat(ctx.sample_shape if ctx is not None else None, what, "the dataset's examples have",
                 "a dataset of flat vectors, or networks made for images")
    latent = _flat(ctx.latent_shape if ctx is not None else None, what, "the prior's z has",
                   "a prior of flat vectors (without `spatial = true` in [prior])")
    for key, given, known, source in (("x_dim", o.x_dim, data, "the dataset's examples have"),
                                      ("z_dim", o.z_dim, latent, "the prior's z has")):
        if given is not None and known is not None and given != known:
            raise UserError(f"{what}: {key} = {given}, but {source} {known} dimensions; remove {key} to take it "
                            "from there", option=key)
    x_dim, z_dim = o.x_dim or data, o.z_dim or latent
    if x_dim is None or z_dim is None:
        raise UserError(f"{what}: give x_dim and z_dim, or build it from a recipe with a dataset and prior")
    return x_dim, z_dim


def _flat(shape: tuple[int, ...] | None, what: str, source: str, remedy: str) -> int | None:
    if shape is None:
        return None
    if len(shape) != 1:
        raise UserError(f"{what} works on flat vectors, but {source} shape {tuple(shape)}: use {remedy}")
    return shape[0]


def toy_encoder(options: EncoderOptions, ctx) -> Encoder:
    """Change-of-variables MLP encoder z = f(x, eps) (ALI's toy experiment)."""
    x_dim, z_dim = _dims(options, ctx, "encoder 'toy_encoder'")
    return ToyEncoder(x_dim, z_dim, options, getattr(ctx, "condition", None))


def toy_decoder(options: DecoderOptions, ctx) -> Decoder:
    """MLP decoder with BN and ReLU, 4 hidden layers of 400 (ALI's toy experiment)."""
    x_dim, z_dim = _dims(options, ctx, "decoder 'toy_decoder'")
    return ToyDecoder(z_dim, x_dim, options, getattr(ctx, "condition", None))


def toy_critic(options: CriticOptions, ctx) -> JointCritic:
    """Maxout MLP critic on concat(x, z), 3 x 200 units x 5 pieces (ALI's toy experiment)."""
    x_dim, z_dim = _dims(options, ctx, "critic 'toy_critic'")
    critic = ToyCritic(x_dim, z_dim, options, getattr(ctx, "condition", None))
    return spectral_normalise(critic) if options.spectral_norm else critic


@hookimpl
def register_encoders(register) -> None:
    register("toy_encoder", toy_encoder, EncoderOptions, conditional=True)


@hookimpl
def register_decoders(register) -> None:
    register("toy_decoder", toy_decoder, DecoderOptions, conditional=True)


@hookimpl
def register_critics(register) -> None:
    register("toy_critic", toy_critic, CriticOptions, conditional=True)
