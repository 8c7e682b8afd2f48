"""The run session: runs a recipe into a run directory, fresh, resumed or stopped after N steps.

``run_recipe`` is what ``advinf run``, library users and the tests call; the CLI only parses arguments and
prints. Resuming reads the run's own saved recipe (a recipe given again must match it, unless changes are
allowed), restores the latest checkpoint, and continues exactly.
"""

from __future__ import annotations

import contextlib
import shlex
import sys
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from advinf import checkpoint as ckpt
from advinf import distributed
from advinf.atomic import read_text
from advinf.builder import Built, build
from advinf.data import Dataset, data_access_keys
from advinf.errors import UserError, described
from advinf.interfaces import Evaluator
from advinf.plugins import PluginHost, default_host
from advinf.provenance import changed_keys, summarised
from advinf.recipe import Recipe, load_recipe, plugin_paths, validate_recipe
from advinf.rundir import (
    CHECKPOINTS_DIR,
    EVAL_FILE,
    LIBRARY_FILE,
    RECIPE_FILE,
    check_target,
    default_run_dir,
    eval_dataset_changes,
    eval_entries,
    eval_options,
    evaluator_options,
    locked,
    prepare_target,
    read_eval,
    remove_if_empty,
    remove_unstarted,
    unlike_options,
)
from advinf.trainer import Trainer, TrainResult
from advinf.values import listed, parse_toml, toml_value


