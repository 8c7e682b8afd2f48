"""The paper's inference baselines and ALICE, as games (ali-reference §4, "follow-up comparison").

* ``inverse_mapping``: one player trains the encoder alone to invert a fixed decoder (a trained GAN's):
  ``|z - Gz(Gx(z))|^2`` on prior draws z. The paper's baseline (b), "learned inverse mapping".
* ``vae``: the ELBO with a Gaussian encoder q(z|x) = N(mu, sigma^2) (KL against the standard Gaussian prior in
  closed form) and a Gaussian (fixed or learned variance) or Bernoulli decoder likelihood. The paper's (d).
* ``alice``: ALI plus a conditional-entropy term on reconstructions Gx(Gz(x)) (Li et al., NeurIPS 2017):
  ``cycle = "l2"`` adds ``weight * |x - Gx(Gz(x))|^2`` to the generator's loss; ``cycle = "adversarial"`` adds
  ``weight`` times the generator's loss against a second critic ``cycle_critic`` that tells (x, x) from
  (x, Gx(Gz(x))) pairs, trained by a third player. With weight 0 the game is exactly ALI. Two departures from
  ALICE's reference code (ChunyuanLI/ALICE, toy_data): only the x-cycle (H(x|z)) is here, not its z-cycle
  ``Gz(Gx(z))`` against z; and the l2 term sums over the data dimensions where that code averages them, so
  ``weight`` here is the reference's weight times D (2 on the toy data).

The paper's (c), "post-hoc learned inference", needs no game of its own: it is ``ali`` with a frozen decoder
taken from a GAN run (``[decoder] trainable = false``, ``init_from``).

Networks for them: ``toy_gaussian_encoder`` (the toy encoder's MLP with a mu / log sigma head instead of the
change-of-variables noise input: the VAE's KL needs a density), ``toy_gaussian_decoder`` (the toy decoder plus a
learned per-dimension log sigma, for ``vae`` with ``variance = "learned"``) and ``toy_pair_critic`` (the toy
maxout critic on pairs of data points, ALICE's cycle critic).
"""

from __future__ import annotations

import math
import warnings
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn

from advinf import (
    CRITIC,
    GENERATOR,
    Batch,
    Decoder,
    DeterministicPosterior,
    Divergence,
    Encoder,
    Game,
    GameLosses,
    GaussianPosterior,
    JointCritic,
    Networks,
    OptionError,
    Player,
    Posterior,
    UserError,
    critic_pairs,
    embedding_for,
    hookimpl,
    with_condition,
)
from advinf.divergences import losses
from advinf.regularisers import without_buffer_updates
from advinf_plugins.games import JointGame, JointGameOptions
from advinf_plugins.priors import GaussianPrior, UniformPrior
from advinf_plugins.toy_networks import (
    CriticOptions,
    DecoderOptions,
    MlpOptions,
    ToyCritic,
    ToyDecoder,
    _dims,
    _flat,
    _mlp,
    init_gaussian,
)

# -- the closed forms (used by the games, tested by hand) ------------------------------------------------


def gaussian_kl(mean: Tensor, log_sigma: Tensor) -> Tensor:
    """KL(N(mean, sigma^2) || N(0, I)) per example: 0.5 * sum(mean^2 + sigma^2 - 1 - 2 log sigma)."""
    kl = 0.5 * (mean.pow(2) + (2 * log_sigma).exp() - 1 - 2 * log_sigma)
    return kl.flatten(1).sum(1)


def gaussian_nll(x: Tensor, mean: Tensor, log_sigma: Tensor | float) -> Tensor:
    """-log N(x; mean, sigma^2) per example, summed over the data dimensions (sigma broadcast over them)."""
    log_sigma = torch.as_tensor(log_sigma, dtype=mean.dtype, device=mean.device)
    nll = 0.5 * math.log(2 * math.pi) + log_sigma + 0.5 * ((x - mean) * torch.exp(-log_sigma)).pow(2)
    return nll.flatten(1).sum(1)


