"""`advinf bench`: times advinf's training step against the plain reference loop on a recipe's networks, and
says how close to the machine's arithmetic limit the step runs.

Both loops start from the same freshly built networks (same seed) with the recipe's game (divergence, encoder
kind, one critic batch or two), update scheme, optimisers and batch size. Each is timed over ``steps`` updates
after ``warmup`` untimed ones, the device synchronised before the clock is read, ``repeats`` times alternating
the two loops; the medians are reported (machines are noisy: ratios are measured in one run).

``flops_per_sample`` is counted, not typed in: one real advinf training step runs under
``torch.utils.flop_counter.FlopCounterMode`` (every player's forward and backward; matrix products and
convolutions, which is where the arithmetic is) and the count is divided by the batch size. ``peak_flops`` is
measured in the same run by a large matrix product on the same device, dtype and thread count, once in each repeat
right after its two loops (the median over repeats), so that the step and the peak see the machine alike.
"""

from __future__ import annotations

import copy
import platform
import statistics
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from advinf.builder import Built, build
from advinf.capture import WARMUP as CAPTURE_WARMUP
from advinf.data import Dataset, Split
from advinf.errors import RecipeError, UserError
from advinf.interfaces import BuildContext
from advinf.plugins import PluginHost
from advinf.recipe import Recipe
from advinf.settings import OptimizerSpec, TrainSpec
from advinf.trainer import Trainer
from advinf_benchmarks.plain_loop import DIVERGENCES, PlainAli


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _seconds(run: Callable[[int], Any], steps: int, warmup: int, device: torch.device) -> float:
    """Seconds per step of ``run(n)`` (n steps), after ``warmup`` untimed steps."""
    if warmup:
        run(warmup)
    _sync(device)
    t = time.perf_counter()
    run(steps)
    _sync(device)
    return (time.perf_counter() - t) / steps


def _train_spec(built: Built, **update: Any) -> TrainSpec:
    return built.recipe.spec.train.model_copy(update={"epochs": None, "steps": 10**9, "progress": "none",
                                                      "sample_every": 0, **update})


def make_trainer(built: Built, train: TrainSpec | None = None) -> Trainer:
    """A trainer on a copy of the recipe's networks (the built ones stay fresh for the next repeat)."""
    spec = built.recipe.spec
    return Trainer(copy.deepcopy(built.nets), built.game, built.dataset, train=train or _train_spec(built),
                   optimizer=spec.optimizer, optimizers=built.recipe.optimizers, seed=spec.seed,
                   device=built.device, condition=built.condition)


