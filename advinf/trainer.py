"""The training loop: the game computes every player's loss from one forward pass, the update scheme applies
them, and every N steps come log lines, fixed-noise pictures, evaluations and checkpoints.

Update schemes, over the game's players:

* ``simultaneous`` (the original ALI): one forward pass; every player's gradient of its own loss is taken at
  the same parameter values (same z, noise, dropout masks and BN batch), then every optimiser steps.
* ``alternating``: ``critic_steps`` updates of the critic-side players on fresh batches, then one update of
  the generator-side players.

After each training step every player's learning-rate schedule (``[optimizer] schedule``) takes one step, so a
player's rate is a function of the training step alone (the same in either scheme).

No per-step host synchronisation: losses are summed on the device and read once per log interval, and the
divergence guard records the first non-finite step on the device (``nonfinite = "skip"`` is the exception:
deciding to skip an update needs the value on the host).
"""

from __future__ import annotations

import contextlib
import copy
import json
import random
import shlex
import signal
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import tomli_w
import torch
from torch import Tensor
from torch.optim.lr_scheduler import LambdaLR

from advinf import checkpoint as ckpt
from advinf import distributed
from advinf.batches import BatchSource
from advinf.capture import CapturedStep
from advinf.conditions import Condition, ConditionEmbedding, example_conditions
from advinf.data import DataDescription, Dataset, describe, relabels, unlike_description
from advinf.ema import MovingAverage
from advinf.errors import UserError
from advinf.evaluation import EvaluationFailed, evaluate
from advinf.interfaces import (
    Batch,
    Decoder,
    Encoder,
    Evaluator,
    Game,
    GameLosses,
    JointCritic,
    Logger,
    Networks,
    Player,
    Posterior,
    TrainedModel,
    check_networks,
    game_label,
)
from advinf.loggers import JsonlLogger
from advinf.pictures import save_samples
from advinf.progress import ProgressReporter
from advinf.provenance import (
    changed_keys,
    library_recipe,
    loaded_plugin_paths,
    origin_of,
    qualname,
    run_name,
    summarised,
)
from advinf.rundir import RESERVED_METRICS, RunDir, evaluator_options
from advinf.settings import OptimizerSpec, TrainSpec, cuda_graph_refusal, resolve_device, set_fp32_precision
from advinf.version import __version__


class TrainingDiverged(UserError):
    """A non-finite loss or gradient stopped the run (exit status 3)."""

    exit_code = 3


@dataclass
class TrainResult:
    """What ``Trainer.fit`` returns. ``stopped``: None (finished), "stop_after", "SIGINT" or "SIGTERM"."""

    steps: int
    seconds: float
    last_metrics: dict[str, Any] = field(default_factory=dict)
    eval: dict[str, Any] = field(default_factory=dict)
    run_dir: Path | None = None
    stopped: str | None = None
    checkpoint: Path | None = None


