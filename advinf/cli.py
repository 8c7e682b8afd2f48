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
@click.option("--progress", type=click.Choice(["auto", "bar", "lines", "none"]), default=None,
              help="Progress display (default: the recipe's train.progress).")
def run(recipe: Path, overrides: tuple[str, ...], out: Path | None, progress: str | None) -> None:
    """Train the model a RECIPE describes and evaluate it."""
    from advinf.build import build
    from advinf.recipe import load_recipe
    from advinf.rundir import default_run_dir
    from advinf.trainer import Trainer

    rec = load_recipe(recipe, overrides, host=_host())
    if progress is not None:
        rec.spec.train.progress = progress  # type: ignore[assignment]
    built = build(rec, host=_host())
    out = out or default_run_dir(rec.spec.name)
    spec = rec.spec
    trainer = Trainer(built.nets, built.game, built.dataset, train=spec.train, optimizer=spec.optimizer,
                      critic_optimizer=spec.critic_optimizer, evaluators=built.evaluators, run_dir=out,
                      seed=spec.seed, recipe_toml=rec.to_toml())
    click.echo(f"run directory: {out}", err=True)
    result = trainer.fit()
    rate = result.steps / result.seconds if result.seconds > 0 else float("nan")
    click.echo(f"trained {result.steps} steps in {result.seconds:.1f} s ({rate:.1f} steps/s)", err=True)
    if result.eval:
        click.echo(json.dumps(result.eval, indent=2, sort_keys=True))


@cli.command()
@click.argument("recipe", type=click.Path(path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe key.")
def validate(recipe: Path, overrides: tuple[str, ...]) -> None:
    """Check RECIPE and print it resolved (every default filled in)."""
    from advinf.recipe import load_recipe

    rec = load_recipe(recipe, overrides, host=_host())
    click.echo(rec.to_toml(), nl=False)


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
