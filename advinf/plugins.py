"""The plugin host: loads entry points one by one, records failures, and keeps the component registry."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.metadata as md
import importlib.util
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType, UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import pluggy
from pydantic import BaseModel, ConfigDict

from advinf import hookspecs
from advinf.data import Dataset
from advinf.errors import Interrupted, PluginError, Problem, RecipeError, Terminated, UserError, suggest
from advinf.interfaces import (
    BuildContext,
    Decoder,
    Encoder,
    Evaluator,
    Game,
    JointCritic,
    Logger,
    Prior,
    RegisteredName,
)
from advinf.options import check_options
from advinf.provenance import Origin, mark

ENTRY_POINT_GROUP = "advinf"


class NoOptions(BaseModel):
    """The options model of a component that takes none."""

    model_config = ConfigDict(extra="forbid")


#: What each kind's factory must return (checked by ``create`` and when a recipe is built).
COMPONENT_TYPES: dict[str, type] = {"game": Game, "dataset": Dataset, "prior": Prior, "encoder": Encoder,
                                    "decoder": Decoder, "critic": JointCritic, "evaluator": Evaluator,
                                    "logger": Logger}


#: Keys of a network section that are not the component's options.
NETWORK_KEYS = ("name", "kind", "trainable", "init_from", "init_network")
#: Keys of an evaluator section that are not the evaluator's options.
EVALUATOR_KEYS = ("every",)
#: The keys a recipe section of each kind keeps for advinf beside the component's options: an option of that name
#: would never receive the recipe's value, so ``register`` refuses it.
SECTION_KEYS: dict[str, tuple[str, ...]] = {"encoder": NETWORK_KEYS, "decoder": NETWORK_KEYS,
                                            "critic": NETWORK_KEYS, "evaluator": EVALUATOR_KEYS,
                                            "dataset": ("name",), "prior": ("name",), "game": ("name",)}


@dataclass(frozen=True)
class Component:
    """A registered component: what a recipe name resolves to."""

    kind: str
    name: str
    #: ``factory(options, ctx) -> component``; for a divergence, the divergence function itself.
    factory: Callable[..., Any]
    options: type[BaseModel]
    summary: str
    plugin: str
    version: str
    #: Networks: whether the factory builds a network that takes labels when ``ctx.condition`` is set.
    conditional: bool = False
    #: Datasets: what labels the dataset has, known without building it: None, "classes", "attributes",
    #: "unknown" (checked when built), or a function of the options returning one of these.
    labels: Any = "unknown"

    def option_table(self) -> list[dict[str, Any]]:
        """The component's options as ``advinf list-plugins --verbose`` shows them: name, type (with bounds),
        default (None when required) and description, from its pydantic options model."""
        return [{"name": name, "type": _type_name(info), "required": info.is_required(),
                 "default": None if info.is_required() else _plain(info.get_default(call_default_factory=True)),
                 "description": info.description or ""}
                for name, info in self.options.model_fields.items()]

    def static_labels(self, options: BaseModel) -> str | None:
        """This dataset's labels for ``options`` as far as known before building it ("unknown" if not)."""
        value = self.labels(options) if callable(self.labels) else self.labels
        return value


@dataclass
class PluginInfo:
    """One loaded (or failed) plugin, as ``advinf list-plugins`` shows it."""

    name: str
    version: str
    components: dict[str, list[str]] = field(default_factory=dict)
    error: str | None = None
    disabled: bool = False
    load_seconds: float = 0.0

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "components": self.components,
                "error": self.error, "disabled": self.disabled, "load_seconds": round(self.load_seconds, 4)}

    @property
    def broken(self) -> bool:
        """It failed to import or register, or it registers a name another plugin registers too."""
        return self.error is not None


