"""Games: ALI (stochastic encoder), BiGAN (deterministic encoder), GAN (no encoder) and conditional ALI."""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from advinf import (
    CRITIC,
    GENERATOR,
    Batch,
    Divergence,
    Game,
    GameLosses,
    Networks,
    Player,
    RegisteredName,
    UserError,
    critic_pairs,
    hookimpl,
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


class GanOptions(JointGameOptions):
    pass


class ConditionalOptions(JointGameOptions):
    train_embedding: bool = Field(True, description="train the label/attribute embedding (each network its own); "
                                                     "false: a fixed random projection, as the original code")
    embedding_dim: int = Field(256, gt=0, description="width of the embedding of y (the original: 256)")


class JointGame(Game):
    """Matches the joint distributions q(x, z) = q(x) q(z|x) and p(x, z) = p(z) p(x|z).

    ``stochastic`` picks ALI (z_hat is a draw from q(z|x)) or BiGAN (z_hat is the encoder's mean).
    Players: the critic against the generator (encoder + decoder).
    """

    players = (CRITIC, GENERATOR)
    networks = {"encoder": "encoder", "decoder": "decoder", "critic": "critic"}

    def __init__(self, options: JointGameOptions, stochastic: bool, divergence: Divergence | None = None):
        self.divergence, self.joint_batch, self.stochastic = options.divergence, options.joint_batch, stochastic
        self.divergence_fn = divergence or builtin_divergence(options.divergence)

    def check(self, nets: Networks) -> None:
        if not nets["critic"].uses_z:
            raise UserError("ALI/BiGAN need a joint critic D(x, z), but the critic ignores z")

    def losses(self, nets: Networks, batch: Batch) -> GameLosses:
        x, y = batch.x, batch.y
        posterior = nets["encoder"](x, self.condition_for("encoder", y))
        z_hat = posterior.sample() if self.stochastic else posterior.mean
        z = nets.prior.sample(x.shape[0], x.device)
        x_tilde = nets["decoder"](z, self.condition_for("decoder", y))
        d_data, d_model = critic_pairs(nets["critic"], (x, z_hat), (x_tilde, z), self.condition_for("critic", y),
                                       self.joint_batch)
        critic, generator = losses(self.divergence_fn, d_data, d_model)
        return GameLosses({"critic": critic, "generator": generator}, _probabilities(d_data, d_model))


class ConditionalAli(JointGame):
    """ALI with labels y fed to the encoder, the decoder and the critic (ali-reference §6): both joint pairs
    use the batch's own labels, (x, Gz(x, y), y) against (Gx(z, y), z, y)."""

    labels = True
    conditioned = ("encoder", "decoder", "critic")

    def __init__(self, options: ConditionalOptions, divergence: Divergence | None = None):
        super().__init__(options, stochastic=True, divergence=divergence)
        self.train_embedding, self.embedding_dim = options.train_embedding, options.embedding_dim


class GanGame(Game):
    """Plain GAN: the degenerate case without an encoder; the critic sees x only."""

    players = (CRITIC, Player("generator", ("decoder",)))
    networks = {"decoder": "decoder", "critic": "critic"}

    def __init__(self, options: GanOptions, divergence: Divergence | None = None):
        self.divergence, self.joint_batch = options.divergence, options.joint_batch
        self.divergence_fn = divergence or builtin_divergence(options.divergence)

    def check(self, nets: Networks) -> None:
        if nets["critic"].uses_z:
            raise UserError("game 'gan' needs a marginal critic that ignores z (for the toy critic: "
                            "set critic.joint = false)")

    def losses(self, nets: Networks, batch: Batch) -> GameLosses:
        z = nets.prior.sample(batch.x.shape[0], batch.x.device)
        x_tilde = nets["decoder"](z)
        d_data, d_model = critic_pairs(nets["critic"], (batch.x, None), (x_tilde, None), None, self.joint_batch)
        critic, generator = losses(self.divergence_fn, d_data, d_model)
        return GameLosses({"critic": critic, "generator": generator}, _probabilities(d_data, d_model))


def builtin_divergence(name: str) -> Divergence:
    """A built-in divergence by name, for games constructed directly (their factories take any registered one)."""
    if name not in div.BUILTIN:
        raise UserError(f"divergence '{name}' is not built in ({', '.join(div.BUILTIN)}): build the game through "
                        "its factory (advinf.create, a recipe) to use a plugin's, or pass the function")
    return div.BUILTIN[name]


def _probabilities(d_data: Tensor, d_model: Tensor) -> dict[str, Tensor]:
    return {"critic_data": torch.sigmoid(d_data.detach()).mean(),
            "critic_model": torch.sigmoid(d_model.detach()).mean()}


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
