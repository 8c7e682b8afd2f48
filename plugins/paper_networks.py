"""The ALI paper's convolutional networks for SVHN, CIFAR-10, CelebA 64x64 and Tiny ImageNet 64x64.

Layer by layer as the original Theano code builds them (ali-reference §1): no padding anywhere,
conv -> BN -> LeakyReLU blocks, BN eps 1e-4 and momentum 0.05, conv weights N(0, 0.01^2) and biases 0,
biases only where the code has them, a stochastic encoder that outputs mu and log sigma (not log sigma^2),
a decoder ending in a sigmoid with a per-pixel output bias initialised from the data's log-odds, and a
critic D(x, z) = joint(concat(D(x), D(z))) with element-wise dropout on the inputs of its convolutions.

One component name per network and dataset: ``ali_<arch>_encoder``, ``ali_<arch>_decoder`` and
``ali_<arch>_critic`` for arch in svhn, cifar10, celeba, tiny_imagenet. Each has its own options model,
so the resolved recipe shows the dataset's own defaults (e.g. the LeakyReLU slope).

Where the paper's tables and the code disagree (ali-reference §9) the code is the default; ``variant = "paper"``
gives the table's layers of the CIFAR-10 and CelebA critics (CelebA's first D(x) layer, CIFAR-10's dropout
placement), not its input widths that no network fits (docs/recipes.md). Batch norm keeps torch's running
variance where the original kept a running standard deviation: eval mode differs slightly, training does not.

Every network is conditional when a conditional game builds it (``ctx.condition``), as the original conditional
CelebA model (ali-reference §6): the embedding of y (B, E, 1, 1) is concatenated to the encoder's last hidden
features (before its output conv), to z at the decoder's input, and to concat(D(x), D(z)) at the critic's joint
head. Every critic takes ``outputs`` (default 1): K+1 gives the K+1-class head of the semi-supervised game
(ali-reference §5.2), the same network with a wider last 1x1 conv.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, create_model
from torch import Tensor, nn

from advinf import (
    Condition,
    Dataset,
    Decoder,
    DeterministicPosterior,
    Encoder,
    GaussianPosterior,
    JointCritic,
    UserError,
    embedding_for,
    hookimpl,
    spectral_normalise,
    with_condition,
)
from advinf.layers import Conv2d, ConvTranspose2d, Dropout

# -- architectures as data ---------------------------------------------------------------------------------

Conv = tuple[int, int, int]  # (kernel, stride, out channels)


@dataclass(frozen=True)
class Arch:
    """One dataset's networks (ali-reference §1.2-1.5). Hidden layers only: every encoder and decoder
    layer listed here is conv -> BN -> LeakyReLU without a bias; the output layers are added by the
    builders (encoder: 1x1 conv to 2·NLAT with a bias; decoder: 1x1 conv to C plus a per-pixel bias)."""

    name: str
    nlat: int
    size: int
    slope: float
    encoder: tuple[Conv, ...]
    decoder: tuple[tuple[str, int, int, int], ...]  # ("t" transposed conv | "c" conv, kernel, stride, out)
    critic_x: tuple[Conv, ...]  # D(x); out channels before any maxout
    critic_z: tuple[int, ...]  # D(z): 1x1 convs
    critic_joint: tuple[int, ...]  # joint 1x1 convs before the final 1x1 conv to one logit
    critic_z_bias: bool = False
    maxout: bool = False  # CIFAR-10: maxout with 2 pieces instead of BN + LeakyReLU in D


_SVHN_CONVS: tuple[Conv, ...] = ((5, 1, 32), (4, 2, 64), (4, 1, 128), (4, 2, 256), (4, 1, 512))
_SVHN_DECODER = (("t", 4, 1, 256), ("t", 4, 2, 128), ("t", 4, 1, 64), ("t", 4, 2, 32), ("t", 5, 1, 32),
                 ("t", 1, 1, 32))
_CELEBA_CONVS: tuple[Conv, ...] = ((2, 1, 64), (7, 2, 128), (5, 2, 256), (7, 2, 256), (4, 1, 512))
_TINY_CONVS: tuple[Conv, ...] = ((4, 2, 64), (4, 1, 64), (4, 2, 128), (4, 1, 128), (4, 2, 256), (4, 1, 256))

ARCHS: dict[str, Arch] = {
    "svhn": Arch("svhn", 256, 32, 0.01, _SVHN_CONVS + ((1, 1, 512),), _SVHN_DECODER,
                 _SVHN_CONVS, (512, 512), (1024, 1024)),
    "cifar10": Arch("cifar10", 64, 32, 0.1, _SVHN_CONVS + ((1, 1, 512),), _SVHN_DECODER,
                    _SVHN_CONVS, (512, 512), (1024, 1024), maxout=True),
    "celeba": Arch("celeba", 256, 64, 0.02, _CELEBA_CONVS,
                   (("t", 4, 1, 512), ("t", 7, 2, 256), ("t", 5, 2, 256), ("t", 7, 2, 128), ("t", 2, 1, 64)),
                   _CELEBA_CONVS, (1024, 1024), (2048, 2048)),
    "tiny_imagenet": Arch("tiny_imagenet", 256, 64, 0.01, _TINY_CONVS + ((1, 1, 2048), (1, 1, 2048)),
                          (("c", 1, 1, 2048), ("c", 1, 1, 256), ("t", 4, 1, 256), ("t", 4, 2, 128),
                           ("t", 4, 1, 128), ("t", 4, 2, 64), ("t", 4, 1, 64), ("t", 4, 2, 64)),
                          _TINY_CONVS, (2048, 2048), (4096, 4096), critic_z_bias=True),
}

#: How many of the encoder's last hidden BN outputs go into ``posterior.features`` (the paper's SVM, §5.1).
FEATURE_LAYERS = 3


# -- options -----------------------------------------------------------------------------------------------


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid")
    init_std: float = Field(0.01, gt=0, description="std of the N(0, std^2) initialisation of conv weights")
    channels: int | None = Field(None, gt=0, description="image channels (default: from the dataset, else 3)")
    z_dim: int | None = Field(None, gt=0, description="latent dimensions (default: from the prior, else NLAT)")


class _BnOptions(_Options):
    slope: float = Field(0.01, ge=0, description="LeakyReLU slope")
    bn_eps: float = Field(1e-4, gt=0, description="BatchNorm epsilon")
    bn_momentum: float = Field(0.05, gt=0, le=1, description="BatchNorm running-statistics momentum")


class EncoderOptions(_BnOptions):
    stochastic: bool = Field(True, description="Gaussian q(z|x) from mu and log sigma (ALI); false: a "
                                               "deterministic encoder outputting z itself (BiGAN)")


class DecoderOptions(_BnOptions):
    log_odds_examples: int = Field(500, ge=0, description="first training images whose per-pixel mean "
                                                          "initialises the output bias (0: the bias starts at 0)")


_SPECTRAL_NORM = Field(False, description="spectrally normalise every linear and conv weight (torch's "
                                          "parametrisation; advinf.regularisers.spectral_normalise)")
_OUTPUTS = Field(1, ge=1, le=100_000, description="logits per example: 1 (real/fake), or K+1 (K with a fixed fake "
                                                   "logit) for the semi-supervised game")


class CriticOptions(_BnOptions):
    dropout: float = Field(0.2, ge=0, lt=1, description="element-wise dropout on the input of every critic conv")
    joint: bool = Field(True, description="D(x, z); false: a marginal critic D(x) for plain GAN")
    outputs: int = _OUTPUTS
    spectral_norm: bool = _SPECTRAL_NORM


class CelebaCriticOptions(CriticOptions):
    variant: Literal["code", "paper"] = Field(
        "code", description="code: first D(x) layer without BN, dropout on every conv input; paper (the "
                            "table): BN on the first D(x) layer and no dropout on the first two D(x) layers")


class Cifar10CriticOptions(_Options):
    dropout_input: float = Field(0.2, ge=0, lt=1, description="dropout on the image and on z")
    dropout: float = Field(0.5, ge=0, lt=1, description="dropout on the other layers (placed per `variant`)")
    variant: Literal["code", "paper"] = Field(
        "code", description="code: the original code's irregular dropout placement (ali-reference §1.3); "
                            "paper: the table's, on the input of every critic conv")
    joint: bool = Field(True, description="D(x, z); false: a marginal critic D(x) for plain GAN")
    outputs: int = _OUTPUTS
    spectral_norm: bool = _SPECTRAL_NORM


def _with_slope(base: type[BaseModel], slope: float, name: str) -> type[BaseModel]:
    """``base`` with a dataset's LeakyReLU slope as the default (shown as such in resolved recipes)."""
    return create_model(name, __base__=base, __module__=__name__,
                        slope=(float, Field(slope, ge=0, description="LeakyReLU slope")))


