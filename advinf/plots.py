"""``advinf plot RUN``: the curves of a run over its steps, from metrics.jsonl, evals.jsonl and eval.json."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

from advinf.atomic import atomic_path, read_bytes, regular_file
from advinf.errors import UserError
from advinf.rundir import (
    EVAL_FILE,
    EVALS_FILE,
    METRICS_FILE,
    RESERVED_METRICS,
    eval_entries,
    is_run_dir,
    read_eval,
)
from advinf.values import parse_json

#: Record keys that are bookkeeping, not curves.
_NOT_CURVES = RESERVED_METRICS - {"samples_per_s"}


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The complete JSON records of a .jsonl file (no file: none). A torn last line (a crash mid-write) is
    skipped; other lines that are no record (damaged, or edited by hand) are skipped with a warning naming them.
    Something else in its place, or a file that cannot be read, is a UserError naming it."""
    if not regular_file(path):  # a link or a FIFO in its place: an error, never followed
        return []
    try:
        text = read_bytes(path).decode("utf-8", errors="replace")
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    out, skipped = [], []
    lines = text.splitlines()
    for number, line in enumerate(lines, 1):
        try:
            record = parse_json(line)
        except ValueError:
            record = None
        if isinstance(record, dict) and isinstance(record.get("step"), int) and not isinstance(record["step"], bool):
            out.append(record)
        elif line.strip() and not (number == len(lines) and not text.endswith("\n")):  # not a torn last line
            skipped.append(number)
    if skipped:
        where = ", ".join(map(str, skipped[:5])) + (f" and {len(skipped) - 5} more" if len(skipped) > 5 else "")
        warnings.warn(f"{path}: line{'s' if len(skipped) > 1 else ''} {where} "
                      f"{'are' if len(skipped) > 1 else 'is'} not a JSON record with a step; left out", stacklevel=2)
    return out


def flatten(record: dict[str, Any], prefix: str = "", finite: bool = True) -> dict[str, float]:
    """Every finite number in a (nested) record, by dotted key (every number, NaN and infinities too, with
    ``finite=False``)."""
    out: dict[str, float] = {}
    for k, v in record.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + ".", finite))
        elif isinstance(v, int | float) and not isinstance(v, bool) and (not finite or math.isfinite(v)):
            out[key] = float(v)
    return out


def curves(run_dir: Path) -> dict[str, tuple[list[int], list[float]]]:
    """Curve name -> (steps, values) in step order: the training metrics, then each evaluation metric
    (``eval/NAME.key``) from evals.jsonl and eval.json, each eval.json entry at the step it carries (entries of
    older runs, without one, at the run's last step)."""
    series: dict[str, tuple[list[int], list[float]]] = {}

    def add(name: str, step: int, value: float) -> None:
        steps, values = series.setdefault(name, ([], []))
        steps.append(step)
        values.append(value)

    metrics = read_jsonl(run_dir / METRICS_FILE)
    for record in metrics:
        for key, value in flatten({k: v for k, v in record.items() if k not in _NOT_CURVES}).items():
            add(key, record["step"], value)
    for record in read_jsonl(run_dir / EVALS_FILE):
        for key, value in flatten({k: v for k, v in record.items() if k != "step"}).items():
            add(f"eval/{key}", record["step"], value)
    final = run_dir / EVAL_FILE
    if metrics:
        try:
            data = read_eval(final, "its metrics are left out of the plot")
        except UserError as exc:  # the training curves are still worth drawing
            warnings.warn(str(exc), stacklevel=2)
            data = {}
        results, steps = eval_entries(data)
        for name, entry in results.items():  # each entry at the step of the model that gave it
            for key, value in flatten({name: entry}).items():
                add(f"eval/{key}", steps.get(name, metrics[-1]["step"]), value)
    for name, (xs, ys) in series.items():  # an entry of an earlier step must not draw the line backwards
        order = sorted(range(len(xs)), key=xs.__getitem__)
        series[name] = ([xs[i] for i in order], [ys[i] for i in order])
    return series


#: Evaluation entries that describe how a number was computed, not the model: no curve of them.
_HOW = {"seconds", "repeats", "seed", "feature_dim", "trained_on", "labels", "examples"}


def _bookkeeping(name: str, values: list[float]) -> bool:
    """Whether an evaluation curve says how it was computed (time taken, the feature network, the counts it
    used) or stays one value at every step (``modes_total``): left out of the plot, which had a hundred panels for
    an image run."""
    if not name.startswith("eval/"):
        return False
    parts = name.split(".")
    return "network_info" in parts or parts[-1] in _HOW or (len(values) > 1 and len(set(values)) == 1)


def plot_run(run_dir: str | Path, out: str | Path | None = None, columns: int = 3) -> Path:
    """One panel per curve (training losses and scalars, samples/s, each evaluation metric but those that say
    how it was computed or never change) as a PNG."""
    run_dir = Path(run_dir)
    if not is_run_dir(run_dir):
        raise UserError(f"{run_dir} is not an advinf run directory (no recipe.toml)")
    series = curves(run_dir)
    if not series:
        raise UserError(f"{run_dir} has no metrics to plot yet ({METRICS_FILE} is empty or missing; a run whose "
                        "train.loggers leaves out \"jsonl\" writes none)")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted((n for n in series if not _bookkeeping(n, series[n][1])),
                   key=lambda n: (n.startswith("eval/"), not n.startswith("loss_"), n))
    rows = math.ceil(len(names) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 2.8 * rows), dpi=100, squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        steps, values = series[name]
        ax.plot(steps, values, marker="o" if len(steps) < 20 else None, markersize=3, linewidth=1)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    fig.suptitle(str(run_dir), fontsize=10)
    fig.tight_layout()
    path = Path(out) if out is not None else run_dir / "curves.png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path
