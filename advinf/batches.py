"""Batch sources: every data stream a game reads per step, with a saved position for exact resume.

A split held in memory is drawn by index on the training device (no DataLoader, no per-step host copy); a
``StreamingSplit`` is read batch by batch by DataLoader workers in the same seeded order. Each stream knows
its rank and world size: every rank draws its own shard of each global batch (for data-parallel training).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from advinf.data import Dataset, Split, StreamingSplit, _collate
from advinf.errors import UserError, described
from advinf.interfaces import Batch, Stream

#: The name of the stream every game reads (``batch.x``, ``batch.y``).
MAIN = "data"


class IndexSampler:
    """Draws minibatch indices, one fresh permutation of the ``n`` examples per epoch.

    The permutation of epoch ``e`` depends only on (seed, e), so the position in the data order is fully
    described by ``(epoch, position)`` and a resumed run draws the same batches. A global batch holds
    ``batch_size * world_size`` examples; rank ``r`` takes the ``r``-th block of ``batch_size`` of them.
    """

    def __init__(self, n: int, batch_size: int, device: torch.device, seed: int, rank: int = 0,
                 world_size: int = 1, what: str = "train.batch_size"):
        if batch_size * world_size > n:
            size = f"{batch_size} x {world_size} ranks" if world_size > 1 else str(batch_size)
            raise UserError(f"{what} = {size} is larger than the training split ({n} examples)")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside a world of size {world_size}")
        self.n, self.batch_size, self.device, self.seed = n, batch_size, device, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.position = 0, 0
        self._perm: Tensor | None = None

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size

    def permutation(self, epoch: int) -> Tensor:
        """The order of the examples in ``epoch`` (on the host): a function of (seed, epoch) only."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n, generator=g)

    def _permutation(self) -> Tensor:
        if self._perm is None:
            self._perm = self.permutation(self.epoch).to(self.device, non_blocking=True)
        return self._perm

    def next(self) -> Tensor:
        """This rank's indices of the next batch; starts a new epoch when fewer than a global batch remain."""
        self.advance()
        start = self.position - self.global_batch + self.rank * self.batch_size
        return self._permutation()[start:start + self.batch_size]

    def advance(self) -> None:
        """Move the data position one global batch on without drawing indices (a streaming loader draws them)."""
        if self.position + self.global_batch > self.n:
            self.epoch, self.position, self._perm = self.epoch + 1, 0, None
        self.position += self.global_batch

    @property
    def steps_per_epoch(self) -> int:
        return self.n // self.global_batch

    @property
    def drawn(self) -> int:
        """How many global batches were drawn so far (a function of the saved position: exact on resume)."""
        return self.epoch * self.steps_per_epoch + self.position // self.global_batch

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state(self, state: dict[str, int]) -> None:
        self.epoch, self.position, self._perm = int(state["epoch"]), int(state["position"]), None