@dataclass
class RunOutcome:
    """What a session did: where, from which step, and the training result (``result.stopped`` says why it
    ended early, if it did)."""

    run_dir: Path
    recipe: Recipe
    trainer: Trainer
    result: TrainResult
    resumed_from: int | None = None


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_recipe(recipe: str | Path | Recipe | None = None, *, out: str | Path | None = None, resume: bool = False,
               allow_changes: bool = False, stop_after: int | None = None, overrides: Sequence[str] = (),
               progress: str | None = None, host: PluginHost | None = None, plugins: Sequence[str | Path] = (),
               log: Callable[[str], None] = _stderr, on_signal: Literal["pass_on", "return"] = "pass_on"
               ) -> RunOutcome:
    """Train the model ``recipe`` describes into ``out`` (default ``runs/NAME-TIMESTAMP``) and evaluate it.

    With ``resume`` the run in ``out`` continues from its latest checkpoint; ``recipe`` may then be None (the
    run's saved recipe is used, with ``overrides`` on top). ``stop_after`` ends at that step with a checkpoint.
    A run directory is data: the local plugins its recipe lists are not imported from there; ``plugins`` names
    the files to load (``--plugin``). A recipe file the user names loads its own ``plugins``. ``on_signal``: what
    follows the checkpoint a signal leads to, as for :meth:`Trainer.fit` (Ctrl-C raises KeyboardInterrupt by
    default; ``"return"``: the outcome's ``result.stopped`` names it).
    """
    host = host or default_host()
    overrides, plugins = listed(overrides), listed(plugins)
    for plugin in plugins:
        host.load_local(str(plugin))
    out_dir = Path(out) if out is not None else None
    saved: dict[str, Any] | None = None
    checkpoint = None
    changes: list[str] = []
    moved: list[str] = []
    old: dict[str, Any] = {}
    new: dict[str, Any] = {}
    if resume:
        if out_dir is None:
            raise UserError("--resume needs the run directory to continue (advinf run --resume RUN_DIR)")
        check_target(out_dir, resume=True)  # before reading anything from it
        path = ckpt.latest_checkpoint(out_dir / CHECKPOINTS_DIR)
        if path is not None:
            checkpoint = ckpt.load_checkpoint(path)
            saved = checkpoint.state.get("recipe")
            if stop_after is not None and checkpoint.step > stop_after:  # equal: applies --allow-changes only
                raise UserError(f"--stop-after {stop_after}: {out_dir} is already at step {checkpoint.step}; give a "
                                f"later step, or leave --stop-after out to train to the end")
        _refuse_incomplete_checkpoints(out_dir / CHECKPOINTS_DIR, checkpoint.step if checkpoint else None)
        read_eval(out_dir / EVAL_FILE)  # a damaged eval.json is refused before training, not found after it
        if saved is None:
            saved = _read_saved_recipe(out_dir)
    edited = False
    if recipe is None:
        if saved is None:
            raise UserError("give a RECIPE to run, or --resume RUN_DIR to continue a run")
        base = saved
        if checkpoint is not None and (out_dir / RECIPE_FILE).exists():
            # RUN/recipe.toml is the run's recipe file: an edit to it is a change, as a recipe given again is
            base = _read_saved_recipe(out_dir, "fix it to resume (an edit to it is a change to the run)")
            edited = bool(changed_keys(_normalised(saved, out_dir, host), _normalised(base, out_dir, host)))
        rec = validate_recipe(base, overrides, source=str(out_dir / RECIPE_FILE), base_dir=out_dir, host=host,
                              load_plugins=False)
    elif isinstance(recipe, Recipe):
        rec = recipe
    else:
        rec = load_recipe(recipe, overrides, host=host)
    if progress is not None:
        rec.spec.train.progress = progress  # type: ignore[assignment]
    if saved is not None:
        old, new = _normalised(saved, out_dir, host), rec.resolved()  # type: ignore[arg-type]
        changes = changed_keys(old, new)
        changes = [k for k in changes if k != "plugins"] if _same_plugins(saved, rec, out_dir) else changes  # type: ignore[arg-type]
        moved = _data_access_changes(changes, rec)  # where or how the data is read: not a change to the run
        changes = [k for k in changes if k not in moved]
        if changes and not allow_changes:
            why = (f" ({out_dir / RECIPE_FILE} differs from the recipe of the checkpoint of step {checkpoint.step}: "
                   "it was edited, or changed by an --allow-changes resume that stopped before its next checkpoint; "
                   "restore it to resume as the checkpoint was trained, or") if edited and checkpoint is not None \
                else ";"
            raise UserError(f"the recipe differs from the one {out_dir} was trained with, in: "
                            f"{', '.join(summarised(changes, old, new))}"
                            f"{why} pass --allow-changes to resume with it anyway" + (")" if edited else ""))
        kinds = [k for k in changes if k.startswith("optimizer") and k.endswith(".name")
                 and not k.endswith(".schedule.name")]  # a schedule may change: it is applied from this step
        if kinds and checkpoint is not None:
            raise UserError(f"{', '.join(kinds)} changed: a resumed run cannot change the kind of an optimiser (its "
                            "saved state belongs to the old one); start a new run, with init_from = "
                            f"\"{out_dir}\" in the network sections to keep the weights")
    if out_dir is None:
        out_dir = default_run_dir(rec.spec.name)
    # under torchrun (WORLD_SIZE > 1): join the process group; rank 0 alone writes and logs
    world = distributed.init_from_environment(rec.spec.train.device, rec.spec.train.dist_backend)
    held = contextlib.ExitStack()
    try:
        main = world is None or world.main
        if not main:
            log = _silent
        created = prepare_target(out_dir, resume=resume) if main else False  # before the (possibly slow) build
        if main:
            try:
                held.enter_context(locked(out_dir))  # one process trains into a run directory at a time
            except UserError:
                if created:
                    remove_if_empty(out_dir)
                raise
        try:
            trainer, notes = _start(rec, out_dir, host, resume, checkpoint, allow_changes, log, world,
                                    keep_recipe_file=recipe is None and not overrides, rewrite_recipe=bool(moved))
        except BaseException:
            if created:
                remove_if_empty(out_dir)  # a failed start leaves nothing behind
            raise
        resumed_from = trainer.step if checkpoint is not None else None
        if moved:
            checked = ("what was found matches what the run trained on" if checkpoint is None
                       or checkpoint.state.get("data") is not None else "this checkpoint does not describe its "
                       "data (an older advinf wrote it): make sure it is the data the run trained on")
            log("the data is read with " + ", ".join(f"{k} = {_value(new, k)} (was {_value(old, k)})" for k in moved)
                + f", which says where or how, not which data; {checked}")
        if checkpoint is not None and allow_changes:
            applied = summarised([k for k in changes if k.startswith("optimizer")], old, new)
            trainer.apply_optimizer_settings()
            if applied:
                log(f"applied the changed optimiser settings: {', '.join(applied)}")
        options = evaluator_options(rec.resolved(out_dir), trainer.evaluators)
        finished = _already_evaluated(trainer, out_dir, options) if checkpoint is not None and not changes else None
        if finished is None:
            for line in notes:
                log(line)
            if stop_after is not None and stop_after >= trainer.total_steps:  # accepted, but it stops nothing
                log(f"note: --stop-after {stop_after} is at or past the run's last step ({trainer.total_steps}): it "
                    "trains to its end and evaluates")
        else:
            log(f"{out_dir} had already finished at step {trainer.step}, and eval.json holds its evaluation: nothing "
                f"to do (advinf evaluate {shlex.quote(str(out_dir))} runs the evaluators again; --set train.steps=N "
                "--allow-changes trains on)")
        try:
            result = finished or trainer.fit(stop_after=stop_after, on_signal=on_signal)
        except Exception:
            if created and trainer.step == 0:  # failed before its first update (a compile error, say): what it
                remove_unstarted(out_dir)  # wrote (its recipe, the step-0 pictures) is no run to resume
            raise
    finally:
        held.close()
        distributed.shutdown(world)
    return RunOutcome(out_dir, rec, trainer, result, resumed_from)


