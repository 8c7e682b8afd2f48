"""Recipes: TOML files that combine registered components by name, validated in two phases.

Phase 1 checks the skeleton (sections, train settings; unknown keys forbidden everywhere). Phase 2 looks
up each component section's ``name`` in the plugin registry and validates the rest of the section against
the options model that component's plugin registered, keeping the recipe key in every error.
"""

from __future__ import annotations

import copy
import inspect
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import tomli_w
import torch
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from advinf.errors import Problem, RecipeError, UserError, suggest
from advinf.plugins import PluginHost, default_host

#: Recipe section -> component kind, in build order.
COMPONENT_SECTIONS: dict[str, str] = {
    "dataset": "dataset",
    "prior": "prior",
    "encoder": "encoder",
    "decoder": "decoder",
    "critic": "critic",
    "game": "game",
}
OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "rmsprop": torch.optim.RMSprop,
    "sgd": torch.optim.SGD,
}
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ComponentSpec(BaseModel):
    """``name`` of a registered component; every other key is one of its options."""

    model_config = ConfigDict(extra="allow")
    name: str

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class OptimizerSpec(BaseModel):
    """A torch optimiser by ``name``; the other keys are its keyword arguments (checked by building it)."""

    model_config = ConfigDict(extra="allow")
    name: Literal["adam", "adamw", "rmsprop", "sgd"] = "adam"

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    def build(self, params: list[torch.nn.Parameter], **extra: Any) -> torch.optim.Optimizer:
        kwargs = self.options
        if "betas" in kwargs:
            kwargs["betas"] = tuple(kwargs["betas"])
        return OPTIMIZERS[self.name](params, **kwargs, **extra)


class TrainSpec(_Strict):
    """How long and how to train; see docs/recipes.md for every key."""

    steps: PositiveInt | None = None
    epochs: PositiveInt | None = None
    batch_size: PositiveInt = 100
    update: Literal["simultaneous", "alternating"] = "simultaneous"
    critic_steps: PositiveInt = Field(1, description="critic steps per generator step (alternating only)")
    device: str = "auto"
    threads: PositiveInt | None = Field(None, description="CPU threads for torch (default: torch's choice)")
    log_every: PositiveInt = 100
    sample_every: int = Field(1000, ge=0, description="fixed-noise sample pictures every N steps; 0: never")
    num_samples: PositiveInt = 100
    ema: float | None = Field(None, ge=0, lt=1, description="decay of an exponential moving average of the "
                              "encoder and decoder weights, used for samples, evaluation and load_run; 0: off")
    checkpoint_every: int = Field(1000, ge=0, description="checkpoint every N steps (and at the end); 0: end only")
    keep_checkpoints: PositiveInt = Field(3, description="how many of the newest checkpoints to keep")
    nonfinite: Literal["stop", "skip"] = Field(
        "stop", description="on a non-finite loss or gradient: stop the run, or skip the update (one sync a step)")
    compile: bool = False
    autocast: Literal["none", "bf16"] = "none"
    channels_last: bool = False
    progress: Literal["auto", "bar", "lines", "none"] = "auto"

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not _DEVICE_RE.match(v):
            raise ValueError("must be 'auto', 'cpu', 'cuda' or 'cuda:N'")
        return v

    @model_validator(mode="after")
    def _length(self) -> TrainSpec:
        if (self.steps is None) == (self.epochs is None):
            raise ValueError("give exactly one of `steps` and `epochs`")
        return self


class RecipeSpec(_Strict):
    """The skeleton of a recipe (component options are validated in phase 2)."""

    name: str
    seed: int = 0
    plugins: list[str] = Field(default_factory=list)
    dataset: ComponentSpec
    prior: ComponentSpec
    encoder: ComponentSpec | None = None
    decoder: ComponentSpec
    critic: ComponentSpec
    game: ComponentSpec
    evaluators: dict[str, dict[str, Any]] = Field(default_factory=dict)
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    critic_optimizer: OptimizerSpec | None = None
    train: TrainSpec


