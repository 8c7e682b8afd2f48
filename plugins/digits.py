"""An image dataset that needs no download, ``digits``, and small convolutional networks for it.

``digits`` is scikit-learn's bundled copy of the UCI optical handwritten digits (``sklearn.datasets.load_digits``):
1,797 grey 8x8 images of the digits 0-9 (about 180 per class) with values 0..16, shipped inside the package.
They are stored as uint8 (N, 1, S, S) pixels like every image dataset here: value v becomes round(v * 255 / 16)
(0 -> 0, 16 -> 255), so they decode to [0, 1]. ``size`` (default 8: as shipped) upscales the images to S x S:

* ``resize = "bilinear"`` (default): bilinear interpolation of the 0..16 values (``align_corners = False``, no
  antialiasing, which only matters for shrinking), then rounding. Smooth strokes, the same mean intensity; the
  networks see images without the 8x8 blocks a convolution would otherwise have to learn to draw.
* ``resize = "nearest"``: each pixel becomes an (S/8) x (S/8) block: exactly the original information, blocky.

The held-out split is fixed by ``split_seed`` and stratified: each class holds out its share of ``heldout``
(a count, or a fraction of all 1,797 images when below 1; the shares are rounded so that they sum to exactly
the count, largest remainders first), chosen by a seeded permutation; both splits keep the dataset's order.
The default holds out 20 % (359 images) and trains on 1,438.

Networks ``digits_encoder``, ``digits_decoder`` and ``digits_critic`` (DCGAN-like, for S = 4 * 2^k, k >= 1, e.g.
8, 16, 32; ``width`` channels at full resolution, doubled at each stride-2 layer down to 4x4):

* encoder: conv 3x3 -> [conv 4x4 stride 2] x k -> Linear to ``hidden``, each followed by BN and LeakyReLU, then
  a Linear to (mu, log sigma) (ALI) or to z (``stochastic = false``, BiGAN). ``posterior.features`` holds the BN
  outputs (before the LeakyReLU) of the last three hidden layers, as the paper's SVHN encoder does (ali-reference
  §5.1). With recipes/ali_digits.toml (S = 8, width 32, hidden 256, 64 latent dimensions) the probes read
  64 + 32x8x8 + 64x4x4 + 256 = 3,392 dimensions; at S = 16, 64 + 64x8x8 + 128x4x4 + 256 = 6,464.
* decoder: Linear to width * 2^k x 4 x 4 -> [transposed conv 4x4 stride 2] x k, each with BN and LeakyReLU, a conv
  3x3 to the image channels, a per-pixel bias initialised from the log-odds of the data's mean image, a sigmoid.
* critic: D(x, z) = joint(concat(D(x), D(z))): D(x) the encoder's conv stack (BN after the stride-2 convs, not
  after the first: ``bn``), D(z) two Linear layers, the joint head two Linear layers to one logit; LeakyReLU
  everywhere and element-wise dropout on the input of every layer, as the paper's critics. ``outputs`` logits per
  example: 1 (shape (B,)), or K+1 (shape (B, K+1)) for the semi-supervised game ``ali_semisup``.

Weights start N(0, init_std^2), biases 0. Every network is conditional when a conditional game builds it
(``ctx.condition``): the embedding of y is concatenated to the encoder's last hidden layer (before its output),
to z at the decoder's input and to the critic's joint input, as the paper's networks do.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import Tensor, nn

from advinf import (
    Condition,
    ConditionEmbedding,
    Dataset,
    Decoder,
    DeterministicPosterior,
    Encoder,
    GaussianPosterior,
    JointCritic,
    Split,
    UserError,
    embedding_for,
    flat_latent_dim,
    hookimpl,
    spectral_normalise,
    with_condition,
)

#: How many of the encoder's last hidden BN outputs go into ``posterior.features`` (as the paper's SVHN encoder).
FEATURE_LAYERS = 3
DIGITS_COUNT = 1797


# -- the dataset -------------------------------------------------------------------------------------------


class DigitsOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    size: int = Field(8, ge=8, description="image side S: 8 as shipped, larger sizes upscale the 8x8 digits")
    resize: Literal["bilinear", "nearest"] = Field(
        "bilinear", description="upscaling: bilinear (smooth strokes) or nearest (blocks of the original pixels)")
    heldout: int | float = Field(0.2, ge=0, description="held-out images: a count (>= 1) or a fraction of all "
                                                        "1,797 (< 1), stratified by class; 0: none")
    split_seed: int = Field(0, ge=0, lt=2**32, description="seed of the permutation that picks the held-out images")

    @field_validator("heldout")
    @classmethod
    def _leaves_training_images(cls, heldout: int | float) -> int | float:
        heldout_count(heldout, DIGITS_COUNT)  # the data are fixed: a count that cannot be is known now
        return int(heldout) if heldout >= 1 else heldout  # 1e3 is the count 1000, and is written so


def load_digit_arrays() -> tuple[Tensor, Tensor]:
    """scikit-learn's digits as (1797, 8, 8) float64 values 0..16 and int64 labels, in the shipped order."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return torch.from_numpy(bunch.images.copy()), torch.from_numpy(bunch.target.astype("int64"))


