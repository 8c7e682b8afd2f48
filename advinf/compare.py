"""Several trained runs side by side: the paper's mixture figure, one column per run, and a table of metrics.

The figure's rows are the paper's (ali-reference §4, "follow-up comparison"): held-out data, their latent codes
Gz(x), their reconstructions Gx(Gz(x)), prior samples z and decoder samples Gx(z). A run without an encoder (a
plain GAN) leaves the first two encoder rows empty, with a note. Everything goes through each run's game
(``sample``, ``encode``), like every other use of a trained model.

The metrics are each run's ``eval.json``, or, where a run has none (stopped early, or written before its recipe
had evaluators), its recipe's evaluators run again now (``advinf.evaluation.evaluate``, pictures to a temporary
folder: the run directory is only read). Runs of the same recipe ``name`` (seeds) are also summarised as mean and
sample standard deviation.
"""

from __future__ import annotations

import json
import math
import shlex
import statistics
import tempfile
import warnings
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from advinf.atomic import atomic_path, write_json
from advinf.conditions import example_conditions
from advinf.data import Dataset, data_access_keys
from advinf.errors import UserError
from advinf.evaluation import evaluate
from advinf.rundir import EVAL_FILE, eval_dataset_changes, eval_entries, eval_options, evaluator_options, read_eval
from advinf.runs import LoadedRun, load_run, run_evaluators
from advinf.values import listed

if TYPE_CHECKING:
    from advinf.plugins import PluginHost

FIGURE_FILE = "compare.png"
TABLE_FILE = "compare.json"
ROWS = ("held-out data x", "latent codes Gz(x)", "reconstructions Gx(Gz(x))", "prior samples z",
        "decoder samples Gx(z)")


@dataclass
class RunResult:
    """One run of a comparison: where it is, what it is, and its metrics (evaluator -> metric -> value)."""

    run_dir: str
    label: str
    recipe: str
    game: str
    seed: int
    step: int
    encoder: bool
    metrics: dict[str, dict[str, Any]]
    metrics_from: str  # "eval.json", "recomputed" or "none" (no evaluators)
    setting: str = field(default="", repr=False)  # the resolved recipe but for seed, init_from and host settings
    eval_options: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)  # each evaluator's options
    #: Per evaluator, the dataset keys its numbers were computed with where they differ from the run's recipe.
    dataset_changes: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)


@dataclass
class Comparison:
    runs: list[RunResult]
    groups: list[dict[str, Any]] = field(default_factory=list)
    figure: Path | None = None
    table: Path | None = None

    def as_json(self) -> dict[str, Any]:
        runs = [{k: v for k, v in asdict(r).items() if k != "setting"} for r in self.runs]
        return {"runs": runs, "groups": self.groups,
                "figure": None if self.figure is None else str(self.figure),
                "table": None if self.table is None else str(self.table)}


@dataclass
class _Panels:
    """The points of one column of the figure (on the CPU); None where the run has no encoder."""

    data: Tensor
    labels: Tensor | None
    codes: Tensor | None
    recon: Tensor | None
    prior: Tensor
    samples: Tensor


