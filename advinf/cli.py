"""The ``advinf`` command line: run, validate, list-plugins, plus commands that plugins add."""

from __future__ import annotations

import errno
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from advinf.errors import Interrupted, Terminated, UserError, suggest

if TYPE_CHECKING:
    from advinf.compare import Comparison


class AdvinfGroup(click.Group):
    """Renders UserError as one message with exit status 2 (``--debug`` shows the traceback instead), an
    interrupt as exit status 130 or 143 without a traceback, and finds plugin commands only when asked for one
    (``advinf --help`` imports no plugin)."""

    _plugin_commands_added = False

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        command = super().get_command(ctx, name)
        if command is None and not AdvinfGroup._plugin_commands_added:
            _add_plugin_commands()
            command = super().get_command(ctx, name)
        return command

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UserError as exc:
            if ctx.params.get("debug") or os.environ.get("ADVINF_DEBUG"):
                raise
            click.echo(f"{_rank_prefix()}error: {printable(str(exc))}", err=True)
            ctx.exit(exc.exit_code)
        except OSError as exc:
            message = file_system_message(exc)
            if message is None or ctx.params.get("debug") or os.environ.get("ADVINF_DEBUG"):
                raise
            click.echo(f"{_rank_prefix()}error: {printable(message)}", err=True)
            ctx.exit(UserError.exit_code)
        except KeyboardInterrupt:
            click.echo(f"{_rank_prefix()}interrupted", err=True)
            ctx.exit(130)
        except Terminated:
            click.echo(f"{_rank_prefix()}terminated", err=True)
            ctx.exit(143)


def printable(text: str) -> str:
    """``text`` with control characters but newlines and tabs escaped: an error quotes what files and plugins
    hold (an eval.json key, a path), and an escape sequence in it must not reach the terminal."""
    return "".join(c if c in "\n\t" or c.isprintable() else repr(c)[1:-1] for c in text)


# What the file system refuses for a reason the user can fix: a directory where a file belongs (or the reverse),
# a missing path, permissions, a full or read-only disk, a name too long. (EEXIST and ENOTEMPTY are left out: they
# come from advinf's own renames, and a traceback serves a bug there better.)
_USER_ERRNOS = {errno.EISDIR, errno.ENOTDIR, errno.ENOENT, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT,
                errno.EROFS, errno.ENAMETOOLONG}
_FULL = (errno.ENOSPC, errno.EDQUOT)


def file_system_message(exc: OSError) -> str | None:
    """One line for a file system error the user can fix (naming the path and the system's reason), or None for
    any other OSError, which stays a traceback: it is a bug or a broken machine, not something in the user's hands."""
    if exc.errno not in _USER_ERRNOS:
        return None
    reason = exc.strerror or os.strerror(exc.errno)
    if exc.filename is None and exc.errno not in _FULL:
        return None
    where = "" if exc.filename is None else (
        f"{exc.filename} -> {exc.filename2}: " if exc.filename2 is not None else f"{exc.filename}: ")
    if exc.errno in _FULL:
        return (f"{where}{reason}: free some space and try again (files are written whole or not at all; a run "
                f"continues from its last checkpoint with --resume)")
    return f"{where}{reason} (check the path and its permissions; --debug shows where advinf was)"


def _rank_prefix() -> str:
    """Under torchrun every process prints its own errors, interleaved: say which rank each line is from."""
    from advinf.distributed import launched_world_size

    try:
        launched = launched_world_size() > 1
    except UserError:  # a WORLD_SIZE that is not a number: the error being printed may say so
        launched = False
    rank = os.environ.get("RANK")
    return f"[rank {rank}] " if launched and rank is not None else ""


@click.group(cls=AdvinfGroup, context_settings={"help_option_names": ["-h", "--help"]},
             epilog="Plugins may add commands: `advinf list-plugins` shows the installed plugins and the commands "
                    "they add; run a plugin's command as `advinf NAME`.")
@click.option("--debug", is_flag=True, help="Show tracebacks for user errors.")
@click.version_option(package_name="advinf")
def cli(debug: bool) -> None:
    """advinf: adversarially learned inference (ALI, BiGAN, GAN) from TOML recipes."""


def _host():
    from advinf.plugins import default_host

    return default_host()


def _plugin_option(f):
    return click.option("--plugin", "plugins", multiple=True, type=click.Path(path_type=Path), metavar="PATH",
                        help="Load this local plugin file (or module). A run directory's own `plugins` are never "
                             "imported from it: name the files you trust here.")(f)


@cli.command(context_settings={"allow_extra_args": True})  # a second path is answered with what to write
@click.argument("recipe", type=click.Path(path_type=Path), required=False)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a recipe key (TOML value syntax), e.g. --set train.batch_size=64.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Run directory (default: runs/NAME-TIMESTAMP).")
@click.option("--resume", is_flag=True,
              help="Continue a run from its latest checkpoint: advinf run --resume RUN_DIR (its saved recipe), "
                   "or advinf run RECIPE --out RUN_DIR --resume.")
@click.option("--allow-changes", is_flag=True, help="With --resume: accept a recipe that differs from the run's.")
@click.option("--stop-after", type=click.IntRange(min=1), default=None, metavar="N",
              help="End at step N (counted from the start of training) with a checkpoint, resumable.")
@click.option("--progress", type=click.Choice(["auto", "bar", "lines", "none"]), default=None,
              help="Progress display (default: the recipe's train.progress).")
