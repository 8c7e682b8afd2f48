"""Compare training-step options on one recipe in one process (what docs/performance.md's A/B tables ran)::

    python -m advinf_benchmarks.options recipes/ali_svhn.toml --config base= \\
        --config channels_last=train.channels_last=true --steps 2 --warmup 1 --repeats 3 --set train.threads=2

Each ``--config NAME=KEY=VALUE,KEY=VALUE`` is the recipe with those overrides (none: the recipe as it is). The
configurations run in turn, ``repeats`` rounds, each on fresh copies of the networks; the medians are printed with
each configuration's samples/s, its fraction of the matrix-product peak in its own precision (bf16 under
autocast, TF32 with train.tf32 on CUDA; measured at the start and at the end) from its own FLOPs per step, and its
speed per sample relative to the first configuration.
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any

import torch

from advinf.plugins import default_host
from advinf.recipe import load_recipe
from advinf.settings import set_fp32_precision
from advinf_benchmarks.bench import _advinf_steps, _seconds, build_for_bench, count_flops, make_trainer, peak_flops


def _precision(train: Any, device: torch.device) -> tuple[torch.dtype, bool]:
    """The dtype of a configuration's matrix products, and whether fp32 ones are TF32 (CUDA only)."""
    dtype = torch.bfloat16 if train.autocast == "bf16" else torch.float32
    return dtype, device.type == "cuda" and dtype == torch.float32 and bool(train.tf32)


def _peak(device: torch.device, precision: tuple[torch.dtype, bool]) -> float:
    set_fp32_precision(device, precision[1])
    return peak_flops(device, precision[0])


def compare(recipe: str, configs: dict[str, list[str]], overrides: list[str], steps: int, warmup: int,
            repeats: int, data: str = "auto") -> dict[str, Any]:
    """Seconds per step of each configuration (all rounds), each one's batch, FLOPs of one step and precision,
    and the matrix-product peak of each precision, measured at the start and at the end."""
    host = default_host()
    built = {}
    for name, extra in configs.items():
        rec = load_recipe(recipe, [*overrides, *extra], host=host)
        built[name], _ = build_for_bench(rec, host, data)
    first = next(iter(built.values()))
    if first.recipe.spec.train.threads:
        torch.set_num_threads(first.recipe.spec.train.threads)
    device = first.device
    precision = {name: _precision(b.recipe.spec.train, device) for name, b in built.items()}
    peaks: dict[tuple[torch.dtype, bool], list[float]] = {p: [_peak(device, p)] for p in set(precision.values())}
    times: dict[str, list[float]] = {name: [] for name in configs}
    for _ in range(repeats):
        for name, b in built.items():
            times[name].append(_seconds(_advinf_steps(make_trainer(b)), steps, warmup, device))
    for p, values in peaks.items():
        values.append(_peak(device, p))
    return {"threads": torch.get_num_threads(),
            "configs": {name: {"batch_size": b.recipe.spec.train.batch_size, "flops_per_step": count_flops(b),
                               "precision": _label(precision[name]), "peaks": peaks[precision[name]]}
                        for name, b in built.items()},
            "seconds": times}


def _label(precision: tuple[torch.dtype, bool]) -> str:
    return "tf32" if precision[1] else str(precision[0]).removeprefix("torch.")


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
    print(f"threads={out['threads']}; each configuration's % of peak is of the matrix-product peak in its own "
          "precision (measured at the start and at the end)")
    base = None
    for name, seconds in out["seconds"].items():
        c = out["configs"][name]
        m, peak = statistics.median(seconds), statistics.median(c["peaks"])
        per_sample = m / c["batch_size"]  # configurations may differ in batch: compare time per sample
        base = base or per_sample
        print(f"{name:24s} {1000 * m:10.1f} ms/step  {c['batch_size'] / m:8.1f} samples/s  "
              f"{100 * c['flops_per_step'] / m / peak:5.1f} % of the {c['precision']} peak "
              f"({peak / 1e9:.0f} GFLOP/s)  x{base / per_sample:.3f} per sample  "
              f"rounds: {', '.join(f'{1000 * s:.0f}' for s in seconds)} ms")

if __name__ == "__main__":
    main()