class PluginHost:
    """A pluggy manager plus the registry of components by kind and name.

    Each plugin registers on its own: one that fails to import or register is recorded (see ``plugins``)
    and the others keep working, unless ``strict`` (``ADVINF_STRICT_PLUGINS=1``) makes it fatal.
    """

    def __init__(self, *, strict: bool | None = None, disabled: set[str] | None = None):
        self.pm = pluggy.PluginManager("advinf")
        self.pm.add_hookspecs(hookspecs)
        self.strict = _env_flag("ADVINF_STRICT_PLUGINS") if strict is None else strict
        env_disabled = {s.strip() for s in os.environ.get("ADVINF_DISABLE_PLUGINS", "").split(",") if s.strip()}
        self.disabled = env_disabled if disabled is None else set(disabled)
        self.plugins: dict[str, PluginInfo] = {}
        self.registry: dict[str, dict[str, Component]] = {k: {} for k in hookspecs.KINDS}
        self._conflicts: dict[tuple[str, str], list[str]] = {}

    # -- loading ---------------------------------------------------------------------------------------
    def load_entry_points(self) -> None:
        """Load every plugin of the ``advinf`` entry-point group, each on its own.

        Two distributions may give their plugins the same entry-point name: each is then loaded under its name
        qualified by its distribution, ``NAME (DIST)``, so that neither replaces the other (ADVINF_DISABLE_PLUGINS
        takes either form)."""
        found = sorted(md.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: (e.name, _dist_name(e)))
        shared = {e.name for e in found if sum(f.name == e.name for f in found) > 1}
        for ep in found:
            version = ep.dist.version if ep.dist is not None else "?"
            name = f"{ep.name} ({_dist_name(ep)})" if ep.name in shared else ep.name
            if ep.name in self.disabled or name in self.disabled:
                self.plugins[name] = PluginInfo(name, version, disabled=True)
                continue
            start = time.perf_counter()
            try:
                module = ep.load()
            except BaseException as exc:  # noqa: BLE001 -- a broken plugin (even one calling sys.exit) must not
                # break the others or the command line
                _reraise_interrupt(exc)
                self._fail(name, version, f"failed to import {ep.value}: {_describe(exc)}")
            else:
                self.add_plugin(module, name=name, version=version)
            self.plugins[name].load_seconds = time.perf_counter() - start

    def load_local(self, spec: str, base_dir: Path | None = None) -> str:
        """Load a project-local plugin (named by a recipe, or --plugin): a module name or a path to a .py file.

        Returns the plugin's name (the resolved file path, or the module name); loading it again does nothing.
        """
        if not spec.strip(". "):
            raise UserError(f"plugin {spec!r}: give a .py file or a module name (a recipe's `plugins` or --plugin)")
        is_file = spec.endswith(".py") or "/" in spec or os.sep in spec
        path = ((base_dir or Path.cwd()) / spec).resolve()  # an absolute spec stays absolute
        name = str(path) if is_file else spec
        if name in self.plugins:
            return name
        try:
            if is_file:
                if not path.is_file():
                    what = "is a folder, not a file" if path.is_dir() else "does not exist"
                    raise UserError(f"plugin file {path} {what} (named by a recipe's `plugins` or --plugin)")
                # one module name per file: two plugins named extra.py in two folders must not replace each other
                tag = hashlib.sha256(str(path).encode()).hexdigest()[:10]
                mod_spec = importlib.util.spec_from_file_location(f"advinf_local_{path.stem}_{tag}", path)
                if mod_spec is None or mod_spec.loader is None:
                    raise UserError(f"plugin file {path} is not Python source (a .py file) (named by a recipe's "
                                    "`plugins` or --plugin)")
                module = importlib.util.module_from_spec(mod_spec)
                sys.modules[mod_spec.name] = module
                mod_spec.loader.exec_module(module)
            else:
                module = importlib.import_module(spec)
        except UserError:
            raise
        except BaseException as exc:  # noqa: BLE001 -- sys.exit or KeyboardInterrupt from a plugin's import
            _reraise_interrupt(exc)
            raise PluginError(f"plugin '{spec}' (a recipe's `plugins` or --plugin) failed to import: "
                              f"{_describe(exc)}") from exc
        self.add_plugin(module, name=name, version=getattr(module, "__version__", "local"))
        info = self.plugins[name]
        if info.error:
            raise PluginError(f"plugin '{spec}' (a recipe's `plugins` or --plugin): {info.error}")
        return name

    def add_plugin(self, plugin: ModuleType | object, *, name: str, version: str = "?") -> PluginInfo:
        """Register one plugin object (usually a module) and collect its components."""
        info = PluginInfo(name, version)
        self.plugins[name] = info
        wrong = _hook_mistakes(plugin)
        if wrong:
            return self._fail(name, version, wrong)
        try:
            self.pm.register(plugin, name=name)
            self.pm.check_pending()
        except Exception as exc:
            self._unregister(plugin)
            lines = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())  # pluggy's: several
            return self._fail(name, version, f"invalid hook implementation: {lines} (advinf.hookspecs gives each "
                                             "hook's arguments)")
        staged: list[Component] = []
        for hook_name, kind in hookspecs.COMPONENT_HOOKS.items():
            for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
                if impl.plugin is not plugin:
                    continue
                try:
                    returned = impl.function(register=self._register_callback(kind, name, version, staged))
                except BaseException as exc:  # noqa: BLE001
                    _reraise_interrupt(exc)
                    self._unregister(plugin)
                    return self._fail(name, version, f"{hook_name} raised {_describe(exc)}")
                if returned is not None:  # e.g. a list of components, as other plugin hosts take: none registered
                    self._unregister(plugin)
                    return self._fail(name, version, f"{hook_name} returned {type(returned).__name__}: a hook "
                                                     "registers each component by calling register(name, factory, "
                                                     "...) and returns nothing")
        for comp in staged:
            self._add_component(comp, info)
        return info

    def _register_callback(self, kind: str, plugin: str, version: str, staged: list[Component]):
        def register(name: str, factory: Callable[..., Any], options: type[BaseModel] | None = None,
                     summary: str | None = None, *, conditional: bool = False, labels: Any = "unknown") -> None:
            if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_+-]{0,99}", name):
                raise TypeError(f"a {kind} name must be a word of at most 100 letters, digits, '_', '+' or '-' "
                                f"(recipes use it as a key: `evaluators.NAME.KEY`), got {name!r}")
            if not callable(factory):
                raise TypeError(f"the factory of {kind} '{name}' is not callable")
            if kind == "divergence" and options is not None:
                raise TypeError(f"divergence '{name}' is given an options model, but divergences take no options "
                                "(register(name, function, summary=None))")
            if options is not None and not (isinstance(options, type) and issubclass(options, BaseModel)):
                raise TypeError(f"the options of {kind} '{name}' must be a pydantic model class")
            fields = options.model_fields if options is not None else {}
            taken = [f for f in fields if f in SECTION_KEYS.get(kind, ())]
            if taken:
                fields_named = ", ".join(f"'{f}'" for f in taken)
                raise TypeError(f"the options of {kind} '{name}' have a field {fields_named}, which a recipe's {kind} "
                                f"section keeps for advinf ({', '.join(SECTION_KEYS[kind])}): such an option would "
                                "never receive the recipe's value; rename it")
            if not isinstance(conditional, bool):
                raise TypeError(f"`conditional` of {kind} '{name}' must be a bool")
            if not (callable(labels) or labels in (None, "classes", "attributes", "unknown")):
                raise TypeError(f"`labels` of {kind} '{name}' must be None, 'classes', 'attributes', 'unknown' "
                                "or a function of the options returning one")
            if any(c.kind == kind and c.name == name for c in staged):
                raise TypeError(f"{kind} '{name}' is registered twice by this plugin; give each a name of its own")
            doc = (factory.__doc__ or "").strip().splitlines()
            staged.append(Component(kind, name, factory, options or NoOptions,
                                    summary or (doc[0] if doc else ""), plugin, version, conditional, labels))
        return register

    def _add_component(self, comp: Component, info: PluginInfo) -> None:
        existing = self.registry[comp.kind].get(comp.name)
        if existing is not None:
            owners = self._conflicts.setdefault((comp.kind, comp.name), [_owner(existing)])
            owners.append(_owner(comp))
            msg = f"{comp.kind} '{comp.name}' is registered by both {owners[0]} and {_owner(comp)}"
            for involved in {info.name, existing.plugin}:  # both plugins show the conflict
                p = self.plugins[involved]
                p.error = msg if p.error is None else f"{p.error}; {msg}"
            if self.strict:
                raise PluginError(msg)
            return
        self.registry[comp.kind][comp.name] = comp
        info.components.setdefault(comp.kind, []).append(comp.name)

    def _fail(self, name: str, version: str, error: str) -> PluginInfo:
        info = self.plugins.get(name) or PluginInfo(name, version)
        info.error, info.components = error, {}
        self.plugins[name] = info
        if self.strict:
            raise PluginError(f"plugin '{name}': {error} (ADVINF_STRICT_PLUGINS is set)")
        return info

    def _unregister(self, plugin: object) -> None:
        if self.pm.is_registered(plugin):
            self.pm.unregister(plugin)

    # -- lookup ----------------------------------------------------------------------------------------
    def get(self, kind: str, name: str) -> Component:
        """The component ``name`` of ``kind``; a UserError naming the alternatives if there is none."""
        if (kind, name) in self._conflicts:
            owners = self._conflicts[(kind, name)]
            raise PluginError(f"{kind} '{name}' is registered by several plugins: {', '.join(owners)}; "
                              "uninstall or disable one (ADVINF_DISABLE_PLUGINS=name)")
        try:
            return self.registry[kind][name]
        except KeyError:
            raise UserError(unknown_name_message(kind, name, self.registry[kind]) + self.broken_note()) from None

    def broken_note(self) -> str:
        """'; plugins that failed to load: ...' and '; plugins disabled ...' (a missing component may be theirs),
        or ''."""
        broken = {n: e for n, e in self.errors().items() if "registered by both" not in e}
        off = sorted(n for n, info in self.plugins.items() if info.disabled)
        note = "; plugins that failed to load (the name may be theirs): " + "; ".join(
            f"{n} ({e if len(e) <= 160 else e[:159] + '…'})" for n, e in sorted(broken.items())) if broken else ""
        if off:
            note += f"; plugins disabled by ADVINF_DISABLE_PLUGINS (the name may be theirs): {', '.join(off)}"
        return note

    def names(self, kind: str) -> list[str]:
        """The registered names of ``kind``, sorted."""
        return sorted(self.registry[kind])

    def components_of(self, plugin: str) -> list[Component]:
        """The components ``plugin`` registered, by kind (in registration-hook order) and name."""
        kinds = {k: i for i, k in enumerate(hookspecs.KINDS)}
        found = [c for by_name in self.registry.values() for c in by_name.values() if c.plugin == plugin]
        return sorted(found, key=lambda c: (kinds[c.kind], c.name))

    def unmatched_disabled(self) -> list[str]:
        """The names in ``disabled`` (ADVINF_DISABLE_PLUGINS) that match no loaded plugin: a typo disables nothing."""
        return sorted(n for n in self.disabled if n not in self.plugins
                      and not any(p.startswith(f"{n} (") for p in self.plugins))

    def errors(self) -> dict[str, str]:
        """Each broken plugin's error, by plugin name."""
        return {n: p.error for n, p in self.plugins.items() if p.error}

    def divergences(self) -> dict[str, Callable[..., Any]]:
        """The registered divergence functions, by name (what ``BuildContext.divergences`` holds)."""
        return {name: comp.factory for name, comp in self.registry["divergence"].items()}

    def context(self, ctx: BuildContext | None = None) -> BuildContext:
        """``ctx`` (or an empty one) with this host's divergences, for a game's factory, and this host as
        ``ctx.host`` unless it names one (for factories that build other components by name)."""
        base = ctx or BuildContext()
        return dataclasses.replace(base, divergences=self.divergences(), host=base.host or self)

    def create(self, kind: str, name: str, ctx: Any = None, /, **options: Any) -> Any:
        """Build a component by name with keyword options (validated by its options model); a divergence is
        returned as registered (it is a function and takes no options). A component remembers its kind, name and
        options (``advinf.provenance``): a Trainer given it writes them as a recipe."""
        if kind not in self.registry:
            hint = suggest(kind, self.registry)
            raise UserError(f"unknown kind '{kind}' in create(kind, name, ...){' (' + hint + ')' if hint else ''}; "
                            f"the kinds are {', '.join(self.registry)}")
        if name not in self.registry[kind] and (kind, name) not in self._conflicts:  # as a recipe's misspelt name
            raise RecipeError(f"create({kind!r}, {name!r})", [self.unknown_name(kind, "name", name)])
        comp = self.get(kind, name)
        validated, problems = check_options(comp, options)
        for option, ref, value in self.named_components(comp, validated):  # as a recipe's are checked
            if value not in self.registry.get(ref.kind, {}):
                problems.append(self.unknown_name(ref.kind, option, value))
            elif ref.options is not None:
                problems += check_options(self.get(ref.kind, value), dict(getattr(validated, ref.options) or {}),
                                          ref.options)[1]
        if problems:
            raise RecipeError(f"create({kind!r}, {name!r})", problems)
        if kind == "divergence":
            return comp.factory
        try:
            component = comp.factory(validated, self.context(ctx))
        except UserError:  # the factory's own message, e.g. sizes that do not fit the data
            raise
        except Exception as exc:
            raise PluginError(f"building {kind} '{name}' (plugin '{comp.plugin}') failed: "
                              f"{type(exc).__name__}: {exc}") from exc
        expected = COMPONENT_TYPES.get(kind)
        if expected is not None and not isinstance(component, expected):
            raise PluginError(f"the factory of {kind} '{name}' (plugin '{comp.plugin}') returned "
                              f"{type(component).__name__}, not {a_or_an(expected.__name__)}")
        mark(component, Origin(kind, name, validated.model_dump(mode="json", exclude_none=True)))
        return component

    def named_components(self, comp: Component, validated: BaseModel | None) -> list[tuple[str, RegisteredName, str]]:
        """The options of ``validated`` (``comp``'s options) that name other registered components, marked with
        ``RegisteredName``: (option, marker, the name given)."""
        if validated is None:
            return []
        return [(option, ref, value) for option, info in comp.options.model_fields.items()
                for ref in info.metadata if isinstance(ref, RegisteredName)
                for value in [getattr(validated, option)] if isinstance(value, str)]

    def unknown_name(self, kind: str, key: str, name: str) -> Problem:
        """An unknown component name at ``key``: near misses, the available names, plugins that failed to load."""
        available = self.names(kind)
        hint = suggest(name, available)
        hint = (hint + " " if hint else "") + f"available: {', '.join(available) or '(none registered)'}"
        return Problem(key, f"unknown {kind}", name, True, hint + self.broken_note())