class StreamSource:
    """One stream's batches, from an in-memory split (indexed on the device) or a streaming split."""

    def __init__(self, split: Split | StreamingSplit, batch_size: int, device: torch.device, seed: int, *,
                 subset: Tensor | None = None, rank: int = 0, world_size: int = 1, channels_last: bool = False,
                 what: str = "train.batch_size"):
        self.split, self.device, self.seed, self.channels_last = split, device, seed, channels_last
        self.subset = None if subset is None else subset.to(torch.long)
        n = len(split) if self.subset is None else len(self.subset)
        self.sampler = IndexSampler(n, batch_size, device, seed, rank, world_size, what)
        if self.subset is not None and isinstance(split, Split):
            self.subset = self.subset.to(split.x.device)
        self._stream: Any = None

    def next(self) -> Batch:
        """The next batch of this stream, on the device (a new epoch reshuffles)."""
        if isinstance(self.split, StreamingSplit):
            if self._stream is None:
                self._stream = iter(self._loader())
            self.sampler.advance()
            try:
                x, y = next(self._stream)
            except UserError as exc:  # a worker's (a damaged file): its message, not the worker's traceback
                raise UserError(worker_message(str(exc)), option=exc.option) from None
            x = x.to(self.device, non_blocking=True)
            y = None if y is None else y.to(self.device, non_blocking=True)
        else:
            idx = self.sampler.next()
            if self.subset is not None:
                idx = self.subset.index_select(0, idx)
            x = self.split.x.index_select(0, idx)
            y = None if self.split.y is None else self.split.y.index_select(0, idx)
        batch = self._batch(x, y)
        batch.index = self.sampler.drawn - 1
        return batch

    def first(self) -> Batch:
        """This rank's first batch of epoch 0, without moving the position (for a trial step)."""
        s = self.sampler
        idx = s.permutation(0)[s.rank * s.batch_size:(s.rank + 1) * s.batch_size]
        if self.subset is not None:
            idx = self.subset.cpu()[idx]
        x, y = self.split.take(idx)
        return self._batch(x.to(self.device), None if y is None else y.to(self.device))

    def _batch(self, x: Tensor, y: Tensor | None) -> Batch:
        x = Dataset.decode(x)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return Batch(x, y)

    def _loader(self) -> torch.utils.data.DataLoader:
        """Batches from the saved position on, forever, prefetched by the split's worker processes."""
        split = self.split
        assert isinstance(split, StreamingSplit)
        s = self.sampler
        order = _SeededBatches(s.n, s.batch_size, s.seed, s.state(), s.rank, s.world_size,
                               None if self.subset is None else self.subset.cpu())
        return torch.utils.data.DataLoader(
            split.source, batch_sampler=order, num_workers=split.workers, pin_memory=self.device.type == "cuda",
            collate_fn=_collate,
            # its own generator, so that starting the workers leaves the global RNG (the training noise) alone
            generator=torch.Generator().manual_seed(self.seed),
            persistent_workers=split.workers > 0, prefetch_factor=4 if split.workers > 0 else None)

    def state(self) -> dict[str, int]:
        """The position of this stream (epoch, index in its order): a checkpoint saves it."""
        return self.sampler.state()

    def load_state(self, state: dict[str, int]) -> None:
        """Continue from a position ``state`` saved by :meth:`state`."""
        self.sampler.load_state(state)
        self._stream = None  # a streaming split restarts its loader at the restored position


def _selected(spec: Stream, data: Dataset, seed: int, owner: str) -> Tensor:
    """``spec.select(data.train, seed)``, checked: distinct int64 indices of training examples (a bool mask read
    as indices drew from examples 0 and 1 only). What the game's code raises is the game's (``owner``'s) error."""
    what = f"{owner}: stream '{spec.name}': select"
    try:
        subset = spec.select(data.train, seed)  # type: ignore[misc]
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"{what} raised {described(exc)} (the game's code)") from exc
    if not isinstance(subset, Tensor):
        raise UserError(f"{what} returned {type(subset).__name__}, not a tensor of example indices (a bug in the "
                        "game: return torch.tensor(indices))")
    if subset.dtype == torch.bool:
        raise UserError(f"{what} returned a bool tensor: return the indices of the examples to draw "
                        "(mask.nonzero().squeeze(1)), not a mask (a bug in the game)")
    if subset.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8) or subset.dim() != 1:
        raise UserError(f"{what} returned {str(subset.dtype).removeprefix('torch.')} of shape "
                        f"{tuple(subset.shape)}: give one integer index per example (1-D) (a bug in the game)")
    if len(subset) == 0:
        raise UserError(f"{what} selected no training examples")
    n = len(data.train)
    low, high = int(subset.min()), int(subset.max())
    if low < 0 or high >= n:
        raise UserError(f"{what} returned index {low if low < 0 else high}, outside the training split's {n} "
                        "examples (a bug in the game, or an option of it that does not fit the data)")
    if len(torch.unique(subset)) != len(subset):
        raise UserError(f"{what} returned some indices twice: each example once (a bug in the game)")
    return subset.long()


def worker_message(text: str) -> str:
    """The message of a UserError a DataLoader worker raised: torch re-raises it with the worker's traceback as
    its text ("Caught UserError in DataLoader worker process 0. Original Traceback ... UserError: MESSAGE")."""
    if "Original Traceback" not in text or "UserError: " not in text:
        return text
    return text.rsplit("UserError: ", 1)[1].strip()


