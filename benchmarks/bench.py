"""`advinf bench`: times advinf's training step against the plain reference loop on the same networks.

Both loops run on the same freshly built networks (same seed) and data; each is timed over ``steps`` updates
after ``warmup`` updates, ``repeats`` times, and the medians are compared (machines are noisy: ratios are
measured in one run).
"""

from __future__ import annotations

import copy
import statistics
import time
from typing import Any

import torch

from advinf.build import Built
from advinf.errors import UserError
from advinf.trainer import Trainer
from advinf_benchmarks.plain_loop import plain_ali_steps


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_advinf(built: Built, steps: int, warmup: int) -> float:
    spec = built.recipe.spec
    train = spec.train.model_copy(update={"steps": warmup + steps, "epochs": None, "progress": "none",
                                          "log_every": warmup + steps, "sample_every": 0})
    trainer = Trainer(copy.deepcopy(built.nets), built.game, built.dataset, train=train, optimizer=spec.optimizer,
                      optimizers=built.recipe.optimizers, seed=spec.seed, device=built.device,
                      condition=built.condition)
    for _ in range(warmup):
        trainer.train_step()
    _sync(trainer.device)
    t = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    _sync(trainer.device)
    return (time.perf_counter() - t) / steps


def time_plain(built: Built, steps: int, warmup: int, device: torch.device) -> float:
    nets = copy.deepcopy(built.nets).to(device)
    nets.train(True)
    opt = built.recipe.spec.optimizer.options
    kwargs = {"lr": opt.get("lr", 1e-3), "betas": tuple(opt.get("betas", (0.9, 0.999)))}
    data = built.dataset.train.x  # kept on the host, as plain loops usually do

    def run(n: int) -> None:
        plain_ali_steps(nets.encoder, nets.decoder, nets.critic, nets.prior.sample, data, n,
                        built.recipe.spec.train.batch_size, device, **kwargs)

    run(warmup)
    _sync(device)
    t = time.perf_counter()
    run(steps)
    _sync(device)
    return (time.perf_counter() - t) / steps


def bench(built: Built, device: torch.device, steps: int, warmup: int, repeats: int) -> dict[str, Any]:
    if [p.name for p in built.game.players] != ["critic", "generator"] or built.game.conditioned \
            or set(built.nets) != {"encoder", "decoder", "critic"}:
        raise UserError("advinf bench compares unconditional ALI/BiGAN games (an encoder, a decoder and a critic "
                        "against each other) with the plain loop; this recipe's game is another kind")
    a, p = [], []
    for _ in range(repeats):
        a.append(time_advinf(built, steps, warmup))
        p.append(time_plain(built, steps, warmup, device))
    batch = built.recipe.spec.train.batch_size
    ma, mp = statistics.median(a), statistics.median(p)
    return {"recipe": built.recipe.spec.name, "device": str(device), "threads": torch.get_num_threads(),
            "batch_size": batch, "steps": steps, "repeats": repeats,
            "advinf_ms_per_step": 1000 * ma, "plain_ms_per_step": 1000 * mp,
            "advinf_samples_per_s": batch / ma, "plain_samples_per_s": batch / mp, "speedup": mp / ma,
            "advinf_ms_all": [round(1000 * v, 3) for v in a], "plain_ms_all": [round(1000 * v, 3) for v in p]}