def a_or_an(word: str) -> str:
    """``word`` with its indefinite article: 'an Encoder', 'a Decoder'."""
    return f"{'an' if word[:1].lower() in 'aeiou' else 'a'} {word}"


def unknown_name_message(kind: str, name: str, available: dict[str, Any] | list[str]) -> str:
    names = sorted(available)
    hint = suggest(name, names)
    msg = f"unknown {kind} '{name}'"
    if hint:
        msg += f"; {hint}"
    listed = ', '.join(names) if names else '(none registered)'
    return msg + (f" Available: {listed}" if hint else f"; available: {listed}")  # after "did you mean ...?"


_BOUNDS = (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="), ("min_length", "length >="),
           ("max_length", "length <="))


def _type_name(info: Any) -> str:
    """An option's type for people: ``int > 0``, ``one of 'a', 'b'``, ``a registered divergence``."""
    refs = [m.kind for m in info.metadata if isinstance(m, RegisteredName)]
    if refs:
        return f"a registered {refs[0]} name"
    text = _annotation(info.annotation)
    bounds = [f"{sign} {getattr(m, attr)}" for m in info.metadata for attr, sign in _BOUNDS
              if getattr(m, attr, None) is not None]
    return " ".join([text, *bounds]) if bounds else text


def _annotation(tp: Any) -> str:
    origin, args = get_origin(tp), get_args(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (Union, UnionType):
        return " | ".join(_annotation(a) for a in args)
    if origin is Annotated:
        return _annotation(args[0])
    if origin is not None:
        inner = ", ".join(_annotation(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    if tp is type(None):
        return "None"
    return getattr(tp, "__name__", str(tp))


def _plain(value: Any) -> Any:
    """A default as JSON can hold it (tuples as lists; other objects as their repr)."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, BaseModel):
        return _plain(value.model_dump(mode="json"))
    return repr(value)


def _reraise_interrupt(exc: BaseException) -> None:
    """Ctrl-C or SIGTERM the command line received while a plugin loads is the user's, not the plugin's failure:
    it goes on (a plugin's own sys.exit, KeyboardInterrupt or other exception is recorded as its failure)."""
    if isinstance(exc, Interrupted | Terminated):
        raise exc


def _describe(exc: BaseException) -> str:
    """One line for an exception a plugin raised (SystemExit and KeyboardInterrupt included)."""
    if isinstance(exc, SystemExit):
        return f"called sys.exit({exc.code!r})"
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


def _owner(comp: Component) -> str:
    return f"plugin '{comp.plugin}' ({comp.version})"


def _dist_name(ep: md.EntryPoint) -> str:
    return ep.dist.name if ep.dist is not None else "?"


def _hook_mistakes(plugin: object) -> str | None:
    """What keeps a plugin's hook functions from being called, before pluggy sees them: a ``register_*`` function
    without ``@hookimpl`` (pluggy would skip it silently) or a marked function that is no hook (a typo)."""
    hooks = {n for n in dir(hookspecs) if hasattr(getattr(hookspecs, n), "advinf_spec")}
    problems = []
    for attr in sorted(dir(plugin)):
        try:
            fn = getattr(plugin, attr)
        except Exception:  # noqa: BLE001 -- an attribute that fails to read is no hook
            continue
        if not callable(fn):
            continue
        try:  # as pluggy reads the marker: a lazy proxy may raise anything, a mock answers every name
            opts = getattr(fn, "advinf_impl", None)
        except Exception:  # noqa: BLE001
            opts = None
        if not isinstance(opts, dict):
            opts = None
        hook = (opts or {}).get("specname") or attr
        if opts is None and attr in hooks and getattr(fn, "__module__", None) != hookspecs.__name__:
            problems.append(f"{attr} is not marked @advinf.hookimpl, so it would never be called")
        elif opts is not None and hook not in hooks:
            hint = suggest(hook, hooks) or f"the hooks are {', '.join(sorted(hooks))}"
            problems.append(f"unknown hook '{hook}' ({hint})")
    return "; ".join(problems) or None


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


_default: PluginHost | None = None


def default_host() -> PluginHost:
    """The process-wide host with every installed plugin loaded (built lazily, once)."""
    global _default
    if _default is None:
        host = PluginHost()
        host.load_entry_points()
        _default = host
    return _default


def reset_default_host() -> None:
    """Forget the process-wide host (tests; after installing a plugin at run time)."""
    global _default
    _default = None
