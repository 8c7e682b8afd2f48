"""Compare training-step options on one recipe in one process (what docs/performance.md's A/B tables ran)::

    python -m advinf_benchmarks.options recipes/ali_svhn.toml --config base= \\
        --config channels_last=train.channels_last=true --steps 2 --warmup 1 --repeats 3 --set train.threads=2

Each ``--config NAME=KEY=VALUE,KEY=VALUE`` is the recipe with those overrides (none: the recipe as it is). The
configurations run in turn, ``repeats`` rounds, each on fresh copies of the networks; the medians and the ratio to
the first configuration are printed, with the matrix-product peak measured at the start and at the end.
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any

import torch

from advinf.plugins import default_host
from advinf.recipe import load_recipe
from advinf_benchmarks.bench import _advinf_steps, _seconds, build_for_bench, count_flops, make_trainer, peak_flops


def compare(recipe: str, configs: dict[str, list[str]], overrides: list[str], steps: int, warmup: int,
            repeats: int, data: str = "auto") -> dict[str, Any]:
    """Seconds per step of each configuration (all rounds), the FLOPs of one step and the peaks measured."""
    host = default_host()
    built = {}
    for name, extra in configs.items():
        rec = load_recipe(recipe, [*overrides, *extra], host=host)
        built[name], _ = build_for_bench(rec, host, data)
    first = next(iter(built.values()))
    if first.recipe.spec.train.threads:
        torch.set_num_threads(first.recipe.spec.train.threads)
    device = first.device
    peaks = [peak_flops(device, torch.float32)]
    times: dict[str, list[float]] = {name: [] for name in configs}
    for _ in range(repeats):
        for name, b in built.items():
            times[name].append(_seconds(_advinf_steps(make_trainer(b)), steps, warmup, device))
    peaks.append(peak_flops(device, torch.float32))
    return {"batch_size": first.recipe.spec.train.batch_size, "threads": torch.get_num_threads(),
            "flops_per_step": count_flops(first), "peaks": peaks, "seconds": times}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe")
    parser.add_argument("--config", action="append", required=True, metavar="NAME=KEY=VALUE,...")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data", choices=["auto", "recipe", "random"], default="auto")
    args = parser.parse_args(argv)
    configs = {}
    for item in args.config:
        name, _, sets = item.partition("=")
        configs[name] = [s for s in sets.split(",") if s]
    out = compare(args.recipe, configs, args.overrides, args.steps, args.warmup, args.repeats, args.data)
    peak = statistics.median(out["peaks"])
    print(f"threads={out['threads']} flops/step={out['flops_per_step']:.4g} peak={peak / 1e9:.1f} GFLOP/s "
          f"(start, end: {', '.join(f'{p / 1e9:.1f}' for p in out['peaks'])})")
    base = statistics.median(next(iter(out["seconds"].values())))
    for name, seconds in out["seconds"].items():
        m = statistics.median(seconds)
        print(f"{name:24s} {1000 * m:10.1f} ms/step  {out['batch_size'] / m:8.1f} samples/s  "
              f"{100 * out['flops_per_step'] / m / peak:5.1f} % of peak  x{base / m:.3f}  "
              f"rounds: {', '.join(f'{1000 * s:.0f}' for s in seconds)} ms")


if __name__ == "__main__":
    main()
