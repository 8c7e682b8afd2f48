"""Evaluator ``mode_coverage``: how many mixture modes the decoder covers, and how well the encoder inverts.

* ``modes_covered``: the paper's count. Decoder samples from the prior are assigned to their nearest
  centre (the argmax responsibility for equal isotropic components); a mode is covered if any sample is.
* ``modes_covered_strict``: modes with at least ``min_samples`` samples within ``radius_std`` standard
  deviations of the centre, each sample counted for its nearest centre only (never above ``modes_covered``).
* ``high_quality_fraction``: share of samples within ``radius_std`` standard deviations of some centre.
* ``reconstruction_accuracy`` (games with an encoder): share of held-out points whose reconstruction
  Gx(Gz(x)) has the same nearest centre as x.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor

from advinf import Dataset, Evaluator, OptionError, TrainedModel, UserError, atomic_path, example_conditions, hookimpl


class ModeCoverageOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    samples: int = Field(10_000, ge=1, le=1_000_000,
                         description="decoder samples drawn from the prior (the paper: 10,000)")
    radius_std: float = Field(3.0, gt=0, description="strict radius in standard deviations")
    min_samples: int = Field(20, ge=1, description="samples a mode needs within the radius (strict count)")
    seed: int = Field(0, ge=0, lt=2**32, description="seed of the prior draw and of the encoder's noise")
    plot: bool = Field(True, description="write mode_coverage.png like the paper's mixture figure")
    plot_points: int = Field(2500, ge=1, le=1_000_000, description="points per panel of the figure")

    @model_validator(mode="after")
    def _reachable(self) -> ModeCoverageOptions:
        if self.min_samples > self.samples:
            raise OptionError(f"min_samples = {self.min_samples} is more than the {self.samples} samples drawn: no "
                             "mode could count in modes_covered_strict", option="min_samples")
        return self


def coverage_metrics(samples: Tensor, centres: Tensor, std: float, radius_std: float = 3.0,
                     min_samples: int = 20) -> dict[str, Any]:
    """The three decoder-side numbers for (N, 2) samples and (K, 2) centres, and how many samples are not finite
    (a NaN sample is near no mode: argmin would give it mode 0)."""
    finite = torch.isfinite(samples).all(1)
    d = torch.cdist(samples.float(), centres.float())  # (N, K)
    nearest_d, nearest = d.min(dim=1)
    close = (nearest_d <= radius_std * std) & finite
    # a sample counts for its nearest mode only: with a radius wider than half the spacing (a large std) one
    # sample lay within the radius of several modes, and the strict count could exceed the modes covered
    per_mode = torch.bincount(nearest[close], minlength=len(centres))
    return {
        "modes_total": len(centres),
        "modes_covered": int(torch.unique(nearest[finite]).numel()),
        "modes_covered_strict": int((per_mode >= min_samples).sum()),
        "high_quality_fraction": float(close.float().mean()),
        "non_finite_samples": int((~finite).sum()),
    }


def reconstruction_accuracy(x: Tensor, recon: Tensor, centres: Tensor) -> float:
    """Share of points whose reconstruction has the same nearest centre as the point (a reconstruction that is
    not finite has none)."""
    same = torch.cdist(x.float(), centres).argmin(1) == torch.cdist(recon.float(), centres).argmin(1)
    return float((same & torch.isfinite(recon).all(1)).float().mean())


class ModeCoverage(Evaluator):
    pictures_only = frozenset({"plot", "plot_points"})  # the figure's options, not the numbers'

    def __init__(self, options: ModeCoverageOptions):
        self.o = options

    def evaluate(self, model: TrainedModel, data: Dataset, out_dir: Path) -> dict[str, Any]:
        _require_mixture(data)
        centres = data.meta["centres"].to(model.device)
        std = float(data.meta["std"])
        z = model.prior_sample(self.o.samples, self.o.seed)
        held = data.heldout if data.heldout is not None else data.train
        # a conditional model: prior samples for classes in equal shares, data with its own labels
        y_prior = example_conditions(model.condition, data, self.o.samples) if model.condition else None
        y_held = held.y if model.conditional else None
        x_model = model.sample(z=z, y=y_prior)
        result = coverage_metrics(x_model, centres, std, self.o.radius_std, self.o.min_samples)
        codes = recon = None
        if model.encoder is not None:
            devices = [model.device.index or 0] if model.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):  # the encoder's noise: the same at every evaluation
                torch.manual_seed(self.o.seed)
                codes = model.encode(held.x, y_held).sample()
            recon = model.sample(z=codes, y=y_held)
            result["reconstruction_accuracy"] = reconstruction_accuracy(held.x, recon, centres)
        if self.o.plot:
            self._plot(out_dir / "mode_coverage.png", held.x, codes, recon, z, x_model, centres, result)
        return result

    def _plot(self, path: Path, x, codes, recon, z, x_model, centres, result) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        n = self.o.plot_points
        colour = torch.cdist(x[:n].float(), centres).argmin(1).cpu().numpy()
        panels = [("data (held out)", x[:n], colour)]
        if codes is not None:
            panels += [("latent codes Gz(x)", codes[:n], colour), ("reconstructions", recon[:n], colour)]
        panels += [("prior samples z", z[:n], None), ("decoder samples Gx(z)", x_model[:n], None)]
        fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4), dpi=100)
        for ax, (title, pts, c) in zip(axes, panels, strict=True):
            pts = pts.detach().float().cpu().numpy().reshape(len(pts), -1)
            if pts.shape[1] == 1:  # a one-dimensional latent: a strip along its axis
                ax.scatter(pts[:, 0], np.zeros(len(pts)), s=2, c=c, cmap="tab20" if c is not None else None,
                           alpha=0.6)
                ax.set_yticks([])
            else:  # two dimensions; of more, the first two
                ax.scatter(pts[:, 0], pts[:, 1], s=2, c=c, cmap="tab20" if c is not None else None, alpha=0.6)
                ax.set_aspect("equal")
            ax.set_title(title if pts.shape[1] <= 2 else f"{title}, dims 1-2", fontsize=9)
        fig.suptitle(f"modes covered {result['modes_covered']}/{result['modes_total']}, strict "
                     f"{result['modes_covered_strict']}, high quality {result['high_quality_fraction']:.2f}",
                     fontsize=10)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", bbox_inches="tight")
        plt.close(fig)


def _require_mixture(data: Dataset) -> None:
    if "centres" not in data.meta or "std" not in data.meta:
        raise UserError("evaluator 'mode_coverage' needs a mixture dataset (with centres and std), "
                        "e.g. dataset 'mixture25'")


def mode_coverage(options: ModeCoverageOptions, ctx) -> Evaluator:
    """Modes covered (paper and strict counts), sample quality and reconstruction accuracy on a mixture."""
    if ctx.dataset is not None:  # refused when the recipe is built, not after its training
        _require_mixture(ctx.dataset)
    return ModeCoverage(options)


@hookimpl
def register_evaluators(register) -> None:
    register("mode_coverage", mode_coverage, ModeCoverageOptions)