def _already_evaluated(trainer: Trainer, out_dir: Path, evaluators: dict[str, dict[str, Any]]
                       ) -> TrainResult | None:
    """The result of a run resumed after its last step whose eval.json holds every one of the recipe's
    ``evaluators`` at that step, computed with the recipe's options (resuming a finished run would otherwise redo
    its whole final evaluation); None if there is work left. Every rank of a data-parallel run reads the same
    file, so all decide alike."""
    if trainer.step < trainer.total_steps:
        return None
    data = read_eval(out_dir / EVAL_FILE)
    results, steps = eval_entries(data)
    if any(steps.get(name) != trainer.step for name in evaluators):
        return None  # e.g. the final evaluation was interrupted: it runs again
    stamped = eval_options(data)  # an entry without options is of an older advinf: taken as the recipe's
    if any(unlike_options(stamped.get(name, options), options) for name, options in evaluators.items()):
        return None  # e.g. `advinf evaluate --set evaluators.NAME.key=value` at the last step: not the recipe's
    changed = eval_dataset_changes(data)
    if any(changed.get(name) for name in evaluators):
        return None  # `advinf evaluate --set dataset.KEY=...`: computed on other data than the run's
    return TrainResult(0, 0.0, eval={n: results[n] for n in evaluators}, run_dir=out_dir,
                       checkpoint=ckpt.latest_checkpoint(out_dir / CHECKPOINTS_DIR))


def _silent(message: str) -> None:
    """The log of ranks other than 0."""


