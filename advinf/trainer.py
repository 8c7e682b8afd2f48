"""The training loop: draws on-device batches, lets the game compute both losses, applies the update.

Update schemes:

* ``simultaneous`` (the original ALI): one forward pass; the critic's gradient of L_D and the generator's
  gradient of L_G are both taken at the same parameter values (same z, noise, dropout masks and BN batch),
  then both optimisers step.
* ``alternating``: ``critic_steps`` critic updates on fresh batches, then one generator update.

No per-step host synchronisation: losses are summed on the device and read once per log interval, and the
divergence guard records the first non-finite step on the device (``nonfinite = "skip"`` is the exception:
deciding to skip an update needs the value on the host).
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from advinf import checkpoint as ckpt
from advinf.data import Dataset, IndexSampler, StreamingSplit
from advinf.errors import UserError
from advinf.interfaces import Batch, Evaluator, Game, GameLosses, Networks, TrainedModel
from advinf.pictures import save_samples
from advinf.progress import ProgressReporter
from advinf.recipe import OptimizerSpec, TrainSpec
from advinf.rundir import RunDir


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
    """

    def __init__(self, nets: Networks, game: Game, data: Dataset, *, train: TrainSpec | None = None,
                 optimizer: OptimizerSpec | None = None, critic_optimizer: OptimizerSpec | None = None,
                 evaluators: dict[str, Evaluator] | None = None, run_dir: Path | str | None = None,
                 seed: int = 0, device: torch.device | str | None = None, recipe: dict[str, Any] | None = None,
                 resume: bool = False):
        from advinf.build import resolve_device

        self.spec = train or TrainSpec(steps=1000)
        self.device = torch.device(device) if device is not None else resolve_device(self.spec.device)
        if self.spec.threads and self.device.type == "cpu":
            torch.set_num_threads(self.spec.threads)
        self.nets, self.game, self.seed, self.recipe = nets, game, seed, recipe
        if game.uses_encoder and nets.encoder is None:
            raise UserError("this game trains an encoder, but no encoder was given")
        game.check(nets)
        for m in nets.modules().values():
            m.to(self.device)
            if self.spec.channels_last and len(data.sample_shape) == 3:
                m.to(memory_format=torch.channels_last)
        self.data = data.to(self.device)
        self.evaluators = evaluators or {}
        opt = optimizer or OptimizerSpec()
        fused = self.device.type in ("cuda", "cpu")  # fused Adam: 12% faster per toy step on CPU, too
        self._g_params, self._c_params = nets.generator_parameters(), nets.critic_parameters()
        self.opt_g = _build_optimizer(opt, self._g_params, fused)
        self.opt_c = _build_optimizer(critic_optimizer or opt, self._c_params, fused)
        self.sampler = IndexSampler(len(self.data.train), self.spec.batch_size, self.device, seed)
        self.total_steps = self.spec.steps or self.spec.epochs * self.sampler.steps_per_epoch  # type: ignore
        self.step = 0
        self.skipped = 0
        self.run = RunDir(Path(run_dir), resume=resume) if run_dir is not None else None
        if self.run is not None and recipe is not None and not resume:
            import tomli_w

            self.run.write_recipe(tomli_w.dumps(recipe))
        self._losses = torch.compile(game.losses) if self.spec.compile else game.losses
        self._autocast = (torch.autocast(self.device.type, dtype=torch.bfloat16)
                          if self.spec.autocast == "bf16" else contextlib.nullcontext())
        self._fixed_z: Tensor | None = None
        self._stream: Any = None  # the batch iterator of a streaming training split
        self.ema = {name: AveragedModel(m, multi_avg_fn=get_ema_multi_avg_fn(self.spec.ema), use_buffers=True)
                    for name, m in self.nets.modules().items() if name != "critic"} if self.spec.ema else {}
        self._ema_pairs = [(avg, self.nets.modules()[name]) for name, avg in self.ema.items()]
        self._rng_restored = False
        self._stop_signal: str | None = None
        # divergence guard, kept on the device: the first non-finite step and its losses
        self._bad_step = torch.full((), -1, dtype=torch.long, device=self.device)
        self._bad_losses = torch.zeros(2, device=self.device)

    # -- parameters by name ----------------------------------------------------------------------------------
    def _named(self, which: str) -> list[str]:
        kinds = ("encoder", "decoder") if which == "generator" else ("critic",)
        mods = self.nets.modules()
        return [f"{k}.{n}" for k in kinds if k in mods for n, p in mods[k].named_parameters() if p.requires_grad]

    # -- one step ------------------------------------------------------------------------------------------
    def _batch(self) -> Batch:
        split = self.data.train
        if isinstance(split, StreamingSplit):
            if self._stream is None:
                state = self.sampler.state()
                self._stream = iter(split.loader(self.spec.batch_size, self.seed, state["epoch"], state["position"],
                                                 pin=self.device.type == "cuda"))
            self.sampler.advance()
            x, y = next(self._stream)
            x = Dataset.decode(x.to(self.device, non_blocking=True))
            return Batch(x, None if y is None else y.to(self.device, non_blocking=True))
        idx = self.sampler.next()
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
            if self._guard(out, g_c + g_g):
                _assign(c_params, g_c)
                _assign(g_params, g_g)
                self.opt_c.step()
                self.opt_g.step()
                self._update_ema()
            return out
        for _ in range(self.spec.critic_steps):
            out = self._forward()
            g_c = torch.autograd.grad(out.critic, c_params, allow_unused=True)
            if self._guard(out, g_c):
                _assign(c_params, g_c)
                self.opt_c.step()
        out = self._forward()
        g_g = torch.autograd.grad(out.generator, g_params, allow_unused=True)
        if self._guard(out, g_g):
            _assign(g_params, g_g)
            self.opt_g.step()
            self._update_ema()
        return out

    def _update_ema(self) -> None:
        for avg, module in self._ema_pairs:
            avg.update_parameters(module)

    def _guard(self, out: GameLosses, grads: tuple[Tensor | None, ...]) -> bool:
        """Record a non-finite loss on the device; in skip mode, say whether to apply the update.

        In stop mode only the losses are checked each step (a non-finite gradient makes the next step's
        loss non-finite, and parameters are checked before every checkpoint); skip mode also checks the
        gradients, since it must not apply them.
        """
        losses = torch.stack([out.critic.detach().float(), out.generator.detach().float()])
        finite = torch.isfinite(losses).all()
        if self.spec.nonfinite == "skip":
            present = [g for g in grads if g is not None]
            if present:
                finite = finite & torch.isfinite(torch.nn.utils.get_total_norm(present))
            if not bool(finite):  # host sync: only in skip mode
                self.skipped += 1
                return False
            return True
        newly = (~finite) & (self._bad_step < 0)
        self._bad_step = torch.where(newly, self.step + 1, self._bad_step)  # a host int: no sync
        self._bad_losses = torch.where(newly, losses, self._bad_losses)
        return True

    def _check_diverged(self, parameters: bool = False) -> None:
        bad = int(self._bad_step)
        if bad < 0 and parameters:
            params = [p.detach() for m in self.nets.modules().values() for p in m.parameters()]
            if not bool(torch.isfinite(torch.nn.utils.get_total_norm(params))):
                bad = self.step
                self._bad_losses.fill_(float("nan"))
        if bad < 0:
            return
        lc, lg = self._bad_losses.tolist()
        last = ckpt.latest_checkpoint(self.run.checkpoints) if self.run is not None else None
        where = f"the last good checkpoint is {last}; " if last is not None else ""
        raise TrainingDiverged(
            f"training diverged: non-finite loss or weights at step {bad} (loss_critic={lc:.4g}, "
            f"loss_generator={lg:.4g}); {where}lower the learning rate and resume with --resume --allow-changes, "
            "or set train.nonfinite = \"skip\"")

    # -- the loop ------------------------------------------------------------------------------------------
    def fit(self, stop_after: int | None = None) -> TrainResult:
        """Train until ``train.steps`` (or step ``stop_after``), checkpointing on the way; then evaluate."""
        end = min(self.total_steps, stop_after) if stop_after is not None else self.total_steps
        if not self._rng_restored:
            torch.manual_seed(self.seed)
        self.nets.train(True)
        progress = ProgressReporter(self.total_steps, self.spec.progress, start=self.step)
        acc: Tensor | None = None
        keys: list[str] = []
        count, start_step = 0, self.step
        last: dict[str, Any] = {}
        if self.run is not None and self.spec.sample_every and self.step == 0:
            self._save_samples()
        result = TrainResult(0, 0.0, run_dir=self.run.path if self.run else None)
        t_log = t_start = time.perf_counter()
        with self._signals():
            try:
                while self.step < end and self._stop_signal is None:
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
                        last = {"step": self.step, "epoch": self.sampler.epoch,
                                **dict(zip(keys, values, strict=True)),
                                "samples_per_s": count * self.spec.batch_size / max(now - t_log, 1e-9),
                                "time": round(now - t_start, 3)}
                        if self.spec.nonfinite == "skip":
                            last["skipped_steps"] = self.skipped
                        self._check_diverged()
                        if self.run is not None:
                            self.run.append_metrics(last)
                        progress.update(self.step, last)
                        acc.zero_()
                        count, t_log = 0, time.perf_counter()
                    if self.run is not None:
                        if self.spec.sample_every and self.step % self.spec.sample_every == 0:
                            self._save_samples()
                        if self.spec.checkpoint_every and self.step % self.spec.checkpoint_every == 0 \
                                and self.step != end:
                            self.save_checkpoint()
            finally:
                progress.close()
            result.stopped = self._stop_signal or ("stop_after" if self.step < self.total_steps else None)
            if self.run is not None:
                result.checkpoint = self.save_checkpoint()
        result.steps, result.seconds, result.last_metrics = self.step - start_step, time.perf_counter() - t_start, last
        if result.stopped is None:
            result.eval = self.evaluate()
        return result

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
    def save_checkpoint(self) -> Path:
        """Write the full training state into RUN/checkpoints/step_N (refused after a divergence)."""
        assert self.run is not None
        self._check_diverged(parameters=True)  # no checkpoint ever holds non-finite weights
        model = {f"{name}.{k}": v for name, m in self._stateful().items() for k, v in m.state_dict().items()}
        t_g, m_g = ckpt.optimizer_state(self.opt_g, self._named("generator"), "generator")
        t_c, m_c = ckpt.optimizer_state(self.opt_c, self._named("critic"), "critic")
        t_rng, m_rng = ckpt.rng_state()
        import advinf

        state = {
            "epoch": self.sampler.epoch, "sampler": self.sampler.state(), "skipped": self.skipped,
            "optimizers": {"generator": m_g, "critic": m_c}, "rng": m_rng, "recipe": self.recipe,
            "versions": {"advinf": advinf.__version__, "torch": torch.__version__},
        }
        return ckpt.save_checkpoint(self.run.checkpoints, self.step, {"model": model, "optim": {**t_g, **t_c},
                                                                       "rng": t_rng},
                                    state, keep=self.spec.keep_checkpoints)

    def restore(self, checkpoint: ckpt.Checkpoint) -> None:
        """Load a checkpoint's networks, optimisers, RNG and data position: training continues exactly."""
        where = checkpoint.path
        for name, module in self._stateful().items():
            ckpt.load_module_state(module, name, checkpoint.tensors["model"], where)
        opts = checkpoint.state["optimizers"]
        ckpt.load_optimizer_state(self.opt_g, self._named("generator"), "generator", checkpoint.tensors["optim"],
                                  opts["generator"], where)
        ckpt.load_optimizer_state(self.opt_c, self._named("critic"), "critic", checkpoint.tensors["optim"],
                                  opts["critic"], where)
        ckpt.load_rng_state(checkpoint.tensors["rng"], checkpoint.state["rng"])
        self.sampler.load_state(checkpoint.state["sampler"])
        self._stream = None  # a streaming split restarts its loader at the restored position
        self.step, self.skipped = checkpoint.step, int(checkpoint.state.get("skipped", 0))
        self._rng_restored = True
        if self.run is not None:
            self.run.truncate_metrics(self.step)

    def _stateful(self) -> dict[str, torch.nn.Module]:
        """Every module whose state a checkpoint holds: the networks and their moving averages (ema_*)."""
        return {**self.nets.modules(), **{f"ema_{name}": avg for name, avg in self.ema.items()}}

    # -- outputs -------------------------------------------------------------------------------------------
    def model(self) -> TrainedModel:
        """The networks as a TrainedModel (with ``train.ema``, the averaged encoder and decoder)."""
        enc, dec = self.nets.encoder, self.nets.decoder
        if self.ema:
            dec = self.ema["decoder"].module
            enc = self.ema["encoder"].module if "encoder" in self.ema else None
        return TrainedModel(self.nets.prior, dec, self.nets.critic, enc, self.device)

    def fixed_noise(self) -> Tensor:
        """The z used for every sample picture of this run (a function of the seed: comparable across restarts)."""
        if self._fixed_z is None:
            g = torch.Generator().manual_seed(self.seed + 12345)
            self._fixed_z = self.nets.prior.sample(self.spec.num_samples, "cpu", generator=g).to(self.device)
        return self._fixed_z

    @torch.no_grad()
    def _save_samples(self) -> None:
        assert self.run is not None
        decoder = self.model().decoder
        decoder.eval()
        try:
            x = decoder(self.fixed_noise())
        finally:
            decoder.train()
        save_samples(x, self.run.samples / f"step_{self.step:07d}.png")

    def evaluate(self) -> dict[str, Any]:
        """Run every evaluator on the trained model; writes eval.json and pictures into the run dir."""
        if not self.evaluators:
            return {}
        model = self.model()
        nets = [m for m in (model.encoder, model.decoder, model.critic) if m is not None]
        for m in nets:
            m.eval()
        out_dir = self.run.path if self.run is not None else Path.cwd()
        results: dict[str, Any] = {}
        try:
            with torch.no_grad():
                for name, ev in self.evaluators.items():
                    results[name] = ev.evaluate(model, self.data, out_dir)
        finally:
            for m in nets:
                m.train()
        if self.run is not None:
            self.run.write_eval(results)
        return results


def _build_optimizer(spec: OptimizerSpec, params: list[torch.nn.Parameter], fused: bool
                     ) -> torch.optim.Optimizer:
    extra = {"fused": True} if fused and spec.name in ("adam", "adamw") and "fused" not in spec.options else {}
    if not params:
        raise UserError("a player has no trainable parameters")
    return spec.build(params, **extra)


def _assign(params: list[torch.nn.Parameter], grads: tuple[Tensor | None, ...]) -> None:
    for p, g in zip(params, grads, strict=True):
        p.grad = g
