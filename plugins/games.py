"""Games: ALI (stochastic encoder), BiGAN (deterministic encoder), GAN (no encoder) and conditional ALI."""

from __future__ import annotations

import warnings
from typing import Annotated, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor

from advinf import (
    CRITIC,
    GENERATOR,
    Batch,
    Divergence,
    Game,
    GameLosses,
    JointCritic,
    Networks,
    Player,
    RegisteredName,
    UserError,
    critic_pairs,
    hookimpl,
    regularisers,
)
from advinf import divergences as div
from advinf.divergences import losses


class JointGameOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    divergence: Annotated[str, RegisteredName("divergence")] = Field(
        "original", description="any registered divergence (advinf list-plugins); original = non-saturating "
                                "with swapped labels (ALI's code), minimax, hinge, least_squares")
    joint_batch: bool = Field(True, description="pass data and model pairs through the critic as one batch "
                                                "(shared BN statistics, as the original); false: two passes")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="one-sided label smoothing a: the critic's loss "
                                   "counts data pairs as data with weight 1 - a and as model with weight a (needs a "
                                   "divergence that takes `smoothing`; the built-in four do)")
    instance_noise: float = Field(0.0, ge=0, le=1e3, description="std of Gaussian noise added to every x the "
                                  "critic sees (data and model pairs; z is left alone)")
    instance_noise_steps: int = Field(0, ge=0, description="anneal the instance noise linearly to 0 over this "
                                      "many steps (0: constant)")
    r1: float = Field(0.0, ge=0, le=1e6, description="gamma of the R1 penalty (gamma / 2) E||grad D||^2 on data "
                      "pairs (x, Gz(x)), added to the critic's loss; 0: off")
    r1_every: int = Field(1, ge=1, le=1_000_000, description="apply R1 every k-th step only, scaled by k (lazy "
                          "regularisation); decided from the host's step count")
    r1_inputs: Literal["joint", "x"] = Field("joint", description="differentiate D with respect to both x and "
                                             "z_hat (joint) or x alone")

    @model_validator(mode="after")
    def _idle_options(self) -> JointGameOptions:
        """Options set away from their defaults that do nothing with the others as they are: said, not ignored
        silently (a warning, so that a run written with them still resumes)."""
        for off, switch, keys in ((self.r1 == 0, "r1 = 0", {"r1_every": 1, "r1_inputs": "joint"}),
                                  (self.instance_noise == 0, "instance_noise = 0", {"instance_noise_steps": 0})):
            idle = [f"{k} = {getattr(self, k)!r}" for k, default in keys.items() if getattr(self, k) != default]
            if off and idle:
                verb = "does" if len(idle) == 1 else "do"
                warnings.warn(f"game: {', '.join(idle)} {verb} nothing with {switch}", stacklevel=2)
        return self


class GanOptions(JointGameOptions):
    pass


class ConditionalOptions(JointGameOptions):
    train_embedding: bool = Field(True, description="train the label/attribute embedding (each network its own); "
                                                     "false: a fixed random projection, as the original code")
    embedding_dim: int = Field(256, gt=0, description="width of the embedding of y (the original: 256)")