def make_plain(built: Built, device: torch.device, fused: bool = False) -> PlainAli:
    """The plain loop on a copy of the recipe's networks, with the recipe's optimisers (torch's default
    implementation unless ``fused``), divergence, encoder kind, critic batching and update scheme."""
    nets = copy.deepcopy(built.nets).to(device)
    nets.train(True)
    spec, game = built.recipe.spec, built.game

    def player_spec(player: str) -> OptimizerSpec:
        override = built.recipe.optimizers.get(player)
        return spec.optimizer.merged(override.explicit()) if override is not None else spec.optimizer

    def optimizer(player: str, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
        opt = player_spec(player)
        return opt.build(params, **({"fused": True} if fused and opt.fusable() else {}))

    steps_per_epoch = len(built.dataset.train) // spec.train.batch_size  # as advinf's sampler counts them
    lr_factors = {player: schedule.factor(steps_per_epoch) for player in ("critic", "generator")
                  if (schedule := player_spec(player).schedule) is not None and schedule.name != "constant"}
    return PlainAli(nets["encoder"], nets["decoder"], nets["critic"], nets.prior.sample, optimizer,
                    divergence=game.divergence, joint_batch=game.joint_batch,  # type: ignore[attr-defined]
                    stochastic=game.stochastic, update=spec.train.update,  # type: ignore[attr-defined]
                    critic_steps=spec.train.critic_steps, lr_factors=lr_factors,
                    autocast=torch.bfloat16 if spec.train.autocast == "bf16" else None)


def check_game(built: Built) -> None:
    """The plain loop knows ALI and BiGAN (an encoder, a decoder and a joint critic, unconditional)."""
    game = built.game
    if [p.name for p in game.players] != ["critic", "generator"] or game.conditioned or game.streams \
            or set(built.nets) != {"encoder", "decoder", "critic"} or built.nets.frozen \
            or not all(hasattr(game, a) for a in ("divergence", "joint_batch", "stochastic")):
        raise UserError("advinf bench compares unconditional ALI/BiGAN games (an encoder, a decoder and a critic "
                        "against each other, all trained) with the plain loop; this recipe's game, "
                        f"'{built.recipe.spec.game.name}', is another kind")
    if game.divergence not in DIVERGENCES:  # type: ignore[attr-defined]
        raise UserError(f"advinf bench: the plain loop writes out the built-in divergences "
                        f"({', '.join(DIVERGENCES)}), not '{game.divergence}'")  # type: ignore[attr-defined]
    if getattr(game, "cycle", None) is not None:  # even at weight 0 ALICE computes its cycle (0 x the term)
        raise UserError("advinf bench: the plain loop has no cycle term (ALICE's game.cycle); bench the recipe "
                        "with game.name = \"ali\"")
    regularised = [name for name in ("label_smoothing", "instance_noise", "r1") if getattr(game, {
        "label_smoothing": "smoothing", "instance_noise": "noise", "r1": "r1"}[name], 0)]
    if regularised:
        raise UserError(f"advinf bench: the plain loop has no critic regularisers; this recipe sets game."
                        f"{', game.'.join(regularised)}")


def count_flops(built: Built) -> int:
    """Floating-point operations of one real training step (every player's forward and backward), counted by
    torch's FlopCounterMode on the recipe's networks (uncompiled: the same maths)."""
    trainer = make_trainer(built, _train_spec(built, compile=False))
    with FlopCounterMode(display=False) as counter:
        trainer.train_step()
    return int(counter.get_total_flops())


def peak_flops(device: torch.device, dtype: torch.dtype, size: int | None = None, repeats: int = 5) -> float:
    """FLOP/s of a large square matrix product on ``device`` in ``dtype`` (median of ``repeats``)."""
    n = size or (8192 if device.type == "cuda" else 2048)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    times = [_seconds(lambda k: [a @ b for _ in range(k)], 1, 1, device) for _ in range(repeats)]
    return 2 * n**3 / statistics.median(times)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        if names:
            return names[0]
    except OSError:
        pass
    return platform.processor() or platform.machine()


def random_dataset(recipe: Recipe, host: PluginHost, examples: int = 5000) -> Dataset:
    """Random data shaped like the recipe decoder's output (uint8 pixels for images, Gaussian floats
    otherwise): for timing a recipe whose data is not on this machine. Timing does not depend on the values."""
    ctx = BuildContext(seed=recipe.spec.seed)
    try:
        prior, prior_options = recipe.component("prior")  # type: ignore[misc]
        ctx.prior = host.get("prior", prior).factory(prior_options, ctx)
        decoder, decoder_options = recipe.component("decoder")  # type: ignore[misc]
        net = host.get("decoder", decoder).factory(decoder_options, ctx)
        with torch.no_grad():
            shape = tuple(net.eval()(ctx.prior.sample(2, "cpu")).shape[1:])
    except Exception as exc:
        raise UserError(f"advinf bench --data random: the decoder cannot say the data's shape without the "
                        f"dataset ({type(exc).__name__}: {exc})") from None
    g = torch.Generator().manual_seed(recipe.spec.seed)
    if len(shape) == 3:
        x = torch.randint(0, 256, (examples, *shape), generator=g, dtype=torch.uint8)
    else:
        x = torch.randn(examples, *shape, generator=g)
    return Dataset(Split(x), Split(x[:100]), {"random": True})


def build_for_bench(recipe: Recipe, host: PluginHost, data: str = "auto") -> tuple[Built, str | None]:
    """The recipe's components, on its own data (``recipe``), on random data shaped like it (``random``), or on
    its own when they load and random data otherwise (``auto``). Returns them and why random data was used."""
    if data == "random":
        return build(recipe, host=host, dataset=random_dataset(recipe, host), evaluators=False), "asked for"
    try:
        return build(recipe, host=host, evaluators=False), None  # the step is timed, not evaluated
    except RecipeError as exc:
        if data == "recipe" or not all(p.key.startswith("dataset") for p in exc.problems):
            raise
        return build(recipe, host=host, dataset=random_dataset(recipe, host), evaluators=False), exc.render()


def untimed_steps(spec: TrainSpec, warmup: int) -> int:
    """``warmup``, raised with ``train.cuda_graph`` so that the eager steps before the recording, the step that
    records the graph (and replays it once) and one more replay stay out of the timed steps."""
    return max(warmup, CAPTURE_WARMUP + 2) if spec.cuda_graph else warmup


def _advinf_steps(trainer: Trainer) -> Callable[[int], None]:
    def run(n: int) -> None:
        for _ in range(n):
            trainer.train_step()

    return run


def bench(built: Built, device: torch.device, steps: int, warmup: int, repeats: int,
          log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """advinf's step and the plain loop's, timed alternately; FLOPs counted; the device's peak measured. ``log``
    gets a line per repeat (a CPU bench of the image recipes takes minutes)."""
    check_game(built)
    spec = built.recipe.spec.train
    batch = spec.batch_size
    if not isinstance(built.dataset.train, Split):
        raise UserError("advinf bench needs a dataset held in memory (this recipe's is streamed from disk)")
    data = built.dataset.train.x  # the plain loop keeps it on the host, as plain loops usually do
    dtype = torch.bfloat16 if spec.autocast == "bf16" else torch.float32
    # the trainer sets CUDA's fp32 precision (train.tf32) before each repeat's loops and peak: all three share it
    precision = "tf32" if device.type == "cuda" and spec.tf32 and dtype == torch.float32 else \
        str(dtype).removeprefix("torch.")
    warmup = untimed_steps(spec, warmup)
    a, p, peaks = [], [], []
    for r in range(repeats):  # the peak each round, beside the loops: a shared machine's speed drifts
        a.append(_seconds(_advinf_steps(make_trainer(built)), steps, warmup, device))
        p.append(_seconds(partial(make_plain(built, device).run, data, batch_size=batch, device=device), steps,
                          warmup, device))
        peaks.append(peak_flops(device, dtype))
        if log is not None:
            log(f"repeat {r + 1}/{repeats}: advinf {1000 * a[-1]:.2f} ms/step, plain loop {1000 * p[-1]:.2f} "
                f"ms/step, peak {peaks[-1] / 1e9:.1f} GFLOP/s")
    flops = count_flops(built)
    peak = statistics.median(peaks)
    ma, mp = statistics.median(a), statistics.median(p)
    per_sample = flops / batch
    achieved = per_sample * batch / ma
    return {"recipe": built.recipe.spec.name, "device": str(device), "device_name": device_name(device),
            "threads": torch.get_num_threads(), "dtype": precision,
            "batch_size": batch, "update": spec.update, "steps": steps, "warmup": warmup, "repeats": repeats,
            "data": "random" if built.dataset.meta.get("random") else "recipe",
            "options": {k: getattr(spec, k) for k in ("compile", "autocast", "tf32", "channels_last", "cuda_graph")},
            "advinf_samples_per_s": batch / ma, "reference_samples_per_s": batch / mp, "speedup": mp / ma,
            "flops_per_sample": per_sample, "achieved_flops": achieved, "peak_flops": peak,
            "fraction_of_peak": achieved / peak, "reference_fraction_of_peak": per_sample * batch / mp / peak,
            "advinf_ms_per_step": 1000 * ma, "reference_ms_per_step": 1000 * mp,
            "advinf_ms_all": [round(1000 * v, 3) for v in a], "reference_ms_all": [round(1000 * v, 3) for v in p],
            "peak_flops_all": peaks}
