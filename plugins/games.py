"""Games: ALI (stochastic encoder), BiGAN (deterministic encoder) and GAN (no encoder)."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from advinf import Batch, Game, GameLosses, Networks, UserError, hookimpl
from advinf.divergences import losses


class JointGameOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    divergence: Literal["original", "minimax", "hinge", "least_squares"] = Field(
        "original", description="original = non-saturating with swapped labels (ALI's code)")
    joint_batch: bool = Field(True, description="pass data and model pairs through the critic as one batch "
                                                "(shared BN statistics, as the original); false: two passes")


class GanOptions(JointGameOptions):
    pass


class JointGame(Game):
    """Matches the joint distributions q(x, z) = q(x) q(z|x) and p(x, z) = p(z) p(x|z).

    ``stochastic`` picks ALI (z_hat is a draw from q(z|x)) or BiGAN (z_hat is the encoder's mean).
    """

    uses_encoder = True

    def __init__(self, options: JointGameOptions, stochastic: bool):
        self.divergence, self.joint_batch, self.stochastic = options.divergence, options.joint_batch, stochastic

    def check(self, nets: Networks) -> None:
        if not nets.critic.uses_z:
            raise UserError("ALI/BiGAN need a joint critic D(x, z), but the critic ignores z")

    def losses(self, nets: Networks, batch: Batch) -> GameLosses:
        assert nets.encoder is not None
        x, y = batch.x, batch.y
        posterior = nets.encoder(x, y)
        z_hat = posterior.sample() if self.stochastic else posterior.mean
        z = nets.prior.sample(x.shape[0], x.device)
        x_tilde = nets.decoder(z, y)
        d_data, d_model = _critic_pairs(nets, (x, z_hat), (x_tilde, z), y, self.joint_batch)
        critic, generator = losses(self.divergence, d_data, d_model)
        return GameLosses(critic, generator, _probabilities(d_data, d_model))


class GanGame(Game):
    """Plain GAN: the degenerate case without an encoder; the critic sees x only."""

    uses_encoder = False

    def __init__(self, options: GanOptions):
        self.divergence, self.joint_batch = options.divergence, options.joint_batch

    def check(self, nets: Networks) -> None:
        if nets.critic.uses_z:
            raise UserError("game 'gan' needs a marginal critic that ignores z (for the toy critic: "
                            "set critic.joint = false)")

    def losses(self, nets: Networks, batch: Batch) -> GameLosses:
        z = nets.prior.sample(batch.x.shape[0], batch.x.device)
        x_tilde = nets.decoder(z, batch.y)
        d_data, d_model = _critic_pairs(nets, (batch.x, None), (x_tilde, None), batch.y, self.joint_batch)
        critic, generator = losses(self.divergence, d_data, d_model)
        return GameLosses(critic, generator, _probabilities(d_data, d_model))


def _critic_pairs(nets: Networks, data: tuple, model: tuple, y, joint: bool):
    (x, zx), (xm, zm) = data, model
    if not joint:
        return nets.critic(x, zx, y), nets.critic(xm, zm, y)
    z_in = None if zx is None else torch.cat([zx, zm])
    y_in = None if y is None else torch.cat([y, y])
    logits = nets.critic(torch.cat([x, xm]), z_in, y_in)
    return logits[: x.shape[0]], logits[x.shape[0]:]


def _probabilities(d_data, d_model) -> dict:
    return {"critic_data": torch.sigmoid(d_data.detach()).mean(),
            "critic_model": torch.sigmoid(d_model.detach()).mean()}


def ali(options: JointGameOptions, ctx) -> Game:
    """ALI: stochastic encoder, joint critic (Dumoulin et al. 2017)."""
    return JointGame(options, stochastic=True)


def bigan(options: JointGameOptions, ctx) -> Game:
    """BiGAN: deterministic encoder, joint critic (Donahue et al. 2017)."""
    return JointGame(options, stochastic=False)


def gan(options: GanOptions, ctx) -> Game:
    """Plain GAN: decoder against a marginal critic, no encoder."""
    return GanGame(options)


@hookimpl
def register_games(register) -> None:
    register("ali", ali, JointGameOptions)
    register("bigan", bigan, JointGameOptions)
    register("gan", gan, GanOptions)