class AdversarialGame(Game):
    """A critic against a generator through a registered divergence, with the critic regularisers of
    :class:`JointGameOptions` (label smoothing, instance noise, R1)."""

    joint_batch: bool = True

    def _setup(self, options: JointGameOptions, divergence: Divergence | None) -> None:
        self.divergence, self.joint_batch = options.divergence, options.joint_batch
        self.divergence_fn = divergence or builtin_divergence(options.divergence)
        self.smoothing, self.r1, self.r1_every, self.r1_inputs = (
            options.label_smoothing, options.r1, options.r1_every, options.r1_inputs)
        self.noise, self.noise_steps = options.instance_noise, options.instance_noise_steps
        if self.smoothing and not div.takes_smoothing(self.divergence_fn):
            raise UserError(f"label_smoothing needs a divergence that takes `smoothing`; divergence "
                            f"'{self.divergence}' does not (the built-in four do)")

    def adversarial(self, critic: JointCritic, data: tuple[Tensor, Tensor | None],
                    model: tuple[Tensor, Tensor | None], y: Tensor | None, batch: Batch
                    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """(critic loss, generator loss, scalars) of the critic on data and model pairs, regularised."""
        std = self._noise_std(batch.step)
        data_in = (regularisers.instance_noise(data[0], std), data[1])
        model_in = (regularisers.instance_noise(model[0], std), model[1])
        d_data, d_model = critic_pairs(critic, data_in, model_in, y, self.joint_batch)
        critic_loss, generator_loss = losses(self.divergence_fn, d_data, d_model, smoothing=self.smoothing)
        scalars = _critic_outputs(d_data, d_model, self.divergence in ("original", "minimax"))
        if self.r1 and batch.updates(CRITIC.name):  # a generator pass skips it; its scalar is the critic pass's
            if batch.step % self.r1_every == 0:  # a host int: no device read decides it
                penalty = (self.r1 / 2 * self.r1_every) * regularisers.r1(critic, *data_in, y, self.r1_inputs).mean()
                critic_loss = critic_loss + penalty
                scalars["r1_penalty"] = penalty.detach()
            else:
                scalars["r1_penalty"] = critic_loss.new_zeros(())
        return critic_loss, generator_loss, scalars

    def host_decisions(self) -> str | None:
        if self.r1 and self.r1_every > 1:
            return f"game.r1_every = {self.r1_every} applies R1 on some steps only, counted on the host"
        if self.noise and self.noise_steps:
            return "game.instance_noise_steps anneals the noise level on the host, step by step"
        return None

    def _noise_std(self, step: int) -> float:
        if not self.noise or not self.noise_steps:
            return self.noise
        return self.noise * max(0.0, 1 - step / self.noise_steps)


class JointGame(AdversarialGame):
    """Matches the joint distributions q(x, z) = q(x) q(z|x) and p(x, z) = p(z) p(x|z).

    ``stochastic`` picks ALI (z_hat is a draw from q(z|x)) or BiGAN (z_hat is the encoder's mean).
    Players: the critic against the generator (encoder + decoder).
    """

    players = (CRITIC, GENERATOR)
    networks = {"encoder": "encoder", "decoder": "decoder", "critic": "critic"}

    def __init__(self, options: JointGameOptions, stochastic: bool, divergence: Divergence | None = None):
        self._setup(options, divergence)
        self.stochastic = stochastic

    def check(self, nets: Networks) -> None:
        if not getattr(nets["critic"], "uses_z", True):
            raise UserError("ALI/BiGAN need a joint critic D(x, z), but the critic ignores z (uses_z = False): "
                            "set critic.joint = true (the default) for a built-in critic, or play game \"gan\" "
                            "for a critic of x alone")

    def losses(self, nets: Networks, batch: Batch) -> GameLosses:
        x, y = batch.x, batch.y
        with batch.grad_for(GENERATOR.name):  # a critic pass builds no graph through the generator
            posterior = nets["encoder"](x, self.condition_for("encoder", y))
            z_hat = posterior.sample() if self.stochastic else posterior.mean
            z = nets.prior.sample(x.shape[0], x.device)
            x_tilde = nets["decoder"](z, self.condition_for("decoder", y))
        critic, generator, scalars = self.adversarial(nets["critic"], (x, z_hat), (x_tilde, z),
                                                      self.condition_for("critic", y), batch)
        return GameLosses({"critic": critic, "generator": generator}, scalars)


class ConditionalAli(JointGame):
    """ALI with labels y fed to the encoder, the decoder and the critic (ali-reference §6): both joint pairs
    use the batch's own labels, (x, Gz(x, y), y) against (Gx(z, y), z, y)."""

    labels = True
    conditioned = ("encoder", "decoder", "critic")

    def __init__(self, options: ConditionalOptions, divergence: Divergence | None = None):
        super().__init__(options, stochastic=True, divergence=divergence)
        self.train_embedding, self.embedding_dim = options.train_embedding, options.embedding_dim


class GanGame(AdversarialGame):
    """Plain GAN: the degenerate case without an encoder; the critic sees x only."""

    players = (CRITIC, Player("generator", ("decoder",)))
    networks = {"decoder": "decoder", "critic": "critic"}

    def __init__(self, options: GanOptions, divergence: Divergence | None = None):
        self._setup(options, divergence)

    def check(self, nets: Networks) -> None:
        if getattr(nets["critic"], "uses_z", True):
            raise UserError("game 'gan' needs a marginal critic D(x) that ignores z: set critic.joint = false for "
                            "a built-in critic; a critic of your own (an advinf.JointCritic) sets uses_z = False "
                            "and is called with z None")

    def losses(self, nets: Networks, batch: Batch) -> GameLosses:
        with batch.grad_for(GENERATOR.name):
            z = nets.prior.sample(batch.x.shape[0], batch.x.device)
            x_tilde = nets["decoder"](z)
        critic, generator, scalars = self.adversarial(nets["critic"], (batch.x, None), (x_tilde, None), None, batch)
        return GameLosses({"critic": critic, "generator": generator}, scalars)


def builtin_divergence(name: str) -> Divergence:
    """A built-in divergence by name, for games constructed directly (their factories take any registered one)."""
    if name not in div.BUILTIN:
        raise UserError(f"divergence '{name}' is not built in ({', '.join(div.BUILTIN)}): build the game through "
                        "its factory (advinf.create, a recipe) to use a plugin's, or pass the function")
    return div.BUILTIN[name]


def _critic_outputs(d_data: Tensor, d_model: Tensor, log_odds: bool) -> dict[str, Tensor]:
    """What the critic says of data and model pairs, on average: the probability of "data" where its output is
    a log-odds (the cross-entropy divergences), else the output itself (hinge's and least squares' targets are
    no probabilities: their sigmoid would read as one)."""
    read = torch.sigmoid if log_odds else (lambda d: d)
    return {"critic_data": read(d_data.detach().float()).mean(), "critic_model": read(d_model.detach().float()).mean()}


def ali(options: JointGameOptions, ctx) -> Game:
    """ALI: stochastic encoder, joint critic (Dumoulin et al. 2017)."""
    return JointGame(options, stochastic=True, divergence=ctx.divergence(options.divergence))


def bigan(options: JointGameOptions, ctx) -> Game:
    """BiGAN: deterministic encoder, joint critic (Donahue et al. 2017)."""
    return JointGame(options, stochastic=False, divergence=ctx.divergence(options.divergence))


def gan(options: GanOptions, ctx) -> Game:
    """Plain GAN: decoder against a marginal critic, no encoder."""
    return GanGame(options, ctx.divergence(options.divergence))


def conditional_ali(options: ConditionalOptions, ctx) -> Game:
    """Conditional ALI: labels or attributes y enter the encoder, decoder and critic (the paper's CelebA)."""
    return ConditionalAli(options, ctx.divergence(options.divergence))


@hookimpl
def register_games(register) -> None:
    register("ali", ali, JointGameOptions)
    register("bigan", bigan, JointGameOptions)
    register("gan", gan, GanOptions)
    register("conditional_ali", conditional_ali, ConditionalOptions)


@hookimpl
def register_divergences(register) -> None:
    for name, function in div.BUILTIN.items():  # the core's functions, registered like any plugin's
        register(name, function)
