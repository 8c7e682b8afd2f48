"""Using a trained run: ``load_run(RUN_DIR)`` gives the trained model (networks in eval mode, with its game)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from advinf import checkpoint as ckpt
from advinf.atomic import read_text
from advinf.builder import Built, build, build_dataset, build_evaluators
from advinf.conditions import Condition
from advinf.data import (
    DataDescription,
    Dataset,
    data_access_keys,
    describe,
    described_dataset,
    other_sizes,
    unlike_description,
)
from advinf.errors import RecipeError, UserError
from advinf.evaluation import EvaluationFailed, evaluate
from advinf.interfaces import BuildContext, Evaluator, Game, Networks, TrainedModel, check_networks
from advinf.plugins import PluginHost, default_host
from advinf.provenance import changed_keys
from advinf.recipe import Recipe, build_game, read_toml, validate_recipe
from advinf.rundir import (
    CHECKPOINTS_DIR,
    EVAL_FILE,
    LIBRARY_FILE,
    RECIPE_FILE,
    evaluator_options,
    is_run_dir,
    merge_eval,
    read_eval,
    seed_runs,
)
from advinf.settings import resolve_device, set_fp32_precision
from advinf.values import listed, parse_json, toml_value


@dataclass(kw_only=True)
class LoadedRun(TrainedModel):
    """A trained run: the model (eval mode) plus the recipe, dataset and step it comes from. Loaded into modules
    the caller gives (``load_run(RUN, nets=..., game=...)``), it has no recipe, dataset or ``built``. ``built``
    holds no evaluators or loggers: :func:`run_evaluators` builds the recipe's evaluators when they are wanted.

    A run whose data is not where its recipe says is still loaded, from what its checkpoint records of the data
    (:func:`advinf.data.describe`): it samples and encodes, and ``dataset`` raises a UserError saying why the data
    cannot be used and how to say where it is now (``load_run(RUN, data=["dataset.root=PATH"])``)."""

    recipe: Recipe | None
    step: int
    run_dir: Path
    built: Built | None
    #: The run's dataset (None where the run was loaded into the caller's modules, or where ``data_problem`` says
    #: why it cannot be used); read it as ``dataset``.
    _dataset: Dataset | None = field(default=None, repr=False)
    #: Why the run's data cannot be used here (not found, or not what the run trained on), or None.
    data_problem: str | None = None
    #: The dataset keys given to ``load_run(data=...)`` that differ from the run's recipe, with their values.
    data_changes: dict[str, Any] = field(default_factory=dict)

    @property
    def dataset(self) -> Dataset | None:
        """The run's dataset; a UserError when it cannot be used here (``data_problem``)."""
        if self.data_problem is not None:
            raise UserError(self.data_problem)
        return self._dataset