def to_pixels(values: Tensor, size: int, resize: str) -> Tensor:
    """(N, 8, 8) values 0..16 -> uint8 (N, 1, size, size) pixels 0..255 (see the module docstring)."""
    x = values.double().unsqueeze(1)
    if size != x.shape[-1]:
        kwargs = {"align_corners": False} if resize == "bilinear" else {}
        x = F.interpolate(x, size=(size, size), mode=resize, **kwargs)
    return (x * (255.0 / 16.0)).round().clamp(0, 255).to(torch.uint8)


def heldout_count(heldout: int | float, n: int) -> int:
    """How many of ``n`` images ``heldout`` holds out; a ValueError where it is no whole count or leaves none."""
    if heldout >= 1:
        if heldout != int(heldout):
            raise ValueError("give a whole count (>= 1) or a fraction (< 1)")
        count = int(heldout)
    else:
        count = int(round(heldout * n))
    if count >= n:
        raise ValueError(f"that leaves no training images (there are {n})")
    return count


def stratified_split(y: Tensor, count: int, seed: int) -> tuple[Tensor, Tensor]:
    """(train, held-out) indices: each class holds out its share of ``count`` (largest remainders first), the
    examples picked by a permutation seeded with ``seed``; both index lists ascending (the dataset's order)."""
    classes, sizes = torch.unique(y, return_counts=True)
    exact = sizes.double() * count / len(y)
    share = exact.floor().long()
    left = count - int(share.sum())
    if left:
        order = torch.argsort(exact - share, descending=True, stable=True)  # ties: the smaller class index first
        share[order[:left]] += 1
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    held = [perm[y[perm] == c][: int(k)] for c, k in zip(classes.tolist(), share.tolist(), strict=True)]
    held_idx = torch.sort(torch.cat(held)).values if held else torch.zeros(0, dtype=torch.long)
    mask = torch.ones(len(y), dtype=torch.bool)
    mask[held_idx] = False
    return torch.nonzero(mask).flatten(), held_idx


def digits(options: DigitsOptions, ctx) -> Dataset:
    """scikit-learn's bundled 8x8 handwritten digits (1,797, 10 classes), upscaled; a fixed stratified split."""
    values, y = load_digit_arrays()
    x = to_pixels(values, options.size, options.resize)
    count = heldout_count(options.heldout, len(y))
    train_idx, held_idx = stratified_split(y, count, options.split_seed)
    heldout = Split(x[held_idx].contiguous(), y[held_idx].contiguous()) if count else None
    return Dataset(Split(x[train_idx].contiguous(), y[train_idx].contiguous()), heldout,
                   meta={"name": "digits", "classes": [str(i) for i in range(10)], "size": options.size,
                         "resize": options.resize, "split_seed": options.split_seed})


# -- networks ----------------------------------------------------------------------------------------------


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid")
    width: int = Field(32, gt=0, description="channels of the full-resolution layer (doubled at each stride 2)")
    init_std: float = Field(0.02, gt=0, description="std of the N(0, std^2) weight initialisation")
    slope: float = Field(0.2, ge=0, description="LeakyReLU slope")
    channels: int | None = Field(None, gt=0, description="image channels (default: from the dataset)")
    size: int | None = Field(None, gt=0, description="image side (default: from the dataset)")
    z_dim: int | None = Field(None, gt=0, description="latent dimensions (default: from the prior)")


