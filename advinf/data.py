"""In-memory datasets and on-device batch drawing.

A dataset that fits is held as a tensor on the training device (uint8 for images, float otherwise) and
batches are drawn by index there: no DataLoader workers and no per-step host-to-device copies.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from advinf.errors import UserError


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

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def take(self, idx: Tensor) -> tuple[Tensor, Tensor | None]:
        """The examples at ``idx`` (stored values) and their labels."""
        idx = idx.to(self.x.device)
        return self.x[idx], None if self.y is None else self.y[idx]


class StreamingSplit:
    """A split too large to hold in memory: DataLoader workers read it batch by batch from ``source``.

    ``source`` is a map-style ``torch.utils.data.Dataset`` whose items are ``x`` or ``(x, y)`` tensors (uint8
    pixels or floats). The batches follow the same seeded order as an in-memory split, so resume is exact.
    """

    def __init__(self, source: torch.utils.data.Dataset, workers: int = 4, labelled: bool = False):
        self.source, self.workers, self.labelled = source, workers, labelled

    def __len__(self) -> int:
        return len(self.source)  # type: ignore[arg-type]

    @property
    def sample_shape(self) -> tuple[int, ...]:
        item = self.source[0]
        return tuple((item[0] if isinstance(item, tuple) else item).shape)

    def to(self, device: torch.device | str) -> StreamingSplit:
        return self  # stays on the host; batches are copied to the device as they are drawn

    def take(self, idx: Tensor) -> tuple[Tensor, Tensor | None]:
        return _collate([self.source[int(i)] for i in idx])

    def loader(self, batch_size: int, seed: int, epoch: int, position: int, pin: bool
               ) -> torch.utils.data.DataLoader:
        """Batches from data position (epoch, position) on, forever, prefetched by ``workers`` processes."""
        return torch.utils.data.DataLoader(
            self.source, batch_sampler=_SeededBatches(len(self), batch_size, seed, epoch, position),
            num_workers=self.workers, pin_memory=pin, collate_fn=_collate,
            # its own generator, so that starting the workers leaves the global RNG (the training noise) alone
            generator=torch.Generator().manual_seed(seed),
            persistent_workers=self.workers > 0, prefetch_factor=4 if self.workers > 0 else None)


class _SeededBatches(torch.utils.data.Sampler):
    """The batch order of IndexSampler (on the host), starting at a given data position, without end."""

    def __init__(self, n: int, batch_size: int, seed: int, epoch: int, position: int):
        self.args = (n, batch_size, seed, epoch, position)

    def __iter__(self):
        n, batch_size, seed, epoch, position = self.args
        order = IndexSampler(n, batch_size, torch.device("cpu"), seed)
        order.load_state({"epoch": epoch, "position": position})
        while True:
            yield order.next().tolist()


def _collate(items: list) -> tuple[Tensor, Tensor | None]:
    if isinstance(items[0], tuple):
        return torch.stack([i[0] for i in items]), torch.as_tensor([int(i[1]) for i in items])
    return torch.stack(items), None


@dataclass
class Dataset:
    """Train and held-out splits plus what a dataset plugin knows about them (``meta``).

    Stored uint8 values are pixels in [0, 255] and decode to floats in [0, 1] (the original ALI range);
    float values decode unchanged.
    """

    train: Split | StreamingSplit
    heldout: Split | StreamingSplit | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return self.train.sample_shape

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
            raise UserError(f"train.batch_size = {batch_size} is larger than the training split ({n} examples)")
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
        self.advance()
        return self._permutation()[self.position - self.batch_size:self.position]

    def advance(self) -> None:
        """Move the data position one batch on without drawing indices (a streaming loader draws them)."""
        if self.position + self.batch_size > self.n:
            self.epoch, self.position, self._perm = self.epoch + 1, 0, None
        self.position += self.batch_size

    @property
    def steps_per_epoch(self) -> int:
        return self.n // self.batch_size

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state(self, state: dict[str, int]) -> None:
        self.epoch, self.position, self._perm = int(state["epoch"]), int(state["position"]), None