def bernoulli_nll(x: Tensor, probs: Tensor) -> Tensor:
    """-log Bernoulli(x; probs) per example, summed over the data dimensions (x in [0, 1])."""
    return F.binary_cross_entropy(probs, x, reduction="none").flatten(1).sum(1)


def squared_error(a: Tensor, b: Tensor) -> Tensor:
    """|a - b|^2 per example."""
    return (a - b).pow(2).flatten(1).sum(1)


# -- inverse mapping --------------------------------------------------------------------------------------

class InverseMappingOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    use_mean: bool = Field(True, description="regress the posterior's mean and encode to it (false: a draw "
                                             "from q(z|x), e.g. the change-of-variables encoder's own noise)")
    log_data_error: bool = Field(True, description="log |x - Gx(Gz(x))|^2 on the batch's data (an extra "
                                                   "forward pass of the encoder and decoder, without gradients)")


class InverseMapping(Game):
    """Learn an encoder for a fixed decoder: Gz(Gx(z)) should give back z (the paper's baseline (b))."""

    players = (Player("encoder", ("encoder",)),)
    networks = {"encoder": "encoder", "decoder": "decoder"}

    def __init__(self, options: InverseMappingOptions):
        self.use_mean, self.log_data_error = options.use_mean, options.log_data_error

    def check(self, nets: Networks) -> None:
        if "decoder" not in nets.frozen:
            raise UserError("game 'inverse_mapping' trains the encoder for a fixed decoder: set [decoder] "
                            "trainable = false (and init_from = the run of a trained GAN)")

    def losses(self, nets: Networks, batch: Batch) -> GameLosses:
        z = nets.prior.sample(batch.x.shape[0], batch.x.device)
        x = nets["decoder"](z)  # frozen: eval mode, no gradient
        posterior = nets["encoder"](x)
        z_hat = posterior.mean if self.use_mean else posterior.sample()
        loss = squared_error(z_hat, z).mean()
        scalars = {}
        if self.log_data_error:
            with torch.no_grad():
                codes = self._point(nets["encoder"](batch.x))
                scalars["data_error"] = squared_error(nets["decoder"](codes), batch.x).mean()
        return GameLosses({"encoder": loss}, scalars)

    def _point(self, posterior: Posterior) -> Tensor:
        return posterior.mean if self.use_mean else posterior.sample()

    def encode(self, nets: Networks, x: Tensor, y: Tensor | None = None) -> Posterior:
        """The point the encoder was trained to give (its mean, with ``use_mean``) as a point mass."""
        posterior = super().encode(nets, x, y)
        if self.use_mean:
            return DeterministicPosterior(posterior.mean, posterior.features)
        return posterior


# -- VAE --------------------------------------------------------------------------------------------------

class VaeOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    likelihood: Literal["gaussian", "bernoulli"] = Field(
        "gaussian", description="p(x|z): Gaussian around the decoder's output, or Bernoulli with the decoder's "
                                "output as probabilities (a sigmoid decoder and data in [0, 1])")
    variance: Literal["fixed", "learned"] = Field(
        "fixed", description="Gaussian only: fixed sigma, or a decoder's learned per-dimension log_sigma "
                             "parameter (e.g. decoder 'toy_gaussian_decoder')")
    sigma: float = Field(1.0, gt=0, description="the fixed standard deviation of p(x|z) (variance = 'fixed')")
    beta: float = Field(1.0, ge=0, description="weight of the KL term (1: the ELBO)")

    @model_validator(mode="after")
    def _fits(self) -> VaeOptions:
        if self.likelihood == "bernoulli" and self.variance == "learned":
            raise OptionError("variance = 'learned' is for the Gaussian likelihood; a Bernoulli has no variance: "
                              "leave variance out or set it to 'fixed'", option="variance")
        if self.sigma != 1.0 and (self.variance == "learned" or self.likelihood == "bernoulli"):
            warnings.warn(f"game: sigma = {self.sigma} does nothing with "
                          f"{'variance = learned' if self.variance == 'learned' else 'likelihood = bernoulli'} "
                          "(it is the fixed variance's)", stacklevel=2)
        return self