class _BnOptions(_Options):
    bn_eps: float = Field(1e-5, gt=0, description="BatchNorm epsilon")
    bn_momentum: float = Field(0.1, gt=0, le=1, description="BatchNorm running-statistics momentum")


class EncoderOptions(_BnOptions):
    hidden: int = Field(256, gt=0, description="width of the fully connected hidden layer")
    stochastic: bool = Field(True, description="Gaussian q(z|x) from mu and log sigma (ALI); false: a "
                                               "deterministic encoder outputting z itself (BiGAN)")


class DecoderOptions(_BnOptions):
    log_odds_examples: int = Field(500, ge=0, description="first training images whose per-pixel mean "
                                                          "initialises the output bias (0: the bias starts at 0)")


class CriticOptions(_BnOptions):
    hidden: int = Field(256, gt=0, description="width of D(z) and of the joint head")
    dropout: float = Field(0.2, ge=0, lt=1, description="element-wise dropout on the input of every layer")
    bn: bool = Field(True, description="BatchNorm after the stride-2 convs of D(x) (the paper's critics: every "
                                       "D(x) layer but the first)")
    joint: bool = Field(True, description="D(x, z); false: a marginal critic D(x) for plain GAN")
    outputs: int = Field(1, ge=1, le=100_000, description="logits per example: 1 (real/fake), or K+1 (K with a "
                                                          "fixed fake logit) for the semi-supervised game")
    spectral_norm: bool = Field(False, description="spectrally normalise every linear and conv weight "
                                "(torch's parametrisation; advinf.regularisers.spectral_normalise)")


def _levels(size: int, what: str) -> int:
    """k such that size = 4 * 2^k (k >= 1)."""
    k = round(math.log2(size / 4)) if size >= 8 else 0
    if k < 1 or 4 * 2 ** k != size:
        raise UserError(f"{what} works on S x S images with S = 4 * 2^k (8, 16, 32, 64, ...), not {size}")
    return k


def init_normal(module: nn.Module, std: float) -> None:
    """Conv, transposed-conv and Linear weights ~ N(0, std^2), biases 0; BN scale 1, shift 0 and its running
    statistics reset. Condition embeddings keep their own initialisation."""
    embedded = {id(s) for e in module.modules() if isinstance(e, ConditionEmbedding) for s in e.modules()}
    for m in module.modules():
        if id(m) in embedded:
            continue
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d | nn.Linear):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_parameters()


def _extra(condition: Condition | None) -> int:
    return 0 if condition is None else condition.embedding_dim


class _Hidden(nn.Module):
    """layer -> BN -> LeakyReLU, the BN output kept for the probes."""

    def __init__(self, layer: nn.Module, bn: nn.Module, slope: float):
        super().__init__()
        self.layer, self.bn, self.act = layer, bn, nn.LeakyReLU(slope)


