"""Critic regularisers, for networks and games: spectral normalisation, the R1 penalty, instance noise.

* :func:`spectral_normalise` puts torch's spectral-norm parametrisation on every linear and convolution weight
  of a module: each weight is divided by an estimate of its largest singular value (the weight of a convolution
  taken as an (out, in * kh * kw) matrix), refined by one power iteration per training-mode forward pass.
* :func:`r1` is the squared gradient norm of a critic's logits with respect to its inputs, per example: for a
  joint critic D(x, z) the data pairs (x, Gz(x)) are the "real" samples of q(x, z), so the R1 penalty
  (gamma / 2) E ||grad D||^2 is taken with respect to both x and z (``inputs = "joint"``), or x alone
  (``inputs = "x"``). The inputs are detached first: the penalty trains the critic, never the encoder.
* :func:`instance_noise` adds Gaussian noise to what the critic sees.

None of them reads a device value on the host.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

#: The layers :func:`spectral_normalise` wraps.
SPECTRAL_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                   nn.ConvTranspose3d)


def spectral_normalise(module: nn.Module) -> nn.Module:
    """``module`` with every linear and convolution weight spectrally normalised (in place; returned)."""
    for layer in list(module.modules()):
        if isinstance(layer, SPECTRAL_LAYERS) and not _parametrized(layer):
            dim = 1 if isinstance(layer, nn.modules.conv._ConvTransposeNd) else 0
            spectral_norm(layer, dim=dim)
    return module


def _parametrized(layer: nn.Module) -> bool:
    return hasattr(layer, "parametrizations") and "weight" in layer.parametrizations


@torch.compiler.disable  # run eagerly inside a compiled `losses`: AOTAutograd cannot take a double backward
def r1(critic: Callable[..., Tensor], x: Tensor, z: Tensor | None, y: Tensor | None = None,
       inputs: str = "joint", reduce: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """||d D(x, z) / d(x, z)||^2 per example (shape (B,)), at detached copies of ``x`` and ``z``; with
    ``inputs = "x"`` (or ``z`` None: a marginal critic) with respect to x alone. The graph is kept (create_graph),
    so the result can be minimised.

    It takes a forward pass of its own on the data pairs alone: a batch-norm critic normalises them by their own
    statistics there, and its buffers (running statistics, a spectral norm's vectors) are left as they were, so
    the penalty does not count as a second training batch. A critic with several outputs per example (K+1
    classes) needs ``reduce``, its logits to the one real/fake logit per example to differentiate."""
    x = x.detach().requires_grad_(True)
    wrt = [x]
    if z is not None:
        z = z.detach().requires_grad_(inputs == "joint")
        if inputs == "joint":
            wrt.append(z)
    logits = without_buffer_updates(critic, x, z, y) if isinstance(critic, nn.Module) else critic(x, z, y)
    if reduce is not None:
        logits = reduce(logits)
    elif logits.dim() > 1 and logits.shape[1:].numel() > 1:
        raise ValueError(f"r1: the critic gives {tuple(logits.shape[1:])} outputs per example; give reduce, the "
                         "function of them whose gradient to penalise (the real/fake logit)")
    grads = torch.autograd.grad(logits.sum(), wrt, create_graph=True)
    return sum(g.pow(2).flatten(1).sum(1) for g in grads)  # type: ignore[return-value]


def without_buffer_updates(module: nn.Module, *args: Tensor | None) -> Tensor:
    """``module(*args)`` on copies of its buffers: batch-norm running statistics and counters, a spectral norm's
    vectors, stay as they were (and the originals are never modified in place, so they stay usable by the
    autograd graph of other passes). For a pass that is not a training batch: a regulariser's, a cycle's."""
    copies = {name: b.clone() for name, b in module.named_buffers()}
    return torch.func.functional_call(module, copies, args)


def instance_noise(x: Tensor, std: float) -> Tensor:
    """``x`` plus N(0, std^2) noise (``x`` itself when std is 0)."""
    return x if std == 0 else x + std * torch.randn_like(x)
