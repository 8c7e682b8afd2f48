"""Component options checked in recipe words: pydantic's errors as Problems keyed by dotted recipe key (with a
"did you mean" for a misspelt key), booleans posing as numbers (which pydantic's lax mode would accept), and
defaults that break their own field's rules (which pydantic does not check). Shared by recipe validation and
``advinf.create``."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

from advinf.errors import OptionError, Problem, UserError, suggest
from advinf.interfaces import WELL_KNOWN
from advinf.values import bools_posing_as_numbers, unwrap_model


def nested_unknown_keys(model: type[BaseModel], data: dict[str, Any], prefix: str) -> list[Problem]:
    """Keys of the tables given for options that are themselves option models, which are not that model's fields:
    rejected as at the top level whatever the nested model's own ``extra`` says (pydantic's default drops them)."""
    out = []
    for key, value in data.items():
        info = model.model_fields.get(key)
        sub = unwrap_model(info.annotation) if info is not None else None
        if sub is None or not isinstance(value, dict):
            continue
        fields = list(sub.model_fields)
        out += [Problem(f"{prefix}{key}.{k}", "unknown key", v, True,
                        suggest(k, fields) or f"allowed keys: {', '.join(fields) or '(none)'}")
                for k, v in value.items() if k not in sub.model_fields]
        out += nested_unknown_keys(sub, {k: v for k, v in value.items() if k in sub.model_fields}, f"{prefix}{key}.")
    return out


def problems_from(exc: ValidationError, model: type[BaseModel], data: Any, prefix: str = "",
                  fields_only: bool = False) -> list[Problem]:
    """pydantic errors -> Problems keyed by dotted recipe key, with 'did you mean' for unknown keys.
    ``fields_only``: leave out what the model's own validators found (checks of several options together)."""
    out = []
    for err in exc.errors():
        if fields_only and not err["loc"]:
            continue
        loc = [str(p) for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-"))]
        key = ".".join(([prefix] if prefix else []) + loc)
        etype = err["type"]
        if etype == "extra_forbidden":
            allowed = _fields_at(model, loc[:-1])
            hint = suggest(loc[-1], allowed) or (f"allowed keys: {', '.join(allowed)}" if allowed else "")
            out.append(Problem(key, "unknown key", err.get("input"), True, hint))
        elif etype == "missing" and loc[-1] == "name" and len(loc) == 2 and loc[0] in WELL_KNOWN:
            net = loc[0]  # often a --set encoder.* for a game without an encoder
            out.append(Problem(key, "missing required key", hint=f"name the {net} network (advinf list-plugins "
                               f"lists them), or, if the game has no {net}, leave out [{net}] and --set {net}.*"))
        elif etype == "missing":
            out.append(Problem(key, "missing required key"))
        elif etype in ("model_type", "dict_type"):  # pydantic names its class: say what the recipe needs
            out.append(Problem(key, f"must be a table (a [{key}] section, or {{...}} in --set)", err.get("input"),
                               True))
        elif etype == "string_pattern_mismatch" and key == "name":
            out.append(Problem(key, "must be a plain name of at most 100 letters, digits, '.', '_', '+' or '-' "
                                    "(it names the run directory)", err.get("input"), True))
        elif isinstance(cause := err.get("ctx", {}).get("error"), OptionError):  # a validator naming its option
            inputs = err.get("input")
            if cause.option.split(".")[0] not in _fields_at(model, loc):  # told by the section, as the bug it is
                out.append(Problem(key, f"{cause} (and a bug in this component's plugin: its check names option "
                                        f"'{cause.option}', which it does not have)"))
                continue
            key = ".".join(p for p in (key, cause.option) if p)
            out.append(Problem(key, str(cause), inputs.get(cause.option) if isinstance(inputs, dict) else None,
                               isinstance(inputs, dict) and cause.option in inputs))
        else:
            msg = err["msg"].removeprefix("Value error, ")
            out.append(Problem(key, msg, err.get("input"), "input" in err and etype != "model_type"))
    return out


def _fields_at(model: type[BaseModel], loc: list[str]) -> list[str]:
    """Field names of the (sub)model found by walking ``loc`` from ``model``; [] if not a model."""
    current: Any = model
    for part in loc:
        current = unwrap_model(current)
        if current is None or part not in current.model_fields:
            return []
        current = current.model_fields[part].annotation
    current = unwrap_model(current)
    return list(current.model_fields) if current is not None else []


def default_problems(comp: Any, given: dict[str, Any], section: str, context: Any = None) -> list[Problem]:
    """The defaults of ``comp``'s options (``comp``: a registered ``Component``) that ``given`` leaves in use and
    that break their own field's rules (pydantic does not check defaults): a plugin's bug, reported against the key
    and the plugin before anything is built. A default that depends on the other fields (a default factory taking
    them) is left to pydantic, and anything this check cannot judge is no problem."""
    try:
        defaults: dict[str, Any] = {}
        for name, info in comp.options.model_fields.items():
            key = info.validation_alias if isinstance(info.validation_alias, str) else info.alias or name  # as given
            if name in given or key in given or info.is_required() or info.default_factory_takes_validated_data:
                continue
            defaults[key] = info.get_default(call_default_factory=True)
        if not defaults:
            return []
        comp.options.model_validate({**defaults, **given}, context=context)
    except ValidationError as exc:
        return [Problem(p.key, f"the default of {comp.kind} '{comp.name}' (plugin '{comp.plugin}') is invalid: "
                               f"{p.message}", p.value, p.has_value,
                        hint="a bug in that plugin: set this key in the recipe, and tell its authors")
                for p in problems_from(exc, comp.options, given, prefix=section, fields_only=True)
                if p.key.removeprefix(f"{section}.").split(".")[0] in defaults and p.message != "unknown key"]
    except Exception:  # noqa: BLE001 -- the plugin's validators accepted the options as given: that stands
        return []
    return []


def check_options(comp: Any, opts: dict[str, Any], section: str = "", context: Any = None,
                  reserved: tuple[str, ...] = ()) -> tuple[BaseModel | None, list[Problem]]:
    """``opts`` checked against the options model of ``comp`` (a registered ``Component``), as a recipe section's
    are and ``advinf.create``'s: unknown keys (with a did-you-mean, ``reserved`` keys of the section among the
    suggestions), booleans posing as numbers, pydantic's own checks, a plugin validator's crash and broken
    defaults. Returns the validated options (None when a problem stops it) and the problems, keyed under
    ``section``. A plugin validator's own UserError passes through: its message is meant for the user."""
    dot = f"{section}." if section else ""
    fields = comp.options.model_fields
    unknown = [Problem(f"{dot}{k}", f"unknown option of {comp.kind} '{comp.name}'", opts[k], True,
                       suggest(k, [*fields, *reserved]) or f"options: {', '.join(fields) or '(none)'}")
               for k in opts if k not in fields]
    unknown += nested_unknown_keys(comp.options, opts, dot)
    if unknown:
        return None, unknown
    posing = bools_posing_as_numbers(comp.options, opts, dot)
    if posing:
        return None, posing
    try:
        validated = comp.options.model_validate(opts, context=context)
    except ValidationError as exc:
        return None, problems_from(exc, comp.options, opts, prefix=section)
    except UserError:
        raise
    except Exception as exc:  # a plugin's own validator may raise anything: its author's bug, named as such
        return None, [Problem(section or "(options)", f"the options check of {comp.kind} '{comp.name}' (plugin "
                              f"'{comp.plugin}') failed with {type(exc).__name__}: {exc}",
                              hint="a bug in that plugin; check these options, or tell its authors")]
    return validated, default_problems(comp, opts, section, context)