@click.option("--logger", "loggers", multiple=True, metavar="NAME",
              help="Where metrics go, instead of the recipe's train.loggers (repeat for several: --logger jsonl "
                   "--logger tensorboard); see advinf list-plugins.")
@click.option("--seeds", default=None, metavar="SEEDS",
              help="Train one run per seed (0-9, 0,3,7 or 0-2,10) into OUT/seed_K, each the same as a run with "
                   "--set seed=K, and summarise every metric over them (OUT/summary.json).")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="With --seeds: how many seeds train at once, in worker processes.")
@click.option("--draw", "draws", multiple=True, metavar="KEY[,KEY...]=VALUE",
              help="With --seeds: a random search. Each seed sets KEY to VALUE with its distributions "
                   "(uniform(a, b), loguniform(a, b), randint(a, b), choice(v1, ...)) drawn from its seed, e.g. "
                   "--draw 'optimizer.lr=loguniform(1e-5, 1e-3)'; several keys share one draw.")
@_plugin_option
@click.pass_context
def run(ctx: click.Context, recipe: Path | None, overrides: tuple[str, ...], out: Path | None, resume: bool,
        allow_changes: bool, stop_after: int | None, progress: str | None, loggers: tuple[str, ...],
        seeds: str | None, jobs: int, draws: tuple[str, ...], plugins: tuple[Path, ...]) -> None:
    """Train the model a RECIPE describes and evaluate it (or continue a run: --resume RUN_DIR)."""
    from advinf.session import run_recipe

    if ctx.args:
        extra = " ".join(ctx.args)
        hint = (f": continue the run with advinf run --resume {ctx.args[0]} (its own recipe), or advinf run "
                f"{recipe} --out {ctx.args[0]} --resume" if resume and recipe is not None else
                ": give the run directory as --out DIR")
        raise UserError(f"advinf run takes one RECIPE (or, with --resume, one RUN_DIR), and also got {extra}{hint}")

    if loggers:
        overrides = (*overrides, f"train.loggers={json.dumps(list(loggers))}")
    if allow_changes and not resume:
        raise UserError("--allow-changes goes with --resume (it accepts changes to the run being continued)")
    if seeds is not None:
        _run_seeds(recipe, seeds, jobs, overrides, out, resume, stop_after, plugins, draws)
        return
    if jobs != 1:
        raise UserError("--jobs goes with --seeds (several seeds at once)")
    if draws:
        raise UserError("--draw goes with --seeds (each seed draws its own values), e.g. --seeds 0-9 --draw "
                        "'optimizer.lr=loguniform(1e-5, 1e-3)'")
    if resume and out is None and recipe is not None:
        if recipe.is_dir():
            recipe, out = None, recipe  # advinf run --resume RUN_DIR
        elif not recipe.exists():
            raise UserError(f"--resume {recipe}: no such run directory")
        else:
            raise UserError(f"--resume with the recipe {recipe} needs the run to continue: advinf run {recipe} --out "
                            f"RUN_DIR --resume (or advinf run --resume RUN_DIR with the run's own recipe)")
    if recipe is None and not resume:
        raise UserError("give a RECIPE to run (e.g. advinf run recipes/ali_mixture25.toml), "
                        "or --resume RUN_DIR to continue a run")
    outcome = run_recipe(recipe, out=out, resume=resume, allow_changes=allow_changes, stop_after=stop_after,
                         overrides=overrides, progress=progress, host=_host(), plugins=plugins, log=_echo,
                         on_signal="return")  # said below, then exit status 130/143
    result, trainer = outcome.result, outcome.trainer
    if trainer.rank != 0:
        return  # under torchrun, rank 0 reports (and writes) for every rank
    rate = f" in {result.seconds:.1f} s ({result.steps / result.seconds:.1f} steps/s)" \
        if result.steps and result.seconds > 0 else ""
    _echo(f"trained {result.steps} steps{rate}; at step {trainer.step} of {trainer.total_steps}")
    if result.stopped is not None:
        import shlex

        from advinf.provenance import loaded_plugin_paths

        rec = outcome.recipe
        named = "".join(f" --plugin {shlex.quote(p)}" for p in loaded_plugin_paths(rec.spec.plugins, rec.base_dir))
        world = trainer.world_size
        launch = "advinf" if world == 1 else (  # a checkpoint resumes with the world size that wrote it
            f"torchrun --nproc-per-node {world} -m advinf" if os.environ.get("LOCAL_WORLD_SIZE") == str(world)
            else f"torchrun (the same {world} processes, as this run was launched) -m advinf")
        _echo(f"stopped ({result.stopped}); checkpoint written: {result.checkpoint}\n"
              f"resume with: {launch} run --resume {shlex.quote(str(outcome.run_dir))}{named}")
        if result.stopped in ("SIGINT", "SIGTERM"):
            sys.exit(130 if result.stopped == "SIGINT" else 143)
        return
    if result.eval:
        _show(json.dumps(result.eval, indent=2, sort_keys=True))


