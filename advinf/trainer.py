"""The training loop: draws on-device batches, lets the game compute both losses, applies the update.

Update schemes:

* ``simultaneous`` (the original ALI): one forward pass; the critic's gradient of L_D and the generator's
  gradient of L_G are both taken at the same parameter values (same z, noise, dropout masks and BN batch),
  then both optimisers step.
* ``alternating``: ``critic_steps`` critic updates on fresh batches, then one generator update.

No per-step host synchronisation: losses are summed on the device and read once per log interval.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from advinf.data import Dataset, IndexSampler
from advinf.errors import UserError
from advinf.interfaces import Batch, Evaluator, Game, GameLosses, Networks, TrainedModel
from advinf.pictures import save_samples
from advinf.progress import ProgressReporter
from advinf.recipe import OptimizerSpec, TrainSpec
from advinf.rundir import RunDir


@dataclass
class TrainResult:
    """What ``Trainer.fit`` returns."""

    steps: int
    seconds: float
    last_metrics: dict[str, Any] = field(default_factory=dict)
    eval: dict[str, Any] = field(default_factory=dict)
    run_dir: Path | None = None


class Trainer:
    """Trains ``nets`` at ``game`` on ``data``. Usable without a recipe::

        trainer = Trainer(nets, game, data, train=TrainSpec(steps=1000), optimizer=OptimizerSpec(lr=1e-4))
        trainer.fit()
    """

    def __init__(self, nets: Networks, game: Game, data: Dataset, *, train: TrainSpec | None = None,
                 optimizer: OptimizerSpec | None = None, critic_optimizer: OptimizerSpec | None = None,
                 evaluators: dict[str, Evaluator] | None = None, run_dir: Path | str | None = None,
                 seed: int = 0, device: torch.device | str | None = None, recipe_toml: str | None = None,
                 resume: bool = False):
        from advinf.build import resolve_device

        self.spec = train or TrainSpec(steps=1000)
        self.device = torch.device(device) if device is not None else resolve_device(self.spec.device)
        if self.spec.threads and self.device.type == "cpu":
            torch.set_num_threads(self.spec.threads)
        self.nets, self.game, self.seed = nets, game, seed
        if game.uses_encoder and nets.encoder is None:
            raise UserError("this game trains an encoder, but no encoder was given")
        game.check(nets)
        for m in nets.modules().values():
            m.to(self.device)
            if self.spec.channels_last and data.train.x.dim() == 4:
                m.to(memory_format=torch.channels_last)
        self.data = data.to(self.device)
        self.evaluators = evaluators or {}
        opt = optimizer or OptimizerSpec()
        copt = critic_optimizer or opt
        fused = self.device.type == "cuda"
        self.opt_g = _build_optimizer(opt, nets.generator_parameters(), fused)
        self.opt_c = _build_optimizer(copt, nets.critic_parameters(), fused)
        self.sampler = IndexSampler(len(self.data.train), self.spec.batch_size, self.device, seed)
        self.total_steps = self.spec.steps or self.spec.epochs * self.sampler.steps_per_epoch  # type: ignore
        self.step = 0
        self.run = RunDir(Path(run_dir), resume=resume) if run_dir is not None else None
        if self.run is not None and recipe_toml is not None and not resume:
            self.run.write_recipe(recipe_toml)
        self._losses = (torch.compile(game.losses) if self.spec.compile else game.losses)
        self._autocast = (torch.autocast(self.device.type, dtype=torch.bfloat16)
                          if self.spec.autocast == "bf16" else contextlib.nullcontext())
        self._fixed_z: Tensor | None = None

    # -- one step ------------------------------------------------------------------------------------------
    def _batch(self) -> Batch:
        idx = self.sampler.next()
        split = self.data.train
        x = Dataset.decode(split.x.index_select(0, idx))
        if self.spec.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        y = None if split.y is None else split.y.index_select(0, idx)
        return Batch(x, y)

    def _forward(self) -> GameLosses:
        with self._autocast:
            return self._losses(self.nets, self._batch())

    def train_step(self) -> GameLosses:
        """One update of both players under the recipe's scheme; returns the (last) losses."""
        c_params, g_params = self._c_params, self._g_params
        if self.spec.update == "simultaneous":
            out = self._forward()
            g_c = torch.autograd.grad(out.critic, c_params, retain_graph=True, allow_unused=True)
            g_g = torch.autograd.grad(out.generator, g_params, allow_unused=True)
            _assign(c_params, g_c)
            _assign(g_params, g_g)
            self.opt_c.step()
            self.opt_g.step()
            return out
        for _ in range(self.spec.critic_steps):
            out = self._forward()
            _assign(c_params, torch.autograd.grad(out.critic, c_params, allow_unused=True))
            self.opt_c.step()
        out = self._forward()
        _assign(g_params, torch.autograd.grad(out.generator, g_params, allow_unused=True))
        self.opt_g.step()
        return out

    # -- the loop ------------------------------------------------------------------------------------------
    def fit(self, stop_after: int | None = None) -> TrainResult:
        """Train until ``train.steps`` (or ``stop_after``), then run the evaluators."""
        self._c_params, self._g_params = self.nets.critic_parameters(), self.nets.generator_parameters()
        end = min(self.total_steps, stop_after) if stop_after is not None else self.total_steps
        torch.manual_seed(self.seed + 1_000_003 * self.step)
        self.nets.train(True)
        progress = ProgressReporter(self.total_steps, self.spec.progress, start=self.step)
        acc: Tensor | None = None
        keys: list[str] = []
        count, start_step = 0, self.step
        last: dict[str, Any] = {}
        if self.run is not None and self.spec.sample_every:
            self._save_samples()
        t_log = t_start = time.perf_counter()
        try:
            while self.step < end:
                out = self.train_step()
                self.step += 1
                if acc is None:
                    keys = ["loss_critic", "loss_generator", *out.scalars]
                    acc = torch.zeros(len(keys), device=self.device)
                acc += torch.stack([out.critic.detach().float(), out.generator.detach().float(),
                                    *(v.detach().float() for v in out.scalars.values())])
                count += 1
                if self.step % self.spec.log_every == 0 or self.step == end:
                    now = time.perf_counter()
                    values = (acc / count).tolist()  # the one host sync per log interval
                    last = {"step": self.step, "epoch": self.sampler.epoch, **dict(zip(keys, values, strict=True)),
                            "samples_per_s": count * self.spec.batch_size / max(now - t_log, 1e-9),
                            "time": round(now - t_start, 3)}
                    self._check_finite(last, keys)
                    if self.run is not None:
                        self.run.append_metrics(last)
                    progress.update(self.step, last)
                    acc.zero_()
                    count, t_log = 0, now
                if self.run is not None and self.spec.sample_every and self.step % self.spec.sample_every == 0:
                    self._save_samples()
        finally:
            progress.close()
        seconds = time.perf_counter() - t_start
        result = TrainResult(self.step - start_step, seconds, last, run_dir=self.run.path if self.run else None)
        if self.step >= self.total_steps:
            result.eval = self.evaluate()
        return result

    def _check_finite(self, record: dict[str, Any], keys: list[str]) -> None:
        bad = [k for k in keys[:2] if not _finite(record[k])]
        if bad:
            raise UserError(f"non-finite {bad[0]} ({record[bad[0]]}) in the log interval ending at step "
                            f"{self.step}; lower the learning rate or check the data")

    # -- outputs -------------------------------------------------------------------------------------------
    def model(self) -> TrainedModel:
        """The networks as a TrainedModel (callers put them in eval mode for inference)."""
        return TrainedModel(self.nets.prior, self.nets.decoder, self.nets.critic, self.nets.encoder, self.device)

    def fixed_noise(self) -> Tensor:
        """The z used for every sample picture of this run (saved once, comparable across restarts)."""
        if self._fixed_z is None:
            g = torch.Generator().manual_seed(self.seed + 12345)
            self._fixed_z = self.nets.prior.sample(self.spec.num_samples, "cpu", generator=g).to(self.device)
        return self._fixed_z

    @torch.no_grad()
    def _save_samples(self) -> None:
        assert self.run is not None
        self.nets.decoder.eval()
        try:
            x = self.nets.decoder(self.fixed_noise())
        finally:
            self.nets.decoder.train()
        save_samples(x, self.run.samples / f"step_{self.step:07d}.png")

    def evaluate(self) -> dict[str, Any]:
        """Run every evaluator on the trained model; writes eval.json and pictures into the run dir."""
        if not self.evaluators:
            return {}
        self.nets.train(False)
        out_dir = self.run.path if self.run is not None else Path.cwd()
        results: dict[str, Any] = {}
        try:
            with torch.no_grad():
                for name, ev in self.evaluators.items():
                    results[name] = ev.evaluate(self.model(), self.data, out_dir)
        finally:
            self.nets.train(True)
        if self.run is not None:
            self.run.write_eval(results)
        return results


def _build_optimizer(spec: OptimizerSpec, params: list[torch.nn.Parameter], fused: bool
                     ) -> torch.optim.Optimizer:
    extra = {"fused": True} if fused and spec.name in ("adam", "adamw") and "fused" not in spec.options else {}
    if not params:
        params = [torch.nn.Parameter(torch.zeros(0))]  # a player with no parameters still gets an optimiser
    return spec.build(params, **extra)


def _assign(params: list[torch.nn.Parameter], grads: tuple[Tensor | None, ...]) -> None:
    for p, g in zip(params, grads, strict=True):
        p.grad = g


def _finite(v: float) -> bool:
    return v == v and v not in (float("inf"), float("-inf"))