def load_run(run_dir: str | Path, device: str | torch.device | None = None, checkpoint: str | Path | None = None,
             host: PluginHost | None = None, plugins: Sequence[str | Path] = (), *, nets: Networks | None = None,
             game: Game | None = None, condition: Condition | None = None, data: Sequence[str] | str = ()
             ) -> LoadedRun:
    """Load the newest checkpoint of ``run_dir`` (or ``checkpoint``), rebuilt from the recipe it was trained with.

    With ``nets`` and ``game`` (and ``condition`` for a conditional game) the weights are loaded into these
    modules instead, and nothing is rebuilt: how a run trained from Python with modules of one's own (not made by
    ``advinf.create``) is loaded. The networks are matched by name; ``device`` then defaults to ``auto``.

    With ``train.ema`` the averaged networks are loaded (what samples and evaluation used). Sampling, encoding
    and reconstruction go through the run's game (``run.sample(...)``, ``run.reconstruct(x, y)``), so a
    conditional model is used with its conditions.

    Nothing is unpickled and nothing is imported: weights come from safetensors, the recipe from JSON, and the
    run's local plugins (code) are loaded only when named in ``plugins`` (the CLI's ``--plugin``). ``device``
    defaults to the recipe's ``train.device`` (``auto``).

    ``data`` holds ``dataset.KEY=VALUE`` settings (TOML values) for where the run's data is now, e.g.
    ``["dataset.root=/data/svhn"]`` after it moved; the data found is checked against what the run trained on.
    Without them, a run whose data is missing loads all the same (see :class:`LoadedRun`).
    """
    run_dir = Path(run_dir)
    if not is_run_dir(run_dir):
        if not run_dir.exists():
            raise UserError(f"{run_dir}: no such run directory")
        seeds = seed_runs(run_dir)
        raise UserError(f"{run_dir} holds a group of seeds ({', '.join(p.name for p in seeds)}), not one run; give "
                        f"one of them (e.g. {seeds[0]})" if seeds else
                        f"{run_dir} is not an advinf run directory (no {RECIPE_FILE})")
    path = Path(checkpoint) if checkpoint is not None else ckpt.latest_checkpoint(run_dir / CHECKPOINTS_DIR)
    if path is None:
        why = ckpt.incomplete_checkpoints(run_dir / CHECKPOINTS_DIR)
        raise UserError(f"{run_dir} has no checkpoint yet (nothing under {run_dir / CHECKPOINTS_DIR})" if why is None
                        else f"{run_dir} has no complete checkpoint under {run_dir / CHECKPOINTS_DIR}: {why}")
    if nets is not None or game is not None:
        if nets is None or game is None:
            raise UserError("load_run(RUN, nets=..., game=...) needs both the networks and the game")
        if data:
            raise UserError("load_run(RUN, nets=..., game=...) loads no dataset; `data` is for runs rebuilt from "
                            "their recipe")
        return _load_into(run_dir, path, nets, game, condition, device)
    if not (run_dir / RECIPE_FILE).is_file():
        raise UserError(_no_recipe_message(run_dir))
    loaded = ckpt.load_checkpoint(path)
    host = host or default_host()
    for plugin in listed(plugins):
        host.load_local(str(plugin))
    recipe = recipe_of(loaded, run_dir, host)
    dev = _run_device(run_dir, device, recipe.spec.train.device)
    set_fp32_precision(dev, recipe.spec.train.tf32)  # evaluate in the precision the run trained in
    dataset, problem, changes = _run_data(recipe, loaded, run_dir, data, host, dev)
    if changes:  # allowed (a model evaluated on other data), but never silently
        was = recipe.resolved(run_dir)["dataset"]
        told = ", ".join(f"dataset.{k} = {toml_value(v)}, was {toml_value(was[k]) if k in was else 'unset'}"
                         for k, v in changes.items())
        warnings.warn(f"{run_dir}: loaded with other data than it trained on ({told}): what uses its dataset "
                      "(evaluators, reconstructions) sees that data", stacklevel=2)
    built = build(recipe, host=host, device=dev, init=False, evaluators=False, loggers=False, dataset=dataset)
    tensors = loaded.tensors["model"]
    for name, module in built.nets.items():
        prefix = ckpt.network_prefix(tensors, name)
        ckpt.load_module_state(module, prefix or name, tensors, path)
    check_networks(built.game, built.nets)
    built.nets.to(dev).train(False)
    return LoadedRun(nets=built.nets, game=built.game, device=dev, condition=built.condition, recipe=recipe,
                     _dataset=None if problem else dataset, data_problem=problem, data_changes=changes,
                     step=loaded.step, run_dir=run_dir, built=built)