def compare_runs(run_dirs: Sequence[str | Path], out_dir: str | Path = ".", *, device: str | None = None,
                 host: PluginHost | None = None, plugins: Sequence[str | Path] = (), points: int = 2500,
                 seed: int = 0, figure: bool = True, data: Sequence[str] = ()) -> Comparison:
    """Compare ``run_dirs``: write ``OUT_DIR/compare.png`` (unless ``figure`` is false) and
    ``OUT_DIR/compare.json``, and return the comparison. ``points`` held-out examples and prior draws (``seed``)
    per panel, the same for every run. Only the plugins named in ``plugins`` are imported, never a run's own.
    ``data``: ``dataset.KEY=VALUE`` settings for where the runs' data is now (as :func:`advinf.load_run`), for
    the runs whose data is not where their recipe says (the others, of other datasets say, are loaded as they
    are)."""
    if not run_dirs:
        raise UserError("give at least one run directory to compare")
    if points < 1:
        raise UserError(f"points must be at least 1 (got {points})")
    data = listed(data)
    bad = [o for o in data if not o.strip().startswith("dataset.")]
    if bad:  # as load_run says it, before any run is loaded
        raise UserError(f"the runs' data is set with dataset.KEY=VALUE (where it is now), not: {', '.join(bad)}")
    seen: dict[Path, str] = {}
    for run_dir in map(str, run_dirs):
        key = Path(run_dir).resolve()
        if key in seen:  # counted twice, one run would pose as two seeds of an experiment
            raise UserError(f"{run_dir} is given twice (as {seen[key]} too); give each run once")
        seen[key] = run_dir
    out = Path(out_dir)
    results: list[RunResult] = []
    panels: list[_Panels] = []
    moved = 0  # runs whose missing data the settings said where to find
    for run_dir in map(Path, run_dirs):
        run = load_run(run_dir, device=device, host=host, plugins=plugins)
        if data and run.data_problem is not None:
            run = load_run(run_dir, device=device, host=host, plugins=plugins, data=data)
            moved += 1
        results.append(_result(run, run_dir, host))
        if figure:
            panels.append(_panels(run, points, seed))
        del run
    for result, label in zip(results, distinct_labels([Path(r.run_dir) for r in results]), strict=True):
        result.label = label
    if data and not moved:  # silently unused, they would read as applied
        raise UserError(f"{', '.join(data)}: every run's data is where its recipe says, so these settings would change "
                        "nothing (they say where a run's missing data is now); leave them out")
    _warn_unlike_options(results)
    _warn_unlike_data(results)
    comparison = Comparison(results, summarise(results))
    if figure:
        comparison.figure = out / FIGURE_FILE
        draw_figure(results, panels, comparison.figure)
    comparison.table = out / TABLE_FILE
    write_json(comparison.table, comparison.as_json())
    return comparison


def distinct_labels(paths: Sequence[Path]) -> list[str]:
    """Each run's folder name, with as many parent folders as it takes to tell runs apart (``g1/x`` and ``g2/x``,
    not two runs called ``x``)."""
    parts = [Path(p).absolute().parts for p in paths]
    depth = [1] * len(parts)
    while True:
        labels = [str(Path(*ps[-d:])) for ps, d in zip(parts, depth, strict=True)]
        clash = [i for i, label in enumerate(labels) if labels.count(label) > 1 and depth[i] < len(parts[i])]
        if not clash:
            return labels
        for i in clash:
            depth[i] += 1


def _result(run: LoadedRun, run_dir: Path, host: PluginHost | None = None) -> RunResult:
    spec, resolved = run.recipe.spec, run.recipe.resolved()
    path = run_dir / EVAL_FILE
    if path.exists() or path.is_symlink():
        metrics, source = read_eval(path, "repair it, or move it away to recompute the metrics"), "eval.json"
        options = {**evaluator_options(resolved), **eval_options(metrics)}
        changes = eval_dataset_changes(metrics)
        metrics, steps = eval_entries(metrics)
        stale = sorted(n for n, s in steps.items() if s != run.step)
        for name in stale:  # the row is the model at run.step: an evaluation of another step is not its result
            warnings.warn(f"{path}: '{name}' is of step {steps[name]}, the run is at step {run.step}: left out of "
                          f"the comparison (advinf evaluate {shlex.quote(str(run_dir))} --with {shlex.quote(name)} "
                          "brings it up to date)",
                          stacklevel=2)
            del metrics[name]
    elif spec.evaluators:
        evaluators = run_evaluators(run, host=host)
        with tempfile.TemporaryDirectory(prefix="advinf-compare-") as tmp:
            metrics = evaluate(run, evaluators, run.dataset.to(run.device), Path(tmp))
        source, options = "recomputed", evaluator_options(resolved, evaluators)
        changes = {n: dict(run.data_changes) for n in metrics} if run.data_changes else {}
    else:
        metrics, source, options, changes = {}, "none", {}, {}
    return RunResult(str(run_dir), run_dir.name, spec.name, spec.game.name, spec.seed, run.step,
                     run.encoder is not None, metrics, source,
                     _setting(resolved, data_access_keys(run.recipe.options["dataset"])),
                     {n: o for n, o in options.items() if n in metrics},
                     {n: c for n, c in changes.items() if n in metrics})