def _run_seeds(recipe: Path | None, seeds: str, jobs: int, overrides: tuple[str, ...], out: Path | None,
               resume: bool, stop_after: int | None, plugins: tuple[Path, ...], draws: tuple[str, ...]) -> None:
    from advinf.seeds import SUMMARY_FILE, lost_message, parse_seeds, run_seeds, seed_command

    if resume or recipe is None:
        raise UserError("--seeds starts new runs from a RECIPE; resume a seed on its own: advinf run --resume "
                        "OUT/seed_K")
    outcome = run_seeds(recipe, parse_seeds(seeds), out=out, jobs=jobs, overrides=overrides, stop_after=stop_after,
                        host=_host() if jobs == 1 else None, plugins=plugins, log=_echo, draws=draws)
    summary = outcome.summary
    table = Table(title=f"{len(outcome.results)} seeds: mean ± std (sample)")
    for col in ("metric", "mean ± std", *(f"seed {s}" for s in summary["seeds"])):
        table.add_column(col)
    drawn = summary.get("drawn", {})
    for key in drawn.get(str(summary["seeds"][0]), {}) if summary["seeds"] else ():  # what each seed trained with
        table.add_row(escape(f"drawn: {key}"), "", *(escape(_short_value(drawn[str(s)][key]))
                                                     for s in summary["seeds"]))
    for name, m in summary["metrics"].items():
        some = f" ({m['n']} of {len(summary['seeds'])})" if m.get("missing") else ""
        table.add_row(escape(name), "–" + some if m["n"] == 0 else f"{m['mean']:.4g} ± {m['std']:.2g}{some}",
                      *(f"{m['values'][str(s)]:.4g}" if str(s) in m["values"] else "–" for s in summary["seeds"]))
    try:
        (Console() if sys.stdout.isatty() else Console(width=200)).print(table)
    except BrokenPipeError:
        from advinf.progress import discard_output

        discard_output(sys.stdout)
    _echo(f"{len(outcome.results)} seeds in {summary['seconds']:.1f} s ({jobs} at a time); "
          f"summary: {outcome.out / SUMMARY_FILE}")
    if outcome.failed:
        raise UserError(lost_message(outcome, recipe))
    paused = [r for r in outcome.results if r.stopped == "stop_after"]
    if paused:
        import shlex

        _echo(f"stopped at step {paused[0].steps} (--stop-after), with a checkpoint: "
              f"{', '.join(f'seed {r.seed}' for r in paused)}; continue each on its own (advinf run --resume "
              f"{shlex.quote(str(paused[0].run_dir))}, ...), then summarise them all with advinf compare "
              f"{shlex.quote(str(outcome.out))}/seed_*")
    if outcome.stopped is not None:
        _echo(f"stopped ({outcome.stopped}): the seeds in training wrote a checkpoint (advinf run --resume "
              f"{outcome.out}/seed_K continues one); no further seed was started")
        for seed in outcome.not_started:  # --seeds again is refused (the group's folder is taken): one by one
            _echo(f"  seed {seed}: never started: {seed_command(outcome, recipe, seed)} (with the same --set "
                  f"overrides)")
        sys.exit(130 if outcome.stopped == "SIGINT" else 143)


def _short_value(value: Any) -> str:
    """A drawn value in a table cell, in TOML as it was drawn (``true``, ``"adam"``), floats to 4 significant
    digits."""
    if isinstance(value, list):
        return "[" + ", ".join(map(_short_value, value)) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_short_value(v)}" for k, v in value.items()) + " }"
    from advinf.values import toml_value

    return f"{value:.4g}" if isinstance(value, float) else toml_value(value)


def _echo(message: str) -> None:
    _show(message, err=True)


def _show(text: str, err: bool = False) -> None:
    """``click.echo``, except that where the reader went away (``advinf run ... 2>&1 | head``) the rest of the
    output goes nowhere instead of ending the command with status 1: a run's work, its directory and eval.json,
    does not depend on anyone reading its messages."""
    from advinf.progress import discard_output

    try:
        click.echo(text, err=err)
    except BrokenPipeError:
        discard_output(sys.stderr if err else sys.stdout)


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--with", "names", default=None, metavar="NAME[,NAME...]",
              help="Registered evaluators to run (default: the recipe's own); options from the recipe where it "
                   "configures them, else their defaults.")
@click.option("--set", "overrides", multiple=True, metavar="evaluators.NAME.KEY=VALUE",
              help="Set an evaluator's option (TOML value syntax); dataset.KEY=VALUE says where the run's data is "
                   "now (e.g. dataset.root=/data/svhn).")
@click.option("--device", default=None, help="cpu, cuda, cuda:N (default: the recipe's train.device).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON instead of a table.")
@_plugin_option
def evaluate(run_dir: Path, names: str | None, overrides: tuple[str, ...], device: str | None, as_json: bool,
             plugins: tuple[Path, ...]) -> None:
    """Run evaluators on a trained RUN_DIR; merges the results into its eval.json (earlier entries are kept)."""
    from advinf.runs import evaluate_run

    chosen = [n.strip() for n in names.split(",") if n.strip()] if names is not None else None
    if chosen == []:
        raise UserError("--with names no evaluator; give NAME[,NAME...] (advinf list-plugins lists them), or leave "
                        "it out for the recipe's own")
    results = evaluate_run(run_dir, chosen, overrides, device=device, plugins=plugins, host=_host())
    if as_json:
        click.echo(json.dumps(results, indent=2, sort_keys=True))
        return
    table = Table(title=f"{run_dir}: evaluation (merged into eval.json)")
    for col in ("evaluator", "metric", "value"):
        table.add_column(col)
    for name, metrics in results.items():
        for key, value in _table_rows(metrics if isinstance(metrics, dict) else {"value": metrics}):
            table.add_row(*map(_plain, (name, key, value)))
    Console().print(table)