class _SeededBatches(torch.utils.data.Sampler):
    """The batch order of IndexSampler (on the host), from a saved position on, without end."""

    def __init__(self, n: int, batch_size: int, seed: int, state: dict[str, int], rank: int, world_size: int,
                 subset: Tensor | None):
        self.args = (n, batch_size, seed, dict(state), rank, world_size, subset)

    def __iter__(self):
        n, batch_size, seed, state, rank, world_size, subset = self.args
        order = IndexSampler(n, batch_size, torch.device("cpu"), seed, rank, world_size)
        order.load_state(state)
        while True:
            idx = order.next()
            yield (idx if subset is None else subset[idx]).tolist()


def stream_seed(seed: int, name: str) -> int:
    """The data-order seed of a stream: the run's seed for the main stream, a stable offset for the others."""
    return seed if name == MAIN else seed + 7919 * (1 + zlib.crc32(name.encode()) % 100_003)


class BatchSource:
    """Every stream a game reads per step: the main one (``batch.x``/``batch.y``) and the game's extra
    streams (``batch.streams[name]``), with one saved state for all of them.

    A game's stream named ``MAIN`` (``"data"``) is not an extra stream: it configures the main one (its
    ``select`` restricts the examples it draws from, e.g. to those a labelled stream leaves out; its
    ``batch_size``, if given, replaces ``train.batch_size``)."""

    def __init__(self, data: Dataset, batch_size: int, device: torch.device, seed: int,
                 streams: Sequence[Stream] = (), *, rank: int = 0, world_size: int = 1, channels_last: bool = False,
                 owner: str = "the game"):
        self.rank, self.world_size = rank, world_size
        common = dict(rank=rank, world_size=world_size, channels_last=channels_last)
        names = [spec.name for spec in streams]
        if len(set(names)) != len(names):
            raise ValueError(f"a stream name is used twice: {names}")
        specs = {spec.name: spec for spec in streams}
        main = specs.pop(MAIN, Stream(MAIN))
        self.main = self._source(data, main, batch_size, device, seed, "train.batch_size", common, owner)
        self.extra: dict[str, StreamSource] = {
            name: self._source(data, spec, batch_size, device, seed, f"the batch size of stream '{name}'", common,
                               owner)
            for name, spec in specs.items()}

    @staticmethod
    def _source(data: Dataset, spec: Stream, batch_size: int, device: torch.device, seed: int, what: str,
                common: dict[str, Any], owner: str) -> StreamSource:
        """One stream's source. ``select`` gets the run's seed (the same for every stream, so that streams can
        pick complementary subsets); the stream's data order is seeded by ``stream_seed``."""
        if spec.labelled and not data.labelled:
            raise UserError(f"the game reads a labelled stream '{spec.name}', but the dataset's training "
                            "split has no labels")
        subset = _selected(spec, data, seed, owner) if spec.select is not None else None
        return StreamSource(data.train, spec.batch_size or batch_size, device, stream_seed(seed, spec.name),
                            subset=subset, what=what, **common)  # type: ignore[arg-type]

    def next(self) -> Batch:
        """The next batch of every stream, as the game's ``losses`` receives it."""
        batch = self.main.next()
        batch.streams = {name: src.next() for name, src in self.extra.items()}
        return batch

    def first(self) -> Batch:
        """The first batch of every stream, without moving any position (for a trial step)."""
        batch = self.main.first()
        batch.streams = {name: src.first() for name, src in self.extra.items()}
        return batch

    @property
    def epoch(self) -> int:
        return self.main.sampler.epoch

    @property
    def steps_per_epoch(self) -> int:
        return self.main.sampler.steps_per_epoch

    def state(self) -> dict[str, Any]:
        """The main stream's ``epoch``/``position`` plus ``streams``: the others' positions, by name."""
        return {**self.main.state(), "streams": {name: s.state() for name, s in self.extra.items()}}

    def load_state(self, state: dict[str, Any]) -> None:
        """Continue every stream from a position saved by :meth:`state`."""
        self.main.load_state(state)
        saved = state.get("streams", {})
        for name, src in self.extra.items():
            if name not in saved:
                raise UserError(f"the checkpoint holds no position for data stream '{name}' (was it written by "
                                "another game?)")
            src.load_state(saved[name])
