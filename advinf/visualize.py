"""Pictures of a trained model, as in the paper: samples, conditional grids, reconstructions, interpolations.

Everything goes through the model's game (``model.sample``, ``model.encode``), so a conditional model is
drawn with its conditions.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from advinf.data import Dataset, Split, StreamingSplit
from advinf.errors import UserError
from advinf.interfaces import TrainedModel
from advinf.pictures import save_grid, save_samples, save_scatter


def pick(split: Split | StreamingSplit, count: int, seed: int) -> tuple[Tensor, Tensor | None]:
    """``count`` examples of a split and their labels, chosen at random (reproducibly by ``seed``), decoded."""
    if count > len(split):
        raise UserError(f"asked for {count} examples but the split holds {len(split)}")
    idx = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:count]
    x, y = split.take(idx)
    return Dataset.decode(x), y


def get_split(data: Dataset, which: str) -> Split | StreamingSplit:
    if which == "train":
        return data.train
    if data.heldout is None:
        raise UserError("this dataset has no held-out split; use --split train")
    return data.heldout


def _labels_for(model: TrainedModel, y: Tensor | None) -> Tensor | None:
    """The labels to pass for examples: theirs for a conditional model (which needs them), else none."""
    if not model.conditional:
        return None
    if y is None:
        raise UserError("this model is conditional, but the examples have no labels")
    return y


@torch.no_grad()
def samples(model: TrainedModel, path: Path, count: int = 100, seed: int = 0, y: Tensor | None = None,
            rows: int | None = None) -> Tensor:
    """Decoder samples of ``count`` prior draws (for conditions ``y``: one per sample), ``rows`` rows."""
    x = model.sample(count, y=y, seed=seed)
    if x.dim() == 4 and rows:
        save_grid(x, path, nrow=max(1, count // rows))
    elif x.dim() == 2 and y is not None and x.shape[1] == 2:  # points of each condition in a colour of their own
        x_c, y_c = x.detach().float().cpu(), y.cpu().reshape(len(y), -1)
        keys = torch.unique(y_c, dim=0)
        save_scatter(x_c, path, title="samples by condition", groups=[
            (x_c[(y_c == key).all(1)], "y = " + ", ".join(f"{v:g}" for v in key.tolist())) for key in keys])
    else:
        save_samples(x, path)
    return x


@torch.no_grad()
def condition_grid(model: TrainedModel, conditions: Tensor, path: Path, columns: int = 8, seed: int = 0) -> Tensor:
    """The paper's conditional figure: one fixed z per column, one condition per row."""
    if not model.conditional:
        raise UserError("this run is not conditional: there are no conditions to vary")
    z = model.prior_sample(columns, seed)
    rows = len(conditions)
    z_all = z.repeat(rows, *([1] * (z.dim() - 1)))  # row-major: every row holds the same columns of z
    y_all = conditions.repeat_interleave(columns, dim=0)
    x = model.sample(z=z_all, y=y_all)
    if x.dim() != 4:
        raise UserError("a condition grid needs image data")
    save_grid(x, path, nrow=columns)
    return x


@torch.no_grad()
def reconstructions(model: TrainedModel, x: Tensor, path: Path, use_mean: bool = False, pairs_per_row: int = 5,
                    y: Tensor | None = None) -> Tensor:
    """Gx(Gz(x)); for images a grid whose odd columns are data and even columns their reconstructions."""
    x = x.to(model.device)
    recon = model.reconstruct(x, _labels_for(model, y), use_mean)
    if x.dim() == 4:
        pairs = torch.stack([x, recon], dim=1).flatten(0, 1)  # x0, r0, x1, r1, ...
        save_grid(pairs, path, nrow=2 * pairs_per_row)
    else:
        x_c, r_c = x.cpu(), recon.cpu()
        save_scatter(torch.cat([x_c, r_c]), path, title="data and reconstructions (joined)",
                     groups=[(x_c, "data x"), (r_c, "reconstruction Gx(Gz(x))")], lines=torch.stack([x_c, r_c], 1))
    return recon


@torch.no_grad()
def interpolations(model: TrainedModel, x: Tensor, path: Path, steps: int = 10, y: Tensor | None = None) -> Tensor:
    """Decode a straight line in z between the codes of consecutive example pairs (rows of the grid).

    Each row starts with the first example and ends with the second; between them, ``steps`` decodings of
    z = (1 - t) z1 + t z2 for t from 0 to 1. A conditional model decodes the whole row with the first
    example's condition.
    """
    if len(x) % 2:
        raise UserError("interpolation needs an even number of examples (pairs)")
    x = x.to(model.device)
    y = _labels_for(model, y)
    z = model.encode(x, y).mean
    z1, z2 = z[0::2], z[1::2]
    t = torch.linspace(0, 1, steps, device=model.device).view(1, steps, *([1] * (z.dim() - 1)))
    line = (1 - t) * z1.unsqueeze(1) + t * z2.unsqueeze(1)  # (pairs, steps, *latent)
    y_line = None if y is None else y[0::2].repeat_interleave(steps, dim=0)
    decoded = model.sample(z=line.flatten(0, 1), y=y_line).view(len(z1), steps, *x.shape[1:])
    if x.dim() == 4:
        rows = torch.cat([x[0::2].unsqueeze(1), decoded, x[1::2].unsqueeze(1)], dim=1)
        save_grid(rows.flatten(0, 1), path, nrow=steps + 2)
    else:
        ends, inner = torch.cat([x[0::2], x[1::2]]).cpu(), decoded.flatten(0, 1).cpu()
        rows = torch.cat([x[0::2].unsqueeze(1), decoded, x[1::2].unsqueeze(1)], dim=1).cpu()
        save_scatter(torch.cat([ends, inner]), path, title="latent interpolations between data pairs",
                     groups=[(ends, "data (both ends)"), (inner, "decoded along the line in z")], lines=rows)
    return decoded
