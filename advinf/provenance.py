"""What a library run was built from: components made by name (``advinf.create``) remember their registered kind,
name and options, so that a ``Trainer`` used without a recipe can still write one, the recipe ``load_run``
rebuilds the run from. A run with a component made otherwise (a user's own module) cannot be described so; it is
loaded with its modules given again (``load_run(RUN, nets=..., game=...)``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from advinf.interfaces import ORIGIN_ATTRIBUTE, WELL_KNOWN, Evaluator, Game, Logger, Networks
from advinf.settings import OptimizerSpec, TrainSpec

_ATTRIBUTE = ORIGIN_ATTRIBUTE


@dataclass(frozen=True)
class Origin:
    """A component's registered kind and name, and the options it was made with (as a recipe section holds them);
    for a module, also the names and shapes of its parameters and buffers when it was made (``layout``)."""

    kind: str
    name: str
    options: dict[str, Any]
    layout: tuple[tuple[str, tuple[int, ...]], ...] | None = None


def layout(module: nn.Module) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """The names and shapes of a module's parameters and buffers (its state dict's), in order."""
    return tuple((key, tuple(value.shape)) for key, value in module.state_dict().items())


def mark(component: object, origin: Origin) -> None:
    """Remember where ``component`` came from (nothing happens for an object that takes no attributes); a module's
    layout is taken now, so that one changed afterwards (``spectral_normalise``, a replaced layer) is not
    described by its name and options as if a rebuild gave the same module."""
    if isinstance(component, nn.Module):
        origin = dataclasses.replace(origin, layout=layout(component))
    with contextlib.suppress(AttributeError, TypeError):
        object.__setattr__(component, _ATTRIBUTE, origin)


def origin_of(component: object) -> Origin | None:
    """The registered kind, name and options ``component`` was made with (by a recipe or ``advinf.create``), or
    None for one made otherwise."""
    return getattr(component, _ATTRIBUTE, None)


def qualname(component: object) -> str:
    """The qualified name of ``component``'s class, as messages and library.json name it: ``mymodule.MyCritic``."""
    return f"{type(component).__module__}.{type(component).__qualname__}"


def describe(component: object, label: str, why: str = "not made by advinf.create") -> str:
    """How a component appears in messages: ``critic (mymodule.MyCritic, not made by advinf.create)``."""
    return f"{label} ({qualname(component)}, {why})"


def run_name(directory: str) -> str:
    """A recipe ``name`` for a run directory's name (``library`` when that is not a valid name)."""
    return directory if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}", directory) else "library"


def library_recipe(*, name: str, seed: int, nets: Networks, game: Game, data: object, train: TrainSpec,
                   optimizer: OptimizerSpec, optimizers: Mapping[str, OptimizerSpec],
                   evaluators: Mapping[str, Evaluator], eval_every: Mapping[str, int],
                   loggers: list[Logger] | None) -> tuple[dict[str, Any] | None, list[str]]:
    """The recipe of a library run, as a dict (``None`` if some component was not made by name) and the
    components that were not (``describe``). Evaluators and loggers made otherwise are left out of the recipe: a
    rebuilt run does not need them."""
    missing: list[str] = []
    recipe: dict[str, Any] = {"name": name, "seed": seed}

    def section(component: object, label: str, kind: str) -> dict[str, Any] | None:
        origin = origin_of(component)
        if origin is None or origin.kind != kind:
            missing.append(describe(component, label))
            return None
        if origin.layout is not None and isinstance(component, nn.Module) and layout(component) != origin.layout:
            missing.append(describe(component, label, f"changed since advinf.create made {kind} '{origin.name}': "
                                                      "its parameters and buffers are not the ones it was made with"))
            return None
        return {"name": origin.name, **origin.options}

    for label, component, kind in (("dataset", data, "dataset"), ("prior", nets.prior, "prior"),
                                   ("game", game, "game")):
        recipe[label] = section(component, label, kind)
    networks: dict[str, Any] = {}
    for net, module in nets.items():
        origin = origin_of(module)
        kind = origin.kind if origin is not None else "?"
        table = section(module, net, kind if kind in WELL_KNOWN.values() else "network")
        if table is None:
            continue
        if net in nets.frozen:
            table["trainable"] = False
        if WELL_KNOWN.get(net) == kind:
            recipe[net] = table
        else:
            networks[net] = {**table, "kind": kind}
    if networks:
        recipe["networks"] = networks
    recipe["evaluators"] = {}
    for label, evaluator in evaluators.items():
        origin = origin_of(evaluator)
        if origin is not None and origin.kind == "evaluator" and origin.name == label:
            every = eval_every.get(label, 0)
            recipe["evaluators"][label] = {**({"every": every} if every else {}), **origin.options}
    spec = train.model_dump(mode="json", exclude_none=True)
    if loggers is not None:
        named = [(origin_of(lg), lg) for lg in loggers]
        spec["loggers"] = [o.name for o, _ in named if o is not None and o.kind == "logger"]
        options = {o.name: o.options for o, _ in named if o is not None and o.kind == "logger" and o.options}
        if options:
            recipe["loggers"] = options
    recipe["train"] = spec
    recipe["optimizer"] = optimizer.as_table()
    if optimizers:
        recipe["optimizers"] = {p: {**o.as_table(), "inherit": False} for p, o in optimizers.items()}
    return (None if missing else recipe), missing