class Trainer:
    """Trains ``nets`` at ``game`` on ``data``. Usable without a recipe::

        trainer = Trainer(nets, game, data, train=TrainSpec(steps=1000), optimizer=OptimizerSpec(lr=1e-4))
        trainer.fit()

    ``optimizer`` is every player's optimiser; ``optimizers`` overrides it per player (by player name, merged
    over ``optimizer``, unless a spec is ``complete``: made by ``OptimizerSpec.merged``, as a recipe's per-player
    specs are, ``inherit = false`` included), each with its learning-rate schedule (``OptimizerSpec.schedule``).
    ``eval_every`` runs evaluators every N steps as well as at the end (by name).
    ``loggers`` receive the metrics, evaluations and sample pictures of a run with a ``run_dir`` (default: a
    ``JsonlLogger``, the run directory's metrics.jsonl and evals.jsonl); only rank 0 logs.

    With ``world_size`` > 1 (torch.distributed initialised, one trainer per rank) it trains data-parallel: each
    rank draws its own shard and noise, gradients are averaged over the ranks (``advinf.distributed``), the
    networks start from rank 0's values; give ``run_dir`` (and evaluators) to rank 0 only: every rank takes part
    in a checkpoint (their RNG states go into it), rank 0 writes it.
    """

    def __init__(self, nets: Networks, game: Game, data: Dataset, *, train: TrainSpec | None = None,
                 optimizer: OptimizerSpec | None = None, optimizers: Mapping[str, OptimizerSpec] | None = None,
                 evaluators: Mapping[str, Evaluator] | None = None, eval_every: Mapping[str, int] | None = None,
                 run_dir: Path | str | None = None, seed: int = 0, device: torch.device | str | None = None,
                 recipe: dict[str, Any] | None = None, resume: bool = False, condition: Condition | None = None,
                 rank: int = 0, world_size: int = 1, loggers: Sequence[Logger] | None = None):
        self.spec = train or TrainSpec(steps=1000)
        if loggers is None and self.spec.loggers not in (["jsonl"], []):
            raise UserError(f"train.loggers = {self.spec.loggers} names registered loggers, which a Trainer cannot "
                            "look up: pass them built, Trainer(..., loggers=[advinf.create(\"logger\", name), ...])")
        self.loggers: list[Logger] = list(loggers) if loggers is not None else \
            [JsonlLogger()] if self.spec.loggers else []
        self.rank = rank
        self._logging = False  # whether the loggers are open (during fit, on rank 0 with a run directory)
        self.device = resolve_device(device if device is not None else self.spec.device)
        if self.spec.threads and self.device.type == "cpu":
            torch.set_num_threads(self.spec.threads)
        set_fp32_precision(self.device, self.spec.tf32)  # process-wide, as the threads are
        self.nets, self.game, self.seed, self.recipe, self.condition = nets, game, seed, recipe, condition
        if game.conditioned and condition is None:
            raise UserError("a conditional game needs the Condition its networks were built with (condition="
                            "advinf.Condition.for_game(game, data, seed))")
        if game.conditioned and condition is not None:
            _check_condition(condition, game, data, nets)
        check_networks(game, nets)
        if self.spec.sync_batch_norm and world_size > 1:
            if self.device.type == "cpu":
                raise UserError("train.sync_batch_norm needs CUDA devices (torch's SyncBatchNorm does not run on "
                                "CPU); set it to false for a data-parallel run on CPU")
            for name in list(nets):
                nets[name] = torch.nn.SyncBatchNorm.convert_sync_batchnorm(nets[name])
        images = len(data.sample_shape) == 3
        nets.to(self.device, channels_last=self.spec.channels_last and images)
        self.data = data.to(self.device)
        self._data_description: DataDescription | None = None  # what checkpoints say of the data (describe)
        self.world_size = world_size
        self._averager: distributed.GradientAverager | None = None
        if world_size > 1:
            if not torch.distributed.is_initialized() or torch.distributed.get_world_size() != world_size:
                raise UserError(f"world_size = {world_size} needs an initialised process group of that size "
                                "(advinf.distributed.init_from_environment, under torchrun)")
            self._averager = distributed.GradientAverager(world_size)
            distributed.broadcast_(t for m in nets.values() for t in [*m.parameters(), *m.buffers()])
        self.evaluators = dict(evaluators or {})
        self.eval_every = {name: n for name, n in (eval_every or {}).items() if n}
        unknown = sorted(set(self.eval_every) - set(self.evaluators))
        if unknown:
            raise UserError(f"eval_every names {', '.join(map(repr, unknown))}, which "
                            f"{'is no evaluator' if len(unknown) == 1 else 'are no evaluators'} of this Trainer "
                            f"(evaluators: {', '.join(self.evaluators) or 'none'})")
        self.players = tuple(game.players)
        self._player_names = frozenset(p.name for p in self.players)
        if self.spec.update == "alternating" and all(p.role == "critic" for p in self.players):
            raise UserError(f"{game_label(game)} has only critic-side players: update = \"alternating\" would take "
                            "critic steps alone (steps count the other side's updates); use \"simultaneous\"")
        self._params = {p.name: nets.named_parameters(p.networks) for p in self.players}
        self._param_list = {name: [p for _, p in named] for name, named in self._params.items()}
        default = optimizer or OptimizerSpec()
        overrides = {name: spec if spec.complete else default.merged(spec.explicit())
                     for name, spec in (optimizers or {}).items()}
        unknown = sorted(set(overrides) - {p.name for p in self.players})
        if unknown:
            raise UserError(f"optimizers given for {', '.join(unknown)}, but the game's players are "
                            f"{', '.join(p.name for p in self.players)}")
        fused = self.device.type in ("cuda", "cpu")  # fused Adam: 12% faster per toy step on CPU, too
        self._optimizer_specs = {p.name: overrides.get(p.name, default) for p in self.players}
        self._check_cuda_graph()
        self.optimizers = {p.name: _build_optimizer(self._optimizer_specs[p.name], self._param_list[p.name],
                                                    fused, p, capturable=self.spec.cuda_graph)
                           for p in self.players}
        self.batches = BatchSource(self.data, self.spec.batch_size, self.device, seed, game.streams,
                                   rank=rank, world_size=world_size, channels_last=self.spec.channels_last and images,
                                   owner=game_label(game))
        self.total_steps = self.spec.steps or self.spec.epochs * self.batches.steps_per_epoch  # type: ignore
        self.schedulers: dict[str, LambdaLR] = {}
        self._start_schedules(at_step=0)
        for p in self.players:  # a schedule that would never act in this run: said, not silently kept
            schedule = self._optimizer_specs[p.name].schedule
            if schedule is not None and schedule.name != "constant":
                per = self.batches.steps_per_epoch if schedule.unit == "epochs" else 1
                if schedule.hold * per >= self.total_steps:
                    warnings.warn(f"the learning-rate schedule of player '{p.name}' holds the full rate for "
                                  f"{schedule.hold} {schedule.unit}, the whole run of {self.total_steps} steps: it "
                                  "never decays (lower its hold, or train longer)", stacklevel=2)
        self.step = 0
        self.skipped = 0
        self._autocast = (torch.autocast(self.device.type, dtype=torch.bfloat16,
                                         cache_enabled=not self.spec.cuda_graph)  # a graph must not hold casts
                          if self.spec.autocast == "bf16" else contextlib.nullcontext())
        self._scalar_keys: tuple[str, ...] | None = None  # the scalars the game logs (the first step's)
        self._trial()  # before the run directory is touched
        self.run = RunDir(Path(run_dir), resume=resume) if run_dir is not None else None
        self._resume = resume
        self._from_library = recipe is None  # a recipe.toml, if any, is the trainer's own (written below)
        if self.run is not None and recipe is None:
            self.recipe = self._library_run(data, default, overrides, loggers, write=not resume)
        if self.spec.compile:
            # a simultaneous step takes each player's gradient from one graph (retain_graph for all but the last);
            # AOTAutograd's donated buffers (torch >= 2.6) refuse that, so they are off for compiled steps
            import torch._functorch.config as functorch_config

            functorch_config.donated_buffer = False
        self._losses = torch.compile(game.losses) if self.spec.compile else game.losses
        self._fixed: tuple[Tensor, Tensor | None] | None = None
        # moving averages of what the generator-side players train (what samples and evaluation use)
        averaged = [n for p in self.players if p.role == "generator" for n in p.networks
                    if n in nets and nets.parameters([n])]
        self.ema = {name: MovingAverage(nets[name], self.spec.ema) for name in averaged} if self.spec.ema else {}
        self._ema_pairs = [(avg, nets[name]) for name, avg in self.ema.items()]
        self._rng_restored = False
        self._rng_after: tuple[dict[str, Tensor], dict[str, Any]] | None = None  # where the last fit() stopped
        self._stop_signal: str | None = None
        self._agreed_stop: str | None = None
        # divergence guard, kept on the device: the first non-finite step and its losses (one per player)
        self._bad_step = torch.full((), -1, dtype=torch.long, device=self.device)
        self._bad_losses = torch.zeros(len(self.players), device=self.device)
        self._bad_computed = torch.ones(len(self.players), dtype=torch.bool, device=self.device)  # by that pass
        # each group of players a pass can update: its names (batch.players) and its mask over self.players
        # (the divergence guard), made once rather than per pass
        self._groups = {group: (frozenset(q.name for q in group),
                                torch.tensor([q in group for q in self.players], device=self.device))
                        for group in (self.players, tuple(q for q in self.players if q.role == "critic"),
                                      tuple(q for q in self.players if q.role != "critic"))}
        self._step_count = torch.zeros((), dtype=torch.long, device=self.device)  # = self.step, on the device
        forwards = (self.spec.critic_steps * any(p.role == "critic" for p in self.players)
                    + any(p.role != "critic" for p in self.players)) if self.spec.update == "alternating" else 1
        self._captured = CapturedStep(self._step_on, self.batches.next, forwards, self.device) \
            if self.spec.cuda_graph else None

    def _library_run(self, data: Dataset, optimizer: OptimizerSpec, optimizers: dict[str, OptimizerSpec],
                     loggers: Sequence[Logger] | None, write: bool) -> dict[str, Any] | None:
        """A run directory without a recipe (the Trainer used from Python): when every component was made by name
        (``advinf.create``), their recipe, written as recipe.toml and kept in every checkpoint, so that ``load_run``
        rebuilds the run; otherwise library.json names the components that were not, and ``load_run`` needs them
        given (``load_run(RUN, nets=..., game=...)``)."""
        assert self.run is not None
        recipe, missing = library_recipe(
            name=run_name(self.run.path.name), seed=self.seed, nets=self.nets, game=self.game, data=data,
            train=self.spec, optimizer=optimizer, optimizers=optimizers, evaluators=self.evaluators,
            eval_every=self.eval_every, loggers=list(loggers) if loggers is not None else None)
        if write and self.rank == 0:
            if recipe is not None:
                self.run.write_recipe(tomli_w.dumps(recipe))
            else:
                self.run.write_library({"trained_by": "advinf.Trainer, without a recipe", "not_by_name": missing,
                                        "networks": {n: qualname(m) for n, m in self.nets.items()},
                                        "game": qualname(self.game), "prior": qualname(self.nets.prior)})
        return recipe

    # -- one step ------------------------------------------------------------------------------------------
    def _trial(self) -> None:
        """One forward and backward pass on copies of the networks with a first batch, before anything is
        trained or written: networks that do not fit the data, the batch size or the device fail here with a
        clear message, not after data loading and a first checkpoint (under ``alternating``, also a forward pass
        of each side's, checked against the losses contract). Changes no state (RNG forked, copies)."""
        try:
            nets = copy.deepcopy(self.nets)
        except Exception as exc:
            raise UserError(f"the networks cannot be copied ({type(exc).__name__}: {exc}): advinf copies them for "
                            "this trial step and for moving averages; keep what copy.deepcopy cannot copy (a lock, "
                            "an open file) out of the modules' attributes") from exc
        nets.train(True)
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        first: Batch | None = None
        try:
            with torch.random.fork_rng(devices=devices), _checking_outputs(nets, self.data.sample_shape):
                first = self.batches.first()
                if first.x.is_floating_point() and not bool(torch.isfinite(first.x).all()):
                    raise UserError("the first training batch holds NaN or infinite values: the data (or its "
                                    "decoding) is damaged, and every loss would be NaN from the first step")
                first.players = frozenset(p.name for p in self.players)  # every player, as a simultaneous step
                first.all_players = self._player_names
                with self._autocast:
                    out = self._checked(self.game.losses(nets, first), self.players)
                bad = {p.name: float(out.losses[p.name].detach()) for p in self.players
                       if not bool(torch.isfinite(out.losses[p.name]))}
                if bad:
                    raise UserError(_not_finite("losses", ", ".join(f"{k} {v}" for k, v in bad.items())))
                for i, player in enumerate(self.players):  # each player's gradient, as the step takes it
                    self._reaches(player, out.losses[player.name], nets, retain=i < len(self.players) - 1)
                if self.spec.update == "alternating":  # the passes of one side each: a game that computes less
                    for side in (tuple(p for p in self.players if p.role == "critic"),  # there must still keep
                                 tuple(p for p in self.players if p.role != "critic")):  # the contract, and each
                        if side:  # updated player's loss still reach its networks (grad_for around the wrong ones)
                            first.players = frozenset(p.name for p in side)
                            with self._autocast:
                                out = self._checked(self.game.losses(nets, first), side)
                            for i, player in enumerate(side):
                                self._reaches(player, out.losses[player.name], nets, retain=i < len(side) - 1,
                                              on=f"on a pass that updates {', '.join(p.name for p in side)} "
                                                 "alone (update = \"alternating\")")
        except UserError:
            raise
        except Exception as exc:
            text = " ".join(str(exc).split())[:400]
            where = _raised_in(exc, self.game, nets)
            if where is not None:  # the game's own code, not a network: name the game, not the networks' options
                raise UserError(f"{game_label(self.game)} fails on a first batch, before training: "
                                f"{type(exc).__name__}: {text} (in {where}, the game's code): a bug in the game, or "
                                "networks or options it cannot take"
                                + (f" (its streams: {', '.join(s.name for s in self.game.streams)})"
                                   if isinstance(exc, KeyError) and self.game.streams else "")) from exc
            dtypes = sorted({str(t.dtype).removeprefix("torch.") for m in nets.values()
                             for t in m.parameters() if t.is_floating_point()})
            hint = ("train.batch_size: batch norm needs at least 2 examples per batch"
                    if "Expected more than 1 value per channel" in text else
                    f"the networks' parameters are {', '.join(dtypes)} and the examples "
                    f"{str(first.x.dtype).removeprefix('torch.')}: give them one dtype (float32; train.autocast = "
                    "\"bf16\" computes in lower precision)"
                    if first is not None and ("dtype" in text.lower() or "scalar type" in text.lower()) else
                    "check the networks' options (sizes, x_dim/z_dim, channels) against the dataset and prior, "
                    "and train.batch_size")
            raise UserError(f"the networks fail on a first batch, before training: {type(exc).__name__}: {text}; "
                            f"{hint}") from exc

    def _reaches(self, player: Player, loss: Tensor, nets: Networks, retain: bool, on: str = "") -> None:
        """The trial's backward pass of one player: a UserError where its loss does not reach one of its
        networks (an output detached, a network its loss never uses), which would train nothing, silently."""
        named = {n: nets.parameters([n]) for n in player.networks if n in nets}
        named = {n: ps for n, ps in named.items() if ps}
        params = [q for ps in named.values() for q in ps]
        if not params:
            return
        game = game_label(self.game)
        whose = f"the loss of player '{player.name}'" + (f" {on}" if on else "")
        if not loss.requires_grad:
            raise UserError(f"{game}: {whose} does not depend on its networks "
                            f"({', '.join(named)}): it has no gradient (computed under torch.no_grad, under "
                            "batch.grad_for of a network it differentiates through, or from a detached output?)")
        grads = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=retain)
        flows, i = {}, 0  # which networks get any gradient other than 0
        for name, ps in named.items():
            flows[name] = any(bool((g.coalesce().values() if g.is_sparse else g).any())
                              for g in grads[i:i + len(ps)] if g is not None)
            i += len(ps)
        i = 0
        for name, ps in named.items():
            if not all(bool(torch.isfinite(g.coalesce().values() if g.is_sparse else g).all())
                       for g in grads[i:i + len(ps)] if g is not None):
                raise UserError(_not_finite("gradients", f"player '{player.name}''s, in the {name}"))
            if all(g is None for g in grads[i:i + len(ps)]):
                raise UserError(f"{game}: {whose} does not reach the {name} "
                                f"({type(nets[name]).__name__}): none of its parameters gets a gradient, so it "
                                "would never train. Does its forward detach its output, or does the game not use "
                                "it? (Freeze it if it is not to be trained.)")
            others = [n for n in named if n != name and flows[n]]
            if not flows[name] and others:  # connected, yet nothing flows, while it does to its partner: the
                # loss reads no output of it (through one joint critic batch every pair is connected). A network
                # whose gradients are all 0 with its partners' too (a zero-initialised critic output, as BiGAN's)
                # is not refused: its gradient flows once the critic has learnt
                raise UserError(f"{game}: {whose} gives the {name} "
                                f"({type(nets[name]).__name__}) a gradient of exactly 0 in every parameter on the "
                                f"first batch, where the {', '.join(others)} gets one: the loss reads no output of "
                                f"the {name}, so it would never train (one joint critic batch connects every pair: a "
                                "generator-side loss that reads only the model pairs never reaches the encoder, whose "
                                "outputs are in the data pairs). Freeze it if it is not to be trained")
            i += len(ps)

    def _checked(self, out: GameLosses, players: tuple[Player, ...]) -> GameLosses:
        """``out`` if it keeps the losses contract: a 0-dim loss for each player the pass updates (``players``),
        0-dim scalars (the trainer sums them on the device between log lines). Shapes only: nothing is read."""
        missing = [p.name for p in players if p.name not in out.losses]
        if missing:
            raise UserError(f"{game_label(self.game)}: losses() returned no loss for player(s) "
                            f"{', '.join(missing)}")
        unknown = [n for n in out.losses if n not in self._param_list]
        if unknown:
            raise UserError(f"{game_label(self.game)}: losses() returned a loss for {', '.join(unknown)}, "
                            f"which is no player of the game (its players: {', '.join(self._param_list)}); "
                            "declare the player, or leave the loss out")
        taken = [k for k in out.scalars if k in RESERVED_METRICS or k.startswith("loss_")]
        if taken:  # they would overwrite what the trainer logs under those names (a "step" of -1 hid every line)
            raise UserError(f"{game_label(self.game)}: losses() returned scalar(s) named {', '.join(taken)}, which "
                            f"metrics.jsonl uses itself ({', '.join(sorted(RESERVED_METRICS))}, loss_PLAYER); "
                            "rename them")
        for kind, values in (("loss", out.losses), ("scalar", out.scalars)):
            for name, v in values.items():
                if not isinstance(v, Tensor) or v.dim() != 0:
                    got = f"shape {tuple(v.shape)}" if isinstance(v, Tensor) else type(v).__name__
                    raise UserError(f"{game_label(self.game)}: losses() returned {kind} {name!r} as {got}; "
                                    "each loss and scalar must be a 0-dim tensor (reduce it, e.g. .mean())")
        return out

    def _forward(self, batch: Batch) -> GameLosses:
        with self._autocast:
            return self._losses(self.nets, batch)

    def _update(self, out: GameLosses, players: tuple[Player, ...]) -> bool:
        """Each player's gradient of its own loss (all at the current parameters), then every step."""
        grads = []
        for i, p in enumerate(players):
            grads.append(torch.autograd.grad(out.losses[p.name], self._param_list[p.name],
                                             retain_graph=i < len(players) - 1, allow_unused=True))
        if self._averager is not None:
            self._averager(g for gs in grads for g in gs)  # the same averaged gradients on every rank
        if not self._guard(out, players, [g for gs in grads for g in gs]):
            return False
        for p, gs in zip(players, grads, strict=True):
            for param, g in zip(self._param_list[p.name], gs, strict=True):
                param.grad = _laid_out_like(g, param)
        for p in players:
            self.optimizers[p.name].step()
        return True

    def train_step(self) -> GameLosses:
        """One update under the recipe's scheme (replayed from a CUDA graph with ``train.cuda_graph``); returns
        the (last) losses. Counts in ``step``, as ``fit`` does: a later ``fit`` trains up to ``train.steps`` in
        all, and a checkpoint says how many updates were made."""
        out = self._captured() if self._captured is not None else self._step_on(self.batches.next)
        self._step_schedules()
        self.step += 1
        return out

    def _step_on(self, next_batch: Callable[[], Batch]) -> GameLosses:
        """The update on the batches ``next_batch()`` gives, one per forward pass; nothing read on the host."""
        self._step_count += 1
        passes: list[tuple[tuple[Player, ...], GameLosses]] = []

        def forward(players: tuple[Player, ...]) -> GameLosses:  # each pass sees the step and whom it updates
            batch = next_batch()
            batch.step, batch.players, batch.all_players = self.step, self._groups[players][0], self._player_names
            out = self._checked(self._forward(batch), players)
            passes.append((players, out))
            return out

        if self.spec.update == "simultaneous":
            if self._update(forward(self.players), self.players):
                self._update_ema()
            return self._step_output(passes)
        critics = tuple(p for p in self.players if p.role == "critic")
        generators = tuple(p for p in self.players if p.role != "critic")
        for _ in range(self.spec.critic_steps if critics else 0):
            self._update(forward(critics), critics)
        if generators and self._update(forward(generators), generators):
            self._update_ema()
        return self._step_output(passes)

    def _step_output(self, passes: list[tuple[tuple[Player, ...], GameLosses]]) -> GameLosses:
        """What a step logs: each player's loss from the (last) pass that updated it, each scalar from the last
        pass that returned it; the same scalars every step, in the first step's order."""
        losses: dict[str, Tensor] = {}
        scalars: dict[str, Tensor] = {}
        for players, out in passes:
            losses.update({p.name: out.losses[p.name] for p in players})
            scalars.update(out.scalars)
        if self._scalar_keys is None:
            self._scalar_keys = tuple(scalars)
        elif set(scalars) != set(self._scalar_keys):
            raise UserError(f"{game_label(self.game)}: losses() returned the scalars {list(scalars)} in a step after "
                            f"{list(self._scalar_keys)}; return the same scalars on every step (a scalar only some "
                            "passes of a step compute is logged from the last that does)")
        # detached: what is logged (or returned by train_step) must not keep the step's graph alive
        return GameLosses({p.name: losses[p.name].detach() for p in self.players},
                          {k: scalars[k].detach() for k in self._scalar_keys})

    def _check_cuda_graph(self) -> None:
        """``train.cuda_graph`` needs CUDA and a step that decides nothing on the host."""
        why = self.cuda_graph_refusal() if self.spec.cuda_graph else None
        if why is not None:
            raise UserError(f"train.cuda_graph = true cannot be used here: {why}")

    def speed_hint(self) -> str | None:
        """A line for a CUDA run that could record its step (``train.cuda_graph``) but does not: at the paper's
        batch the eager step waits on kernel launches, and recording it is the largest gain measured."""
        if self.device.type != "cuda" or self.spec.cuda_graph or self.cuda_graph_refusal() is not None:
            return None
        return ("hint: on CUDA, --set train.cuda_graph=true records the whole step and replays it (ali_svhn on an "
                "H200, against the eager fp32 step: 3.5x with train.tf32=true, 4.5x with train.autocast=bf16; "
                "docs/performance.md)")

    def cuda_graph_refusal(self) -> str | None:
        """Why this run's step cannot be recorded as a CUDA graph (the first reason), or None."""
        return cuda_graph_refusal(self.spec, self._optimizer_specs.values(), self.game.host_decisions(), self.device,
                                  self.world_size)

    def _step_schedules(self) -> None:
        for scheduler in self.schedulers.values():
            scheduler.step()

    def _start_schedules(self, at_step: int) -> None:
        """(Re)build each player's schedule as if it had run from step 0 to ``at_step``, from its spec's learning
        rate: the start of training, a restored run whose checkpoint holds no state of it, and a changed
        schedule or learning rate on ``--resume --allow-changes``. Players without a schedule have none."""
        self.schedulers = {}
        for p in self.players:
            schedule = self._optimizer_specs[p.name].schedule
            if schedule is None or schedule.name == "constant":
                continue
            optimizer = self.optimizers[p.name]
            lr = self._optimizer_specs[p.name].build([torch.nn.Parameter(torch.zeros(1))]).param_groups[0]["lr"]
            for group in optimizer.param_groups:
                group["initial_lr"] = lr
            self.schedulers[p.name] = LambdaLR(optimizer, schedule.factor(self.batches.steps_per_epoch),
                                               last_epoch=at_step - 1)

    def _components(self) -> dict[str, Any]:
        """Components besides networks, optimisers and RNG whose state a checkpoint holds, by name: anything
        with ``state_dict()`` (JSON-able) and ``load_state_dict()``. Saved under ``components`` in state.json;
        a new one needs no checkpoint code."""
        return {f"lr_schedule.{player}": scheduler for player, scheduler in self.schedulers.items()}

    def _update_ema(self) -> None:
        for avg, module in self._ema_pairs:
            avg.update(module)

    def _losses_vector(self, out: GameLosses) -> Tensor:
        return torch.stack([out.losses[p.name].detach().float() for p in self.players])

    def _guard(self, out: GameLosses, players: tuple[Player, ...], grads: list[Tensor | None]) -> bool:
        """Record a non-finite loss of the updated ``players`` on the device; in skip mode, say whether to apply
        the update.

        In stop mode only the losses are checked each pass (a non-finite gradient makes the next step's
        loss non-finite, and parameters are checked before every checkpoint); skip mode also checks the
        gradients, since it must not apply them.
        """
        updated, mask = self._groups[players]  # the others' entries keep what was recorded: no host value read
        losses = torch.stack([out.losses[p.name].detach().float() if p.name in updated else self._bad_losses[i]
                              for i, p in enumerate(self.players)])
        finite = torch.isfinite(losses).all()
        if self.spec.nonfinite == "skip":
            present = [g for g in grads if g is not None]
            if present:
                finite = finite & _all_finite(present)
            if not bool(finite):  # host sync: only in skip mode
                self.skipped += 1
                return False
            return True
        newly = (~finite) & (self._bad_step < 0)
        self._bad_step.copy_(torch.where(newly, self._step_count, self._bad_step))  # in place: a graph reads it
        self._bad_losses.copy_(torch.where(newly, losses, self._bad_losses))
        self._bad_computed.copy_(torch.where(newly, mask, self._bad_computed))
        return True

    def _check_diverged(self, parameters: bool = False) -> None:
        bad = int(self._bad_step)
        if bad < 0 and parameters:
            params = [p.detach() for m in self.nets.values() for p in m.parameters()]
            if not bool(_all_finite(params)):
                bad = self.step
                self._bad_losses.fill_(float("nan"))
                self._bad_computed.fill_(True)
        if bad < 0:
            return
        computed = self._bad_computed.tolist()
        losses = ", ".join(f"loss_{p.name}={v:.4g}" for p, v, c in zip(self.players, self._bad_losses.tolist(),
                                                                        computed, strict=True) if c)
        if not all(computed):  # under "alternating", the pass updated only some players
            losses += "; not computed on that pass: " + ", ".join(
                f"loss_{p.name}" for p, c in zip(self.players, computed, strict=True) if not c)
        last = ckpt.latest_checkpoint(self.run.checkpoints) if self.run is not None else None
        skip = "" if self.spec.nonfinite == "skip" else ", or set train.nonfinite = \"skip\""
        if last is not None:
            what = f"the last good checkpoint is {last}; lower the learning rate and resume with --resume " \
                   f"--allow-changes{skip}"
        else:
            where = f" (delete {self.run.path} or give another --out)" if self.run is not None else ""
            what = f"no checkpoint was written before it; lower the learning rate{skip} and train again{where}"
        raise TrainingDiverged(f"training diverged: non-finite loss or weights at step {bad} ({losses}); {what}")

    # -- the loop ------------------------------------------------------------------------------------------
    def fit(self, stop_after: int | None = None, *, on_signal: Literal["pass_on", "return"] = "pass_on"
            ) -> TrainResult:
        """Train until ``train.steps`` (or step ``stop_after``), checkpointing on the way; then evaluate.

        SIGINT (Ctrl-C) or SIGTERM finishes the step and writes a checkpoint first. Then, with ``on_signal =
        "pass_on"``, the signal goes on to the handler that was in place before ``fit``: Python's raises
        KeyboardInterrupt for Ctrl-C, and SIGTERM's ends the process, so a script or a job scheduler stops as
        it asked; with ``"return"`` (what ``advinf run`` uses), ``fit`` returns and ``result.stopped`` names it."""
        end = min(self.total_steps, stop_after) if stop_after is not None else self.total_steps
        frozen_since = sorted({n.split(".")[0] for n, q in self._params_named() if not q.requires_grad})
        if frozen_since:
            raise UserError(f"the {', '.join(frozen_since)} {'was' if len(frozen_since) == 1 else 'were'} frozen "
                            "(nets.freeze, requires_grad_(False)) after this Trainer was built, which gave its "
                            "optimisers their parameters: freeze networks before building the Trainer")
        if self._resume and not self._rng_restored and self.run is not None and self.step == 0:
            done = ckpt.list_checkpoints(self.run.checkpoints)
            if done:  # training from step 0 would mix a new run into the old one's metrics and checkpoints
                raise UserError(f"{self.run.path} holds checkpoints up to {done[-1].name}, but none was restored: "
                                "call trainer.restore(advinf.checkpoint.load_checkpoint(advinf.checkpoint."
                                f"latest_checkpoint(RUN / \"checkpoints\"))) before fit() to continue it")
        if self._rng_after is not None:  # a later fit() of this trainer: the noise goes on where the last stopped
            ckpt.load_rng_state(*self._rng_after)
        elif not self._rng_restored:
            noise_seed = self.seed if self.rank == 0 else self.seed + 1_000_003 * self.rank  # own noise
            torch.manual_seed(noise_seed)
            random.seed(noise_seed)  # Python's and numpy's too, for plugins drawing from them
            np.random.seed(noise_seed % 2**32)
        self.nets.train(True)
        progress = ProgressReporter(self.total_steps, self.spec.progress if self.rank == 0 else "none",
                                    start=self.step, batch_size=self.spec.batch_size)
        acc: Tensor | None = None
        keys: list[str] = []
        count, start_step = 0, self.step
        last: dict[str, Any] = {}
        result = TrainResult(0, 0.0, run_dir=self.run.path if self.run else None)
        t_log = t_start = time.perf_counter()

        def log_interval() -> None:
            """One metrics line: the means of the steps since the last one (one host sync)."""
            nonlocal count, t_log, last
            assert acc is not None
            now = time.perf_counter()
            if self.world_size > 1:  # the mean over the ranks; any rank's divergence stops all
                distributed.mean_(acc)
                distributed.max_(self._bad_step)
                self._agree_on_stop()
            values = (acc / count).tolist()  # the one host sync per log interval
            last = {"step": self.step, "epoch": self.batches.epoch, "steps_averaged": count,
                    **dict(zip(keys, values, strict=True)),
                    "samples_per_s": count * self.spec.batch_size * self.world_size / max(now - t_log, 1e-9),
                    "time": round(now - t_start, 3)}
            if self.spec.nonfinite == "skip":
                last["skipped_steps"] = self.skipped
            self._check_diverged()
            for logger in self._active_loggers():
                logger.log_metrics(self.step, last)
            progress.update(self.step, last)
            acc.zero_()
            count, t_log = 0, time.perf_counter()

        with self._open_loggers():
            with self._signals():
                if self.run is not None and self.spec.sample_every and self.step == 0:
                    self._save_samples()
                try:
                    while self.step < end and self._stopping() is None:
                        out = self.train_step()
                        progress.advance(self.step)  # host values only: the step counter and the clock
                        if acc is None:
                            keys = [f"loss_{p.name}" for p in self.players] + list(out.scalars)
                            acc = torch.zeros(len(keys), device=self.device)
                        acc += torch.cat([self._losses_vector(out),
                                          torch.stack([v.detach().float() for v in out.scalars.values()])
                                          if out.scalars else acc.new_zeros(0)])
                        count += 1
                        if self.step % self.spec.log_every == 0 or self.step == end:
                            log_interval()
                        t_periodic = time.perf_counter()
                        self._periodic(end)  # evaluations, pictures, checkpoints: not in the next line's samples/s
                        t_log += time.perf_counter() - t_periodic
                    if count and self.world_size == 1:  # stopped by a signal: the steps since the last line
                        log_interval()  # (ranks of a data-parallel run agree to stop at a log step)
                finally:
                    progress.close()
                self._rng_after = ckpt.rng_state()  # what the checkpoint keeps, whatever runs between fit() calls
                result.stopped = self._stopping() or ("stop_after" if self.step < self.total_steps else None)
                if self.run is not None and self.spec.sample_every and self.step % self.spec.sample_every \
                        and self.step != start_step:
                    self._save_samples_or_checkpoint(fork_rng=True)  # the last step's picture, however it ends
                if self.run is not None or self.world_size > 1:
                    result.checkpoint = self._checkpoint()
            result.steps, result.seconds = self.step - start_step, time.perf_counter() - t_start
            result.last_metrics = last
            if result.stopped is None:
                result.eval = self.evaluate()
        if result.stopped in ("SIGINT", "SIGTERM") and on_signal == "pass_on":
            signal.raise_signal(signal.Signals[result.stopped])  # to the handler fit found (restored above)
        return result

    @contextlib.contextmanager
    def _open_loggers(self):
        """The loggers, open for one ``fit`` (rank 0 with a run directory only); closed however it ends."""
        if self.run is None or self.rank != 0 or not self.loggers:
            yield
            return
        opened: list[Logger] = []
        try:
            for logger in self.loggers:
                logger.open(self.run.path, self.step)
                opened.append(logger)
            self._logging = True
            yield
        finally:
            self._logging = False
            for logger in opened:
                logger.close()

    def _active_loggers(self) -> list[Logger]:
        return self.loggers if self._logging else []

    def _periodic(self, end: int) -> None:
        """Evaluations, pictures and checkpoints due at this step (the final ones are written by ``fit``)."""
        due = {n: ev for n, ev in self.evaluators.items() if n in self.eval_every
               and self.step % self.eval_every[n] == 0 and self.step != self.total_steps}
        if due:
            try:
                self.evaluate(due, final=False)
            except EvaluationFailed:
                if self.world_size == 1 and self.run is not None:
                    self._checkpoint()  # the training since the last checkpoint is not lost with the evaluator
                raise
        if self.run is None and self.world_size == 1:
            return
        if self.run is not None and self.spec.sample_every and self.step % self.spec.sample_every == 0:
            self._save_samples_or_checkpoint()
        if self.spec.checkpoint_every and self.step % self.spec.checkpoint_every == 0 and self.step != end:
            self._checkpoint()

    def _stopping(self) -> str | None:
        """Why the loop ends now: a signal, seen at once; in a data-parallel run only once the ranks agreed
        (at the next log step), so that all of them stop at the same step."""
        return self._stop_signal if self.world_size == 1 else self._agreed_stop

    def _agree_on_stop(self) -> None:
        signals = ("SIGINT", "SIGTERM")
        flag = torch.tensor([signals.index(self._stop_signal) + 1 if self._stop_signal else 0], device=self.device)
        code = int(distributed.max_(flag))
        if code:
            self._agreed_stop = self._stop_signal = signals[code - 1]

    @contextlib.contextmanager
    def _signals(self):
        """SIGINT/SIGTERM finish the current step, write a checkpoint and end ``fit``; a second SIGINT aborts."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, frame):
            if self._stop_signal is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self._stop_signal = signal.Signals(signum).name

        old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    # -- checkpoints ---------------------------------------------------------------------------------------
    def _checkpoint(self) -> Path | None:
        """A checkpoint, written by the trainer with a run directory; in a data-parallel run every rank calls
        this at the same step: rank 0's checkpoint holds every rank's RNG state."""
        ranks: list[dict[str, Tensor]] = []
        if self.world_size > 1:
            ranks = distributed.gather_states(ckpt.rng_state()[0], self.device)
        return self.save_checkpoint(_ranks=ranks) if self.run is not None else None

    def save_checkpoint(self, *, _ranks: list[dict[str, Tensor]] | None = None) -> Path:
        """Write the full training state into RUN/checkpoints/step_N (refused after a divergence)."""
        assert self.run is not None
        self._check_diverged(parameters=True)  # no checkpoint ever holds non-finite weights
        model = {f"{name}.{k}": v for name, m in self._stateful().items() for k, v in m.state_dict().items()}
        optim: dict[str, Tensor] = {}
        metas: dict[str, Any] = {}
        for p in self.players:
            tensors, metas[p.name] = ckpt.optimizer_state(self.optimizers[p.name], self._names(p), p.name)
            optim.update(tensors)
        t_rng, m_rng = ckpt.rng_state()
        for r, tensors in enumerate(_ranks or []):
            if r > 0:  # rank 0's are t_rng
                t_rng.update({f"rank{r}.{k}": v for k, v in tensors.items()})
        state = {
            "epoch": self.batches.epoch, "sampler": self.batches.state(), "skipped": self.skipped,
            "world_size": self.world_size,
            "optimizers": metas, "rng": m_rng, "recipe": self.recipe, "settings": self._settings(),
            "components": {name: c.state_dict() for name, c in self._components().items()},
            "versions": {"advinf": __version__, "torch": torch.__version__},
        }
        described = self._described_data()
        if described is not None:
            state["data"] = described.model_dump(mode="json")  # rebuilds the run where its data is not (load_run)
        return ckpt.save_checkpoint(self.run.checkpoints, self.step, {"model": model, "optim": optim, "rng": t_rng},
                                    state, keep=self.spec.keep_checkpoints)

    def _described_data(self) -> DataDescription | None:
        """What checkpoints say of the training data (:func:`advinf.data.describe`), once; None for a dtype no
        description names (such a run needs its data to be loaded)."""
        if self._data_description is None:
            with contextlib.suppress(ValueError):
                self._data_description = describe(self.data)
        return self._data_description

    def _check_data(self, checkpoint: ckpt.Checkpoint, allow_changes: bool) -> None:
        """Refuse to continue a run on data unlike what it trained on: examples of another shape or dtype, or,
        where the game reads labels, labels of another kind or number (its weights cannot fit them); labels
        named otherwise, or another number of examples, unless ``allow_changes``. Labels a game never reads may
        change."""
        stored, found = checkpoint.state.get("data"), self._described_data()
        if stored is None or found is None:
            return  # a checkpoint of an older version, which did not describe its data
        trained = DataDescription.model_validate(stored)
        unlike = unlike_description(found, trained, labels=self.game.reads_labels)
        if unlike is None:
            return
        fatal = (unlike_description(found, trained, labels=False, sizes=False) is not None
                 or (self.game.reads_labels and relabels(found, trained)))
        if not fatal and allow_changes:
            return
        also = "" if fatal else (" (or go on with this data: --allow-changes; restore(checkpoint, "
                                 "allow_data_changes=True))")
        raise UserError(f"{checkpoint.path} was trained on other data: {unlike}. Train on the data the run trained "
                        f"on to continue it{also}")

    def _settings(self) -> dict[str, Any]:
        """This trainer's settings as a checkpoint records them: what ``restore`` compares where no recipe is."""
        origin = origin_of(self.game)
        game = {"class": qualname(self.game), **({"name": origin.name, "options": origin.options} if origin else {})}
        return json.loads(json.dumps({
            "seed": self.seed, "game": game,
            "train": self.spec.model_dump(mode="json", exclude_none=True),
            "optimizers": {p.name: self._optimizer_specs[p.name].as_table() for p in self.players}}, default=str))

    def restore(self, checkpoint: ckpt.Checkpoint, *, allow_changes: bool = False,
                allow_data_changes: bool | None = None) -> None:
        """Load a checkpoint's networks, optimisers, RNG and data position: training continues exactly.

        A trainer built otherwise than the run (its recipe, or without one its seed, game, train and optimiser
        settings, differ from the checkpoint's) is refused, naming the keys, as ``advinf run --resume`` refuses a
        changed recipe; ``allow_changes`` continues with this trainer's settings (then ``apply_optimizer_settings()``
        for changed optimiser settings, as ``--allow-changes`` does), and a library run's recipe.toml is rewritten
        with them, as ``--allow-changes`` rewrites a recipe run's. The run's ``name`` (its folder's) may differ.

        Data unlike what the checkpoint records of the run's (:func:`advinf.data.describe`) is refused: examples
        of another shape or dtype, and labels of another kind or number where the game reads labels, always;
        labels named otherwise unless ``allow_data_changes`` (default: ``allow_changes``)."""
        where = checkpoint.path
        changes = self._changes(checkpoint)
        if changes and not allow_changes:
            raise UserError(f"{where} was trained with other settings: {', '.join(changes)} "
                            f"{'differs' if len(changes) == 1 else 'differ'} from this Trainer's. Build the Trainer "
                            "as the run was built to continue it exactly, or call restore(checkpoint, "
                            "allow_changes=True) to go on with these settings (then "
                            "trainer.apply_optimizer_settings() for changed optimiser settings)")
        saved_world = checkpoint.state.get("world_size", 1)
        if saved_world != self.world_size:
            raise UserError(f"{where} was written by a run of {saved_world} process(es) (its world size); resume it "
                            f"with {saved_world} (torchrun --nproc-per-node; see docs/distributed.md), not "
                            f"{self.world_size}: each rank's data shard and noise depend on the world size")
        self._check_data(checkpoint, allow_changes if allow_data_changes is None else allow_data_changes)
        for name, module in self._stateful().items():
            if name.startswith("ema_") and ckpt.network_prefix(checkpoint.tensors["model"], name) is None:
                # a moving average the run did not keep yet (train.ema changed): it starts from the restored
                # weights (not this trainer's initial ones: model() and checkpoints use it before any update)
                module.module.load_state_dict(self.nets[name.removeprefix("ema_")].state_dict())  # type: ignore
                continue
            ckpt.load_module_state(module, name, checkpoint.tensors["model"], where)
        opts = checkpoint.state["optimizers"]
        try:
            for p in self.players:
                if p.name not in opts:
                    raise UserError(f"{where}: the checkpoint holds no optimiser state for player '{p.name}' (it "
                                    f"has {', '.join(opts) or 'none'}); was it written by another game?")
                ckpt.load_optimizer_state(self.optimizers[p.name], self._names(p), p.name,
                                          checkpoint.tensors["optim"], opts[p.name], where)
                for param, st in self.optimizers[p.name].state.items():  # saved contiguous; fused Adam needs
                    for key, value in st.items():  # its moments laid out like their parameter
                        if isinstance(value, Tensor) and value.shape == param.shape:
                            st[key] = _laid_out_like(value, param)
            rng = checkpoint.tensors["rng"]
            if self.rank > 0:
                prefix = f"rank{self.rank}."
                rng = {k[len(prefix):]: v for k, v in rng.items() if k.startswith(prefix)}
            ckpt.load_rng_state(rng, checkpoint.state["rng"])
            self.batches.load_state(checkpoint.state["sampler"])
            saved = checkpoint.state.get("components", {})
            for name, component in self._components().items():
                if name in saved:
                    component.load_state_dict(saved[name])
            fresh = [n for n in self._components() if n not in saved]
        except UserError:
            raise
        except (KeyError, ValueError, TypeError, IndexError, RuntimeError) as exc:
            raise UserError(f"{where} cannot be restored ({type(exc).__name__}: {str(exc)[:200]}); delete it to "
                            "resume from an older checkpoint") from None
        self.step, self.skipped = checkpoint.step, int(checkpoint.state.get("skipped", 0))
        self._step_count.fill_(self.step)
        if fresh:  # schedules the checkpoint has no state of: as if they had run from step 0
            self._start_schedules(at_step=self.step)
        self._rng_restored, self._rng_after = True, None
        if self.run is not None:
            self.run.truncate_after(self.step)
            if changes and self._from_library and self.recipe is not None and self.rank == 0:
                self.run.write_recipe(tomli_w.dumps(self.recipe))  # the settings it now trains with

    def _changes(self, checkpoint: ckpt.Checkpoint) -> list[str]:
        """The keys this trainer's recipe (or, without one, its settings) differs from the checkpoint's in."""
        saved_recipe, saved_settings = checkpoint.state.get("recipe"), checkpoint.state.get("settings")
        if isinstance(saved_recipe, dict) and self.recipe is not None:
            old, new = saved_recipe, self.recipe
        elif isinstance(saved_settings, dict):  # a run of modules not made by name: no recipe, its settings
            old = saved_settings  # (what it recorded: a checkpoint of an older advinf has no seed or game)
            new = {k: v for k, v in self._settings().items() if k in old}
        else:
            return []  # a checkpoint of an older version, which recorded neither
        ignore = ("train.progress", "train.loggers", "loggers", "name")  # name: the run folder's, moved or copied
        return summarised(changed_keys(old, new, ignore), old, new)

    def apply_optimizer_settings(self) -> None:
        """Set every optimiser's hyperparameters (lr, betas, weight decay, ...) to this trainer's specs, over the
        values a restored checkpoint brought: what ``--resume --allow-changes`` with a changed optimiser does.
        Schedules are restarted at the current step from the specs' learning rates, as if the (possibly
        changed) schedule had been used from step 0; unchanged, that gives the rates they had."""
        for p in self.players:
            spec = self._optimizer_specs[p.name]
            fresh = spec.build([torch.nn.Parameter(torch.zeros(1))]).param_groups[0]
            for group in self.optimizers[p.name].param_groups:
                for key, value in fresh.items():
                    if key not in ("params", "fused", "foreach", "capturable", "differentiable"):
                        group[key] = value
        self._start_schedules(at_step=self.step)

    def _params_named(self) -> list[tuple[str, Tensor]]:
        """Every parameter the optimisers step, by its ``network.param`` name."""
        return [pair for p in self.players for pair in self._params[p.name]]

    def _names(self, player: Player) -> list[str]:
        return [name for name, _ in self._params[player.name]]

    def _stateful(self) -> dict[str, torch.nn.Module]:
        """Every module whose state a checkpoint holds: the networks and their moving averages (ema_*)."""
        return {**self.nets, **{f"ema_{name}": avg for name, avg in self.ema.items()}}

    # -- outputs -------------------------------------------------------------------------------------------
    def model(self) -> TrainedModel:
        """The trained model, through its game: with ``train.ema`` the averaged networks (what sample pictures,
        evaluations, checkpoints' users and ``load_run`` use), else the live ones. Its ``sample``, ``encode`` and
        ``reconstruct`` run in eval mode without gradients and leave the networks' modes as they were; the
        averaged networks follow training (take a ``copy.deepcopy`` to keep a snapshot)."""
        nets = Networks(self.nets.prior, {name: self.ema[name].module if name in self.ema else m
                                          for name, m in self.nets.items()})
        nets.frozen = set(self.nets.frozen)
        return TrainedModel(nets, self.game, self.device, self.condition)

    def fixed_inputs(self) -> tuple[Tensor, Tensor | None]:
        """The z (and, for a conditional game, the conditions) of every sample picture of this run: a function
        of the seed, so pictures are comparable across steps and restarts."""
        if self._fixed is None:
            g = torch.Generator().manual_seed(self.seed + 12345)
            z = self.nets.prior.sample(self.spec.num_samples, "cpu", generator=g).to(self.device)
            y = None
            if self.game.conditioned and self.condition is not None:
                y = example_conditions(self.condition, self.data, self.spec.num_samples, self.seed).to(self.device)
            self._fixed = (z, y)
        return self._fixed

    def _save_samples_or_checkpoint(self, fork_rng: bool = False) -> None:
        """``_save_samples``; where the picture cannot be written (a full disk, a folder where the file goes), a
        checkpoint of this step before its error goes on, so that the training since the last one is not lost with
        it (one process: in a data-parallel run every rank takes part in a checkpoint, and only rank 0 draws
        pictures)."""
        try:
            self._save_samples(fork_rng)
        except Exception:
            if self.world_size == 1:
                with contextlib.suppress(Exception):  # the picture's error is the one to report
                    self._checkpoint()
            raise

    def _save_samples(self, fork_rng: bool = False) -> None:
        """The fixed-noise picture of this step, to samples/ and the loggers. ``fork_rng``: leave the RNG as it was
        (a picture that only some runs draw, e.g. where one stops, must not change what follows on resume)."""
        assert self.run is not None
        z, y = self.fixed_inputs()
        model = self.model()
        path = self.run.samples / f"step_{self.step:07d}.png"
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices, enabled=fork_rng):
            evaluate(model, {"samples": _Pictures(z, y, path)}, self.data, self.run.path)
        for logger in self._active_loggers():
            logger.log_image(self.step, "samples", path)

    def evaluate(self, evaluators: Mapping[str, Evaluator] | None = None, final: bool = True) -> dict[str, Any]:
        """Run the evaluators on the trained model: the final ones go to eval.json, periodic ones to
        evals.jsonl (with the step)."""
        evaluators = self.evaluators if evaluators is None else evaluators
        if not evaluators:
            return {}
        failed = None
        with contextlib.ExitStack() as stack:  # no run directory: the pictures are not kept (not the cwd's)
            out_dir = self.run.path if self.run is not None else \
                Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="advinf-eval-")))
            try:
                results = evaluate(self.model(), evaluators, self.data, out_dir)
            except EvaluationFailed as exc:  # the others' results are kept, then the error goes on
                results, failed = exc.results, exc
        if self.run is not None and final and results:  # the recipe's evaluators: stamped with their options
            options = evaluator_options(self.recipe or {}, evaluators) if evaluators is self.evaluators else None
            self.run.write_eval(results, self.step, options)
        for logger in self._active_loggers():
            logger.log_evaluation(self.step, results, final)
        if failed is not None:
            raise EvaluationFailed(f"{failed}. {self._after_failed_evaluation(failed, final)}", failed.results,
                                   failed.failed) from failed.__cause__
        return results

    def _plugin_flags(self) -> str:
        """`` --plugin PATH`` for each local plugin of the run's recipe this process imported: a command that
        rebuilds the run needs them named (a run directory's plugins are never imported from it), and one it did
        not import may have come with the run directory: not named, lest the user run it."""
        assert self.run is not None
        paths = loaded_plugin_paths(list((self.recipe or {}).get("plugins") or []), self.run.path)
        return "".join(f" --plugin {shlex.quote(p)}" for p in paths)

    def _after_failed_evaluation(self, failed: EvaluationFailed, final: bool) -> str:
        """What became of the run when evaluators failed, and what to do."""
        if self.run is None:
            return "The training is kept (the trainer's networks); fix the evaluator and evaluate again"
        kept = (" The other evaluators' results are in eval.json." if final else
                " The other evaluators' results are in evals.jsonl.") if failed.results else ""
        by_name = self.recipe is not None  # else modules of one's own: the command line cannot rebuild the run
        if final:
            again = (f"advinf evaluate {shlex.quote(str(self.run.path))} --with {','.join(failed.failed)}"
                     f"{self._plugin_flags()}" if by_name else
                     "trainer.evaluate() (or advinf.load_run(RUN, nets=..., game=...) in a new process, then "
                     "advinf.evaluation.evaluate)")
            return (f"The training is kept (the checkpoint of step {self.step}).{kept} Once the evaluator is fixed: "
                    f"{again}")
        again = f"advinf run --resume {shlex.quote(str(self.run.path))}{self._plugin_flags()}" if by_name else \
            "trainer.restore(the latest checkpoint) and trainer.fit()"
        return f"Training stopped at step {self.step} with a checkpoint.{kept} Once the evaluator is fixed: {again}"