def _plain(text: str) -> str:
    """A table cell of text that came from files or plugins: shown as it is (no rich markup such as ``[red]``,
    no escape sequence reaching the terminal)."""
    return escape(printable(text))


def _table_rows(record: dict, prefix: str = ""):
    """(dotted key, text) for every number and every text of a nested result: a probe's ``skipped`` reason
    says which option to lower, so the table shows it too."""
    for k, v in record.items():
        if isinstance(v, dict):
            yield from _table_rows(v, f"{prefix}{k}.")
        elif isinstance(v, str):
            yield f"{prefix}{k}", v
        elif isinstance(v, int | float) and not isinstance(v, bool):
            yield f"{prefix}{k}", f"{v:.6g}"


#: The most pictures one PNG holds (a grid of 10,000 is already unreadable; 10^8 ran out of memory).
MAX_PICTURES = 10_000


def _file_in_the_way(folder: Path) -> Path | None:
    """The file standing where ``folder`` or one of its parents should be, if any."""
    return next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)


def _out_folder(ctx: click.Context, param: click.Parameter, path: Path) -> Path:
    """``--out`` naming a folder: refused where a file stands in its way."""
    blocked = _file_in_the_way(path)
    if blocked is not None:
        raise UserError(f"--out {path}: {blocked} is a file, not a folder")
    return path


def _png_out(ctx: click.Context, param: click.Parameter, path: Path | None) -> Path | None:
    """``--out`` of a command that writes a PNG: a .png file name whose folder is (or can be) a folder. Any other
    name is refused: a typo must not turn the run's recipe.toml, or a file of the user's, into a picture."""
    if path is None:
        return None
    if path.suffix.lower() != ".png":
        raise UserError(f"--out {path}: give a file name ending in .png (this command writes a PNG picture)")
    if path.is_dir():
        raise UserError(f"--out {path} is a directory; give a file name ending in .png")
    blocked = _file_in_the_way(path.parent)
    if blocked is not None:
        raise UserError(f"--out {path}: {blocked} is a file, not a folder")
    return path


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--out", "out_path", type=click.Path(path_type=Path), default=None, callback=_png_out,
              help="PNG to write (default: RUN_DIR/curves.png).")
@_plugin_option
def plot(run_dir: Path, out_path: Path | None, plugins: tuple[Path, ...]) -> None:
    """The curves of RUN_DIR over its steps: losses, scalars, samples/s and every evaluation, as a PNG. (The plot
    reads only the run's files: --plugin is taken, as by the other commands on a run, and loaded.)"""
    from advinf.plots import plot_run

    for plugin in plugins:  # as every command on a run takes them: a script passing --plugin to each works
        _host().load_local(str(plugin))
    _done(plot_run(run_dir, out_path))


def _data_option(f):
    return click.option("--set", "data", multiple=True, metavar="dataset.KEY=VALUE",
                        help="Where the run's data is now (TOML value), e.g. --set dataset.root=/data/svhn; checked "
                             "against what the run trained on.")(f)


def _picture_options(default_name: str):
    def wrap(f):
        f = _data_option(f)
        f = click.option("--device", default=None, help="cpu, cuda, cuda:N (default: the recipe's).")(f)
        f = _plugin_option(f)
        f = click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True,
                         help="Which prior draws / examples.")(f)
        f = click.option("--out", "out_path", type=click.Path(path_type=Path), default=None, callback=_png_out,
                         help=f"PNG to write (default: RUN_DIR/{default_name}).")(f)
        return click.argument("run_dir", type=click.Path(path_type=Path))(f)
    return wrap


def _done(path: Path) -> None:
    click.echo(f"wrote {path}", err=True)


@cli.command()
@_picture_options("samples.png")
@click.option("--count", type=click.IntRange(1, MAX_PICTURES), default=100, show_default=True, help="Samples.")
@click.option("--condition", "conditions", multiple=True, metavar="COND",
              help="A condition of a conditional run: a class index or name, or comma-separated attribute names "
                   "(set to 1, the others 0; 'none': all 0). Repeat for several (one block of samples, or one "
                   "grid row, each).")
@click.option("--grid", type=click.Choice(["samples", "conditions"]), default="samples", show_default=True,
              help="conditions: the paper's conditional figure, one fixed z per column and one condition per row "
                   "(default rows: every class, or the attributes of 8 held-out examples).")
@click.option("--columns", type=click.IntRange(1, 1000), default=8, show_default=True,
              help="With --grid conditions: columns, one fixed z each.")
