"""Divergences: how critic logits on data pairs and model pairs become both players' losses.

A divergence is a function ``(d_data, d_model) -> (critic_loss, generator_loss)`` of the critic's logits on
data pairs ``d_data = D(x, Gz(x))`` and on model pairs ``d_model = D(Gx(z), z)`` (shape (B,)), returning two
0-dim tensors. Plugins register them by name (``register_divergences``); the built-in games take any
registered name as their ``divergence`` option. The built-in four (registered by the built-in ``games``
plugin), each a sum of batch means:

* ``original`` (ALI's code and Algorithm 1; non-saturating, labels swapped for the generator)::

      L_D = mean(softplus(-d_data)) + mean(softplus(d_model))     # -log s(d_data) - log(1 - s(d_model))
      L_G = mean(softplus(d_data))  + mean(softplus(-d_model))    # -log(1 - s(d_data)) - log s(d_model)

  The encoder is trained through the first term of L_G (it is pushed to make D call (x, Gz(x)) fake),
  the decoder through the second.
* ``minimax``: L_G = -L_D (the saturating value function of the paper's theory).
* ``hinge``: L_D = mean(relu(1 - d_data)) + mean(relu(1 + d_model)); L_G = mean(d_data) - mean(d_model).
* ``least_squares``: L_D = mean((d_data - 1)^2) + mean(d_model^2); L_G = mean(d_data^2) + mean((d_model - 1)^2).

One-sided label smoothing (a game's ``label_smoothing = a``) reaches a divergence that takes a keyword
``smoothing``: its critic loss then counts every data pair as data with weight 1 - a and as model with weight a
(for ``original``/``minimax`` exactly a cross-entropy target of 1 - a; for ``least_squares`` the target 1 - a;
for ``hinge`` (1 - a) relu(1 - d) + a relu(1 + d)). Model pairs and the generator's loss are unchanged.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from advinf.errors import UserError

#: ``divergence(d_data, d_model[, smoothing=0.0]) -> (critic_loss, generator_loss)``.
Divergence = Callable[..., tuple[Tensor, Tensor]]


def original(d_data: Tensor, d_model: Tensor, smoothing: float = 0.0) -> tuple[Tensor, Tensor]:
    """ALI's non-saturating divergence: the generator's labels swapped (Algorithm 1)."""
    critic = _smoothed(F.softplus(-d_data), F.softplus(d_data), smoothing) + F.softplus(d_model).mean()
    generator = F.softplus(d_data).mean() + F.softplus(-d_model).mean()
    return critic, generator


def minimax(d_data: Tensor, d_model: Tensor, smoothing: float = 0.0) -> tuple[Tensor, Tensor]:
    """The saturating value function: L_G = -L_D."""
    critic = _smoothed(F.softplus(-d_data), F.softplus(d_data), smoothing) + F.softplus(d_model).mean()
    return critic, -(F.softplus(-d_data).mean() + F.softplus(d_model).mean())


def hinge(d_data: Tensor, d_model: Tensor, smoothing: float = 0.0) -> tuple[Tensor, Tensor]:
    """Hinge loss for the critic, the critic's mean difference for the generator."""
    critic = _smoothed(F.relu(1 - d_data), F.relu(1 + d_data), smoothing) + F.relu(1 + d_model).mean()
    return critic, d_data.mean() - d_model.mean()


def least_squares(d_data: Tensor, d_model: Tensor, smoothing: float = 0.0) -> tuple[Tensor, Tensor]:
    """Least squares (LSGAN's 0/1 targets; the data target 1 - smoothing)."""
    critic = (d_data - (1 - smoothing)).pow(2).mean() + d_model.pow(2).mean()
    generator = d_data.pow(2).mean() + (d_model - 1).pow(2).mean()
    return critic, generator


def _smoothed(as_data: Tensor, as_model: Tensor, smoothing: float) -> Tensor:
    return as_data.mean() if smoothing == 0 else ((1 - smoothing) * as_data + smoothing * as_model).mean()


#: The built-in divergences, by the names the built-in games plugin registers them under.
BUILTIN: dict[str, Divergence] = {
    "original": original, "minimax": minimax, "hinge": hinge, "least_squares": least_squares,
}
DIVERGENCES = BUILTIN  # the older name


def takes_smoothing(divergence: Divergence) -> bool:
    """Whether ``divergence`` accepts the keyword ``smoothing`` (one-sided label smoothing)."""
    try:
        return "smoothing" in inspect.signature(divergence).parameters
    except (TypeError, ValueError):
        return False


def losses(divergence: str | Divergence, d_data: Tensor, d_model: Tensor, *, smoothing: float = 0.0
           ) -> tuple[Tensor, Tensor]:
    """(critic loss, generator loss) of ``divergence`` (a function, or a built-in's name) for logits of shape
    (B,) or (B, 1); ``smoothing`` > 0 needs a divergence that takes it (see :func:`takes_smoothing`)."""
    fn = BUILTIN[divergence] if isinstance(divergence, str) else divergence
    for logits in (d_data, d_model):
        if logits.dim() > 2 or (logits.dim() == 2 and logits.shape[1] != 1):
            raise UserError(f"the critic returned logits of shape {tuple(logits.shape)}, but this game's divergence "
                            "takes one logit per pair, shape (B,) or (B, 1): check the critic's output layer (a "
                            "critic of several outputs needs a game that reads them, as ali_semisup does)")
    d_data, d_model = d_data.reshape(-1), d_model.reshape(-1)
    if smoothing:
        return fn(d_data, d_model, smoothing=smoothing)
    return fn(d_data, d_model)


def critic_pairs(critic: Callable[..., Tensor], data: tuple[Tensor, Tensor | None],
                 model: tuple[Tensor, Tensor | None], y: Tensor | None = None, joint: bool = True
                 ) -> tuple[Tensor, Tensor]:
    """The critic's logits on data pairs ``(x, z_hat)`` and model pairs ``(x_tilde, z)``, for labels ``y``.

    ``joint = True`` passes both as one batch (the critic's batch norm sees data and model pairs together, as the
    original code does; one forward pass); ``False``: two passes. ``z`` is None for a marginal (GAN) critic. Both
    sets of pairs get the same ``y`` (the batch's own labels).
    """
    (x, zx), (xm, zm) = data, model
    if not joint:
        return critic(x, zx, y), critic(xm, zm, y)
    z_in = None if zx is None or zm is None else torch.cat([zx, zm])
    y_in = None if y is None else torch.cat([y, y])
    logits = critic(torch.cat([x, xm]), z_in, y_in)
    return logits[: x.shape[0]], logits[x.shape[0]:]
