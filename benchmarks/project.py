"""What `advinf bench --json` reports mean for a whole training: each report's samples/s, ratio to the plain loop,
fraction of peak, and the projected time of a schedule (default: the paper's SVHN schedule, 531,000 steps)::

    python -m advinf_benchmarks.project gpu_out/bench_*.json [--steps 531000]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

#: The ALI paper's SVHN schedule: 100 epochs of SVHN's 531,131 `extra` images at batch 100 (ali-reference §2).
PAPER_SVHN_STEPS = 531_000


def projection(report: dict[str, Any], steps: int) -> dict[str, Any]:
    """One bench report, summarised, with the seconds ``steps`` training steps take at its measured speed."""
    seconds = steps * report["advinf_ms_per_step"] / 1000
    options = {k: v for k, v in report.get("options", {}).items() if v not in (False, "none", None)}
    return {"recipe": report["recipe"], "device": report.get("device_name", report["device"]), "options": options,
            "samples_per_s": report["advinf_samples_per_s"], "speedup": report["speedup"],
            "fraction_of_peak": report["fraction_of_peak"], "steps": steps, "projected_seconds": seconds}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="+", type=Path)
    parser.add_argument("--steps", type=int, default=PAPER_SVHN_STEPS)
    args = parser.parse_args(argv)
    for path in args.reports:
        try:
            report = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            print(f"{path}: no report ({e})")
            continue
        p = projection(report, args.steps)
        opts = ",".join(f"{k}={v}" for k, v in p["options"].items()) or "defaults"
        print(f"{path.name}: {p['recipe']} on {p['device']} [{opts}]: {p['samples_per_s']:,.0f} samples/s, "
              f"{p['speedup']:.2f}x the plain loop, {100 * p['fraction_of_peak']:.1f} % of peak; "
              f"{p['steps']:,} steps: {p['projected_seconds'] / 60:,.1f} min")


if __name__ == "__main__":
    main()
