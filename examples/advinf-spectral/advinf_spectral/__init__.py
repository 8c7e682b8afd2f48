"""advinf-spectral: a spectrally normalised joint critic and a relativistic hinge divergence."""

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

import advinf
from advinf import hookimpl


class SpectralCriticOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hidden: int = Field(256, gt=0, le=65536, description="width of each hidden layer")
    layers: int = Field(2, ge=1, le=16, description="hidden layers")
    slope: float = Field(0.2, ge=0, lt=1, description="negative slope of the leaky ReLUs")


class SpectralCritic(advinf.JointCritic):
    """D(x, z): an MLP on concat(x, z) whose every weight matrix is spectrally normalised."""

    def __init__(self, x_dim: int, z_dim: int, options: SpectralCriticOptions):
        super().__init__()
        layers, width = [], x_dim + z_dim
        for _ in range(options.layers):
            layers += [spectral_norm(nn.Linear(width, options.hidden)), nn.LeakyReLU(options.slope)]
            width = options.hidden
        layers.append(spectral_norm(nn.Linear(width, 1)))
        self.net = nn.Sequential(*layers)

    def forward(self, x, z, y=None):
        return self.net(torch.cat([x.flatten(1), z.flatten(1)], 1)).squeeze(1)


def spectral_critic(options: SpectralCriticOptions, ctx: advinf.BuildContext) -> SpectralCritic:
    """A spectrally normalised MLP critic on (x, z) for flat data (e.g. mixture25)."""
    x_dim, z_dim = (torch.Size(s).numel() for s in (ctx.sample_shape, ctx.latent_shape))
    return SpectralCritic(x_dim, z_dim, options)


def relativistic_hinge(d_data, d_model):
    """Relativistic average hinge: each side's logits against the other side's mean."""
    real, fake = d_data - d_model.mean(), d_model - d_data.mean()
    critic = torch.relu(1 - real).mean() + torch.relu(1 + fake).mean()
    generator = torch.relu(1 + real).mean() + torch.relu(1 - fake).mean()
    return critic, generator


@hookimpl
def register_critics(register):
    register("spectral_critic", spectral_critic, SpectralCriticOptions)


@hookimpl
def register_divergences(register):
    register("relativistic_hinge", relativistic_hinge)
