"""Recipes: TOML files that combine registered components by name, validated in three phases.

Phase 1 checks the skeleton (sections, train settings; unknown keys forbidden everywhere). Phase 2 looks
up each component section's ``name`` in the plugin registry and validates the rest of the section against
the options model that component's plugin registered, keeping the recipe key in every error. Phase 3 builds
the game (games are cheap and need no data) and checks that the recipe fits it: the networks it needs and no
others, optimisers only for its players, labelled data and label-taking networks where it needs them.
"""

from __future__ import annotations

import copy
import dataclasses
import tomllib
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w
import torch
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError, model_validator

from advinf.errors import Problem, RecipeError, UserError, suggest
from advinf.interfaces import WELL_KNOWN, BuildContext, Game, validation_context
from advinf.options import check_options, problems_from
from advinf.plugins import EVALUATOR_KEYS, NETWORK_KEYS, PluginHost, default_host
from advinf.provenance import Origin, mark, plugin_paths
from advinf.settings import (
    RECIPE_CONTEXT,
    OptimizerSpec,
    TrainSpec,
    cuda_graph_refusal,
    optimizer_option_problems,
    resolve_device,
)
from advinf.values import MAX_NESTING, listed, non_finite, parse_toml

__all__ = ["OptimizerSpec", "Recipe", "RecipeSpec", "TrainSpec", "load_recipe", "validate_recipe"]