def sample(run_dir: Path, out_path: Path | None, seed: int, device: str | None, plugins: tuple[Path, ...],
           data: tuple[str, ...], count: int, conditions: tuple[str, ...], grid: str, columns: int) -> None:
    """Decoder samples from the prior of a trained RUN_DIR (for given conditions, if it is conditional)."""
    import torch

    from advinf import visualize
    from advinf.conditions import example_conditions
    from advinf.runs import load_run

    if grid != "conditions" and click.get_current_context().get_parameter_source("columns") \
            is click.core.ParameterSource.COMMANDLINE:
        raise UserError("--columns lays out --grid conditions; a grid of samples is square (one row per "
                        "--condition when several are given)")
    run = load_run(run_dir, device=device, host=_host(), plugins=plugins, data=data)
    if (conditions or grid == "conditions") and run.condition is None:
        raise UserError(f"{run_dir} is not a conditional run; --condition and --grid conditions need one")
    given = torch.stack([run.condition.parse(c) for c in conditions]) if conditions else None  # type: ignore[union-attr]
    if grid == "conditions":
        path = out_path or run_dir / "condition_grid.png"
        assert run.condition is not None
        if given is None:
            rows = run.condition.dim if run.condition.kind == "classes" else 8
            given = example_conditions(run.condition, _examples_of(run), rows, seed)
            if run.condition.kind == "classes":
                given = given.unique_consecutive()
        visualize.condition_grid(run, given, path, columns=columns, seed=seed)
        _done(path)
        return
    path = out_path or run_dir / "samples.png"
    y = None
    if run.condition is not None:
        y = (given.repeat_interleave(-(-count // len(given)), dim=0)[:count] if given is not None
             else example_conditions(run.condition, _examples_of(run), count, seed))
    several = given is not None and len(given) > 1 and count % len(given) == 0
    visualize.samples(run, path, count, seed, y=y, rows=len(given) if several else None)  # type: ignore[arg-type]
    _done(path)


def _examples_of(run: Any) -> Any:
    """The dataset to take example conditions from: none for classes (they need no data), else the run's, or
    why it cannot be used and how to give the conditions instead."""
    if run.condition.kind == "classes":
        return None
    if run.data_problem is not None:
        raise UserError(f"{run.data_problem}\nOr give the conditions yourself: --condition NAME[,NAME...] (the "
                        f"attributes set to 1), once per block or row")
    return run.dataset


@cli.command()
@_picture_options("reconstructions.png")
@click.option("--count", type=click.IntRange(1, MAX_PICTURES), default=50, show_default=True, help="Examples.")
@click.option("--split", type=click.Choice(["heldout", "train"]), default="heldout", show_default=True)
@click.option("--mean", "use_mean", is_flag=True, help="Decode the posterior mean instead of a sample.")
def reconstruct(run_dir: Path, out_path: Path | None, seed: int, device: str | None, plugins: tuple[Path, ...],
                data: tuple[str, ...], count: int, split: str, use_mean: bool) -> None:
    """Reconstructions Gx(Gz(x)): odd columns data, even columns their reconstructions."""
    from advinf import visualize
    from advinf.runs import load_run

    run = load_run(run_dir, device=device, host=_host(), plugins=plugins, data=data)
    path = out_path or run_dir / "reconstructions.png"
    chosen = visualize.get_split(run.dataset, split)
    if count > len(chosen):
        if click.get_current_context().get_parameter_source("count") is click.core.ParameterSource.COMMANDLINE \
                or not len(chosen):
            raise UserError(f"--count {count} asks for more examples than the {split} split holds ({len(chosen)})"
                            + (f"; ask for at most {len(chosen)}" if len(chosen) else ""))
        count = len(chosen)  # the default, on a split smaller than it: all of them
    x, y = visualize.pick(chosen, count, seed)
    visualize.reconstructions(run, x, path, use_mean, y=y)
    _done(path)


@cli.command()
@_picture_options("interpolations.png")
@click.option("--pairs", type=click.IntRange(1, MAX_PICTURES), default=8, show_default=True)
@click.option("--steps", type=click.IntRange(2, 1000), default=10, show_default=True)
@click.option("--split", type=click.Choice(["heldout", "train"]), default="heldout", show_default=True)
def interpolate(run_dir: Path, out_path: Path | None, seed: int, device: str | None, plugins: tuple[Path, ...],
                data: tuple[str, ...], pairs: int, steps: int, split: str) -> None:
    """Latent interpolations between pairs of examples (one pair a row, data at both ends)."""
    from advinf import visualize
    from advinf.runs import load_run

    run = load_run(run_dir, device=device, host=_host(), plugins=plugins, data=data)
    path = out_path or run_dir / "interpolations.png"
    chosen = visualize.get_split(run.dataset, split)
    if 2 * pairs > len(chosen):  # said in pairs, the option's unit
        raise UserError(f"--pairs {pairs} needs {2 * pairs} examples, but the {split} split holds {len(chosen)}; "
                        f"ask for at most {len(chosen) // 2} pairs")
    x, y = visualize.pick(chosen, 2 * pairs, seed)
    visualize.interpolations(run, x, path, steps, y=y)
    _done(path)


@cli.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path), metavar="RUN_DIR...")
@click.option("--device", default=None, help="cpu, cuda, cuda:N (default: each recipe's train.device).")
@_plugin_option
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("."), show_default=True,
              callback=_out_folder, help="Folder for compare.png and compare.json.")
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON instead.")
@click.option("--points", type=click.IntRange(min=1), default=2500, show_default=True,
              help="Held-out examples and prior draws per panel of the figure (the paper: 2,500).")
