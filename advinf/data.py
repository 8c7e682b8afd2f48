"""In-memory datasets and on-device batch drawing.

A dataset that fits is held as a tensor on the training device (uint8 for images, float otherwise) and
batches are drawn by index there: no DataLoader workers and no per-step host-to-device copies.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


@dataclass
class Split:
    """One split: ``x`` of shape (N, ...) (uint8 pixels or floats) and optional labels ``y`` (N, ...)."""

    x: Tensor
    y: Tensor | None = None

    def __post_init__(self) -> None:
        if self.y is not None and len(self.y) != len(self.x):
            raise ValueError(f"split has {len(self.x)} examples but {len(self.y)} labels")

    def __len__(self) -> int:
        return len(self.x)

    def to(self, device: torch.device | str) -> Split:
        return Split(self.x.to(device), None if self.y is None else self.y.to(device))


@dataclass
class Dataset:
    """Train and held-out splits plus what a dataset plugin knows about them (``meta``).

    Stored uint8 values are pixels in [0, 255] and decode to floats in [0, 1] (the original ALI range);
    float values decode unchanged.
    """

    train: Split
    heldout: Split | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])

    @property
    def device(self) -> torch.device:
        return self.train.x.device

    def to(self, device: torch.device | str) -> Dataset:
        return Dataset(self.train.to(device), None if self.heldout is None else self.heldout.to(device),
                       dict(self.meta))

    @staticmethod
    def decode(x: Tensor) -> Tensor:
        """Stored values to model inputs: uint8 pixels to [0, 1] floats, floats unchanged."""
        if x.dtype == torch.uint8:
            return x.float().div_(255.0)
        return x


class IndexSampler:
    """Draws minibatch indices on the data's device, one fresh permutation per epoch.

    The permutation of epoch ``e`` depends only on (seed, e), so the position in the data order is fully
    described by ``(epoch, position)`` and a resumed run draws the same batches.
    """

    def __init__(self, n: int, batch_size: int, device: torch.device, seed: int):
        if batch_size > n:
            raise ValueError(f"batch size {batch_size} is larger than the dataset ({n} examples)")
        self.n, self.batch_size, self.device, self.seed = n, batch_size, device, seed
        self.epoch, self.position = 0, 0
        self._perm: Tensor | None = None

    def _permutation(self) -> Tensor:
        if self._perm is None:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            self._perm = torch.randperm(self.n, generator=g).to(self.device, non_blocking=True)
        return self._perm

    def next(self) -> Tensor:
        """Indices of the next batch; starts a new epoch when fewer than a batch remain."""
        if self.position + self.batch_size > self.n:
            self.epoch, self.position, self._perm = self.epoch + 1, 0, None
        idx = self._permutation()[self.position:self.position + self.batch_size]
        self.position += self.batch_size
        return idx

    @property
    def steps_per_epoch(self) -> int:
        return self.n // self.batch_size

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state(self, state: dict[str, int]) -> None:
        self.epoch, self.position, self._perm = int(state["epoch"]), int(state["position"]), None