def _warn_unlike_options(results: list[RunResult]) -> None:
    """Warn where runs' numbers of one evaluator were computed with different options (an ``advinf evaluate
    --set`` on some of them, or recipes that configure it differently): they are not comparable."""
    for name in sorted({n for r in results for n in r.eval_options}):
        having = [r for r in results if name in r.eval_options]
        # over the keys every run's stamp holds: a stamp leaves out pictures-only options, an older one new options
        keys = sorted(set.intersection(*(set(r.eval_options[name]) for r in having)))
        unlike = [k for k in keys if len({json.dumps(r.eval_options[name][k], sort_keys=True) for r in having}) > 1]
        if unlike:
            detail = "; ".join(f"{k}: " + ", ".join(f"{json.dumps(r.eval_options[name].get(k))} ({r.label})"
                                                    for r in having) for k in unlike[:3])
            warnings.warn(f"'{name}' was computed with different options in these runs ({detail}): its numbers "
                          f"are not comparable (advinf evaluate RUN --with {name} --set evaluators.{name}.KEY=VALUE "
                          f"evaluates a run again with the others' options)", stacklevel=3)


def _warn_unlike_data(results: list[RunResult]) -> None:
    """Warn where runs' numbers of one evaluator were computed on data changed otherwise from their recipes
    (``advinf evaluate --set dataset.KEY=VALUE`` on some of them): they may not be comparable."""
    for name in sorted({n for r in results for n in r.metrics}):
        having = [r for r in results if name in r.metrics]
        seen = {json.dumps(r.dataset_changes.get(name, {}), sort_keys=True) for r in having}
        if len(seen) > 1:
            detail = "; ".join(f"{r.label}: " + (", ".join(f"dataset.{k} = {json.dumps(v)}" for k, v in
                                                          r.dataset_changes[name].items())
                                                if r.dataset_changes.get(name) else "its recipe's")
                               for r in having)
            warnings.warn(f"'{name}' was computed on data set otherwise in these runs ({detail}): its numbers may "
                          f"not be comparable (advinf evaluate RUN --with {name} evaluates a run again on its "
                          f"recipe's data)", stacklevel=3)


def _setting(resolved: dict[str, Any], data_access: Collection[str] = ()) -> str:
    """What makes runs the same experiment at different seeds: the resolved recipe without its seed, the runs
    networks start from (``init_from``: e.g. each seed's own GAN run), the settings of the machine and the dataset
    options ``data_access`` that say where or how the data is read (``root``)."""
    recipe = json.loads(json.dumps(resolved))
    for key in data_access:
        recipe.get("dataset", {}).pop(key, None)
    for key in ("seed", "plugins"):
        recipe.pop(key, None)
    for key in ("threads", "progress", "device"):
        recipe.get("train", {}).pop(key, None)
    for table in [*(recipe.get(n) for n in ("encoder", "decoder", "critic")), *recipe.get("networks", {}).values()]:
        if isinstance(table, dict):
            table.pop("init_from", None)
    return json.dumps(recipe, sort_keys=True)