@_data_option
def compare(run_dirs: tuple[Path, ...], device: str | None, plugins: tuple[Path, ...], out_dir: Path, as_json: bool,
            points: int, data: tuple[str, ...]) -> None:
    """Trained runs side by side: the paper's mixture figure (one column per run: held-out data, latent codes,
    reconstructions, prior samples, decoder samples) and a table of each run's metrics (its eval.json, or its
    evaluators run again); runs of the same recipe are also summarised as mean ± std."""
    from advinf.compare import compare_runs

    result = compare_runs(run_dirs, out_dir, device=device, host=_host(), plugins=plugins, points=points, data=data)
    if as_json:
        click.echo(json.dumps(result.as_json(), indent=2, sort_keys=True))
    else:
        console = Console() if sys.stdout.isatty() else Console(width=200)  # piped: no columns cut
        for table in comparison_tables(result):
            console.print(table)
    for r in result.runs:
        if r.metrics_from != "eval.json":
            _echo(f"{r.run_dir}: no eval.json; " + ("its evaluators were run again" if r.metrics_from == "recomputed"
                                                     else "its recipe has no evaluators"))
    if result.figure is not None:
        _done(result.figure)
    _done(result.table)  # type: ignore[arg-type]


#: More metrics than this, and ``compare`` prints them as rows (one column per run): an image run's probes and
#: sample-quality evaluators give dozens, which as columns fold into an unreadable table.
WIDE = 8


def comparison_tables(result: Comparison) -> list[Table]:
    """``compare``'s tables: each run's metrics, and the mean ± std of each experiment run at several seeds. A
    few metrics are columns (one row per run); more than ``WIDE`` are rows (one column per run or experiment)."""
    from advinf.compare import metric_columns

    columns = metric_columns(result.runs)
    names = [m for _, m in columns]
    heads = [(m if names.count(m) == 1 else f"{ev}.{m}").replace("_", " ") for ev, m in columns]
    runs = [[r.game, str(r.seed), str(r.step), *(_cell(r.metrics.get(ev, {}).get(m)) for ev, m in columns)]
            for r in result.runs]
    groups = [[g["game"], ",".join(map(str, g["seeds"])),
               *("–" if s is None else f"{_short(s['mean'])} ± {_short(s['std'], 2)}"
                 for s in (g["metrics"].get(ev, {}).get(m) for ev, m in columns))] for g in result.groups]
    wide = len(columns) > WIDE
    tables = [_table("runs", "run", [r.label for r in result.runs], ["game", "seed", "step", *heads], runs, wide)]
    if result.groups:
        tables.append(_table("runs of the same recipe: mean ± std (sample)", "recipe",
                             [g["recipe"] for g in result.groups], ["game", "seeds", *heads], groups, wide))
    return tables


def _table(title: str, what: str, labels: list[str], heads: list[str], rows: list[list[str]], wide: bool) -> Table:
    """A table of ``rows`` (one per label, one cell per head), or with ``wide`` its transpose."""
    table = Table(title=title)
    labels, heads = list(map(_plain, labels)), list(map(_plain, heads))
    rows = [list(map(_plain, row)) for row in rows]
    if wide:
        table.add_column(what, overflow="fold", min_width=12)
        for label in labels:
            table.add_column(label, overflow="fold")
        for i, head in enumerate(heads):
            table.add_row(head, *(row[i] for row in rows))
    else:
        table.add_column(what, overflow="fold", min_width=12)
        for head in heads:
            table.add_column(head, overflow="fold")
        for label, row in zip(labels, rows, strict=True):
            table.add_row(label, *row)
    return table


def _short(value: float, digits: int = 3) -> str:
    return f"{value:.0f}" if abs(value) >= 10 ** digits else f"{value:.{digits}g}"


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