def _start(rec: Recipe, out_dir: Path, host: PluginHost, resume: bool, checkpoint: ckpt.Checkpoint | None,
           allow_changes: bool, log: Callable[[str], None], world: distributed.World | None = None,
           keep_recipe_file: bool = False, rewrite_recipe: bool = False) -> tuple[Trainer, list[str]]:
    """Build the recipe and a trainer writing into ``out_dir``, restored from ``checkpoint`` if given, and the
    lines to log if it trains (a speed hint, evaluators that will skip; a finished run does not train). In a
    data-parallel ``world``, ranks other than 0 train without a run directory or evaluators. ``keep_recipe_file``:
    the recipe is RUN/recipe.toml as it stands (no recipe given, no ``--set``), so the file is not rewritten and
    keeps the user's comments; else ``rewrite_recipe`` writes a resumed run's (its data is read otherwise)."""
    built = build(rec, host=host, init=checkpoint is None)
    main = world is None or world.main
    device = built.device if world is None else distributed.rank_device(built.device, world.local_rank)
    trainer = _trainer(rec, built, evaluators=built.evaluators if main else {}, run_dir=out_dir if main else None,
                       device=device, recipe=rec.resolved(out_dir), resume=resume,
                       rank=world.rank if world else 0, world_size=world.world_size if world else 1)
    if checkpoint is not None:
        # before anything is written: a checkpoint that does not fit changes nothing. Its recipe was compared
        # above (normalised, with --allow-changes), so the trainer does not compare it again
        trainer.restore(checkpoint, allow_changes=True, allow_data_changes=allow_changes)
    if trainer.run is None:
        return trainer, []
    skipping = skip_warnings(trainer.evaluators, trainer.data)  # before anything is written: it may fail
    recipe_file = out_dir / RECIPE_FILE
    if (checkpoint is None or allow_changes or rewrite_recipe) and not (keep_recipe_file and recipe_file.is_file()):
        trainer.run.write_recipe(rec.to_toml(out_dir))  # else RUN/recipe.toml is the recipe, kept as it is written
    if checkpoint is not None:
        log(f"resuming {out_dir} from step {trainer.step}")
    elif resume:
        trainer.run.truncate_after(0)  # lines of the steps about to be redone
        log(f"warning: {out_dir} has no checkpoint yet; starting it again from step 0")
    else:
        log(f"run directory: {out_dir}")
    hint = trainer.speed_hint()
    return trainer, ([] if hint is None else [hint]) + skipping


def _data_access_changes(changes: list[str], rec: Recipe) -> list[str]:
    """The ``changes`` to a resumed run that only say where or how its data is read (options its dataset marks
    :class:`~advinf.data.DataAccess`, e.g. ``dataset.root`` after the data moved)."""
    if "dataset.name" in changes:
        return []
    keys = data_access_keys(rec.options["dataset"])
    return [k for k in changes if k.startswith("dataset.") and k.split(".")[1] in keys]


def _value(recipe: dict[str, Any], key: str) -> str:
    """The value at dotted ``key`` of a resolved recipe, as TOML (``-`` where it has none)."""
    value: Any = recipe
    for part in key.split("."):
        value = value.get(part, _NONE) if isinstance(value, dict) else _NONE
    return "-" if value is _NONE else toml_value(value)


_NONE = object()


def skip_warnings(evaluators: dict[str, Evaluator], data: Dataset) -> list[str]:
    """A warning line for each evaluator that will report ``skipped`` on ``data`` (``Evaluator.skip_reason``)."""
    return [f"warning: evaluator '{name}' will report 'skipped' on this data: {why}"
            for name, ev in evaluators.items() if (why := _skip_reason(name, ev, data)) is not None]


def _skip_reason(name: str, evaluator: Evaluator, data: Dataset) -> str | None:
    try:
        return evaluator.skip_reason(data)
    except UserError:
        raise
    except Exception as exc:  # the evaluator's code failing: its bug, said as its, not a traceback
        raise UserError(f"evaluator '{name}': skip_reason raised {described(exc)} (a bug in the evaluator)") from exc


def _trainer(rec: Recipe, built: Built, **where: Any) -> Trainer:
    """The trainer of a built recipe; ``where``: what depends on the run (evaluators, run_dir, device, recipe,
    resume, rank, world_size)."""
    spec = rec.spec
    evaluators = where.get("evaluators", {})  # none on the ranks other than 0 of a data-parallel run
    eval_every = {name: n for name, n in rec.eval_every.items() if name in evaluators}
    return Trainer(built.nets, built.game, built.dataset, train=spec.train, optimizer=spec.optimizer,
                   optimizers=rec.optimizers, eval_every=eval_every, seed=spec.seed, condition=built.condition,
                   loggers=built.loggers, **where)