def _panels(run: LoadedRun, n: int, seed: int) -> _Panels:
    data = run.dataset
    split = data.heldout if data.heldout is not None else data.train
    n = min(n, len(split))
    x, y = split.take(torch.arange(n))
    x = Dataset.decode(x).to(run.device)
    y_in = y.to(run.device) if run.conditional and y is not None else None
    if run.conditional and y_in is None:
        raise UserError(f"{run.run_dir} is a conditional run, but its held-out examples have no labels")
    devices = [run.device.index or 0] if run.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # the encoder's draws: reproducible, the global RNG untouched
        torch.manual_seed(seed)
        codes = recon = None
        if run.encoder is not None:
            codes = run.encode(x, y_in).sample()
            recon = run.sample(z=codes, y=y_in)
        z = run.prior_sample(n, seed)
        y_prior = example_conditions(run.condition, data, n, seed) if run.condition is not None else None
        samples = run.sample(z=z, y=y_prior)
    labels = y if y is not None and y.dim() == 1 else None  # classes colour the points; attributes do not
    return _Panels(*(None if t is None else t.detach().float().cpu() for t in (x, labels, codes, recon, z, samples)))


# -- the summary table ------------------------------------------------------------------------------------

def metric_columns(runs: Sequence[RunResult]) -> list[tuple[str, str]]:
    """Every (evaluator, metric) with a number in some run, in order of first appearance."""
    seen: dict[tuple[str, str], None] = {}
    for r in runs:
        for ev, values in r.metrics.items():
            if isinstance(values, dict):
                for name, value in values.items():
                    if _number(value):
                        seen[(ev, name)] = None
    return list(seen)


def summarise(runs: Sequence[RunResult]) -> list[dict[str, Any]]:
    """Mean and sample standard deviation of every metric over the runs of one experiment at several seeds: runs
    whose recipes differ only in ``seed``, ``init_from`` and the machine's settings (threads, device)."""
    by_setting: dict[str, list[RunResult]] = {}
    for r in runs:
        by_setting.setdefault(r.setting, []).append(r)
    sets = [members for members in by_setting.values() if len(members) > 1]
    names = [members[0].recipe for members in sets]
    groups = []
    for members in sets:
        name = members[0].recipe
        if names.count(name) > 1:  # the same recipe name with different settings: number them
            name = f"{name} ({sum(1 for g in groups if g['recipe'].startswith(name + ' (')) + 1})"
        stats: dict[str, dict[str, dict[str, float]]] = {}
        for ev, metric in metric_columns(members):
            values = [float(m.metrics[ev][metric]) for m in members
                      if _number(m.metrics.get(ev, {}).get(metric))]
            if values:
                std = statistics.stdev(values) if len(values) > 1 else 0.0
                stats.setdefault(ev, {})[metric] = {"mean": statistics.fmean(values), "std": std, "n": len(values)}
        seeds = [m.seed for m in members]
        for seed in sorted({s for s in seeds if seeds.count(s) > 1}):
            twins = [m.run_dir for m in members if m.seed == seed]
            warnings.warn(f"{', '.join(twins)} are runs of {name} with the same seed {seed}: its mean ± std counts "
                          f"that seed {len(twins)} times (they may differ only in threads or device)", stacklevel=2)
        groups.append({"recipe": name, "game": members[0].game, "runs": [m.run_dir for m in members],
                       "seeds": seeds, "metrics": stats})
    return groups


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# -- the figure -------------------------------------------------------------------------------------------

