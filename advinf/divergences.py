"""Divergences: how critic logits on data pairs and model pairs become both players' losses.

With ``d_data = D(x, Gz(x))`` and ``d_model = D(Gx(z), z)`` (logits), each loss is a sum of batch means:

* ``original`` (ALI's code and Algorithm 1; non-saturating, labels swapped for the generator)::

      L_D = mean(softplus(-d_data)) + mean(softplus(d_model))     # -log s(d_data) - log(1 - s(d_model))
      L_G = mean(softplus(d_data))  + mean(softplus(-d_model))    # -log(1 - s(d_data)) - log s(d_model)

  The encoder is trained through the first term of L_G (it is pushed to make D call (x, Gz(x)) fake),
  the decoder through the second.
* ``minimax``: L_G = -L_D (the saturating value function of the paper's theory).
* ``hinge``: L_D = mean(relu(1 - d_data)) + mean(relu(1 + d_model)); L_G = mean(d_data) - mean(d_model).
* ``least_squares``: L_D = mean((d_data - 1)^2) + mean(d_model^2); L_G = mean(d_data^2) + mean((d_model - 1)^2).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch.nn.functional as F
from torch import Tensor

DivergenceName = Literal["original", "minimax", "hinge", "least_squares"]


def original(d_data: Tensor, d_model: Tensor) -> tuple[Tensor, Tensor]:
    critic = F.softplus(-d_data).mean() + F.softplus(d_model).mean()
    generator = F.softplus(d_data).mean() + F.softplus(-d_model).mean()
    return critic, generator


def minimax(d_data: Tensor, d_model: Tensor) -> tuple[Tensor, Tensor]:
    critic = F.softplus(-d_data).mean() + F.softplus(d_model).mean()
    return critic, -critic


def hinge(d_data: Tensor, d_model: Tensor) -> tuple[Tensor, Tensor]:
    critic = F.relu(1 - d_data).mean() + F.relu(1 + d_model).mean()
    return critic, d_data.mean() - d_model.mean()


def least_squares(d_data: Tensor, d_model: Tensor) -> tuple[Tensor, Tensor]:
    critic = (d_data - 1).pow(2).mean() + d_model.pow(2).mean()
    generator = d_data.pow(2).mean() + (d_model - 1).pow(2).mean()
    return critic, generator


DIVERGENCES: dict[str, Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]] = {
    "original": original, "minimax": minimax, "hinge": hinge, "least_squares": least_squares,
}


def losses(name: str, d_data: Tensor, d_model: Tensor) -> tuple[Tensor, Tensor]:
    """(critic loss, generator loss) of divergence ``name`` for logits of shape (B,) or (B, 1)."""
    return DIVERGENCES[name](d_data.reshape(-1), d_model.reshape(-1))
