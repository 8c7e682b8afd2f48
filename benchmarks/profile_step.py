"""Where one training step's device time goes: the recipe's step run eagerly under torch.profiler, its kernels
summed by name, largest first, and their total per step beside the step's wall time (docs/performance.md)::

    python -m advinf_benchmarks.profile_step recipes/ali_svhn.toml --set train.autocast=bf16 --steps 20

On CUDA the kernels' own time is what a recorded step (``train.cuda_graph``) cannot go below; on the CPU the
operators' self time is listed instead.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from advinf.plugins import default_host
from advinf.recipe import load_recipe
from advinf_benchmarks.bench import _sync, build_for_bench, make_trainer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--rows", type=int, default=25)
    parser.add_argument("--data", choices=["auto", "recipe", "random"], default="auto")
    args = parser.parse_args(argv)
    host = default_host()
    built, _ = build_for_bench(load_recipe(args.recipe, args.overrides, host=host), host, args.data)
    if built.recipe.spec.train.cuda_graph:
        parser.error("profile the eager step (the recorded one runs the same kernels): leave train.cuda_graph off")
    device = built.device
    trainer = make_trainer(built)
    for _ in range(args.warmup):
        trainer.train_step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        trainer.train_step()
    _sync(device)
    wall = (time.perf_counter() - start) / args.steps
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(args.steps):
            trainer.train_step()
        _sync(device)
    events = prof.key_averages()
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    if cuda:
        kernels = [e for e in events if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA
                   and not getattr(e, "is_user_annotation", False)]  # e.g. Optimizer.step: spans counted kernels
        busy = sum(e.self_device_time_total for e in kernels) / args.steps / 1000
        launches = sum(e.count for e in kernels) / args.steps
        print(f"{args.recipe} on {torch.cuda.get_device_name(device)}: eager step "
              f"{1000 * wall:.2f} ms wall, {busy:.2f} ms of kernels in {launches:.0f} launches per step")
    else:
        print(f"{args.recipe} on the CPU: eager step {1000 * wall:.2f} ms wall")
    print(events.table(sort_by=key, row_limit=args.rows, max_name_column_width=70))


if __name__ == "__main__":
    main()