# -- building blocks ---------------------------------------------------------------------------------------


class Maxout(nn.Module):
    """Maximum over groups of ``pieces`` consecutive channels: C channels in, C / pieces out."""

    def __init__(self, pieces: int = 2):
        super().__init__()
        self.pieces = pieces

    def forward(self, x: Tensor) -> Tensor:
        return x.unflatten(1, (x.shape[1] // self.pieces, self.pieces)).amax(dim=2)


class Block(nn.Sequential):
    """[dropout on the input] -> conv -> [BN] -> [dropout] -> [activation]; any part may be absent."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, *, transpose: bool = False,
                 bias: bool = False, bn: tuple[float, float] | None = None, act: nn.Module | None = None,
                 dropout: float = 0.0, dropout_before_act: float = 0.0):
        super().__init__()
        if dropout > 0:
            self.dropout = Dropout(dropout)  # element-wise, inverted (scales by 1 / (1 - p)) like Blocks'
        conv = ConvTranspose2d if transpose else Conv2d  # whole-window shapes as matrix products
        self.conv = conv(cin, cout, kernel, stride, padding=0, bias=bias)
        if bn is not None:
            self.bn = nn.BatchNorm2d(cout, eps=bn[0], momentum=bn[1])
        if dropout_before_act > 0:
            self.dropout_act = Dropout(dropout_before_act)
        if act is not None:
            self.act = act


def init_conv_weights(module: nn.Module, std: float) -> None:
    """Conv and transposed-conv weights ~ N(0, std^2), their biases 0; BN keeps scale 1 and shift 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _as_map(z: Tensor) -> Tensor:
    """z as a (B, D, 1, 1) map (accepts (B, D) too)."""
    return z[:, :, None, None] if z.dim() == 2 else z


def _extra(condition: Condition | None) -> int:
    return 0 if condition is None else condition.embedding_dim


def conv_out(size: int, kernel: int, stride: int) -> int:
    return (size - kernel) // stride + 1


def convt_out(size: int, kernel: int, stride: int) -> int:
    return stride * (size - 1) + kernel


# -- networks ----------------------------------------------------------------------------------------------


class PaperEncoder(Encoder):
    """Gz(x): conv -> BN -> LeakyReLU stack to 1x1, then a 1x1 conv with a bias to (mu, log sigma).

    ``posterior.features`` holds the BN outputs (after BN, before the LeakyReLU) of the last three hidden
    layers: with ``posterior.mean`` these are the paper's SVM features (5,376 dimensions for SVHN).
    """

    def __init__(self, arch: Arch, channels: int, z_dim: int, o: EncoderOptions,
                 condition: Condition | None = None):
        super().__init__()
        self.z_dim, self.stochastic = z_dim, o.stochastic
        bn = (o.bn_eps, o.bn_momentum)
        cin, blocks = channels, []
        for k, s, cout in arch.encoder:
            blocks.append(Block(cin, cout, k, s, bn=bn, act=nn.LeakyReLU(o.slope)))
            cin = cout
        self.hidden = nn.ModuleList(blocks)
        self.out = Conv2d(cin + _extra(condition), 2 * z_dim if o.stochastic else z_dim, 1, bias=True)
        init_conv_weights(self, o.init_std)
        self.embed = embedding_for(condition)
        self.conditional = condition is not None

    def forward(self, x: Tensor, y: Tensor | None = None) -> GaussianPosterior | DeterministicPosterior:
        feats: list[Tensor] = []
        h = x
        for i, block in enumerate(self.hidden):
            h = block.bn(block.conv(h))
            if i >= len(self.hidden) - FEATURE_LAYERS:
                feats.append(h)
            h = block.act(h)
        params = self.out(with_condition(h, self.embed, y))
        if not self.stochastic:
            return DeterministicPosterior(params, features=feats)
        mean, log_sigma = params[:, :self.z_dim], params[:, self.z_dim:]
        return GaussianPosterior(mean, log_sigma, features=feats)


class PaperDecoder(Decoder):
    """Gx(z): (transposed) conv -> BN -> LeakyReLU stack, a 1x1 conv to C channels without a bias, a per-pixel
    untied bias of shape (1, C, H, W), then a sigmoid: images in [0, 1]."""

    def __init__(self, arch: Arch, channels: int, z_dim: int, o: DecoderOptions,
                 condition: Condition | None = None):
        super().__init__()
        bn = (o.bn_eps, o.bn_momentum)
        cin, blocks, size = z_dim + _extra(condition), [], 1
        for op, k, s, cout in arch.decoder:
            blocks.append(Block(cin, cout, k, s, transpose=op == "t", bn=bn, act=nn.LeakyReLU(o.slope)))
            size = convt_out(size, k, s) if op == "t" else conv_out(size, k, s)
            cin = cout
        self.hidden = nn.Sequential(*blocks)
        self.out = Conv2d(cin, channels, 1, bias=False)
        self.output_bias = nn.Parameter(torch.zeros(1, channels, size, size))
        init_conv_weights(self, o.init_std)
        self.embed = embedding_for(condition)
        self.conditional = condition is not None

    @torch.no_grad()
    def init_output_bias(self, images: Tensor) -> None:
        """Set the per-pixel bias to the log-odds of the per-pixel mean of ``images`` (values in [0, 1]),
        clipped to [1e-7, 1 - 1e-7] as the original's ``get_log_odds``."""
        mean = images.double().mean(dim=0, keepdim=True).clamp(1e-7, 1 - 1e-7)
        if mean.shape != self.output_bias.shape:
            raise UserError(f"the decoder makes images of shape {tuple(self.output_bias.shape[1:])}, "
                            f"but the data's are {tuple(mean.shape[1:])}")
        self.output_bias.copy_(torch.log(mean / (1 - mean)).to(self.output_bias))

    def forward(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        return torch.sigmoid(self.out(self.hidden(with_condition(_as_map(z), self.embed, y))) + self.output_bias)


def _bn_critic_plan(arch: Arch, o: CriticOptions, bn: tuple[float, float]) -> tuple[list, list, list]:
    """Block kwargs per layer of D(x), D(z) and the joint head for the BN + LeakyReLU critics."""
    variant = getattr(o, "variant", "code")
    xs = []
    for i in range(len(arch.critic_x)):
        first = i == 0
        has_bn = not first or variant == "paper"
        p = 0.0 if variant == "paper" and i < 2 else o.dropout
        xs.append(dict(bias=not has_bn, bn=bn if has_bn else None, act=nn.LeakyReLU(o.slope), dropout=p))
    zs = [dict(bias=arch.critic_z_bias, act=nn.LeakyReLU(o.slope), dropout=o.dropout) for _ in arch.critic_z]
    js = [dict(bias=True, act=nn.LeakyReLU(o.slope), dropout=o.dropout) for _ in arch.critic_joint]
    return xs, zs, js + [dict(bias=True, dropout=o.dropout)]


def _maxout_critic_plan(arch: Arch, o: Cifar10CriticOptions) -> tuple[list, list, list]:
    """CIFAR-10: conv -> maxout(2) everywhere, no BN. The code's dropout (ali-reference §1.3) sits on the
    image, on conv 2's and conv 5's inputs and on conv 3's pre-maxout output; the table's on every conv input."""
    n = len(arch.critic_x)
    if o.variant == "code":
        x_in = [o.dropout_input, o.dropout, 0.0, 0.0, o.dropout]
        x_pre = [0.0, 0.0, o.dropout, 0.0, 0.0]
    else:
        x_in, x_pre = [o.dropout_input] + [o.dropout] * (n - 1), [0.0] * n
    xs = [dict(bias=True, act=Maxout(2), dropout=x_in[i], dropout_before_act=x_pre[i]) for i in range(n)]
    zs = [dict(bias=False, act=Maxout(2), dropout=o.dropout_input if i == 0 else o.dropout)
          for i in range(len(arch.critic_z))]
    js = [dict(bias=True, act=Maxout(2), dropout=o.dropout) for _ in arch.critic_joint]
    return xs, zs, js + [dict(bias=True, dropout=o.dropout)]


class PaperCritic(JointCritic):
    """D(x, z) = joint(concat_channels(D(x), D(z))) -> one logit per example, shape (B,); with ``outputs`` = K+1
    (the semi-supervised game) the last 1x1 conv gives K+1 logits, shape (B, K+1). ``head`` is that conv.

    With ``joint = false`` there is no D(z) branch and the head reads D(x) alone (a GAN's critic).
    """

    def __init__(self, arch: Arch, channels: int, z_dim: int, o: CriticOptions | Cifar10CriticOptions,
                 condition: Condition | None = None):
        super().__init__()
        self.uses_z = o.joint
        if arch.maxout:
            xs, zs, js = _maxout_critic_plan(arch, o)  # type: ignore[arg-type]
        else:
            xs, zs, js = _bn_critic_plan(arch, o, (o.bn_eps, o.bn_momentum))  # type: ignore[union-attr]
        shrink = 2 if arch.maxout else 1
        cin, blocks = channels, []
        for (k, s, cout), kw in zip(arch.critic_x, xs, strict=True):
            blocks.append(Block(cin, cout, k, s, **kw))
            cin = cout // shrink
        self.x_net, x_out = nn.Sequential(*blocks), cin
        cin, blocks = z_dim, []
        for cout, kw in zip(arch.critic_z, zs, strict=True):
            blocks.append(Block(cin, cout, 1, 1, **kw))
            cin = cout // shrink
        self.z_net = nn.Sequential(*blocks) if o.joint else None
        cin, blocks = x_out + (cin if o.joint else 0) + _extra(condition), []
        for cout, kw in zip((*arch.critic_joint, o.outputs), js, strict=True):
            blocks.append(Block(cin, cout, 1, 1, **kw))
            cin = cout // shrink
        self.joint_net = nn.Sequential(*blocks)
        self.outputs = o.outputs
        init_conv_weights(self, o.init_std)
        self.embed = embedding_for(condition)
        self.conditional = condition is not None

    @property
    def head(self) -> nn.Module:
        """The last 1x1 conv (its input: the critic's features, which feature matching compares)."""
        return self.joint_net[-1].conv

    def forward(self, x: Tensor, z: Tensor | None, y: Tensor | None = None) -> Tensor:
        h = self.x_net(x)
        if self.z_net is not None:
            if z is None:
                raise ValueError("this critic is joint (D(x, z)) and needs z")
            h = torch.cat([h, self.z_net(_as_map(z))], dim=1)
        logits = self.joint_net(with_condition(h, self.embed, y))
        return logits.reshape(x.shape[0]) if self.outputs == 1 else logits.flatten(1)


# -- factories ---------------------------------------------------------------------------------------------


def _shapes(arch: Arch, o: _Options, ctx, what: str) -> tuple[int, int]:
    """(channels, z_dim) from the options, else the dataset and prior, else the paper's; checks they fit."""
    sample = getattr(ctx, "sample_shape", None)
    latent = getattr(ctx, "latent_shape", None)
    if sample is not None and (len(sample) != 3 or tuple(sample[1:]) != (arch.size, arch.size)):
        raise UserError(f"{what} works on {arch.size}x{arch.size} images, but the dataset's examples have "
                        f"shape {tuple(sample)}")
    channels = o.channels or (sample[0] if sample is not None else 3)
    if sample is not None and sample[0] != channels:
        raise UserError(f"{what}: channels = {channels}, but the dataset's images have {sample[0]}: leave channels "
                        "out (it is read from the data) or set it to match", option="channels")
    if latent is not None and (len(latent) != 3 or tuple(latent[1:]) != (1, 1)):
        raise UserError(f"{what} needs a latent of shape (dim, 1, 1), but the prior gives {tuple(latent)}; "
                        "set `spatial = true` in [prior]")
    z_dim = o.z_dim or (latent[0] if latent is not None else arch.nlat)
    if latent is not None and latent[0] != z_dim:
        raise UserError(f"{what}: z_dim = {z_dim}, but the prior has dim = {latent[0]}")
    return channels, z_dim


def _encoder_factory(arch: Arch):
    def factory(options: EncoderOptions, ctx) -> Encoder:
        channels, z_dim = _shapes(arch, options, ctx, f"encoder 'ali_{arch.name}_encoder'")
        return PaperEncoder(arch, channels, z_dim, options, getattr(ctx, "condition", None))

    factory.__doc__ = f"The ALI paper's {arch.name} encoder: Gaussian q(z|x) from mu and log sigma (NLAT {arch.nlat})."
    return factory


def _decoder_factory(arch: Arch):
    def factory(options: DecoderOptions, ctx) -> Decoder:
        channels, z_dim = _shapes(arch, options, ctx, f"decoder 'ali_{arch.name}_decoder'")
        decoder = PaperDecoder(arch, channels, z_dim, options, getattr(ctx, "condition", None))
        data: Dataset | None = getattr(ctx, "dataset", None)
        if data is not None and options.log_odds_examples > 0 and len(data.train):  # none: described only
            n = min(options.log_odds_examples, len(data.train))
            decoder.init_output_bias(Dataset.decode(data.train.take(torch.arange(n))[0]))
        return decoder

    factory.__doc__ = (f"The ALI paper's {arch.name} decoder: sigmoid output with a per-pixel log-odds bias "
                       f"({arch.size}x{arch.size}).")
    return factory


def _critic_factory(arch: Arch):
    def factory(options, ctx) -> JointCritic:
        channels, z_dim = _shapes(arch, options, ctx, f"critic 'ali_{arch.name}_critic'")
        critic = PaperCritic(arch, channels, z_dim, options, getattr(ctx, "condition", None))
        return spectral_normalise(critic) if options.spectral_norm else critic

    kind = "maxout (2 pieces)" if arch.maxout else "BN + LeakyReLU"
    factory.__doc__ = f"The ALI paper's {arch.name} critic D(x, z) with dropout, {kind}."
    return factory


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


OPTIONS: dict[str, dict[str, type[BaseModel]]] = {}
for _arch in ARCHS.values():
    _c = _camel(_arch.name)
    _critic_base = {"cifar10": Cifar10CriticOptions, "celeba": CelebaCriticOptions}.get(_arch.name, CriticOptions)
    OPTIONS[_arch.name] = {
        "encoder": _with_slope(EncoderOptions, _arch.slope, f"{_c}EncoderOptions"),
        "decoder": _with_slope(DecoderOptions, _arch.slope, f"{_c}DecoderOptions"),
        "critic": (_critic_base if _arch.maxout else _with_slope(_critic_base, _arch.slope, f"{_c}CriticOptions")),
    }


def create_networks(arch: str, ctx=None, **options) -> tuple[PaperEncoder, PaperDecoder, PaperCritic]:
    """All three networks of ``arch`` with the given options (per network: ``encoder={...}`` etc.)."""
    a, opts = ARCHS[arch], OPTIONS[arch]
    return (_encoder_factory(a)(opts["encoder"].model_validate(options.get("encoder", {})), ctx),
            _decoder_factory(a)(opts["decoder"].model_validate(options.get("decoder", {})), ctx),
            _critic_factory(a)(opts["critic"].model_validate(options.get("critic", {})), ctx))


@hookimpl
def register_encoders(register) -> None:
    for arch in ARCHS.values():
        register(f"ali_{arch.name}_encoder", _encoder_factory(arch), OPTIONS[arch.name]["encoder"], conditional=True)


@hookimpl
def register_decoders(register) -> None:
    for arch in ARCHS.values():
        register(f"ali_{arch.name}_decoder", _decoder_factory(arch), OPTIONS[arch.name]["decoder"], conditional=True)


@hookimpl
def register_critics(register) -> None:
    for arch in ARCHS.values():
        register(f"ali_{arch.name}_critic", _critic_factory(arch), OPTIONS[arch.name]["critic"], conditional=True)
