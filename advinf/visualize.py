"""Pictures of a trained run, as in the paper: samples, reconstructions, latent interpolations."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from advinf.data import Dataset, Split, StreamingSplit
from advinf.errors import UserError
from advinf.interfaces import TrainedModel
from advinf.pictures import save_grid, save_samples, save_scatter


def pick(split: Split | StreamingSplit, count: int, seed: int) -> Tensor:
    """``count`` examples of a split, chosen at random (reproducibly by ``seed``), decoded to floats."""
    if count > len(split):
        raise UserError(f"asked for {count} examples but the split holds {len(split)}")
    idx = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:count]
    return Dataset.decode(split.take(idx)[0])


def get_split(data: Dataset, which: str) -> Split | StreamingSplit:
    if which == "train":
        return data.train
    if data.heldout is None:
        raise UserError("this dataset has no held-out split; use --split train")
    return data.heldout


@torch.no_grad()
def samples(model: TrainedModel, path: Path, count: int = 100, seed: int = 0) -> Tensor:
    """Decoder samples of ``count`` prior draws."""
    z = model.prior.sample(count, "cpu", generator=torch.Generator().manual_seed(seed)).to(model.device)
    x = model.decoder(z)
    save_samples(x, path)
    return x


def _need_encoder(model: TrainedModel) -> None:
    if model.encoder is None:
        raise UserError("this run has no encoder (a plain GAN), so it cannot reconstruct or interpolate")


@torch.no_grad()
def reconstructions(model: TrainedModel, x: Tensor, path: Path, use_mean: bool = False, pairs_per_row: int = 5
                    ) -> Tensor:
    """Gx(Gz(x)); for images a grid whose odd columns are data and even columns their reconstructions."""
    _need_encoder(model)
    x = x.to(model.device)
    post = model.encoder(x)  # type: ignore[misc]
    recon = model.decoder(post.mean if use_mean else post.sample())
    if x.dim() == 4:
        pairs = torch.stack([x, recon], dim=1).flatten(0, 1)  # x0, r0, x1, r1, ...
        save_grid(pairs, path, nrow=2 * pairs_per_row)
    else:
        save_scatter(torch.cat([x, recon]).cpu(), path, title="data and reconstructions")
    return recon


@torch.no_grad()
def interpolations(model: TrainedModel, x: Tensor, path: Path, steps: int = 10) -> Tensor:
    """Decode a straight line in z between the codes of consecutive example pairs (rows of the grid).

    Each row starts with the first example and ends with the second; between them, ``steps`` decodings of
    z = (1 - t) z1 + t z2 for t from 0 to 1.
    """
    _need_encoder(model)
    if len(x) % 2:
        raise UserError("interpolation needs an even number of examples (pairs)")
    x = x.to(model.device)
    z = model.encoder(x).mean  # type: ignore[misc]
    z1, z2 = z[0::2], z[1::2]
    t = torch.linspace(0, 1, steps, device=model.device).view(1, steps, *([1] * (z.dim() - 1)))
    line = (1 - t) * z1.unsqueeze(1) + t * z2.unsqueeze(1)  # (pairs, steps, *latent)
    decoded = model.decoder(line.flatten(0, 1)).view(len(z1), steps, *x.shape[1:])
    if x.dim() == 4:
        rows = torch.cat([x[0::2].unsqueeze(1), decoded, x[1::2].unsqueeze(1)], dim=1)
        save_grid(rows.flatten(0, 1), path, nrow=steps + 2)
    else:
        save_scatter(decoded.flatten(0, 1).cpu(), path, title="decoded latent interpolations")
    return decoded