def _raised_in(exc: BaseException, game: Game, nets: Networks) -> str | None:
    """``file:line`` of the game's own code where ``exc`` was raised, when its innermost frame in the game's or the
    networks' code is the game's (a network's forward failing is the networks', whatever called it)."""
    import inspect
    import traceback

    def source(obj: object) -> str | None:
        with contextlib.suppress(TypeError, OSError):
            return inspect.getsourcefile(type(obj))
        return None

    game_file = source(game)
    net_files = {source(m) for m in nets.values()} - {None}
    if game_file is None or game_file in net_files:
        return None
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if frame.filename in net_files:
            return None
        if frame.filename == game_file:
            return f"{frame.filename}:{frame.lineno}"
    return None


def _not_finite(what: str, which: str) -> str:
    """Why a run whose first batch already gives non-finite losses or gradients is refused before training."""
    return (f"the first batch gives non-finite {what} ({which}) before any update: the networks' initial weights "
            "or options make them overflow (a large init_std or slope, say), or the game's options do; training "
            "would stop at step 1. Check the [encoder], [decoder], [critic] and [game] options")


def _check_condition(condition: Condition, game: Game, data: Dataset, nets: Networks) -> None:
    """A UserError where the Condition given to the Trainer, or the one a network embeds y with, is not what the
    game builds on this data: the run would train, but its recipe would rebuild other networks."""
    why = condition.disagreement(game, data)
    if why is not None:
        raise UserError(f"condition=: {why}; build it with advinf.Condition.for_game(game, data, seed), and the "
                        "networks with it")
    for name in nets:
        for module in nets[name].modules():
            why = module.condition.disagreement(game, data) if isinstance(module, ConditionEmbedding) else None
            if why is not None:
                raise UserError(f"the {name} embeds y with another Condition than the game's: {why}; build it with "
                                "BuildContext(condition=advinf.Condition.for_game(game, data, seed))")