@dataclass
class Recipe:
    """A validated recipe: the skeleton plus each component's validated options."""

    spec: RecipeSpec
    options: dict[str, BaseModel]  # "critic" / "evaluators.mode_coverage" -> options instance
    source: str
    base_dir: Path

    def component(self, section: str) -> tuple[str, BaseModel] | None:
        """(registered name, options) of a component section, or None if the section is absent."""
        if section.startswith("evaluators."):
            name = section.split(".", 1)[1]
            return name, self.options[section]
        comp = getattr(self.spec, section)
        return None if comp is None else (comp.name, self.options[section])

    def resolved(self) -> dict[str, Any]:
        """The recipe with every default filled in: what is saved in runs and checkpoints."""
        out = self.spec.model_dump(mode="json", exclude_none=True,
                                   exclude=set(COMPONENT_SECTIONS) | {"evaluators", "optimizer",
                                                                     "critic_optimizer"})
        for section in COMPONENT_SECTIONS:
            comp = getattr(self.spec, section)
            if comp is not None:
                out[section] = {"name": comp.name, **_dump(self.options[section])}
        out["plugins"] = [str((self.base_dir / p).resolve()) if _is_path(p) else p for p in self.spec.plugins]
        out["evaluators"] = {n: _dump(self.options[f"evaluators.{n}"]) for n in self.spec.evaluators}
        out["optimizer"] = {"name": self.spec.optimizer.name, **self.spec.optimizer.options}
        if self.spec.critic_optimizer is not None:
            out["critic_optimizer"] = {"name": self.spec.critic_optimizer.name,
                                       **self.spec.critic_optimizer.options}
        return out

    def to_toml(self) -> str:
        return tomli_w.dumps(self.resolved())


def _is_path(plugin: str) -> bool:
    return plugin.endswith(".py") or "/" in plugin


def changed_keys(old: dict[str, Any], new: dict[str, Any], ignore: tuple[str, ...] = ("train.progress",)
                 ) -> list[str]:
    """Dotted keys whose values differ between two resolved recipes (added and removed keys included)."""
    a, b = _flatten(old), _flatten(new)
    return sorted(k for k in set(a) | set(b) if k not in ignore and a.get(k, _MISSING) != b.get(k, _MISSING))


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
                    host: PluginHost | None = None) -> Recipe:
    """Validate an already-parsed recipe dictionary (see load_recipe)."""
    data = copy.deepcopy(data)
    problems: list[Problem] = []
    for item in overrides:
        try:
            apply_override(data, item)
        except ValueError as exc:
            problems.append(Problem(f"--set {item}", str(exc)))
    _drop_replaced_alternatives(data, overrides)
    if problems:
        raise RecipeError(source, problems)
    try:
        spec = RecipeSpec.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(source, problems_from(exc, RecipeSpec, data)) from None

    host = host or default_host()
    for plugin in spec.plugins:
        host.load_local(plugin, base_dir)

    options: dict[str, BaseModel] = {}
    for section, kind in COMPONENT_SECTIONS.items():
        comp = getattr(spec, section)
        if comp is not None:
            _validate_component(host, kind, section, comp.name, comp.options, options, problems)
    for name, opts in spec.evaluators.items():
        _validate_component(host, "evaluator", f"evaluators.{name}", name, opts, options, problems,
                            name_key=f"evaluators.{name}")
    for key in ("optimizer", "critic_optimizer"):
        opt = getattr(spec, key)
        if opt is not None:
            problems.extend(_check_optimizer(key, opt))
    if problems:
        raise RecipeError(source, problems)
    return Recipe(spec, options, source, base_dir or Path.cwd())


#: Keys of which a recipe gives one: overriding one with --set drops the other.
ALTERNATIVES = (("train", "steps", "epochs"),)