def _run_data(recipe: Recipe, loaded: ckpt.Checkpoint, run_dir: Path, data: Sequence[str] | str, host: PluginHost,
              device: torch.device) -> tuple[Dataset, str | None, dict[str, Any]]:
    """The run's dataset (with the ``data`` settings), the dataset keys they change, and None; or, where the data
    cannot be used and the checkpoint describes it, a stand-in built from that description and why. Data asked
    for by ``data`` settings that cannot be used is an error at once."""
    data = listed(data)  # one setting given bare
    bad = [o for o in data if not o.strip().startswith("dataset.")]
    if bad:
        raise UserError(f"the run's data is set with dataset.KEY=VALUE (where it is now), not: {', '.join(bad)}")
    advice = ("Say where it is now with --set dataset.KEY=VALUE, e.g. --set dataset.root=PATH (in Python: "
              "load_run(RUN, data=[\"dataset.root=PATH\"]))")
    data_recipe, changes = recipe, {}
    if data:
        resolved = recipe.resolved(run_dir)
        data_recipe = validate_recipe(resolved, data, source=f"{run_dir}'s data (with --set)", base_dir=run_dir,
                                      host=host, load_plugins=False, environment=False)
        before, after = resolved["dataset"], data_recipe.resolved(run_dir)["dataset"]
        # where or how the data is read is no change to it (the data found is checked below all the same)
        access = data_access_keys(data_recipe.options["dataset"]) if after["name"] == before["name"] else ()
        changes = {k: v for k, v in after.items() if before.get(k) != v and k not in access}
    stored = loaded.state.get("data")
    trained = DataDescription.model_validate(stored) if stored is not None else None
    try:
        dataset = build_dataset(data_recipe, host, device)
    except RecipeError as exc:
        if not all(p.key.startswith("dataset.") for p in exc.problems):
            raise
        why = "; ".join(p.render() for p in exc.problems)
        if trained is None or data:
            raise UserError(f"the data of run '{run_dir}' cannot be loaded: {why}\n{advice}") from None
    else:
        if trained is None:
            return dataset, None, changes
        reads_labels = build_game(recipe.spec, recipe.options, host).reads_labels  # else labels may differ
        try:
            found = describe(dataset)
            unlike = unlike_description(found, trained, labels=reads_labels, sizes=False)
            if unlike is None and not changes and (sizes := other_sizes(found, trained)) is not None:
                warnings.warn(f"{run_dir}: the data found is not the data it trained on: {sizes}; what uses its "
                              "dataset (evaluators, reconstructions) sees the data found", stacklevel=3)
        except ValueError as exc:
            unlike = str(exc)
        if unlike is None:
            return dataset, None, changes
        why = f"the data found is not what the run trained on: {unlike}"
        if data:
            raise UserError(f"the data of run '{run_dir}' cannot be used: {why}\n{advice}")
    return (described_dataset(trained), f"this needs the data of run '{run_dir}', which cannot be used here: {why}\n"
                                        f"{advice}",
            changes)


def _load_into(run_dir: Path, path: Path, nets: Networks, game: Game, condition: Condition | None,
               device: str | torch.device | None) -> LoadedRun:
    """A checkpoint's weights (the moving averages where kept) in the caller's networks."""
    loaded = ckpt.load_checkpoint(path)
    tensors = loaded.tensors["model"]
    for name, module in nets.items():
        prefix = ckpt.network_prefix(tensors, name)
        if prefix is None:
            raise UserError(f"{path} holds no network '{name}' (it holds: "
                            f"{', '.join(ckpt.network_names(tensors)) or 'none'}); name the networks as in training")
        ckpt.load_module_state(module, prefix, tensors, path)
    if game.conditioned and condition is None:
        raise UserError("a conditional game needs the Condition its networks were built with (condition=...)")
    check_networks(game, nets)
    dev = resolve_device(device if device is not None else "auto", "device")
    nets.to(dev).train(False)
    return LoadedRun(nets=nets, game=game, device=dev, condition=condition, recipe=None, step=loaded.step,
                     run_dir=run_dir, built=None)


def _no_recipe_message(run_dir: Path) -> str:
    """Why a run without a recipe cannot be rebuilt by name, and what to do."""
    try:
        info = parse_json(read_text(run_dir / LIBRARY_FILE))
        missing = [str(m) for m in info["not_by_name"]][:8]
    except (OSError, ValueError, KeyError, TypeError):
        missing = []
    what = f": {'; '.join(missing)}" if missing else ""
    return (f"{run_dir} was trained from Python with components that advinf cannot rebuild by name{what}. Load it "
            "into the same kind of modules: advinf.load_run(RUN, nets=Networks(prior, encoder=..., ...), "
            "game=...) (see docs/library.md)")


