"""The ``advinf`` command line: run, validate, list-plugins, plus commands that plugins add."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from advinf.errors import UserError


class AdvinfGroup(click.Group):
    """Renders UserError as one message with exit status 2; ``--debug`` shows the traceback instead."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UserError as exc:
            if ctx.params.get("debug") or os.environ.get("ADVINF_DEBUG"):
                raise
            click.echo(f"error: {exc}", err=True)
            ctx.exit(exc.exit_code)


@click.group(cls=AdvinfGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks for user errors.")
@click.version_option(package_name="advinf")
def cli(debug: bool) -> None:
    """advinf: adversarially learned inference (ALI, BiGAN, GAN) from TOML recipes."""


def _host():
    from advinf.plugins import default_host

    return default_host()


@cli.command()
@click.argument("recipe", type=click.Path(path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a recipe key (TOML value syntax), e.g. --set train.batch_size=64.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Run directory (default: runs/NAME-TIMESTAMP).")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its latest checkpoint.")
@click.option("--allow-changes", is_flag=True, help="With --resume: accept a recipe that differs from the run's.")
@click.option("--stop-after", type=click.IntRange(min=1), default=None, metavar="N",
              help="End at step N (counted from the start of training) with a checkpoint, resumable.")
@click.option("--progress", type=click.Choice(["auto", "bar", "lines", "none"]), default=None,
              help="Progress display (default: the recipe's train.progress).")
def run(recipe: Path, overrides: tuple[str, ...], out: Path | None, resume: bool, allow_changes: bool,
        stop_after: int | None, progress: str | None) -> None:
    """Train the model a RECIPE describes and evaluate it."""
    from advinf import checkpoint as ckpt
    from advinf.build import build
    from advinf.recipe import changed_keys, load_recipe
    from advinf.rundir import CHECKPOINTS_DIR, default_run_dir, require_run_dir
    from advinf.trainer import Trainer

    rec = load_recipe(recipe, overrides, host=_host())
    if progress is not None:
        rec.spec.train.progress = progress  # type: ignore[assignment]
    checkpoint = None
    if resume:
        if out is None:
            raise UserError("--resume needs --out RUN_DIR, the run to continue")
        require_run_dir(out)  # before reading anything from it
        path = ckpt.latest_checkpoint(out / CHECKPOINTS_DIR)
        if path is not None:
            checkpoint = ckpt.load_checkpoint(path)
            before = checkpoint.state.get("recipe") or {}
        else:
            import tomllib

            before = tomllib.loads((out / "recipe.toml").read_text(encoding="utf-8"))
            click.echo(f"warning: {out} has no checkpoint yet; starting it again from step 0", err=True)
        changes = changed_keys(before, rec.resolved())
        if changes and not allow_changes:
            raise UserError(f"the recipe differs from the one {out} was trained with, in: {', '.join(changes)}; "
                            "pass --allow-changes to resume with it anyway")
    built = build(rec, host=_host())
    out = out or default_run_dir(rec.spec.name)
    spec = rec.spec
    trainer = Trainer(built.nets, built.game, built.dataset, train=spec.train, optimizer=spec.optimizer,
                      critic_optimizer=spec.critic_optimizer, evaluators=built.evaluators, run_dir=out,
                      seed=spec.seed, recipe=rec.resolved(), resume=resume)
    if resume and checkpoint is None:
        trainer.run.write_recipe(rec.to_toml())  # type: ignore[union-attr]
    if checkpoint is not None:
        trainer.restore(checkpoint)
        if allow_changes:
            trainer.run.write_recipe(rec.to_toml())  # type: ignore[union-attr]
        click.echo(f"resuming {out} from step {trainer.step}", err=True)
    else:
        click.echo(f"run directory: {out}", err=True)
    result = trainer.fit(stop_after=stop_after)
    rate = result.steps / result.seconds if result.seconds > 0 else float("nan")
    click.echo(f"trained {result.steps} steps in {result.seconds:.1f} s ({rate:.1f} steps/s); "
               f"at step {trainer.step} of {trainer.total_steps}", err=True)
    if result.stopped is not None:
        sets = "".join(f" --set {s}" for s in overrides)
        click.echo(f"stopped ({result.stopped}); checkpoint written: {result.checkpoint}\n"
                   f"resume with: advinf run {recipe}{sets} --out {out} --resume", err=True)
        if result.stopped in ("SIGINT", "SIGTERM"):
            sys.exit(130 if result.stopped == "SIGINT" else 143)
        return
    if result.eval:
        click.echo(json.dumps(result.eval, indent=2, sort_keys=True))


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--device", default=None, help="cpu, cuda, cuda:N (default: the recipe's train.device).")
def evaluate(run_dir: Path, device: str | None) -> None:
    """Run the recipe's evaluators on a trained RUN_DIR again; rewrites its eval.json."""
    import torch

    from advinf.rundir import RunDir
    from advinf.runs import load_run

    loaded = load_run(run_dir, device=device, host=_host())
    with torch.no_grad():
        results = {name: ev.evaluate(loaded, loaded.dataset.to(loaded.device), run_dir)
                   for name, ev in loaded.built.evaluators.items()}
    RunDir(run_dir, resume=True).write_eval(results)
    click.echo(json.dumps(results, indent=2, sort_keys=True))


def _picture_options(default_name: str):
    def wrap(f):
        f = click.option("--device", default=None, help="cpu, cuda, cuda:N (default: the recipe's).")(f)
        f = click.option("--seed", type=int, default=0, show_default=True, help="Which prior draws / examples.")(f)
        f = click.option("--out", "out_path", type=click.Path(path_type=Path), default=None,
                         help=f"PNG to write (default: RUN_DIR/{default_name}).")(f)
        return click.argument("run_dir", type=click.Path(path_type=Path))(f)
    return wrap


def _done(path: Path) -> None:
    click.echo(f"wrote {path}", err=True)


@cli.command()
@_picture_options("samples.png")
@click.option("--count", type=click.IntRange(min=1), default=100, show_default=True)
def sample(run_dir: Path, out_path: Path | None, seed: int, device: str | None, count: int) -> None:
    """Decoder samples from the prior of a trained RUN_DIR."""
    from advinf import visualize
    from advinf.runs import load_run

    path = out_path or run_dir / "samples.png"
    visualize.samples(load_run(run_dir, device=device, host=_host()), path, count, seed)
    _done(path)


@cli.command()
@_picture_options("reconstructions.png")
@click.option("--count", type=click.IntRange(min=1), default=50, show_default=True, help="Examples.")
@click.option("--split", type=click.Choice(["heldout", "train"]), default="heldout", show_default=True)
@click.option("--mean", "use_mean", is_flag=True, help="Decode the posterior mean instead of a sample.")
def reconstruct(run_dir: Path, out_path: Path | None, seed: int, device: str | None, count: int, split: str,
                use_mean: bool) -> None:
    """Reconstructions Gx(Gz(x)): odd columns data, even columns their reconstructions."""
    from advinf import visualize
    from advinf.runs import load_run

    run = load_run(run_dir, device=device, host=_host())
    path = out_path or run_dir / "reconstructions.png"
    visualize.reconstructions(run, visualize.pick(visualize.get_split(run.dataset, split), count, seed), path,
                              use_mean)
    _done(path)


@cli.command()
@_picture_options("interpolations.png")
@click.option("--pairs", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--steps", type=click.IntRange(min=2), default=10, show_default=True)
@click.option("--split", type=click.Choice(["heldout", "train"]), default="heldout", show_default=True)
def interpolate(run_dir: Path, out_path: Path | None, seed: int, device: str | None, pairs: int, steps: int,
                split: str) -> None:
    """Latent interpolations between pairs of examples (one pair a row, data at both ends)."""
    from advinf import visualize
    from advinf.runs import load_run

    run = load_run(run_dir, device=device, host=_host())
    path = out_path or run_dir / "interpolations.png"
    visualize.interpolations(run, visualize.pick(visualize.get_split(run.dataset, split), 2 * pairs, seed), path,
                             steps)
    _done(path)


@cli.command()
@click.argument("recipe", type=click.Path(path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe key.")
def validate(recipe: Path, overrides: tuple[str, ...]) -> None:
    """Check RECIPE and print it resolved (every default filled in)."""
    from advinf.recipe import load_recipe

    rec = load_recipe(recipe, overrides, host=_host())
    click.echo(rec.to_toml(), nl=False)


@cli.command()
@click.argument("recipe", type=click.Path(path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe key.")
@click.option("--steps", type=click.IntRange(min=1), default=100, show_default=True, help="Timed steps.")
@click.option("--warmup", type=click.IntRange(min=0), default=20, show_default=True)
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def bench(recipe: Path, overrides: tuple[str, ...], steps: int, warmup: int, repeats: int, as_json: bool) -> None:
    """Time advinf's training step against the plain PyTorch loop in benchmarks/ on RECIPE's networks."""
    import importlib

    from advinf.build import build
    from advinf.recipe import load_recipe

    folder = Path(__file__).resolve().parent.parent / "benchmarks"
    if not (folder / "bench.py").is_file():
        raise UserError(f"advinf bench needs the source checkout's benchmarks/ folder (looked in {folder})")
    sys.path.insert(0, str(folder))
    bench_mod = importlib.import_module("bench")
    rec = load_recipe(recipe, overrides, host=_host())
    built = build(rec, host=_host())
    if rec.spec.train.threads:
        import torch

        torch.set_num_threads(rec.spec.train.threads)
    result = bench_mod.bench(built, next(built.nets.decoder.parameters()).device, steps, warmup, repeats)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    lines = [f"{result['recipe']} on {result['device']} ({result['threads']} threads), batch "
             f"{result['batch_size']}, median of {repeats} x {steps} steps:"]
    for who in ("advinf", "plain"):
        lines.append(f"  {who:7s} {result[who + '_ms_per_step']:8.2f} ms/step  "
                     f"{result[who + '_samples_per_s']:9.0f} samples/s")
    lines.append(f"  speedup {result['speedup']:.2f}x")
    click.echo("\n".join(lines))


@cli.command("list-plugins")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_plugins(as_json: bool) -> None:
    """List installed plugins, what they register, and load errors."""
    host = _host()
    infos = sorted(host.plugins.values(), key=lambda p: p.name)
    if as_json:
        click.echo(json.dumps([p.as_json() for p in infos], indent=2))
        return
    table = Table(title="advinf plugins")
    for col in ("plugin", "version", "components", "error"):
        table.add_column(col, overflow="fold")
    for p in infos:
        comps = "\n".join(f"{kind}: {', '.join(names)}" for kind, names in sorted(p.components.items()))
        status = "disabled" if p.disabled else (p.error or "")
        table.add_row(p.name, p.version, comps, f"[red]{status}[/red]" if p.error else status)
    Console().print(table)


def _add_plugin_commands() -> None:
    host = _host()
    for impl in host.pm.hook.register_commands.get_hookimpls():
        try:
            impl.function(cli=cli)
        except Exception as exc:  # a broken plugin must not break the command line
            name = host.pm.get_name(impl.plugin) or "?"
            info = host.plugins.get(name)
            if info is not None:
                info.error = f"register_commands raised {type(exc).__name__}: {exc}"
            if host.strict:
                raise UserError(f"plugin '{name}': register_commands raised {exc}") from exc


def main(argv: list[str] | None = None) -> None:
    """Console entry point."""
    try:
        _add_plugin_commands()
    except UserError as exc:
        if "--debug" in (argv or sys.argv):
            raise
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    cli.main(args=argv, prog_name="advinf")
