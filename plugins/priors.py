"""Priors p(z): standard Gaussian (ALI) and uniform on [-1, 1] (BiGAN)."""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field

from advinf import Prior, hookimpl


class PriorOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dim: int = Field(..., gt=0, le=1_000_000, description="latent dimensions")
    spatial: bool = Field(False, description="shape (dim, 1, 1) for convolutional networks instead of (dim,)")


class GaussianPrior(Prior):
    """z ~ N(0, I)."""

    def __init__(self, latent_shape: tuple[int, ...]):
        self.latent_shape = latent_shape

    def sample(self, n, device="cpu", generator=None):
        return torch.randn((n, *self.latent_shape), device=device, generator=generator)


class UniformPrior(GaussianPrior):
    """z ~ U[-1, 1]^d."""

    def sample(self, n, device="cpu", generator=None):
        return torch.rand((n, *self.latent_shape), device=device, generator=generator).mul_(2).sub_(1)


def _shape(o: PriorOptions) -> tuple[int, ...]:
    return (o.dim, 1, 1) if o.spatial else (o.dim,)


def gaussian(options: PriorOptions, ctx) -> Prior:
    """Standard Gaussian N(0, I) (ALI)."""
    return GaussianPrior(_shape(options))


def uniform(options: PriorOptions, ctx) -> Prior:
    """Uniform on [-1, 1]^dim (BiGAN)."""
    return UniformPrior(_shape(options))


@hookimpl
def register_priors(register) -> None:
    register("gaussian", gaussian, PriorOptions)
    register("uniform", uniform, PriorOptions)
