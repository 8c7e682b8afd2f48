"""The plain reference loop `advinf bench` compares against: how ALI/BiGAN is usually written in PyTorch.

It does the same maths as advinf's step for the recipe's game and update scheme (the divergence, a stochastic or
deterministic encoder, the critic's data and model pairs as one batch or two, `simultaneous` or `alternating`
updates), in the everyday style: the data kept on the host as uint8 and each batch indexed, copied to the device
and scaled there, zero_grad/backward (each player's gradient of its own loss only, as advinf takes them), and a
`.item()` per step for logging. The forward pass runs under the recipe's autocast, and the recipe's
learning-rate schedules step after every update. It draws its random numbers in the
same order as advinf's game, so that one step of each from the same state and seed gives the same parameters
(tests/test_bench.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: (critic loss, generator loss) from the critic's logits on data pairs and on model pairs, written out here
#: rather than imported, so that the reference checks advinf's divergences instead of reusing them.
DIVERGENCES: dict[str, Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]] = {
    "original": lambda d, m: (F.softplus(-d).mean() + F.softplus(m).mean(),
                              F.softplus(d).mean() + F.softplus(-m).mean()),
    "minimax": lambda d, m: (F.softplus(-d).mean() + F.softplus(m).mean(),
                             -(F.softplus(-d).mean() + F.softplus(m).mean())),
    "hinge": lambda d, m: (F.relu(1 - d).mean() + F.relu(1 + m).mean(), d.mean() - m.mean()),
    "least_squares": lambda d, m: ((d - 1).pow(2).mean() + m.pow(2).mean(),
                                   d.pow(2).mean() + (m - 1).pow(2).mean()),
}


class PlainAli:
    """ALI (``stochastic``) or BiGAN trained the plain way; ``optimizer(player, params)`` makes the optimiser of
    player ``critic`` and of player ``generator`` (encoder and decoder)."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module, critic: nn.Module, prior_sample: Callable,
                 optimizer: Callable[[str, list[nn.Parameter]], torch.optim.Optimizer], *, divergence: str = "original",
                 joint_batch: bool = True, stochastic: bool = True, update: str = "simultaneous",
                 critic_steps: int = 1, autocast: torch.dtype | None = None,
                 lr_factors: dict[str, Callable[[int], float]] | None = None):
        self.encoder, self.decoder, self.critic, self.prior_sample = encoder, decoder, critic, prior_sample
        self.divergence, self.joint_batch, self.stochastic = DIVERGENCES[divergence], joint_batch, stochastic
        self.update, self.critic_steps, self.autocast = update, critic_steps, autocast
        self.critic_params = list(critic.parameters())
        self.generator_params = list(encoder.parameters()) + list(decoder.parameters())
        self.opt_d = optimizer("critic", self.critic_params)
        self.opt_g = optimizer("generator", self.generator_params)
        # learning-rate schedules (the multiplier after t steps, by player), stepped after every update
        self.schedulers = [torch.optim.lr_scheduler.LambdaLR(opt, (lr_factors or {})[player])
                           for player, opt in (("critic", self.opt_d), ("generator", self.opt_g))
                           if player in (lr_factors or {})]

    def _forward(self, x: Tensor, generator_grad: bool = True) -> tuple[Tensor, Tensor]:
        """The losses, under the recipe's autocast (the forward pass only, as advinf's step)."""
        with torch.autocast(x.device.type, dtype=self.autocast) if self.autocast else contextlib.nullcontext():
            return self.losses(x, generator_grad)

    def losses(self, x: Tensor, generator_grad: bool = True) -> tuple[Tensor, Tensor]:
        """Both losses; ``generator_grad`` False (a critic-only update) records no graph through the encoder and
        decoder, as a careful loop does (``no_grad``, not ``detach``) and as advinf's built-in games do."""
        with contextlib.nullcontext() if generator_grad else torch.no_grad():
            posterior = self.encoder(x)
            z_hat = posterior.sample() if self.stochastic else posterior.mean
            z = self.prior_sample(x.shape[0], x.device)
            x_tilde = self.decoder(z)
        if self.joint_batch:
            logits = self.critic(torch.cat([x, x_tilde]), torch.cat([z_hat, z])).reshape(-1)
            d_data, d_model = logits[: x.shape[0]], logits[x.shape[0]:]
        else:
            d_data, d_model = self.critic(x, z_hat).reshape(-1), self.critic(x_tilde, z).reshape(-1)
        return self.divergence(d_data, d_model)

    def step(self, next_batch: Callable[[], Tensor]) -> float:
        """One update under the scheme; ``next_batch()`` gives a fresh batch on the device. Returns the critic
        loss (read with .item(), as plain loops do)."""
        if self.update == "simultaneous":
            loss_d, loss_g = self._forward(next_batch())
            self.opt_d.zero_grad()
            self.opt_g.zero_grad()
            loss_d.backward(inputs=self.critic_params, retain_graph=True)  # each player's gradient of its own
            loss_g.backward(inputs=self.generator_params)  # loss only: no work for gradients thrown away
            self.opt_d.step()
            self.opt_g.step()
        else:
            for _ in range(self.critic_steps):
                loss_d, _ = self._forward(next_batch(), generator_grad=False)
                self.opt_d.zero_grad()
                loss_d.backward(inputs=self.critic_params)
                self.opt_d.step()
            _, loss_g = self._forward(next_batch())
            self.opt_g.zero_grad()
            loss_g.backward(inputs=self.generator_params)
            self.opt_g.step()
        for scheduler in self.schedulers:
            scheduler.step()
        return loss_d.item()

    def run(self, data: Tensor, steps: int, *, batch_size: int, device: torch.device) -> list[float]:
        """``steps`` updates on batches drawn at random from ``data`` (host, uint8 pixels or floats)."""

        def next_batch() -> Tensor:
            x = data[torch.randint(len(data), (batch_size,))].to(device)
            return x.float() / 255 if x.dtype == torch.uint8 else x

        return [self.step(next_batch) for _ in range(steps)]