class Vae(Game):
    """The ELBO: one player trains the encoder and decoder on E_q[-log p(x|z)] + beta KL(q(z|x) || N(0, I))."""

    players = (Player("vae", ("encoder", "decoder")),)
    networks = {"encoder": "encoder", "decoder": "decoder"}

    def __init__(self, options: VaeOptions):
        self.o = options

    def check(self, nets: Networks) -> None:
        if not isinstance(nets.prior, GaussianPrior) or isinstance(nets.prior, UniformPrior):
            raise UserError("game 'vae' computes the KL in closed form against the standard Gaussian prior: use "
                            "[prior] name = \"gaussian\"")
        if self.o.variance == "learned":
            log_sigma = getattr(nets["decoder"], "log_sigma", None)
            if not isinstance(log_sigma, nn.Parameter):
                raise UserError("game 'vae' with variance = \"learned\" needs a decoder with a learned log_sigma "
                                "parameter, e.g. [decoder] name = \"toy_gaussian_decoder\"; or set "
                                "game.variance = \"fixed\"")

    def losses(self, nets: Networks, batch: Batch) -> GameLosses:
        x = batch.x
        posterior = nets["encoder"](x)
        if not isinstance(posterior, GaussianPosterior):
            raise UserError(f"game 'vae' needs an encoder that returns a GaussianPosterior (mean and log sigma), "
                            f"e.g. [encoder] name = \"toy_gaussian_encoder\"; this one returns "
                            f"{type(posterior).__name__} (toy_encoder's z = f(x, eps) has no closed-form KL)")
        z = posterior.sample()
        x_mean = nets["decoder"](z)
        nll = self.nll(nets, x, x_mean)
        kl = gaussian_kl(posterior.mean, posterior.log_sigma)
        loss = (nll + self.o.beta * kl).mean()
        scalars = {"nll": nll.detach().mean(), "kl": kl.detach().mean()}
        if self.o.likelihood == "gaussian" and self.o.variance == "learned":
            scalars["decoder_sigma"] = nets["decoder"].log_sigma.detach().exp().mean()
        return GameLosses({"vae": loss}, scalars)

    def nll(self, nets: Networks, x: Tensor, x_mean: Tensor) -> Tensor:
        """-log p(x|z) per example for the decoder's output ``x_mean``."""
        if self.o.likelihood == "bernoulli":
            return bernoulli_nll(x, x_mean)  # torch bounds the logs at -100; a clamp here stopped the gradient
        log_sigma = nets["decoder"].log_sigma if self.o.variance == "learned" else math.log(self.o.sigma)
        return gaussian_nll(x, x_mean, log_sigma)


# -- ALICE ------------------------------------------------------------------------------------------------

class AliceOptions(JointGameOptions):
    cycle: Literal["l2", "adversarial"] = Field(
        "l2", description="l2: weight * |x - Gx(Gz(x))|^2; adversarial: a second critic 'cycle_critic' on "
                          "(x, x) vs (x, Gx(Gz(x))) pairs, trained by a third player")
    weight: float = Field(1.0, ge=0, description="weight of the cycle term in the generator's loss (0: ALI)")


