"""Dataset ``mixture25``: the paper's 2-D grid of Gaussians (5 x 5 means over {-4, ..., 4}^2, std 0.05)."""

from __future__ import annotations

import itertools

import torch
from pydantic import BaseModel, ConfigDict, Field

from advinf import Dataset, Split, hookimpl


class MixtureOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    grid: int = Field(5, ge=1, le=100, description="modes per side of the square grid (up to 100: 10,000 modes)")
    spacing: float = Field(2.0, gt=0, le=1e6, description="distance between neighbouring means (the points are "
                                                          "float32)")
    std: float = Field(0.05, gt=0, le=1e6, description="standard deviation of every component")
    samples: int = Field(100_000, ge=1, le=100_000_000, description="training samples (the paper: 100,000)")
    heldout: int = Field(10_000, ge=0, le=10_000_000, description="held-out samples (the paper: 10,000)")
    data_seed: int = Field(0, ge=0, lt=2**32, description="seed of the sample draw (independent of the run's seed)")


def grid_centres(grid: int, spacing: float) -> torch.Tensor:
    """The (grid^2, 2) mixture means, centred on the origin."""
    half = (grid - 1) / 2
    coords = [(i - half) * spacing for i in range(grid)]
    return torch.tensor(list(itertools.product(coords, coords)), dtype=torch.float32)


def draw(centres: torch.Tensor, std: float, n: int, generator: torch.Generator) -> Split:
    """n points from the equal-weight mixture; labels are the component indices (the classes)."""
    k = torch.randint(len(centres), (n,), generator=generator)
    x = centres[k] + std * torch.randn(n, centres.shape[1], generator=generator)
    return Split(x, k)


def mixture25(options: MixtureOptions, ctx) -> Dataset:
    """2-D mixture of Gaussians on a grid (ALI's toy experiment); held-out split included."""
    centres = grid_centres(options.grid, options.spacing)
    g = torch.Generator().manual_seed(options.data_seed)
    train = draw(centres, options.std, options.samples, g)
    heldout = draw(centres, options.std, options.heldout, g) if options.heldout else None
    classes = [f"mode {i}" for i in range(len(centres))]
    return Dataset(train, heldout, meta={"centres": centres, "std": options.std, "classes": classes})


@hookimpl
def register_datasets(register) -> None:
    register("mixture25", mixture25, MixtureOptions, labels="classes")