def evaluate_run(run_dir: str | Path, names: Sequence[str] | None = None, overrides: Sequence[str] = (), *,
                 device: str | torch.device | None = None, plugins: Sequence[str | Path] = (),
                 host: PluginHost | None = None) -> dict[str, Any]:
    """Run evaluators on a trained run and merge their results into its eval.json (earlier entries are kept).

    ``names`` picks registered evaluators (the run's recipe's options where it configures them, else their
    defaults; None: the recipe's own); ``overrides`` are ``evaluators.NAME.key=value`` settings, and
    ``dataset.KEY=VALUE`` settings for where the run's data is now (as :func:`load_run`'s ``data``; the entries
    computed with them record the dataset keys that differ from the run's recipe).
    """
    run_dir = Path(run_dir)
    overrides, plugins = listed(overrides), listed(plugins)
    names = None if names is None else listed(names)
    read_eval(run_dir / EVAL_FILE)  # refused before the evaluators run, not after
    bad = [o for o in overrides if not o.strip().startswith(("evaluators.", "dataset."))]
    if bad:
        raise UserError(f"--set with advinf evaluate changes evaluators (evaluators.NAME.key=value) and where the "
                        f"run's data is (dataset.KEY=VALUE), not: {', '.join(bad)}")
    data = [o for o in overrides if o.strip().startswith("dataset.")]
    overrides = [o for o in overrides if o not in data]
    run = load_run(run_dir, device=device, plugins=plugins, host=host, data=data)
    data = run.recipe.resolved(run_dir)
    configured = data.get("evaluators", {})
    data["evaluators"] = dict(configured) if names is None else {n: configured.get(n, {}) for n in names}
    if not data["evaluators"]:
        raise UserError(f"{run_dir}'s recipe names no evaluators: choose some with --with NAME[,NAME...] "
                        "(evaluate_run(RUN, names=[...]) in Python; advinf list-plugins lists them)")
    unpicked = [o for o in overrides if len(parts := o.split("=", 1)[0].strip().split(".")) > 1
                and parts[1] not in data["evaluators"]]
    if unpicked:  # it would add that evaluator to those run
        raise UserError(f"--set {', '.join(unpicked)}: that evaluator is not among those to run "
                        f"({', '.join(data['evaluators'])}); add it to --with (names=[...] in Python), or leave the "
                        "setting out")
    recipe = validate_recipe(data, overrides, source=f"{run_dir}'s recipe (its checkpoint's; with --with/--set)",
                             base_dir=run_dir, host=host, load_plugins=False, environment=False)
    evaluators = run_evaluators(run, recipe, host)
    failed = None
    try:
        results = evaluate(run, evaluators, run.dataset.to(run.device), run_dir)
    except EvaluationFailed as exc:  # the others' results are kept, then the error goes on
        results, failed = exc.results, exc
    if results:
        merge_eval(run_dir / EVAL_FILE, results, run.step, evaluator_options(recipe.resolved(run_dir), evaluators),
                   data=run.data_changes)
    if failed is not None:
        kept = f" The others' results are merged into {run_dir / EVAL_FILE}." if results else ""
        raise EvaluationFailed(f"{failed}.{kept}", results, failed.failed) from failed.__cause__
    return results


def saved_recipe(run_dir: str | Path, host: PluginHost | None = None) -> Recipe | None:
    """The recipe of the run in ``run_dir`` as its recipe.toml says, validated, or None when there is none. The
    local plugins it lists are not imported (a run directory is data). For evaluators that rebuild part of a run
    while it trains (``advinf.build`` of it), as the probes' untrained baseline does."""
    path = Path(run_dir) / RECIPE_FILE
    if not path.is_file():
        return None
    return validate_recipe(read_toml(path), source=str(path), base_dir=Path(run_dir), host=host, load_plugins=False,
                           environment=False)  # a run trained on a GPU reads back on a machine without one