class DigitsEncoder(Encoder):
    """Gz(x): conv 3x3, k stride-2 convs to 4x4, a Linear hidden layer (BN + LeakyReLU each), Linear output."""

    def __init__(self, channels: int, size: int, z_dim: int, o: EncoderOptions, condition: Condition | None = None):
        super().__init__()
        k = _levels(size, "encoder 'digits_encoder'")
        self.z_dim, self.stochastic, self.init_std = z_dim, o.stochastic, o.init_std

        def bn2(c: int) -> nn.BatchNorm2d:
            return nn.BatchNorm2d(c, eps=o.bn_eps, momentum=o.bn_momentum)

        layers = [_Hidden(nn.Conv2d(channels, o.width, 3, 1, 1, bias=False), bn2(o.width), o.slope)]
        c = o.width
        for _ in range(k):
            layers.append(_Hidden(nn.Conv2d(c, 2 * c, 4, 2, 1, bias=False), bn2(2 * c), o.slope))
            c *= 2
        layers.append(_Hidden(nn.Sequential(nn.Flatten(), nn.Linear(c * 16, o.hidden, bias=False)),
                              nn.BatchNorm1d(o.hidden, eps=o.bn_eps, momentum=o.bn_momentum), o.slope))
        self.hidden = nn.ModuleList(layers)
        self.out = nn.Linear(o.hidden + _extra(condition), 2 * z_dim if o.stochastic else z_dim)
        self.embed = embedding_for(condition)
        self.conditional = condition is not None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The initialisation the factory gives (N(0, init_std^2) weights; the embedding's own)."""
        init_normal(self, self.init_std)

    def forward(self, x: Tensor, y: Tensor | None = None) -> GaussianPosterior | DeterministicPosterior:
        feats: list[Tensor] = []
        h = x
        for i, block in enumerate(self.hidden):
            h = block.bn(block.layer(h))
            if i >= len(self.hidden) - FEATURE_LAYERS:
                feats.append(h)
            h = block.act(h)
        params = self.out(with_condition(h, self.embed, y))
        if not self.stochastic:
            return DeterministicPosterior(params, features=feats)
        return GaussianPosterior(params[:, :self.z_dim], params[:, self.z_dim:], features=feats)


class DigitsDecoder(Decoder):
    """Gx(z): Linear to 4x4 maps, k stride-2 transposed convs (BN + LeakyReLU each), conv 3x3, per-pixel bias,
    sigmoid: images in [0, 1]."""

    def __init__(self, channels: int, size: int, z_dim: int, o: DecoderOptions, condition: Condition | None = None):
        super().__init__()
        k = _levels(size, "decoder 'digits_decoder'")
        c = o.width * 2 ** k
        self.start = c
        self.fc = nn.Linear(z_dim + _extra(condition), c * 16, bias=False)
        self.fc_bn = nn.BatchNorm1d(c * 16, eps=o.bn_eps, momentum=o.bn_momentum)
        ups: list[nn.Module] = []
        for _ in range(k):
            ups += [nn.ConvTranspose2d(c, c // 2, 4, 2, 1, bias=False),
                    nn.BatchNorm2d(c // 2, eps=o.bn_eps, momentum=o.bn_momentum), nn.LeakyReLU(o.slope)]
            c //= 2
        self.ups = nn.Sequential(*ups)
        self.act = nn.LeakyReLU(o.slope)
        self.out = nn.Conv2d(c, channels, 3, 1, 1, bias=False)
        self.output_bias = nn.Parameter(torch.zeros(1, channels, size, size))
        self.embed = embedding_for(condition)
        self.conditional = condition is not None
        init_normal(self, o.init_std)

    @torch.no_grad()
    def init_output_bias(self, images: Tensor) -> None:
        """The per-pixel bias: log-odds of the mean of ``images`` (values in [0, 1]), clipped to [1e-7, 1 - 1e-7]."""
        mean = images.double().mean(dim=0, keepdim=True).clamp(1e-7, 1 - 1e-7)
        if mean.shape != self.output_bias.shape:
            raise UserError(f"the decoder makes images of shape {tuple(self.output_bias.shape[1:])}, "
                            f"but the data's are {tuple(mean.shape[1:])}")
        self.output_bias.copy_(torch.log(mean / (1 - mean)).to(self.output_bias))

    def forward(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        h = self.act(self.fc_bn(self.fc(with_condition(z.flatten(1), self.embed, y))))
        h = self.ups(h.view(len(h), self.start, 4, 4))
        return torch.sigmoid(self.out(h) + self.output_bias)


class DigitsCritic(JointCritic):
    """D(x, z) = joint(concat(D(x), D(z))) -> one logit per example, shape (B,) (``outputs`` > 1: (B, outputs));
    dropout on every input. ``head`` is the last layer: its input is what feature matching compares."""

    def __init__(self, channels: int, size: int, z_dim: int, o: CriticOptions, condition: Condition | None = None):
        super().__init__()
        k = _levels(size, "critic 'digits_critic'")
        self.uses_z = o.joint
        act = lambda: nn.LeakyReLU(o.slope)  # noqa: E731
        drop = lambda: nn.Dropout(o.dropout)  # noqa: E731
        x_layers: list[nn.Module] = [drop(), nn.Conv2d(channels, o.width, 3, 1, 1), act()]
        c = o.width
        for _ in range(k):
            x_layers += [drop(), nn.Conv2d(c, 2 * c, 4, 2, 1, bias=not o.bn)]
            if o.bn:
                x_layers.append(nn.BatchNorm2d(2 * c, eps=o.bn_eps, momentum=o.bn_momentum))
            x_layers.append(act())
            c *= 2
        self.x_net = nn.Sequential(*x_layers, nn.Flatten())
        self.z_net = nn.Sequential(drop(), nn.Linear(z_dim, o.hidden), act(), drop(), nn.Linear(o.hidden, o.hidden),
                                   act()) if o.joint else None
        joint_in = c * 16 + (o.hidden if o.joint else 0) + _extra(condition)
        self.outputs = o.outputs
        self.joint_net = nn.Sequential(drop(), nn.Linear(joint_in, 2 * o.hidden), act(), drop(),
                                       nn.Linear(2 * o.hidden, o.outputs))
        self.embed = embedding_for(condition)
        self.conditional = condition is not None
        init_normal(self, o.init_std)

    @property
    def head(self) -> nn.Module:
        """The last layer (its input: the critic's features, which feature matching compares)."""
        return self.joint_net[-1]

    def forward(self, x: Tensor, z: Tensor | None, y: Tensor | None = None) -> Tensor:
        h = self.x_net(x)
        if self.z_net is not None:
            if z is None:
                raise ValueError("this critic is joint (D(x, z)) and needs z")
            h = torch.cat([h, self.z_net(z.flatten(1))], dim=1)
        logits = self.joint_net(with_condition(h, self.embed, y))
        return logits.reshape(x.shape[0]) if self.outputs == 1 else logits


# -- factories ---------------------------------------------------------------------------------------------


def _shapes(o: _Options, ctx, what: str) -> tuple[int, int, int]:
    """(channels, size, z_dim) from the options, else the dataset and prior; checks they fit."""
    sample = getattr(ctx, "sample_shape", None)
    if sample is not None and (len(sample) != 3 or sample[1] != sample[2]):
        raise UserError(f"{what} works on square images (C, S, S), but the dataset's examples have shape "
                        f"{tuple(sample)}")
    channels = o.channels or (sample[0] if sample is not None else 1)
    size = o.size or (sample[1] if sample is not None else 16)
    if sample is not None and (sample[0], sample[1]) != (channels, size):
        wrong = {k: v for k, v, given in (("channels", sample[0], channels), ("size", sample[1], size)) if v != given}
        raise UserError(f"{what}: channels = {channels} and size = {size}, but the dataset's images are "
                        f"{tuple(sample)}: leave {' and '.join(wrong)} out (read from the data) or set "
                        f"{', '.join(f'{k} = {v}' for k, v in wrong.items())}", option=next(iter(wrong)))
    return channels, size, flat_latent_dim(ctx, o.z_dim, what)


def digits_encoder(options: EncoderOptions, ctx) -> Encoder:
    """Small conv encoder for digits: Gaussian q(z|x) (or deterministic), features of its last 3 hidden layers."""
    return DigitsEncoder(*_shapes(options, ctx, "encoder 'digits_encoder'"), options, getattr(ctx, "condition", None))


def digits_decoder(options: DecoderOptions, ctx) -> Decoder:
    """Small transposed-conv decoder for digits: sigmoid output with a per-pixel log-odds bias."""
    decoder = DigitsDecoder(*_shapes(options, ctx, "decoder 'digits_decoder'"), options,
                            getattr(ctx, "condition", None))
    data: Dataset | None = getattr(ctx, "dataset", None)
    if data is not None and options.log_odds_examples > 0 and len(data.train):  # none: described only
        n = min(options.log_odds_examples, len(data.train))
        decoder.init_output_bias(Dataset.decode(data.train.take(torch.arange(n))[0]).cpu())
    return decoder


def digits_critic(options: CriticOptions, ctx) -> JointCritic:
    """Small joint critic D(x, z) for digits with dropout and LeakyReLU."""
    critic = DigitsCritic(*_shapes(options, ctx, "critic 'digits_critic'"), options, getattr(ctx, "condition", None))
    return spectral_normalise(critic) if options.spectral_norm else critic


@hookimpl
def register_datasets(register) -> None:
    register("digits", digits, DigitsOptions, labels="classes")


@hookimpl
def register_encoders(register) -> None:
    register("digits_encoder", digits_encoder, EncoderOptions, conditional=True)


@hookimpl
def register_decoders(register) -> None:
    register("digits_decoder", digits_decoder, DecoderOptions, conditional=True)


@hookimpl
def register_critics(register) -> None:
    register("digits_critic", digits_critic, CriticOptions, conditional=True)
