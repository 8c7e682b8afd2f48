"""Games written outside advinf, as a third party would write them (tests/test_games.py trains them):

* ``vae_style``: one player, no critic: an autoencoder with a Gaussian-prior penalty on its codes;
* ``ali_cycle``: ALI plus a network of its own, a second critic that tells (x, x) from (x, Gx(Gz(x))) pairs
  (an adversarial cycle term in the style of ALICE), trained by a third player;
* ``labelled_stream``: ALI that also reads a labelled stream of class-0 examples beside the main one.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field

from advinf import CRITIC, GENERATOR, Game, GameLosses, Player, Stream, hookimpl
from advinf.divergences import losses


class VaeOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    beta: float = Field(1.0, ge=0, description="weight of the prior penalty 0.5 |z|^2")


class VaeStyle(Game):
    """One player trains the encoder and the decoder; there is no critic."""

    players = (Player("autoencoder", ("encoder", "decoder")),)
    networks = {"encoder": "encoder", "decoder": "decoder"}

    def __init__(self, options: VaeOptions):
        self.beta = options.beta

    def losses(self, nets, batch):
        z = nets["encoder"](batch.x).sample()
        reconstruction = (nets["decoder"](z) - batch.x).pow(2).sum(1).mean()
        penalty = 0.5 * z.pow(2).sum(1).mean()
        return GameLosses({"autoencoder": reconstruction + self.beta * penalty},
                          {"reconstruction": reconstruction.detach()})


class CycleOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    weight: float = Field(1.0, ge=0)


class AliCycle(Game):
    """ALI plus an adversarial cycle term from a second critic of the game's own."""

    players = (CRITIC, Player("cycle_critic", ("cycle_critic",), role="critic"), GENERATOR)
    networks = {"encoder": "encoder", "decoder": "decoder", "critic": "critic", "cycle_critic": "critic"}

    def __init__(self, options: CycleOptions):
        self.weight = options.weight

    def losses(self, nets, batch):
        x, n = batch.x, len(batch.x)
        z_hat = nets["encoder"](x).sample()
        z = nets.prior.sample(n, x.device)
        d = nets["critic"](torch.cat([x, nets["decoder"](z)]), torch.cat([z_hat, z]))
        critic, generator = losses("original", d[:n], d[n:])
        c = nets["cycle_critic"](torch.cat([x, x]), torch.cat([x, nets["decoder"](z_hat)]))
        cycle_critic, cycle_generator = losses("original", c[:n], c[n:])
        return GameLosses({"critic": critic, "cycle_critic": cycle_critic,
                           "generator": generator + self.weight * cycle_generator})


def _class_zero(split, seed):
    return (split.y == 0).nonzero().flatten()


class LabelledStream(Game):
    """ALI whose generator loss also reads a second, labelled stream (only to show streams reach the game)."""

    players = (CRITIC, GENERATOR)
    networks = {"encoder": "encoder", "decoder": "decoder", "critic": "critic"}
    streams = (Stream("labelled", batch_size=8, labelled=True, select=_class_zero),)
    seen: list = []

    def losses(self, nets, batch):
        labelled = batch.streams["labelled"]
        LabelledStream.seen.append(labelled.y.clone())
        x, n = batch.x, len(batch.x)
        z_hat = nets["encoder"](x).sample()
        z = nets.prior.sample(n, x.device)
        d = nets["critic"](torch.cat([x, nets["decoder"](z)]), torch.cat([z_hat, z]))
        critic, generator = losses("original", d[:n], d[n:])
        anchor = nets["encoder"](labelled.x).mean.pow(2).mean()
        return GameLosses({"critic": critic, "generator": generator + 0.0 * anchor})


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


@hookimpl
def register_games(register):
    register("vae_style", lambda o, ctx: VaeStyle(o), VaeOptions)
    register("ali_cycle", lambda o, ctx: AliCycle(o), CycleOptions)
    register("labelled_stream", lambda o, ctx: LabelledStream(), NoOptions)


@hookimpl
def register_critics(register):
    from advinf_plugins.toy_networks import CriticOptions, ToyCritic

    def plain_critic(options: CriticOptions, ctx):
        """The toy critic, registered without conditional support."""
        return ToyCritic(ctx.sample_shape[0], ctx.latent_shape[0], options)

    register("plain_critic", plain_critic, CriticOptions)
