"""An exponential moving average of a network's parameters and buffers, kept on the network's device.

It gives the same numbers as ``torch.optim.swa_utils.AveragedModel`` with ``get_ema_multi_avg_fn(decay)`` and
``use_buffers=True`` (the first update copies the network, later ones lerp towards it) and has the same state
names (``module.*``, ``n_averaged``), so checkpoints written with either load into the other. The difference:
``AveragedModel.update_parameters`` reads its update counter on the host every step (``n_averaged == 0``), a
device synchronisation per step on CUDA and an obstacle to capturing the step in a CUDA graph. Here the host
keeps its own count; the ``n_averaged`` buffer follows it on the device and is read once, when a checkpoint is
loaded.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn


class MovingAverage(nn.Module):
    """``module``: a copy of the network whose parameters and buffers follow ``decay * avg + (1 - decay) * net``
    at each ``update(net)`` (the first update copies the network)."""

    def __init__(self, network: nn.Module, decay: float):
        super().__init__()
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"decay must be in [0, 1], not {decay}")
        self.module = copy.deepcopy(network)
        self.decay = decay
        device = next((t.device for t in self._tensors(network)), None)
        self.register_buffer("n_averaged", torch.tensor(0, dtype=torch.long, device=device))
        self._count = 0  # the host's copy of n_averaged: no device read per update

    @staticmethod
    def _tensors(network: nn.Module) -> list[Tensor]:
        return [t.detach() for t in (*network.parameters(), *network.buffers())]

    @torch.no_grad()
    def update(self, network: nn.Module) -> None:
        """One step of the average towards ``network``'s current parameters and buffers (no host sync)."""
        mine, theirs = self._tensors(self.module), self._tensors(network)
        floats = [(a, b) for a, b in zip(mine, theirs, strict=True) if a.is_floating_point()]
        others = [(a, b) for a, b in zip(mine, theirs, strict=True) if not a.is_floating_point()]
        if floats:
            avg, net = [a for a, _ in floats], [b for _, b in floats]
            if self._count == 0:
                torch._foreach_copy_(avg, net)
            else:
                torch._foreach_lerp_(avg, net, 1 - self.decay)
        for a, b in others:  # integer buffers (batch norm's step count), as AveragedModel treats them
            a.copy_(b if self._count == 0 else a * self.decay + b * (1 - self.decay))
        self._count += 1
        self.n_averaged.add_(1)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._count = int(self.n_averaged)  # once, when a checkpoint is loaded