def run_evaluators(run: LoadedRun, recipe: Recipe | None = None, host: PluginHost | None = None
                   ) -> dict[str, Evaluator]:
    """The evaluators of ``recipe`` (default: the run's own) built for a loaded run: its dataset, prior, device."""
    recipe = recipe or run.recipe
    if recipe is None:
        raise UserError("this run was loaded into modules of the caller's and has no recipe to take evaluators from")
    ctx = BuildContext(dataset=run.dataset, prior=run.prior, device=run.device, seed=recipe.spec.seed)
    return build_evaluators(recipe, ctx, host)


def recipe_of(loaded: ckpt.Checkpoint, run_dir: Path, host: PluginHost | None = None) -> Recipe:
    """The recipe a checkpoint was trained with (stored in it as JSON). Where it fails this advinf's checks (a run
    of an older advinf, say, with an option since renamed), RUN/recipe.toml is used instead if it passes them,
    with a warning: a user can fix that file, never the checkpoint (its state.json is checksummed)."""
    data: dict[str, Any] | None = loaded.state.get("recipe")
    if data is None:
        raise UserError(f"{loaded.path} holds no recipe; it was not written by advinf run")
    try:
        return validate_recipe(data, source=f"{loaded.path}/state.json", base_dir=run_dir, host=host,
                               load_plugins=False, environment=False)  # no training-only needs (loggers) checked
    except RecipeError as stored:
        if any(p.key.endswith(".name") or p.key == "name" for p in stored.problems):
            raise  # a component this machine lacks (a plugin not installed): no other recipe can stand in for it
        path = run_dir / RECIPE_FILE
        try:
            recipe = validate_recipe(read_toml(path), source=str(path), base_dir=run_dir, host=host,
                                     load_plugins=False, environment=False)
        except UserError as edited:
            raise UserError(f"{stored.render()}\nThe recipe stored with the checkpoint fails this advinf's checks "
                            f"(written by another version of advinf?). Fix those keys in {path}, which is used "
                            f"instead once it passes them; now it does not:\n{edited}") from None
        sections = {p.key.rsplit(".", 1)[0] for p in stored.problems}
        other = [k for k in changed_keys(data, recipe.resolved(run_dir))
                 if _holds(data, k) and k.rsplit(".", 1)[0] not in sections]  # keys new defaults add: not changes
        if other:
            raise UserError(f"{stored.render()}\nThe recipe stored with the checkpoint fails this advinf's checks, "
                            f"and {path}, which would be used instead, differs from it in more than those sections: "
                            f"{', '.join(other[:8])}. The weights would be loaded into another model; make {path} "
                            f"the checkpoint's recipe but for those keys") from None
        warnings.warn(f"the recipe stored in {loaded.path}/state.json fails this advinf's checks "
                      f"({'; '.join(p.render() for p in stored.problems)[:300]}); using {path} instead", stacklevel=2)
        return recipe


def _holds(data: dict[str, Any], dotted: str) -> bool:
    """Whether the nested ``data`` has the dotted key."""
    for part in dotted.split("."):
        if not isinstance(data, dict) or part not in data:
            return False
        data = data[part]
    return True


def _run_device(run_dir: Path, device: str | torch.device | None, trained_on: str) -> torch.device:
    """The device to load a run on: the one asked for, else the run's own ``train.device`` when this machine has
    it (a run trained on a GPU is loaded elsewhere with ``device="cpu"``, the CLI's ``--device cpu``)."""
    if device is not None:
        return resolve_device(device, "device")
    try:
        return resolve_device(trained_on)
    except UserError:
        raise UserError(f"{run_dir} was trained with train.device = '{trained_on}', which this machine does not "
                        f"have; load it here with --device cpu (library: load_run(..., device=\"cpu\"))") from None