def changed_keys(old: dict[str, Any], new: dict[str, Any], ignore: tuple[str, ...] = ("train.progress",
                 "train.loggers", "loggers")) -> list[str]:
    """Dotted keys whose values differ between two resolved recipes (added and removed keys included); how
    progress is shown and where metrics go (``ignore``) may change on resume."""
    a, b = _flatten(old), _flatten(new)
    return sorted(k for k in set(a) | set(b) if not any(k == i or k.startswith(i + ".") for i in ignore)
                  and a.get(k, _MISSING) != b.get(k, _MISSING))


def summarised(keys: list[str], old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``keys`` (of :func:`changed_keys`) for a message: the keys of a table one side lacks whole (a schedule
    given or removed) as the table's one key."""
    return sorted({_absent_table(old, k) or _absent_table(new, k) or k for k in keys})


def _absent_table(d: dict[str, Any], key: str) -> str | None:
    """The dotted key of the outermost table on the way to ``key`` that ``d`` lacks (None if it has them all)."""
    parts = key.split(".")
    for i in range(1, len(parts)):
        d = d.get(parts[i - 1]) if isinstance(d, dict) else None  # type: ignore[assignment]
        if not isinstance(d, dict):
            return ".".join(parts[:i])
    return None


_MISSING = object()


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = list(v) if isinstance(v, tuple) else v
    return out


# -- local plugins a recipe names -------------------------------------------------------------------------

def is_plugin_path(plugin: str) -> bool:
    """Whether a recipe's `plugins` entry is a file (else a module name)."""
    return plugin.endswith(".py") or "/" in plugin


def plugin_paths(plugins: list[str], base_dir: Path, relative_to: Path | None = None) -> list[str]:
    """Local plugin files as absolute paths (or relative to ``relative_to``); module names unchanged."""
    out = []
    for p in plugins:
        if not is_plugin_path(p):
            out.append(p)
            continue
        path = (base_dir / p).resolve()
        out.append(os.path.relpath(path, relative_to.resolve()) if relative_to is not None else str(path))
    return out


def loaded_plugin_paths(plugins: list[str], base_dir: Path) -> list[str]:
    """``plugin_paths`` of the local plugins this process imported: what a printed command (resume, evaluate)
    names with --plugin. A run directory's recipe may list files it holds itself; a command that names one the
    user never loaded would have them import code that came with the run."""
    loaded = {str(Path(f).resolve()) for m in list(sys.modules.values())
              if isinstance(f := getattr(m, "__file__", None), str)}
    return [p for p in plugin_paths(plugins, base_dir) if (p in loaded if is_plugin_path(p) else p in sys.modules)]
