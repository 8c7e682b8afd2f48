"""Pictures of samples: image grids for image data, scatter plots for 2-D points."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from torch import Tensor

from advinf.atomic import atomic_path


def save_samples(x: Tensor, path: Path, nrow: int | None = None) -> None:
    """Write a picture of a batch of model outputs (already in data range) to ``path`` (PNG)."""
    x = x.detach().float().cpu()
    if x.dim() == 4:
        save_grid(x, path, nrow)
    elif x.dim() == 2 and x.shape[1] == 2:
        save_scatter(x, path)
    else:
        raise ValueError(f"no picture for samples of shape {tuple(x.shape)}")


def save_grid(images: Tensor, path: Path, nrow: int | None = None) -> None:
    """An image grid of (N, C, H, W) values in [0, 1]."""
    from torchvision.utils import save_image

    nrow = nrow or max(1, int(math.sqrt(len(images))))
    with atomic_path(path) as tmp:
        save_image(images.clamp(0, 1), str(tmp), nrow=nrow, padding=2, format="png")


def save_scatter(points: Tensor, path: Path, title: str = "", groups: Sequence[tuple[Tensor, str]] = (),
                 lines: Tensor | None = None) -> None:
    """A scatter plot of (N, 2) points; or of ``groups``, (points, label) pairs in colours of their own with a
    legend (data and its reconstructions, samples of each condition). ``lines`` (K, M, 2): K polylines drawn
    thinly beneath, e.g. each example joined to its reconstruction, or an interpolation from one example to
    another."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
    if lines is not None:
        for line in lines.numpy():
            ax.plot(line[:, 0], line[:, 1], color="0.6", linewidth=0.5, zorder=1)
    if groups:
        for group, label in groups:
            ax.scatter(group[:, 0].numpy(), group[:, 1].numpy(), s=4, alpha=0.7, label=label, zorder=2)
        ax.legend(fontsize=6, markerscale=2, loc="best")
    else:
        ax.scatter(points[:, 0].numpy(), points[:, 1].numpy(), s=2, alpha=0.5, zorder=2)
    ax.set_aspect("equal")
    if title:
        ax.set_title(title)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    plt.close(fig)