@cli.command()
@click.argument("recipe", type=click.Path(path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe key.")
@click.option("--build", "build_it", is_flag=True,
              help="Also build it as run does before training (data, networks, init_from, evaluators) and take one "
                   "trial step on copies of the networks: what only building can find. Writes no run (a dataset "
                   "with download = true fetches what is missing, as run would).")
@_plugin_option
def validate(recipe: Path, overrides: tuple[str, ...], build_it: bool, plugins: tuple[Path, ...]) -> None:
    """Check RECIPE and print it resolved (every default filled in)."""
    from advinf.recipe import load_recipe

    host = _host()
    for plugin in plugins:
        host.load_local(str(plugin))
    rec = load_recipe(recipe, overrides, host=host)
    for path in rec.imported:  # recipe plugins are code: say what validating ran
        click.echo(f"imported local plugin: {path}", err=True)
    if build_it:
        from advinf.session import check_build

        for line in check_build(rec, host):
            _echo(line)
    click.echo(rec.to_toml(), nl=False)


@cli.command()
@click.argument("recipe", type=click.Path(path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe key.")
@click.option("--steps", type=click.IntRange(min=1), default=100, show_default=True, help="Timed steps.")
@click.option("--warmup", type=click.IntRange(min=1), default=20, show_default=True,
              help="Untimed steps first (at least 1: the first step allocates, and with train.compile compiles).")
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True, help="Median of this many.")
@click.option("--data", type=click.Choice(["auto", "recipe", "random"]), default="auto", show_default=True,
              help="The recipe's data, random data of its shape, or the recipe's when it is on this machine.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_plugin_option
def bench(recipe: Path, overrides: tuple[str, ...], steps: int, warmup: int, repeats: int, data: str,
          as_json: bool, plugins: tuple[Path, ...]) -> None:
    """Time advinf's training step against the plain PyTorch loop (advinf_benchmarks) on RECIPE's networks,
    and measure the step's FLOP/s against the device's peak."""
    from advinf.recipe import load_recipe

    try:
        from advinf_benchmarks.bench import bench as run_bench
        from advinf_benchmarks.bench import build_for_bench
    except ImportError as exc:
        raise UserError(f"advinf bench needs the advinf_benchmarks package, installed with advinf ({exc}); "
                        "reinstall advinf") from None
    host = _host()
    for plugin in plugins:
        host.load_local(str(plugin))
    rec = load_recipe(recipe, overrides, host=host)
    built, why_random = build_for_bench(rec, _host(), data)
    if why_random is not None:
        click.echo(f"advinf bench: timing on random data shaped like the recipe's ({why_random})", err=True)
    if rec.spec.train.threads:
        import torch

        torch.set_num_threads(rec.spec.train.threads)
    result = run_bench(built, built.device, steps, warmup, repeats, log=_echo)  # progress on stderr
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    lines = [f"{result['recipe']} on {result['device']} ({result['device_name']}, {result['threads']} threads, "
             f"{result['dtype']}), batch {result['batch_size']}, {result['data']} data, median of {repeats} x "
             f"{steps} steps:"]
    for who in ("advinf", "reference"):
        lines.append(f"  {who:9s} {result[who + '_ms_per_step']:8.2f} ms/step  "
                     f"{result[who + '_samples_per_s']:9.0f} samples/s")
    lines.append(f"  speedup {result['speedup']:.2f}x over the plain loop")
    lines.append(f"  {result['flops_per_sample'] / 1e6:.1f} MFLOP per sample, {result['achieved_flops'] / 1e9:.1f} "
                 f"GFLOP/s of a measured peak {result['peak_flops'] / 1e9:.1f} GFLOP/s (each repeat: "
                 f"{', '.join(f'{v / 1e9:.0f}' for v in result['peak_flops_all'])}): "
                 f"{100 * result['fraction_of_peak']:.1f} % of peak")
    click.echo("\n".join(lines))


@cli.command("list-plugins")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--verbose", "-v", is_flag=True,
              help="Also each component's summary and options (type, default, description).")
@_plugin_option
def list_plugins(as_json: bool, verbose: bool, plugins: tuple[Path, ...]) -> None:
    """List installed plugins (and local plugin files named with --plugin), what they register (commands
    included), and load errors. Exit status 2 when a plugin is broken."""
    from advinf.errors import PluginError
    from advinf.plugins import PluginInfo

    host = _host()
    unloaded = []  # local files that did not import: listed by their path, with the error
    for plugin in plugins:
        try:
            host.load_local(str(plugin))
        except PluginError as exc:
            unloaded.append(PluginInfo(str(Path(plugin).resolve()), "", error=str(exc)))
    if not AdvinfGroup._plugin_commands_added:
        _add_plugin_commands()
    infos = sorted([*host.plugins.values(), *unloaded], key=lambda p: p.name)
    if as_json:
        listing = [p.as_json() for p in infos]
        if verbose:
            for entry in listing:
                entry["details"] = [{"kind": c.kind, "name": c.name, "summary": c.summary,
                                     "options": c.option_table(), **_game_players(host, c)}
                                    for c in (host.components_of(entry["name"]) if entry["name"] in host.plugins
                                              else [])]
        click.echo(json.dumps(listing, indent=2))
    else:
        table = Table(title="advinf plugins")
        for col in ("plugin", "version", "load (s)", "components", "error"):
            table.add_column(col, overflow="fold")
        for p in infos:
            comps = "\n".join(f"{kind}: {', '.join(names)}" for kind, names in sorted(p.components.items()))
            status = "disabled" if p.disabled else (p.error or "")
            table.add_row(p.name, p.version, f"{p.load_seconds:.2f}", comps,
                          f"[red]{status}[/red]" if p.error else status)
        Console().print(table)
        if verbose:
            click.echo(_component_details(host, infos))
    for name in host.unmatched_disabled():
        hint = suggest(name, [p.name for p in infos])
        click.echo(f"warning: ADVINF_DISABLE_PLUGINS names '{name}', which is no installed plugin"
                   + (f"; {hint}" if hint else ""), err=True)
    broken = [p.name for p in infos if p.broken and p not in unloaded]
    for info in unloaded:
        click.echo(f"error: {info.error}", err=True)
    if broken:
        click.echo(f"error: broken plugins: {', '.join(broken)} (see the error column; ADVINF_DISABLE_PLUGINS="
                   "name,... skips a plugin)", err=True)
    if broken or unloaded:
        sys.exit(2)


def _game_players(host: Any, component: Any) -> dict[str, Any]:
    """A game's players and networks as built with its default options (they may depend on its options, as
    ALICE's cycle critic does), for ``list-plugins --verbose``; {} for other components."""
    if component.kind != "game":
        return {}
    try:
        game = host.create("game", component.name)
    except Exception as exc:  # noqa: BLE001 -- required options, or a broken factory: said, not fatal
        return {"players_error": f"not built with its default options: {' '.join(str(exc).split())[:200]}"}
    return {"players": {p.name: {"role": p.role, "networks": list(p.networks)} for p in game.players},
            "networks": dict(game.networks), "labels": bool(game.reads_labels),
            "streams": [s.name for s in game.streams]}


def _component_details(host: Any, infos: list[Any]) -> str:
    """Each plugin's components with their options: ``name: type = default  description``."""
    lines: list[str] = []
    for p in infos:
        comps = host.components_of(p.name)
        if not comps:
            continue
        lines.append(f"\n{p.name} {p.version}")
        for c in comps:
            lines.append(f"  {c.kind} {c.name}" + (f": {c.summary}" if c.summary else ""))
            players = _game_players(host, c)
            if "players" in players:
                lines.append("      players (default options): " + "; ".join(
                    f"{name} ({p['role']}): {', '.join(p['networks'])}" for name, p in players["players"].items())
                    + "".join(f"; {n} not trained (frozen)" for n in players["networks"]
                              if not any(n in p["networks"] for p in players["players"].values()))
                    + (f"; streams: {', '.join(players['streams'])}" if players["streams"] else "")
                    + ("; reads labels" if players["labels"] else ""))
            elif players:
                lines.append(f"      players: {players['players_error']}")
            for o in c.option_table():
                default = "required" if o["required"] else f"= {json.dumps(o['default'])}"
                lines.append(f"      {o['name']}: {o['type']} {default}"
                             + (f"  ({o['description']})" if o["description"] else ""))
    return "\n".join(lines)


def _add_plugin_commands() -> None:
    """The commands plugins add (once), each recorded against its plugin for ``advinf list-plugins``."""
    AdvinfGroup._plugin_commands_added = True
    host = _host()
    for impl in host.pm.hook.register_commands.get_hookimpls():
        name = host.pm.get_name(impl.plugin) or "?"
        info = host.plugins.get(name)
        before = dict(cli.commands)
        try:
            impl.function(cli=cli)
        except BaseException as exc:  # noqa: BLE001 -- a broken plugin must not break the command line
            if isinstance(exc, Interrupted | Terminated):
                raise  # Ctrl-C or SIGTERM: the user's
            if info is not None:
                info.error = f"register_commands raised {type(exc).__name__}: {exc}"
            if host.strict:
                raise UserError(f"plugin '{name}': register_commands raised {exc}") from exc
        taken = sorted(n for n, command in before.items() if cli.commands.get(n) is not command)
        if taken:  # a command of that name is there already (advinf's own, or an earlier plugin's): it stays
            cli.commands.update({n: before[n] for n in taken})
            why = f"register_commands added command(s) named {', '.join(taken)}, which advinf or an earlier " \
                  "plugin has already; name them otherwise (the existing ones were kept)"
            if info is not None:
                info.error = why if info.error is None else f"{info.error}; {why}"
            if host.strict:
                raise UserError(f"plugin '{name}': {why}")
        if info is not None:
            info.components.setdefault("command", []).extend(sorted(set(cli.commands) - set(before)))
            if not info.components["command"]:
                del info.components["command"]


def _terminate(signum: int, frame: Any) -> None:
    _unless_importing_torch(signum, frame, Terminated)


def _interrupt(signum: int, frame: Any) -> None:
    _unless_importing_torch(signum, frame, Interrupted)


_HELD: list[int] = []  # a signal held back until torch's import is over (at most one)


def _unless_importing_torch(signum: int, frame: Any, exc: type[BaseException]) -> None:
    """Raise ``exc`` for a signal, but not while torch is being imported: the exception unwound its half-done
    import, which failed later (tracebacks: "partially initialized module 'torch'") or crashed the interpreter at
    exit. There the signal is held and given again to whatever handler is installed then, a moment after the
    import ends (a timer checks every 20 ms). A second signal is not held (the user insists), nor one while
    another part of the process uses the real-time timer."""
    import signal

    if _HELD or not _importing_torch(frame) or not hasattr(signal, "setitimer") \
            or signal.getsignal(signal.SIGALRM) not in (signal.SIG_DFL, None) \
            or signal.getitimer(signal.ITIMER_REAL) != (0.0, 0.0):
        _release()
        raise exc
    _HELD.append(signum)
    signal.signal(signal.SIGALRM, _retry)
    signal.setitimer(signal.ITIMER_REAL, 0.02)


def _retry(signum: int, frame: Any) -> None:
    import signal

    if _importing_torch(frame):
        signal.setitimer(signal.ITIMER_REAL, 0.02)
        return
    held = _HELD[0]
    _release()
    signal.raise_signal(held)  # to the handler installed now (training's own, once it has started)


def _release() -> None:
    """Forget a held signal and stop its timer."""
    import signal

    if _HELD:
        _HELD.clear()
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)


def _importing_torch(frame: Any) -> bool:
    """Whether torch (or a part of it) is being imported: a frame of its module code under importlib's."""
    torch_code = importing = False
    while frame is not None:
        name = str(frame.f_globals.get("__name__", ""))
        torch_code = torch_code or name == "torch" or name.startswith("torch.")
        importing = importing or frame.f_code.co_filename.startswith("<frozen importlib")
        frame = frame.f_back
    return torch_code and importing


def _warning_line(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    """Warnings as one clean line (not Python's format, which echoes the source line)."""
    click.echo(f"warning: {printable(' '.join(str(message).split()))}", err=True)


def main(argv: list[str] | None = None) -> None:
    """Console entry point."""
    import signal
    import warnings

    signal.signal(signal.SIGTERM, _terminate)  # start-up and commands; training installs its own handler
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not where the shell has it ignored
        signal.signal(signal.SIGINT, _interrupt)  # the user's Ctrl-C, told apart from a plugin's own exception
    warnings.showwarning = _warning_line
    try:
        cli.main(args=argv, prog_name="advinf")
    except KeyboardInterrupt:  # outside a command (click turns one inside into Abort: see AdvinfGroup.invoke)
        click.echo("interrupted", err=True)
        sys.exit(130)
    except Terminated:
        click.echo("terminated", err=True)
        sys.exit(143)
