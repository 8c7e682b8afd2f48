"""Data-parallel training over torch.distributed, as torchrun launches it.

Every rank holds a full copy of the networks, draws its own shard of each global batch (``BatchSource`` with
its rank and world size) and its own noise, and takes each player's gradient with ``torch.autograd.grad``.
DDP's hooks fire only on ``backward()``, so the gradients are averaged here instead: the per-player gradient
tuples of one update are coalesced into buckets, one ``all_reduce`` per bucket, divided by the world size.
Every rank then applies the same averaged gradients to the same parameters, so the ranks stay bit-identical.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from advinf.errors import UserError
from advinf.settings import resolve_device

#: Gradients are all-reduced in buckets of at most this many bytes (DDP's default bucket size).
BUCKET_BYTES = 25 * 2**20
#: The torchrun variables a distributed run reads (env:// initialisation).
ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class World:
    """This process's place in a data-parallel run: ``rank`` of ``world_size``, ``local_rank`` on its node."""

    rank: int
    world_size: int
    local_rank: int
    backend: str
    owned: bool = False  # the process group was initialised here (and is destroyed by ``shutdown``)

    @property
    def main(self) -> bool:
        """Rank 0: the one rank that writes files and evaluates."""
        return self.rank == 0


def launched_world_size() -> int:
    """The world size torchrun set for this process (1 when not launched by torchrun)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise UserError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not a number") from None


def _rank_var(name: str, world_size: int, default: str | None = None) -> int:
    """RANK or LOCAL_RANK: a number from 0 to WORLD_SIZE - 1 (a rank out of range would wait forever for peers
    that never come)."""
    text = os.environ.get(name, default)
    try:
        value = int(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise UserError(f"{name}={text!r} is not a number: launch data-parallel runs with torchrun "
                        "(see docs/distributed.md)") from None
    if not 0 <= value < world_size:
        raise UserError(f"{name}={value} but WORLD_SIZE={world_size}: ranks go from 0 to {world_size - 1}")
    return value


def init_from_environment(device: torch.device | str, backend: str = "auto") -> World | None:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT);
    None for a single process. ``backend``: ``auto`` (nccl on CUDA, gloo on CPU), ``nccl`` or ``gloo``."""
    world_size = launched_world_size()
    if world_size <= 1:
        return None
    missing = [v for v in ENV_VARS if v != "LOCAL_RANK" and v not in os.environ]
    if missing:
        raise UserError(f"WORLD_SIZE={world_size} but {', '.join(missing)} not set: launch data-parallel runs "
                        "with torchrun (see docs/distributed.md)")
    rank, local_rank = _rank_var("RANK", world_size), _rank_var("LOCAL_RANK", world_size, "0")
    device = resolve_device(device)
    chosen = ("nccl" if device.type == "cuda" else "gloo") if backend == "auto" else backend
    if chosen == "nccl" and device.type != "cuda":
        raise UserError("train.dist_backend = 'nccl' needs CUDA devices; use 'gloo' (or 'auto') on CPU")
    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group(chosen, init_method="env://", rank=rank, world_size=world_size)
    elif dist.get_world_size() != world_size or dist.get_rank() != rank:
        raise UserError(f"a process group is already initialised as rank {dist.get_rank()} of "
                        f"{dist.get_world_size()}, not {rank} of {world_size}")
    return World(rank, world_size, local_rank, str(dist.get_backend()), owned)


def rank_device(device: torch.device, local_rank: int) -> torch.device:
    """The device of this rank: ``cuda:LOCAL_RANK`` when training on CUDA (one GPU per process), else as is."""
    if device.type != "cuda":
        return device
    if local_rank >= torch.cuda.device_count():
        raise UserError(f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} GPU(s) are visible: start "
                        "at most one process per GPU (torchrun --nproc-per-node)")
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def shutdown(world: World | None) -> None:
    """Leave the process group that ``init_from_environment`` initialised (after the run's last collective)."""
    if world is not None and world.owned and dist.is_initialized():
        dist.destroy_process_group()


class GradientAverager:
    """Averages gradients across the ranks in place: coalesced buckets, one ``all_reduce`` each."""

    def __init__(self, world_size: int, bucket_bytes: int = BUCKET_BYTES):
        self.world_size, self.bucket_bytes = world_size, bucket_bytes

    def __call__(self, grads: Iterable[Tensor | None]) -> None:
        for bucket in self.buckets([g for g in grads if g is not None]):
            flat = torch.cat([g.reshape(-1) for g in bucket]) if len(bucket) > 1 else bucket[0].reshape(-1).clone()
            dist.all_reduce(flat)
            flat.div_(self.world_size)
            for g, part in zip(bucket, flat.split([g.numel() for g in bucket]), strict=True):
                g.copy_(part.view(g.shape))  # into the gradient itself: its memory layout is kept

    def buckets(self, grads: Sequence[Tensor]) -> list[list[Tensor]]:
        """Consecutive gradients of one dtype and device, at most ``bucket_bytes`` a bucket (a larger tensor
        gets a bucket of its own)."""
        out: list[list[Tensor]] = []
        size = 0
        for g in grads:
            nbytes = g.numel() * g.element_size()
            if not out or size + nbytes > self.bucket_bytes or (out[-1][0].dtype, out[-1][0].device) != \
                    (g.dtype, g.device):
                out.append([])
                size = 0
            out[-1].append(g)
            size += nbytes
        return out


def broadcast_(tensors: Iterable[Tensor], src: int = 0) -> None:
    """Copy rank ``src``'s values of ``tensors`` to every rank (in place)."""
    for t in tensors:
        dist.broadcast(t.data, src)


def mean_(t: Tensor) -> Tensor:
    """``t`` averaged over the ranks, in place."""
    dist.all_reduce(t)
    return t.div_(dist.get_world_size())


def max_(t: Tensor) -> Tensor:
    """``t``'s largest value over the ranks, in place."""
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def gather_states(tensors: dict[str, Tensor], device: torch.device) -> list[dict[str, Tensor]]:
    """Every rank's ``tensors`` (same names and shapes on every rank, e.g. RNG states), on the host, by rank."""
    out: list[dict[str, Tensor]] = [{} for _ in range(dist.get_world_size())]
    comm = device if dist.get_backend() == "nccl" else torch.device("cpu")
    for name in sorted(tensors):
        t = tensors[name].to(comm)
        parts = [torch.empty_like(t) for _ in out]
        dist.all_gather(parts, t)
        for state, part in zip(out, parts, strict=True):
            state[name] = part.cpu()
    return out