def check_build(rec: Recipe, host: PluginHost | None = None) -> list[str]:
    """What ``advinf run`` does with ``rec`` before it writes anything, and nothing more: build every component
    (data, networks, ``init_from``, evaluators, loggers) and take one trial step on copies of the networks. Raises
    what a run would raise; returns lines that say what was built. Writes nothing."""
    built = build(rec, host=host or default_host())
    spec = rec.spec
    trainer = _trainer(rec, built, evaluators=built.evaluators, device=built.device, recipe=rec.resolved())
    data = built.dataset
    heldout = f", {len(data.heldout)} held out" if data.heldout is not None else ""
    lines = [f"dataset: {len(data.train)} training examples of shape {tuple(data.sample_shape)}{heldout}"]
    lines += [f"{name}: {type(module).__name__}, {sum(p.numel() for p in module.parameters()):,} parameters"
              for name, module in built.nets.items()]
    if built.evaluators:
        lines.append(f"evaluators: {', '.join(built.evaluators)}")
    lines.append(f"one trial step on {trainer.device} passed ({trainer.total_steps:,} steps of "
                 f"{spec.train.batch_size} to train)")
    return lines + skip_warnings(trainer.evaluators, trainer.data)


def _refuse_incomplete_checkpoints(root: Path, step: int | None) -> None:
    """Resuming from ``step`` (None: no complete checkpoint, from step 0) would write over the incomplete
    checkpoints of later steps: their weights may be all that is left of the training, so they are never
    discarded silently."""
    why = ckpt.incomplete_checkpoints(root, after=step)
    if why is None:
        return
    if step is None:
        names = ", ".join(sorted(p.name for p in root.glob("step_*")))
        raise UserError(f"{root} holds {names}, but none is a complete checkpoint ({why}); resuming would start "
                        f"again from step 0 and write over them: move them out of {root} first if that is what "
                        f"you want")
    raise UserError(f"{root} holds later checkpoints than its newest complete one (step {step}) that are not "
                    f"complete ({why}); resuming from step {step} would write over them: move them out of {root} "
                    "first if that is what you want")


def _read_saved_recipe(run_dir: Path, remedy: str = "give the recipe again to resume") -> dict[str, Any]:
    path = run_dir / RECIPE_FILE
    if not path.exists() and (run_dir / LIBRARY_FILE).is_file():  # a Trainer's run of the user's own modules
        raise UserError(f"{run_dir} was trained from Python with modules advinf cannot rebuild by name (its "
                        f"{LIBRARY_FILE} names them), so `advinf run --resume` cannot continue it: in Python, "
                        "build the Trainer again with the same modules, Trainer(..., run_dir=RUN, resume=True), "
                        "then trainer.restore(advinf.checkpoint.load_checkpoint(advinf.checkpoint."
                        "latest_checkpoint(RUN / \"checkpoints\"))) and trainer.fit()")
    try:
        return parse_toml(read_text(path))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UserError(f"{path} cannot be read ({exc}); {remedy}") from None


def _normalised(saved: dict[str, Any], run_dir: Path, host: PluginHost) -> dict[str, Any]:
    """A saved recipe as this version resolves it (older spellings and defaults filled in), so that only real
    changes are reported; as saved if it no longer validates. Imports nothing."""
    try:
        return validate_recipe(saved, source=str(run_dir / RECIPE_FILE), base_dir=run_dir, host=host,
                               load_plugins=False).resolved()
    except UserError:
        return saved


def _same_plugins(saved: dict[str, Any], rec: Recipe, run_dir: Path) -> bool:
    """Whether the saved recipe's local plugins are the same files as ``rec``'s (saved paths are relative to
    the run, or absolute in runs written by older versions)."""
    listed = saved.get("plugins", [])
    return isinstance(listed, list) and all(isinstance(p, str) for p in listed) and \
        plugin_paths(listed, run_dir) == plugin_paths(rec.spec.plugins, rec.base_dir)