class Alice(JointGame):
    """ALI plus a conditional-entropy term on reconstructions (ALICE, Li et al. 2017).

    The ALI part is computed exactly as ``ali`` does (same draws, same order); the reconstructions decode the
    same draw z_hat ~ q(z|x) the critic saw. The reconstruction pass leaves the decoder's buffers (batch-norm
    running statistics) as they were, so they keep describing decoder inputs drawn from the prior, as in ALI.
    """

    def __init__(self, options: AliceOptions, divergence: Divergence | None = None):
        super().__init__(options, stochastic=True, divergence=divergence)
        self.cycle, self.weight = options.cycle, options.weight
        if self.cycle == "adversarial":
            self.players = (CRITIC, Player("cycle_critic", ("cycle_critic",), role="critic"), GENERATOR)
            self.networks = {**self.networks, "cycle_critic": "critic"}

    def check(self, nets: Networks) -> None:
        super().check(nets)
        if self.cycle == "adversarial" and not getattr(nets["cycle_critic"], "uses_z", True):
            raise UserError("game 'alice' with cycle = \"adversarial\": the cycle critic must read both points of "
                            "a pair (x, x'); e.g. [networks.cycle_critic] name = \"toy_pair_critic\"")

    def losses(self, nets: Networks, batch: Batch) -> GameLosses:
        x = batch.x
        with batch.grad_for(GENERATOR.name):
            posterior = nets["encoder"](x)
            z_hat = posterior.sample()
            z = nets.prior.sample(x.shape[0], x.device)
            x_tilde = nets["decoder"](z)
        critic, generator, scalars = self.adversarial(nets["critic"], (x, z_hat), (x_tilde, z), None, batch)
        out = {"critic": critic}
        if self.cycle == "l2" and not batch.updates(GENERATOR.name):  # only the generator's loss reads the cycle
            return GameLosses(out, scalars)
        with batch.grad_for(GENERATOR.name):
            x_rec = without_buffer_updates(nets["decoder"], z_hat)
        error = squared_error(x, x_rec).mean()
        scalars["cycle_l2"] = error.detach()
        if self.cycle == "l2":
            out["generator"] = generator + self.weight * error
        else:
            c_data, c_model = critic_pairs(nets["cycle_critic"], (x, x), (x, x_rec), None, self.joint_batch)
            cycle_critic, cycle_generator = losses(self.divergence_fn, c_data, c_model)
            out["cycle_critic"] = cycle_critic
            out["generator"] = generator + self.weight * cycle_generator
            scalars["cycle_critic_data"] = torch.sigmoid(c_data.detach()).mean()
            scalars["cycle_critic_model"] = torch.sigmoid(c_model.detach()).mean()
        return GameLosses(out, scalars)


# -- networks ---------------------------------------------------------------------------------------------

class GaussianEncoderOptions(MlpOptions):
    layers: int = Field(2, ge=1, description="hidden layers")


class ToyGaussianEncoder(Encoder):
    """The toy encoder's MLP on x alone, ending in 2 z_dim outputs: q(z|x) = N(mu, sigma^2), as mu, log sigma."""

    def __init__(self, x_dim: int, z_dim: int, o: GaussianEncoderOptions, condition=None):
        super().__init__()
        self.z_dim = z_dim
        net = _mlp(x_dim + (condition.embedding_dim if condition else 0), 2 * z_dim, o, o.layers)
        self.body, self.head = net[:-1], net[-1]
        init_gaussian(self, o.init_std)
        self.embed = embedding_for(condition)
        self.conditional = condition is not None

    def forward(self, x: Tensor, y: Tensor | None = None) -> GaussianPosterior:
        h = self.body(with_condition(x, self.embed, y))
        out = self.head(h)
        return GaussianPosterior(out[:, : self.z_dim], out[:, self.z_dim:], features=[h])


class GaussianDecoderOptions(DecoderOptions):
    log_sigma_init: float = Field(0.0, ge=-20, le=20, description="initial log sigma of p(x|z), every dimension")


class ToyGaussianDecoder(ToyDecoder):
    """The toy decoder (its output is the mean of p(x|z)) plus a learned per-dimension ``log_sigma``."""

    def __init__(self, z_dim: int, x_dim: int, o: GaussianDecoderOptions, condition=None):
        super().__init__(z_dim, x_dim, o, condition)
        self.log_sigma = nn.Parameter(torch.full((x_dim,), float(o.log_sigma_init)))


class PairCriticOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    x_dim: int | None = Field(None, gt=0, le=1_000_000, description="data dimensions (default: from the dataset)")
    hidden: int = Field(200, gt=0)
    layers: int = Field(3, ge=1, description="maxout layers")
    pieces: int = Field(5, ge=1, description="maxout pieces")
    init_std: float = Field(0.02, gt=0, description="std of the Gaussian weight initialisation")


def toy_gaussian_encoder(options: GaussianEncoderOptions, ctx) -> Encoder:
    """Gaussian MLP encoder q(z|x) = N(mu(x), sigma(x)^2) with the toy encoder's hidden layers (VAE, ALI)."""
    x_dim, z_dim = _dims(options, ctx, "encoder 'toy_gaussian_encoder'")
    return ToyGaussianEncoder(x_dim, z_dim, options, getattr(ctx, "condition", None))


def toy_gaussian_decoder(options: GaussianDecoderOptions, ctx) -> Decoder:
    """The toy decoder plus a learned per-dimension log sigma of p(x|z) (VAE with variance = "learned")."""
    x_dim, z_dim = _dims(options, ctx, "decoder 'toy_gaussian_decoder'")
    return ToyGaussianDecoder(z_dim, x_dim, options, getattr(ctx, "condition", None))


def toy_pair_critic(options: PairCriticOptions, ctx) -> JointCritic:
    """The toy maxout critic on pairs of data points (x, x'): ALICE's adversarial cycle critic."""
    known = _flat(ctx.sample_shape if ctx is not None else None, "critic 'toy_pair_critic'",
                  "the dataset's examples have", "a dataset of flat vectors, or a pair critic made for images")
    if options.x_dim is not None and known is not None and options.x_dim != known:
        raise UserError(f"critic 'toy_pair_critic': x_dim = {options.x_dim}, but the dataset's examples have "
                        f"{known} dimensions; remove x_dim to take it from there")
    x_dim = options.x_dim or known
    if x_dim is None:
        raise UserError("critic 'toy_pair_critic': give x_dim, or build it from a recipe with a dataset")
    crit = CriticOptions(hidden=options.hidden, layers=options.layers, pieces=options.pieces,
                         init_std=options.init_std)
    return ToyCritic(x_dim, x_dim, crit)


# -- registration -----------------------------------------------------------------------------------------

def inverse_mapping(options: InverseMappingOptions, ctx) -> Game:
    """Learned inverse mapping: the encoder alone learns |z - Gz(Gx(z))|^2 for a fixed (GAN) decoder."""
    return InverseMapping(options)


def vae(options: VaeOptions, ctx) -> Game:
    """VAE: the ELBO with a Gaussian encoder and a Gaussian or Bernoulli decoder likelihood."""
    return Vae(options)


def alice(options: AliceOptions, ctx) -> Game:
    """ALICE: ALI plus an l2 or adversarial cycle (conditional-entropy) term; weight 0 is ALI."""
    return Alice(options, ctx.divergence(options.divergence))


@hookimpl
def register_games(register) -> None:
    register("inverse_mapping", inverse_mapping, InverseMappingOptions)
    register("vae", vae, VaeOptions)
    register("alice", alice, AliceOptions)


@hookimpl
def register_encoders(register) -> None:
    register("toy_gaussian_encoder", toy_gaussian_encoder, GaussianEncoderOptions, conditional=True)


@hookimpl
def register_decoders(register) -> None:
    register("toy_gaussian_decoder", toy_gaussian_decoder, GaussianDecoderOptions, conditional=True)


@hookimpl
def register_critics(register) -> None:
    register("toy_pair_critic", toy_pair_critic, PairCriticOptions)