def draw_figure(runs: Sequence[RunResult], panels: Sequence[_Panels], path: Path) -> None:
    """The paper's figure: one column per run, the five rows of ``ROWS``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data_box = _box([p.data for p in panels])
    latent_box = _box([p.prior for p in panels])
    cols = len(panels)
    fig, axes = plt.subplots(len(ROWS), cols, figsize=(2.7 * cols + 0.6, 2.7 * len(ROWS)), dpi=100, squeeze=False)
    for c, (r, p) in enumerate(zip(runs, panels, strict=True)):
        angle = _angle(p.prior)
        cells = [(p.data, p.labels, data_box), (p.codes, p.labels, latent_box), (p.recon, p.labels, data_box),
                 (p.prior, angle, latent_box), (p.samples, angle, data_box)]
        for row, (pts, colour, box) in enumerate(cells):
            ax = axes[row][c]
            if pts is None:
                ax.set_axis_off()
                ax.text(0.5, 0.5, f"no encoder\n(game '{r.game}')", ha="center", va="center", fontsize=9,
                        color="0.4", transform=ax.transAxes)
            else:
                _cell(ax, pts, colour, box, cyclic=row >= 3)
            if c == 0:  # left of the tick labels, also beside an empty cell
                ax.annotate(ROWS[row], xy=(0, 0.5), xycoords="axes fraction", xytext=(-26, 0),
                            textcoords="offset points", rotation=90, ha="right", va="center", fontsize=9)
        axes[0][c].set_title(_title(r), fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def _title(r: RunResult) -> str:
    lines = [f"{r.label}", f"{r.game}, seed {r.seed}, step {r.step}"]
    mc = r.metrics.get("mode_coverage")
    if isinstance(mc, dict) and "modes_covered" in mc:
        line = f"modes {mc['modes_covered']}/{mc.get('modes_total', '?')}"
        if "modes_covered_strict" in mc:
            line += f", strict {mc['modes_covered_strict']}"
        lines.append(line)
        if "reconstruction_accuracy" in mc:
            lines.append(f"reconstruction acc. {mc['reconstruction_accuracy']:.3f}")
    return "\n".join(lines)


def _cell(ax, pts: Tensor, colour: Tensor | None, box: tuple[Tensor, Tensor] | None, cyclic: bool) -> None:
    if pts.dim() == 4:  # images: a grid of the first 64
        from torchvision.utils import make_grid

        grid = make_grid(pts[:64].clamp(0, 1), nrow=8, padding=1)
        ax.imshow(grid.permute(1, 2, 0).numpy())
        ax.set_axis_off()
        return
    flat = pts.flatten(1)
    if flat.shape[1] < 2:
        flat = torch.cat([flat, torch.zeros_like(flat)], 1)
    xy = flat[:, :2].numpy()
    if colour is None:
        ax.scatter(xy[:, 0], xy[:, 1], s=1.5, alpha=0.5, linewidths=0)
    else:
        cmap = "hsv" if cyclic else "tab20"
        values = colour.numpy() if cyclic else (colour % 20).numpy()
        ax.scatter(xy[:, 0], xy[:, 1], s=1.5, alpha=0.5, c=values, cmap=cmap, linewidths=0,
                   vmin=-math.pi if cyclic else 0, vmax=math.pi if cyclic else 19)
    notes = [] if flat.shape[1] == 2 else [f"first 2 of {flat.shape[1]} dims"]
    if box is not None:
        lo, hi = box
        ax.set_xlim(float(lo[0]), float(hi[0]))
        ax.set_ylim(float(lo[1]), float(hi[1]))
        outside = ((flat[:, :2] < lo) | (flat[:, :2] > hi)).any(1).float().mean().item()
        if outside > 0.005:
            notes.append(f"{outside:.0%} outside the view")
    if notes:
        ax.text(0.02, 0.02, "; ".join(notes), fontsize=7, color="0.3", transform=ax.transAxes)
    ax.set_aspect("equal", adjustable="box")
    ax.tick_params(labelsize=6)


def _box(tensors: Sequence[Tensor]) -> tuple[Tensor, Tensor] | None:
    """The view shared by a row type: the 0.1-99.9% range of the first two coordinates of every run, padded."""
    flat = [t.flatten(1)[:, :2] for t in tensors if t.dim() == 2 and t.shape[1] >= 2]
    if not flat:
        return None
    pts = torch.cat(flat)
    lo, hi = torch.quantile(pts, 0.001, dim=0), torch.quantile(pts, 0.999, dim=0)
    pad = 0.15 * (hi - lo).clamp(min=1e-3)
    return lo - pad, hi + pad


def _angle(z: Tensor) -> Tensor | None:
    """The angle of each prior draw in its first two coordinates: the colour that follows z into Gx(z)."""
    flat = z.flatten(1)
    return torch.atan2(flat[:, 1], flat[:, 0]) if flat.shape[1] >= 2 else None
