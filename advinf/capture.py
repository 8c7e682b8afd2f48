"""The whole training step recorded once as a CUDA graph and replayed (``train.cuda_graph = true``).

At the paper's batch size a GPU step is bound by kernel launches, not arithmetic: replaying a recorded graph
launches the forward passes, every player's backward, the optimiser steps and the moving average with one call.
What the graph reads must sit at fixed addresses, so each step's batches (already drawn on the device) are
copied into static buffers before the replay, and the step keeps every value it needs on the device (the
divergence guard's step counter, the optimisers' ``capturable`` step counts).

The first ``warmup`` steps run eagerly (on a side stream, as CUDA graphs want): they create the optimiser state
and let cuDNN/cuBLAS settle. The next step is recorded, then replayed; later steps replay it.

``record`` says how a step is recorded: ``cuda_record`` (the real thing) or, for checking the batch plumbing on
a machine without CUDA, ``eager_record``, whose "replay" runs the step again on the static buffers.

What cannot be recorded: anything the step decides on the host from a value that changes between steps. The
trainer refuses ``train.nonfinite = "skip"``, learning-rate schedules and games whose ``host_decisions()`` name
something (a game branching on ``batch.index``, a host count, would see the recorded step's value forever).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from dataclasses import fields
from typing import Any

import torch

from advinf.interfaces import Batch, GameLosses

Record = Callable[[Callable[[], GameLosses]], Callable[[], GameLosses]]

#: Steps run eagerly before the one that is recorded (the optimiser state, cuDNN's and cuBLAS's choices settle).
WARMUP = 3


def cuda_record(step: Callable[[], GameLosses]) -> Callable[[], GameLosses]:
    """Record ``step`` as a CUDA graph (recording runs nothing); returns the replay, which gives the step's
    outputs (the same static tensors, refilled by each replay)."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step()

    def replay() -> GameLosses:
        graph.replay()
        return out

    return replay


def eager_record(step: Callable[[], GameLosses]) -> Callable[[], GameLosses]:
    """No graph: the "replay" runs ``step`` again, on the same static buffers. For checking the plumbing
    around the graph on a machine without CUDA (tests)."""
    return step


class CapturedStep:
    """Calls ``step(next_batch)`` eagerly ``warmup`` times, then records it and replays it.

    ``step`` is one training step that reads its batches only through the ``next_batch`` it is given, exactly
    ``forwards`` of them per step (one per forward pass); ``draw`` gives the next real batch on the device.
    """

    def __init__(self, step: Callable[[Callable[[], Batch]], GameLosses], draw: Callable[[], Batch],
                 forwards: int, device: torch.device, warmup: int = WARMUP, record: Record | None = None):
        self.step, self.draw, self.forwards, self.device = step, draw, forwards, device
        self.warmup, self.record = warmup, record or cuda_record
        self.calls = 0
        self.static: list[Batch] = []
        self._queue: Iterator[Batch] = iter(())
        self._replay: Callable[[], GameLosses] | None = None

    def __call__(self) -> GameLosses:
        self.calls += 1
        if self.calls <= self.warmup:
            with self._side_stream(), _quiet_capturable():
                return self.step(self.draw)
        if self._replay is None:
            self.static = [self.draw() for _ in range(self.forwards)]
            self._queue = iter(self.static)
            self._replay = self.record(lambda: self.step(self._next_static))
        else:
            for static in self.static:
                _copy_batch(static, self.draw())
        self._queue = iter(self.static)
        return self._replay()

    def _next_static(self) -> Batch:
        return next(self._queue)

    @contextlib.contextmanager
    def _side_stream(self):
        if self.device.type != "cuda":
            yield
            return
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            yield
        torch.cuda.current_stream(self.device).wait_stream(stream)


def _copy_batch(static: Batch, new: Batch) -> None:
    """Copy ``new``'s tensors into ``static``'s (same shapes: every step draws full batches)."""
    for f in fields(Batch):
        a: Any = getattr(static, f.name)
        b: Any = getattr(new, f.name)
        if isinstance(a, torch.Tensor):
            a.copy_(b, non_blocking=True)
        elif f.name == "streams":
            for name, sub in a.items():
                _copy_batch(sub, b[name])
        else:
            setattr(static, f.name, b)


@contextlib.contextmanager
def _quiet_capturable():
    """The warm-up steps run capturable optimisers outside a capture: torch warns about that; it is intended."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*capturable=True.*")
        yield