#: Sections that are not networks, in build order, and the component kind each names.
COMPONENT_SECTIONS: dict[str, str] = {"dataset": "dataset", "prior": "prior", "game": "game"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ComponentSpec(BaseModel):
    """``name`` of a registered component; every other key is one of its options."""

    model_config = ConfigDict(extra="allow")
    name: str

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class NetworkSpec(ComponentSpec):
    """A network section: the component, plus whether it trains and where its first weights come from."""

    kind: str | None = Field(default=None, description="component kind (encoder, decoder, critic); [networks.*] only")
    trainable: StrictBool = Field(default=True, description="false: frozen (no gradients, eval mode) for the whole run")
    init_from: str | None = Field(default=None, min_length=1, description="a run directory to take the initial "
                                  "weights from (its latest checkpoint; the moving average when it kept one)")
    init_network: str | None = Field(default=None, min_length=1, description="which network of that run (default: "
                                     "the same name)")

    @model_validator(mode="after")
    def _idle_init_network(self) -> NetworkSpec:
        if self.init_network is not None and self.init_from is None:  # a warning: such a run still resumes
            warnings.warn(f"init_network = {self.init_network!r} does nothing without init_from (the run to take "
                          "the weights from)", stacklevel=2)
        return self


class EvaluatorSpec(BaseModel):
    """An evaluator section: ``every`` N training steps (0: at the end only); the rest are its options."""

    model_config = ConfigDict(extra="allow")
    every: StrictInt = Field(default=0, ge=0)

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class RecipeSpec(_Strict):
    """The skeleton of a recipe (component options are validated in phase 2)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,99}$",
                      description="names the run (runs/NAME-TIMESTAMP): letters, digits, '.', '_', '+', '-'")
    seed: int = Field(default=0, ge=0, lt=2**32, description="seeds initialisation, noise and the data order")
    plugins: list[str] = Field(default_factory=list)
    dataset: ComponentSpec
    prior: ComponentSpec
    encoder: NetworkSpec | None = None
    decoder: NetworkSpec | None = None
    critic: NetworkSpec | None = None
    networks: dict[str, NetworkSpec] = Field(default_factory=dict)
    game: ComponentSpec
    evaluators: dict[str, EvaluatorSpec] = Field(default_factory=dict)
    loggers: dict[str, dict[str, Any]] = Field(default_factory=dict, description="options of the loggers that "
                                               "train.loggers chooses, by name")
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    optimizers: dict[str, dict[str, Any]] = Field(default_factory=dict)
    train: TrainSpec

    def network_specs(self) -> dict[str, tuple[str, str, NetworkSpec]]:
        """Network name -> (recipe section, component kind, spec), well-known sections first."""
        out: dict[str, tuple[str, str, NetworkSpec]] = {}
        for name, kind in WELL_KNOWN.items():
            spec = getattr(self, name)
            if spec is not None:
                out[name] = (name, kind, spec)
        for name, spec in self.networks.items():
            out[name] = (f"networks.{name}", spec.kind or "", spec)
        return out


@dataclass
class Recipe:
    """A validated recipe: the skeleton plus each component's validated options."""

    spec: RecipeSpec
    options: dict[str, BaseModel]  # "critic" / "networks.x" / "evaluators.mode_coverage" -> options instance
    source: str
    base_dir: Path
    optimizers: dict[str, OptimizerSpec] = field(default_factory=dict)  # per player, merged over `optimizer`
    imported: list[str] = field(default_factory=list)  # the local plugins this validation imported

    def component(self, section: str) -> tuple[str, BaseModel] | None:
        """(registered name, options) of a component section, or None if the section is absent."""
        if section.startswith(("evaluators.", "loggers.")):
            name = section.split(".", 1)[1]
            return name, self.options[section]
        if section.startswith("networks."):
            return self.spec.networks[section.split(".", 1)[1]].name, self.options[section]
        comp = getattr(self.spec, section)
        return None if comp is None else (comp.name, self.options[section])

    @property
    def eval_every(self) -> dict[str, int]:
        return {name: ev.every for name, ev in self.spec.evaluators.items()}

    def resolved(self, relative_to: Path | None = None) -> dict[str, Any]:
        """The recipe with every default filled in: what is saved in runs and checkpoints.

        Local plugin files are absolute paths, or relative to ``relative_to`` (a run directory, so that the run
        can be moved with its plugins beside it)."""
        out = self.spec.model_dump(mode="json", exclude_none=True,
                                   exclude={"dataset", "prior", "game", "networks", "evaluators", "optimizer",
                                            "optimizers", "loggers", *WELL_KNOWN})
        for section in ("dataset", "prior"):
            out[section] = {"name": getattr(self.spec, section).name, **_dump(self.options[section])}
        networks: dict[str, Any] = {}
        for name, (section, _kind, net) in self.spec.network_specs().items():
            reserved = net.model_dump(mode="json", exclude_none=True, include=set(NETWORK_KEYS))
            table = {**reserved, **_dump(self.options[section])}
            if section == name:
                out[name] = table
            else:
                networks[name] = table
        if networks:
            out["networks"] = networks
        out["game"] = {"name": self.spec.game.name, **_dump(self.options["game"])}
        out["plugins"] = plugin_paths(self.spec.plugins, self.base_dir, relative_to)
        out["evaluators"] = {n: {**({"every": ev.every} if ev.every else {}), **_dump(self.options[f"evaluators.{n}"])}
                             for n, ev in self.spec.evaluators.items()}
        options = {n: _dump(self.options[f"loggers.{n}"]) for n in self.spec.train.loggers}
        if any(options.values()):
            out["loggers"] = {n: o for n, o in options.items() if o}
        out["optimizer"] = self.spec.optimizer.as_table()
        if self.optimizers:  # complete, effective specs: `inherit = false` keeps them so when read again
            out["optimizers"] = {p: {**o.as_table(), "inherit": False} for p, o in self.optimizers.items()}
        return out

    def to_toml(self, relative_to: Path | None = None) -> str:
        """The resolved recipe as TOML (local plugin paths relative to ``relative_to``): a run's recipe.toml."""
        return tomli_w.dumps(self.resolved(relative_to))


def _dump(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(mode="json", exclude_none=True)


# -- loading ---------------------------------------------------------------------------------------------

def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = (),
                host: PluginHost | None = None) -> Recipe:
    """Read, merge (``extends``), override, and validate a recipe file. Raises RecipeError/UserError."""
    path = Path(path)
    data = read_toml(path)
    data = _resolve_extends(data, path, seen=(path.resolve(),))
    return validate_recipe(data, overrides, source=str(path), base_dir=path.parent, host=host)


def validate_recipe(data: dict[str, Any], overrides: list[str] | tuple[str, ...] = (), *,
                    source: str = "<recipe>", base_dir: Path | None = None,
                    host: PluginHost | None = None, load_plugins: bool = True, environment: bool = True) -> Recipe:
    """Validate an already-parsed recipe dictionary (see load_recipe).

    ``load_plugins = False`` for a recipe read from data (a run directory, a checkpoint): its ``plugins`` are
    code and are never imported from there; the caller loads the ones the user names (``--plugin``).

    ``environment = False`` skips what depends on this machine rather than on the recipe: building each logger
    once (a package missing here) and the checks options models make when ``advinf.checks_machine(info.context)``
    (a weights file missing here). For a trained run read back to sample or
    evaluate: its training-only needs must not stop that. Whatever is then built still checks its own.
    """
    data = copy.deepcopy(data)
    problems: list[Problem] = []
    overrides = listed(overrides)
    for item in overrides:
        try:
            apply_override(data, item)
        except ValueError as exc:
            problems.append(Problem(f"--set {clip(item)}", str(exc)))
    _drop_replaced_alternatives(data, overrides)
    problems.extend(_migrate(data))
    problems.extend(non_finite(data))
    if problems:
        raise RecipeError(source, problems)
    try:
        spec = RecipeSpec.model_validate(data, strict=True, context=RECIPE_CONTEXT)
    except ValidationError as exc:
        raise RecipeError(source, problems_from(exc, RecipeSpec, data)) from None

    host = host or default_host()
    imported = [host.load_local(plugin, base_dir) for plugin in spec.plugins] if load_plugins else []

    for name in WELL_KNOWN:  # network_specs() would keep one of the two, silently
        if getattr(spec, name) is not None and name in spec.networks:
            problems.append(Problem(f"networks.{name}", f"the {name} is given twice, as [{name}] and as "
                                    f"[networks.{name}] (perhaps one through `extends`)",
                                    hint=f"keep one of the two (to change an extended recipe's {name}, write its "
                                         f"[{name}] section with the new options)"))
    options: dict[str, BaseModel] = {}
    for section, kind in COMPONENT_SECTIONS.items():
        comp = getattr(spec, section)
        _validate_component(host, kind, section, comp.name, comp.options, options, problems, environment=environment)
    for name, (section, kind, net) in spec.network_specs().items():
        if section == name and net.kind not in (None, kind):
            problems.append(Problem(f"{section}.kind", f"the [{section}] section builds the {kind}", net.kind, True))
            continue
        if section != name and net.kind not in WELL_KNOWN.values():
            kinds = ", ".join(sorted(set(WELL_KNOWN.values())))
            problems.append(Problem(f"{section}.kind", "missing or unknown network kind", net.kind,
                                    net.kind is not None, f"give one of {kinds}"))
            continue
        _validate_component(host, kind, section, net.name, net.options, options, problems, environment=environment)
    for name, ev in spec.evaluators.items():
        _validate_component(host, "evaluator", f"evaluators.{name}", name, ev.options, options, problems,
                            name_key=f"evaluators.{name}", environment=environment)
    _validate_loggers(host, spec, options, problems, environment)
    shared = _check_optimizer("optimizer", spec.optimizer)
    problems.extend(shared)
    shared_keys = {p.key.removeprefix("optimizer.").split(".")[0] for p in shared}
    players: dict[str, OptimizerSpec] = {}
    for player, table in spec.optimizers.items():
        if not isinstance(table.get("inherit", True), bool):
            problems.append(Problem(f"optimizers.{player}.inherit", "must be true or false", table["inherit"], True))
            continue
        try:
            players[player] = spec.optimizer.merged(table, RECIPE_CONTEXT)
        except ValidationError as exc:
            problems.extend(problems_from(exc, OptimizerSpec, table, prefix=f"optimizers.{player}"))
            continue
        problems.extend(p for p in _check_optimizer(f"optimizers.{player}", players[player])  # inherited: said once
                        if p.key.removeprefix(f"optimizers.{player}.").split(".")[0] not in shared_keys - set(table))
    if not problems:
        problems.extend(check_fit(spec, options, host, environment, players))
    if problems:
        unknown = [p for p in problems if p.message.startswith("unknown ")  # names, not a known one's options
                   and not p.message.startswith(("unknown option", "unknown key"))]
        if unknown and spec.plugins and not load_plugins:
            files = plugin_paths(spec.plugins, base_dir or Path.cwd())  # where they are, whatever the cwd
            raise UserError(f"{source} uses components from local plugins ({', '.join(files)}), which advinf "
                            "does not import from a run directory (plugins are code). Load the ones you trust with "
                            "--plugin PATH (library: plugins=[...]).")
        if unknown and not load_plugins:  # a run trained from Python with a plugin its recipe does not list
            hint = "from a local plugin? load it with --plugin PATH (Python: plugins=[...])"
            problems = [dataclasses.replace(p, hint="; ".join(h for h in (p.hint, hint) if h))
                        if p in unknown else p for p in problems]
        problems = [_switched(p, overrides) for p in problems]
        raise RecipeError(source, problems)
    return Recipe(spec, options, source, base_dir or Path.cwd(), players, imported)


def _switched(problem: Problem, overrides: list[str]) -> Problem:
    """``problem``, told how to switch a component by ``--set SECTION.name=...`` when the option it refuses is
    one the recipe set for the component it had: tables merge key by key, so those options stay."""
    if not problem.message.startswith("unknown option of"):
        return problem
    section = problem.key.rpartition(".")[0]
    if not any(o.split("=", 1)[0].strip() == f"{section}.name" for o in overrides):
        return problem
    hint = (f"--set {section}.name=... keeps the options the recipe gives {section}; to switch it, give the whole "
            f"table: --set '{section}={{name = \"...\", ...}}'")
    return dataclasses.replace(problem, hint="; ".join(h for h in (problem.hint, hint) if h))


def _validate_loggers(host: PluginHost, spec: RecipeSpec, options: dict[str, BaseModel], problems: list[Problem],
                      environment: bool = True) -> None:
    """``train.loggers``: registered names, each with its ``[loggers.NAME]`` options; each logger is built once
    (cheap, no files), so that one that cannot work here (a package missing) fails at validation (unless
    ``environment`` is false)."""
    for name in spec.loggers:
        if name not in spec.train.loggers:
            problems.append(Problem(f"loggers.{name}", "options of a logger that train.loggers does not choose",
                                    hint=f"add \"{name}\" to train.loggers, or remove the section"))
    for name in spec.train.loggers:
        before = len(problems)
        _validate_component(host, "logger", f"loggers.{name}", name, spec.loggers.get(name, {}), options, problems,
                            name_key="train.loggers", environment=environment)
        if len(problems) > before or not environment:
            continue
        comp = host.get("logger", name)
        try:
            comp.factory(options[f"loggers.{name}"], BuildContext(seed=spec.seed))
        except UserError as exc:
            key = f"loggers.{name}.{exc.option}" if exc.option else "train.loggers"
            problems.append(Problem(key, f"logger '{name}': {exc}"))
        except Exception as exc:
            problems.append(Problem("train.loggers", f"logger '{name}' (plugin '{comp.plugin}') failed: "
                                    f"{type(exc).__name__}: {exc}"))


def _migrate(data: dict[str, Any]) -> list[Problem]:
    """Older spellings: ``[critic_optimizer]`` is ``[optimizers.critic]`` with ``inherit = false`` (it was a
    whole spec of its own, not merged over ``[optimizer]``)."""
    if "critic_optimizer" not in data:
        return []
    table = data.pop("critic_optimizer")
    optimizers = data.setdefault("optimizers", {})
    if not isinstance(optimizers, dict) or "critic" in optimizers or not isinstance(table, dict):
        return [Problem("critic_optimizer", "give the critic's optimiser once, as [optimizers.critic]")]
    optimizers["critic"] = {"inherit": False, **table}
    return []


def build_game(spec: RecipeSpec, options: dict[str, BaseModel], host: PluginHost,
               ctx: BuildContext | None = None) -> Game:
    """The recipe's game, built by its factory (also at validation time, with no dataset in ``ctx``)."""
    comp = host.get("game", spec.game.name)
    try:
        game = comp.factory(options["game"], host.context(ctx or BuildContext(seed=spec.seed)))
    except UserError:
        raise
    except Exception as exc:
        from advinf.errors import PluginError

        raise PluginError(f"the factory of game '{spec.game.name}' (plugin '{comp.plugin}') raised "
                          f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(game, Game):
        from advinf.errors import PluginError

        raise PluginError(f"the factory of game '{spec.game.name}' (plugin '{comp.plugin}') returned "
                          f"{type(game).__name__}, not a Game")
    mark(game, Origin("game", spec.game.name, _dump(options["game"])))  # as advinf.create does
    return game


def check_fit(spec: RecipeSpec, options: dict[str, BaseModel], host: PluginHost, environment: bool = True,
              players: dict[str, OptimizerSpec] | None = None) -> list[Problem]:
    """Phase 3: the problems of a recipe whose parts are each valid but do not fit its game (and, with
    ``environment``, this machine: a device it lacks). ``players``: the per-player optimiser specs."""
    try:
        game = build_game(spec, options, host)
    except UserError as exc:
        return [Problem(f"game.{exc.option}" if exc.option else "game", str(exc))]
    name = spec.game.name
    problems: list[Problem] = []
    device = None
    try:
        if environment:  # a run trained on a GPU is still a valid run on a machine without one
            device = resolve_device(spec.train.device)
    except UserError as exc:
        problems.append(Problem("train.device", str(exc)))
    if spec.train.cuda_graph:
        effective = [(players or {}).get(p.name, spec.optimizer) for p in game.players]
        why = cuda_graph_refusal(spec.train, effective, game.host_decisions(), device)
        if why is not None:
            problems.append(Problem("train.cuda_graph", f"cannot be true here: {why}",
                                    hint="set it to false (or remove it)"))
    given = spec.network_specs()
    plugin = host.get("game", name).plugin
    for declared in game.players:  # the game's own declarations, known without data: a plugin's bugs
        for net in declared.networks:
            if net not in game.networks:
                problems.append(Problem("game.name", f"game '{name}' (plugin '{plugin}'): player '{declared.name}' "
                                        f"trains '{net}', which is not one of its networks "
                                        f"({', '.join(game.networks)}): a bug in that plugin"))
    for net, kind in game.networks.items():
        section = net if net in WELL_KNOWN else f"networks.{net}"
        if kind not in WELL_KNOWN.values():
            problems.append(Problem("game.name", f"game '{name}' (plugin '{plugin}') declares network '{net}' of "
                                    f"kind '{kind}', which is no network kind ({', '.join(WELL_KNOWN.values())}): "
                                    "a bug in that plugin"))
            continue
        if net not in given:
            extra = f' with kind = "{kind}"' if section != net else ""
            problems.append(Problem(section, f"missing: game '{name}' needs a {kind} network '{net}'",
                                    hint=f"add a [{section}] section{extra}"))
        elif given[net][1] != kind:
            problems.append(Problem(f"{section}.kind", f"game '{name}' needs a {kind} here", given[net][1], True))
    for net, (section, _kind, _spec) in given.items():
        if net not in game.networks:
            problems.append(Problem(section, f"game '{name}' does not use a network '{net}'",
                                    hint=f"remove the [{section}] section"))
    player_names = [p.name for p in game.players]
    if spec.train.critic_steps != 1 and not any(p.role == "critic" for p in game.players):
        problems.append(Problem("train.critic_steps", f"game '{name}' has no critic-side player (its players: "
                                f"{', '.join(player_names)}), so the count would be ignored", spec.train.critic_steps,
                                True, "remove it"))
    if spec.train.update == "alternating" and all(p.role == "critic" for p in game.players):
        problems.append(Problem("train.update", f"game '{name}' has only critic-side players (its players: "
                                f"{', '.join(player_names)}): \"alternating\" would take critic steps alone, and "
                                "steps count the other side's updates", spec.train.update, True,
                                'use "simultaneous"'))
    for player in spec.optimizers:
        if player not in player_names:
            problems.append(Problem(f"optimizers.{player}", f"game '{name}' has no player '{player}'",
                                    hint=suggest(player, player_names) or f"players: {', '.join(player_names)}"))
    labels = host.get("dataset", spec.dataset.name).static_labels(options["dataset"])
    if game.reads_labels and labels is None:
        problems.append(Problem("dataset.name", f"game '{name}' needs labelled data, but dataset "
                                f"'{spec.dataset.name}' has no labels with these options"))
    for net in game.conditioned:
        if net not in given:
            continue
        section, kind, nspec = given[net]
        if not host.get(kind, nspec.name).conditional:
            takes = [n for n, c in host.registry[kind].items() if c.conditional]
            problems.append(Problem(f"{section}.name", f"game '{name}' feeds labels to the {net}, but {kind} "
                                    f"'{nspec.name}' cannot take them", hint="conditional "
                                    f"{kind}s: {', '.join(sorted(takes)) or '(none registered)'}"))
    return problems


#: Keys of which a recipe gives one: giving one with --set, or in a recipe that ``extends`` another, drops the other.
ALTERNATIVES = (("train", "steps", "epochs"),)


def _drop_replaced_alternatives(data: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> None:
    keys = {item.partition("=")[0].strip() for item in overrides}
    train, options = data.get("train"), data.get("loggers")
    if "train.loggers" in keys and isinstance(train, dict) and isinstance(train.get("loggers"), list) \
            and isinstance(options, dict):  # --logger / --set train.loggers=[...]: the others' options go too
        for name in [n for n in options if n not in train["loggers"]]:
            del options[name]
    _drop_alternatives(data, keys)


def _drop_alternatives(data: dict[str, Any], given: set[str]) -> None:
    """Drop from ``data`` (in place) the alternative of each dotted key in ``given`` that ``given`` lacks."""
    for table, a, b in ALTERNATIVES:
        section = data.get(table)
        if not isinstance(section, dict):
            continue
        for set_key, other in ((a, b), (b, a)):
            if f"{table}.{set_key}" in given and f"{table}.{other}" not in given:
                section.pop(other, None)


def read_toml(path: Path) -> dict[str, Any]:
    if path.is_dir():
        again = (f"; to continue the run there: advinf run --resume {path}" if (path / "recipe.toml").is_file()
                 else "")
        raise UserError(f"{path} is a directory, not a recipe file{again}")
    if not path.is_file():
        raise UserError(f"{path}: recipe file not found")
    try:
        return parse_toml(path.read_text(encoding="utf-8-sig"))  # a BOM (some editors write one) is no TOML
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(str(path), [Problem("(TOML syntax)", str(exc))]) from None
    except UnicodeDecodeError as exc:
        raise RecipeError(str(path), [Problem("(encoding)", f"not UTF-8 text: {exc}")]) from None


def _resolve_extends(data: dict[str, Any], path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    base = data.pop("extends", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise RecipeError(str(path), [Problem("extends", "must be a path to another recipe", base, True)])
    base_path = (path.parent / base).resolve()
    if base_path in seen:
        raise RecipeError(str(path), [Problem("extends", "recipes extend each other in a cycle", base, True)])
    if not base_path.is_file():
        raise RecipeError(str(path), [Problem("extends", f"no recipe at {base_path}", base, True)])
    parent = _resolve_extends(read_toml(base_path), base_path, (*seen, base_path))
    # the recipe's own steps replace its base's epochs, and the other way round (parent is a fresh read: ours)
    _drop_alternatives(parent, {f"{t}.{k}" for t, table in data.items() if isinstance(table, dict) for k in table})
    return deep_merge(parent, data)


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``: tables merge key by key, anything else replaces."""
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_override(item: str) -> tuple[list[str], Any]:
    """``a.b.c=VALUE`` -> (["a", "b", "c"], value); VALUE is TOML (a bare word is taken as a string)."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ValueError("expected KEY=VALUE, e.g. --set train.batch_size=64")
    parts = key.split(".")
    if any(not p for p in parts):
        raise ValueError(f"bad key {key!r}")
    if len(parts) > MAX_NESTING:
        raise ValueError(f"key {key[:60]!r}... nests more than {MAX_NESTING} tables deep")
    raw = raw.strip()
    try:
        parsed = parse_toml(f"v = {raw}")
        if list(parsed) != ["v"]:  # "1\nname = 2": more than one value
            raise ValueError(f"value {clip(raw)!r} is more than one TOML value (a line break in it?)")
        value = parsed["v"]
    except tomllib.TOMLDecodeError:
        if raw == "" or any(c in raw for c in "[]{}\"'\n"):
            raise ValueError(f"value {clip(raw)!r} is not valid TOML") from None
        value = raw
    return parts, value


def clip(text: str, limit: int = 120) -> str:
    """``text``, or its start and a count of what was left out (an override in a message)."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text) - limit} more characters)"


def apply_override(data: dict[str, Any], item: str) -> None:
    """Set one ``--set`` override in a parsed recipe, creating tables on the way."""
    parts, value = parse_override(item)
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ValueError(f"{'.'.join(parts[:i + 1])} is not a table")
        node = child
    node[parts[-1]] = value


def _validate_component(host: PluginHost, kind: str, section: str, name: str, opts: dict[str, Any],
                        out: dict[str, BaseModel], problems: list[Problem], name_key: str | None = None,
                        environment: bool = True) -> None:
    reserved = {"evaluator": EVALUATOR_KEYS, "encoder": NETWORK_KEYS, "decoder": NETWORK_KEYS,
                "critic": NETWORK_KEYS}.get(kind, ("name",))
    if name not in host.registry[kind]:
        problems.append(host.unknown_name(kind, name_key or f"{section}.name", name))
        return
    try:
        comp = host.get(kind, name)
    except UserError as exc:
        problems.append(Problem(name_key or f"{section}.name", str(exc)))
        return
    validated, found = check_options(comp, opts, section, validation_context(environment), reserved)
    problems.extend(found)
    if validated is None:
        return
    out[section] = validated
    for field_name, ref, value in host.named_components(comp, out[section]):  # options naming other components
        if value not in host.registry.get(ref.kind, {}):
            problems.append(host.unknown_name(ref.kind, f"{section}.{field_name}", value))
        elif ref.options is not None:  # and that component's options, in their own table
            nested = getattr(out[section], ref.options) or {}
            _validate_component(host, ref.kind, f"{section}.{ref.options}", value, dict(nested), {}, problems,
                                name_key=f"{section}.{field_name}", environment=environment)


def _check_optimizer(key: str, spec: OptimizerSpec) -> list[Problem]:
    problems = optimizer_option_problems(key, spec.name, spec.options)
    if problems:
        return problems
    try:  # build it once (fused where the trainer fuses it) and take a step on a dummy parameter, so that a bad
        # value or combination fails now, not after data loading
        param = torch.nn.Parameter(torch.zeros(1))
        extra = {"fused": True} if spec.fusable() else {}
        opt = spec.build([param], **extra)
        param.grad = torch.ones(1)
        opt.step()
    except Exception as exc:
        problems.append(Problem(key, f"optimizer '{spec.name}' rejects these options: {exc}",
                                spec.options, True))
    return problems
