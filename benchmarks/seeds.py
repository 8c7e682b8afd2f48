"""What `advinf run RECIPE --seeds ... --jobs N` gains over running the seeds one after another, measured::

    python -m advinf_benchmarks.seeds recipes/ali_mixture25.toml --seeds 0-9 --jobs 2 --set train.threads=1 \\
        [--out DIR] [--json]

Both ways run as a user would run them, each a fresh ``python -m advinf run`` process timed by the wall clock:
first every seed on its own (``advinf run RECIPE --set seed=K``, one after another), then the group
(``advinf run RECIPE --seeds ... --jobs N``). The speedup is the ratio of the two wall times. Each seed's files
are then compared: the weights of its last checkpoint byte for byte and its evaluation. They agree when both ways
use the same torch threads (set ``train.threads``: the group gives each worker ``cores / N`` otherwise).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from advinf.checkpoint import latest_checkpoint
from advinf.rundir import CHECKPOINTS_DIR, EVAL_FILE
from advinf.seeds import parse_seeds


def _advinf(*args: str) -> float:
    """Seconds of one ``python -m advinf ...`` process; its errors end the benchmark (exit status 2) with its
    message."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "advinf", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"advinf {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr.strip()}", file=sys.stderr)
        sys.exit(2)
    return time.perf_counter() - start


def _files(run: Path) -> tuple[bytes, bytes]:
    """A run's last weights and its evaluation file, as bytes (a NaN in an evaluation compares equal to itself);
    empty where the run has none."""
    last = latest_checkpoint(run / CHECKPOINTS_DIR)
    weights = (last / "model.safetensors").read_bytes() if last is not None else b""
    evaluation = run / EVAL_FILE
    return weights, evaluation.read_bytes() if evaluation.exists() else b""


def measure(recipe: str, seeds: list[int], jobs: int, overrides: list[str], out: Path) -> dict[str, Any]:
    """Time the seeds one by one and as a group into ``out``; say whether each seed's results agree."""
    sets = [a for s in overrides for a in ("--set", s)]
    sequential = sum(_advinf("run", recipe, "--out", str(out / "one_by_one" / f"seed_{s}"), *sets, "--set",
                             f"seed={s}") for s in seeds)
    group = _advinf("run", recipe, "--seeds", ",".join(map(str, seeds)), "--jobs", str(jobs),
                    "--out", str(out / "group"), *sets)
    identical = {str(s): _files(out / "one_by_one" / f"seed_{s}") == _files(out / "group" / f"seed_{s}")
                 for s in seeds}
    return {"recipe": recipe, "seeds": seeds, "jobs": jobs, "overrides": overrides,
            "sequential_seconds": round(sequential, 3), "group_seconds": round(group, 3),
            "speedup": sequential / group, "identical": identical, "out": str(out)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe")
    parser.add_argument("--seeds", required=True, help="as advinf run --seeds: 0-9, 0,3,7 or 0-2,10")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", type=Path, default=None, help="where both ways' runs go (default: a new "
                        "temporary folder, kept)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    try:
        seeds = parse_seeds(args.seeds)
    except Exception as exc:  # advinf's UserError: a usage error here
        parser.error(str(exc))
    out = args.out or Path(tempfile.mkdtemp(prefix="advinf-seeds-bench-"))
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        parser.error(f"--out {out}: {'not empty' if out.is_dir() else 'not a folder'}; give a new folder")
    result = measure(args.recipe, seeds, args.jobs, args.overrides, out)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    same = sum(result["identical"].values())
    print(f"{len(seeds)} seeds of {args.recipe}: one by one {result['sequential_seconds']:.1f} s, "
          f"{args.jobs} at a time {result['group_seconds']:.1f} s: {result['speedup']:.2f}x; "
          f"{same} of {len(seeds)} seeds identical both ways; runs in {out}")


if __name__ == "__main__":
    main()