def _drop_replaced_alternatives(data: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> None:
    keys = {item.partition("=")[0].strip() for item in overrides}
    for table, a, b in ALTERNATIVES:
        section = data.get(table)
        if not isinstance(section, dict):
            continue
        for set_key, other in ((a, b), (b, a)):
            if f"{table}.{set_key}" in keys and f"{table}.{other}" not in keys:
                section.pop(other, None)


def read_toml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"{path}: recipe file not found")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
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
    raw = raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        if raw == "" or any(c in raw for c in "[]{}\"'\n"):
            raise ValueError(f"value {raw!r} is not valid TOML") from None
        value = raw
    return parts, value


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
                        out: dict[str, BaseModel], problems: list[Problem], name_key: str | None = None
                        ) -> None:
    if name not in host.registry[kind]:
        available = host.names(kind)
        hint = suggest(name, available)
        hint = (hint + " " if hint else "") + f"available: {', '.join(available) or '(none registered)'}"
        problems.append(Problem(name_key or f"{section}.name", f"unknown {kind}", name, True, hint))
        return
    try:
        comp = host.get(kind, name)
    except UserError as exc:
        problems.append(Problem(name_key or f"{section}.name", str(exc)))
        return
    fields = comp.options.model_fields
    unknown = [k for k in opts if k not in fields]
    for k in unknown:
        problems.append(Problem(f"{section}.{k}", f"unknown option of {kind} '{name}'", opts[k], True,
                                suggest(k, fields) or f"options: {', '.join(fields) or '(none)'}"))
    if unknown:
        return
    try:
        out[section] = comp.options.model_validate(opts)
    except ValidationError as exc:
        problems.extend(problems_from(exc, comp.options, opts, prefix=section))


def _check_optimizer(key: str, spec: OptimizerSpec) -> list[Problem]:
    cls = OPTIMIZERS[spec.name]
    allowed = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "params")]
    problems = [Problem(f"{key}.{k}", f"unknown option of optimizer '{spec.name}'", v, True,
                        suggest(k, allowed) or f"options: {', '.join(allowed)}")
                for k, v in spec.options.items() if k not in allowed]
    if problems:
        return problems
    try:  # build it once on a dummy parameter so a bad value fails now, not after data loading
        spec.build([torch.nn.Parameter(torch.zeros(1))])
    except (TypeError, ValueError, RuntimeError) as exc:
        problems.append(Problem(key, f"optimizer '{spec.name}' rejects these options: {exc}",
                                spec.options, True))
    return problems


# -- error conversion ------------------------------------------------------------------------------------

def problems_from(exc: ValidationError, model: type[BaseModel], data: Any, prefix: str = "") -> list[Problem]:
    """pydantic errors -> Problems keyed by dotted recipe key, with 'did you mean' for unknown keys."""
    out = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-"))]
        key = ".".join(([prefix] if prefix else []) + loc)
        etype = err["type"]
        if etype == "extra_forbidden":
            allowed = _fields_at(model, loc[:-1])
            hint = suggest(loc[-1], allowed) or (f"allowed keys: {', '.join(allowed)}" if allowed else "")
            out.append(Problem(key, "unknown key", err.get("input"), True, hint))
        elif etype == "missing":
            out.append(Problem(key, "missing required key"))
        else:
            msg = err["msg"].removeprefix("Value error, ")
            out.append(Problem(key, msg, err.get("input"), "input" in err and etype != "model_type"))
    return out


def _fields_at(model: type[BaseModel], loc: list[str]) -> list[str]:
    """Field names of the (sub)model found by walking ``loc`` from ``model``; [] if not a model."""
    current: Any = model
    for part in loc:
        current = _unwrap_model(current)
        if current is None or part not in current.model_fields:
            return []
        current = current.model_fields[part].annotation
    current = _unwrap_model(current)
    return list(current.model_fields) if current is not None else []


def _unwrap_model(tp: Any) -> type[BaseModel] | None:
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp
    if get_origin(tp) is not None or type(tp).__name__ == "UnionType":
        for arg in get_args(tp):
            m = _unwrap_model(arg)
            if m is not None:
                return m
    return None