@contextlib.contextmanager
def _checking_outputs(nets: Networks, sample_shape: Sequence[int]) -> Iterator[None]:
    """Within the block, every call of a network checks its output against its interface (forward hooks): an
    encoder returns a ``Posterior``, a decoder a tensor of examples of the data's ``sample_shape``, a critic a
    tensor of logits, one row per pair; each with one row per input example. A UserError names the network and
    the rule. The trial step runs in it, so that a network breaking its contract is told before training, not
    found later as a shape error inside a game (or, worse, not at all)."""
    handles = []
    for name, module in nets.items():
        rule = _output_rule(name, module, tuple(sample_shape))
        if rule is not None:
            handles.append(module.register_forward_hook(rule, with_kwargs=True))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _output_rule(name: str, module: torch.nn.Module, sample_shape: tuple[int, ...]) -> Callable[..., None] | None:
    """The forward hook that checks ``module``'s output, or None for a network of no well-known kind."""
    origin = origin_of(module)
    who = f"the {name} ({origin.kind} '{origin.name}')" if origin is not None else \
        f"the {name} ({qualname(module)})"

    def rows(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int | None:
        first = args[0] if args else next(iter(kwargs.values()), None)
        return first.shape[0] if isinstance(first, Tensor) and first.dim() else None

    def check(rule: str, ok: bool, value: Any) -> None:
        if not ok:
            got = f"a tensor of shape {tuple(value.shape)}" if isinstance(value, Tensor) else type(value).__name__
            raise UserError(f"{who} returned {got}: {rule}")

    if isinstance(module, Encoder):
        def encoder(_: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
            check("Encoder.forward returns a Posterior (advinf.GaussianPosterior, DeterministicPosterior, ...)",
                  isinstance(out, Posterior), out)
            n = rows(args, kwargs)
            check(f"its posterior's mean must have one row per example ({n})",
                  n is None or (out.mean.dim() > 0 and out.mean.shape[0] == n), out.mean)
        return encoder
    if isinstance(module, Decoder):
        def decoder(_: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
            n = rows(args, kwargs)
            expected = ("B", *sample_shape) if n is None else (n, *sample_shape)
            check(f"Decoder.forward returns examples of the data's shape, {expected}",
                  isinstance(out, Tensor) and tuple(out.shape[1:]) == sample_shape
                  and (n is None or out.shape[0] == n), out)
        return decoder
    if isinstance(module, JointCritic):
        def critic(_: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
            n = rows(args, kwargs)
            check(f"JointCritic.forward returns one logit per pair, shape ({'B' if n is None else n},) (or one row "
                  "of K outputs, for a game that reads several)",
                  isinstance(out, Tensor) and out.dim() in (1, 2) and (n is None or out.shape[0] == n), out)
        return critic
    return None


class _Pictures(Evaluator):
    """The fixed-noise sample picture, drawn through the game like any evaluation."""

    def __init__(self, z: Tensor, y: Tensor | None, path: Path):
        self.z, self.y, self.path = z, y, path

    def evaluate(self, model: TrainedModel, data: Dataset, out_dir: Path) -> dict[str, Any]:
        x = model.sample(z=self.z, y=self.y)
        save_samples(x, self.path)
        return {}


def _all_finite(tensors: list[Tensor]) -> Tensor:
    """Whether every element is finite, as a device tensor: the largest magnitude (a 2-norm would overflow to
    inf for large finite weights, about 1e19 and up). Empty tensors are left out: torch's inf-norm refuses them."""
    tensors = [t for t in tensors if t.numel()]
    if not tensors:
        return torch.ones((), dtype=torch.bool)
    return torch.isfinite(torch.nn.utils.get_total_norm(tensors, norm_type=float("inf")))


def _laid_out_like(grad: torch.Tensor | None, param: torch.Tensor) -> torch.Tensor | None:
    """``grad`` with ``param``'s strides, as ``backward()`` would have stored it. ``autograd.grad`` returns whatever
    layout the backward produced (a channels_last 1x1 convolution's weight gradient comes back with contiguous
    strides, for one), and CUDA's fused Adam refuses a gradient laid out unlike its parameter. Strides that differ
    only on size-1 dimensions describe the same memory: a view; otherwise one copy."""
    if grad is None or grad.layout != torch.strided or grad.stride() == param.stride():
        return grad  # a sparse gradient (nn.Embedding(sparse=True)) has no strides
    if all(n == 1 or a == b for n, a, b in zip(param.shape, grad.stride(), param.stride(), strict=True)):
        return grad.as_strided(param.shape, param.stride())
    return torch.empty_strided(param.shape, param.stride(), dtype=grad.dtype, device=grad.device).copy_(grad)


def _build_optimizer(spec: OptimizerSpec, params: list[torch.nn.Parameter], fused: bool, player: Player,
                     capturable: bool = False) -> torch.optim.Optimizer:
    extra: dict[str, Any] = {"fused": True} if fused and spec.fusable() else {}
    if capturable and spec.name in ("adam", "adamw", "rmsprop"):
        extra["capturable"] = True  # step counts on the device, as a recorded graph needs
    if not params:
        raise UserError(f"player '{player.name}' has no trainable parameters (its networks "
                        f"{', '.join(player.networks)} are frozen or absent)")
    return spec.build(params, **extra)
