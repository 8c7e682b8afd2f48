"""Checks of plain option values that a recipe and a spec built in Python share, before pydantic reads them:
booleans posing as numbers (pydantic's lax mode would read true as 1) and infinities (TOML and Python can write
them; no option means one). Each gives ``Problem``s keyed by dotted key.

And the parsing of the JSON and TOML files advinf reads (recipes, run directories, checkpoints) into plain values
that recursive code can walk: input nested deeper than :data:`MAX_NESTING` is malformed input, refused as the
parsers refuse bad syntax, not a RecursionError."""

from __future__ import annotations

import json
import math
import tomllib
from pathlib import PurePath
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel

from advinf.errors import Problem


def bools_posing_as_numbers(model: type[BaseModel], data: dict[str, Any], prefix: str) -> list[Problem]:
    """true/false given for a numeric option, or a number or string for a true/false one (pydantic's lax mode
    would read them as 1 and 0, or 1 and "yes" as true)."""
    out = []
    for key, value in data.items():
        field_info = model.model_fields.get(key)
        if field_info is None:
            continue
        ann = field_info.annotation
        if isinstance(value, bool) and not _admits_bool(ann) and _admits_number(ann):
            out.append(Problem(f"{prefix}{key}", "a boolean where a number is expected", value, True))
        elif not isinstance(value, bool) and _admits_bool(ann) and not _admits_other(ann) and value is not None:
            out.append(Problem(f"{prefix}{key}", "must be true or false", value, True))
        elif isinstance(value, str) and _admits_number(ann) and not _admits_text(ann):  # lax mode reads "50" as 50
            out.append(Problem(f"{prefix}{key}", "a string where a number is expected (write it without quotes)",
                               value, True))
        if isinstance(value, list) and _admits_number(ann) and not _admits_bool(ann):  # inside lists, too
            text = _admits_text(ann)
            for i, item in enumerate(value):
                if isinstance(item, bool):
                    out.append(Problem(f"{prefix}{key}.{i}", "a boolean where a number is expected", item, True))
                elif isinstance(item, str) and not text:
                    out.append(Problem(f"{prefix}{key}.{i}", "a string where a number is expected", item, True))
        sub = unwrap_model(ann)
        if sub is not None and isinstance(value, dict):
            out.extend(bools_posing_as_numbers(sub, value, f"{prefix}{key}."))
    return out


def non_finite(data: Any, prefix: str = "") -> list[Problem]:
    """Every inf or nan in ``data`` (nested tables and lists): no option value means an infinity (TOML allows
    writing one, and Python ``float("inf")``); and every integer beyond 64 bits, which TOML cannot hold and
    torch, NumPy or scikit-learn overflow on (after training, where an evaluator reads it)."""
    if isinstance(data, dict):
        return [p for k, v in data.items() for p in non_finite(v, f"{prefix}{k}.")]
    if isinstance(data, list | tuple):
        return [p for i, v in enumerate(data) for p in non_finite(v, f"{prefix}{i}.")]
    if isinstance(data, float) and not math.isfinite(data):
        return [Problem(prefix.rstrip("."), "must be a finite number", data, True)]
    if isinstance(data, int) and not isinstance(data, bool) and not -2**63 <= data < 2**63:
        return [Problem(prefix.rstrip("."), "beyond a 64-bit integer (TOML's range)", data, True)]
    return []


def _leaves(tp: Any) -> list[Any]:
    args = get_args(tp)
    return [leaf for a in args for leaf in _leaves(a)] if args and get_origin(tp) is not Literal else [tp]


def _admits_bool(tp: Any) -> bool:
    return any(t is bool or t is Any for t in _leaves(tp))


def _admits_text(tp: Any) -> bool:
    return any(t is str or t is Any or get_origin(t) is Literal or (isinstance(t, type) and issubclass(t, PurePath))
               for t in _leaves(tp))


def _admits_number(tp: Any) -> bool:
    return any(t in (int, float) for t in _leaves(tp))


def _admits_other(tp: Any) -> bool:
    return any(t not in (bool, type(None)) for t in _leaves(tp))


def unwrap_model(tp: Any) -> type[BaseModel] | None:
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp
    if get_origin(tp) is not None or type(tp).__name__ == "UnionType":
        for arg in get_args(tp):
            m = unwrap_model(arg)
            if m is not None:
                return m
    return None


#: How deeply lists and tables may nest in a file advinf reads (a recipe's are 4 deep).
MAX_NESTING = 100


def too_deep(value: Any, limit: int = MAX_NESTING) -> bool:
    """Whether lists and tables in ``value`` nest more than ``limit`` levels deep (walked without recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list | tuple) else None
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list | tuple))
    return False


def listed(items: Any) -> list[Any]:
    """A list of what a "several of these" argument holds: one text or path given alone is one item, not a
    sequence of characters (``overrides="train.steps=5"`` is one override)."""
    if isinstance(items, str | bytes | PurePath):
        return [items]
    return list(items)


def parse_json(text: str) -> Any:
    """``json.loads``; JSON nested too deeply is a ``json.JSONDecodeError`` (a ValueError), as bad syntax is."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply", text[:100], 0) from None
    if too_deep(value):
        raise json.JSONDecodeError(f"nested more than {MAX_NESTING} levels deep", text[:100], 0)
    return value


def parse_toml(text: str) -> dict[str, Any]:
    """``tomllib.loads``; TOML nested too deeply is a ``tomllib.TOMLDecodeError`` (a ValueError), as bad syntax
    is."""
    try:
        value = tomllib.loads(text)
    except RecursionError:
        raise tomllib.TOMLDecodeError("nested too deeply") from None
    if too_deep(value):
        raise tomllib.TOMLDecodeError(f"tables and lists nested more than {MAX_NESTING} levels deep")
    return value


def toml_value(value: Any) -> str:
    """``value`` as one line of TOML (what ``--set KEY=...`` takes): numbers, booleans, strings, lists, tables."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        # a JSON string is a TOML basic string, but for DEL, which TOML wants escaped
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list):
        return "[" + ", ".join(map(toml_value, value)) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{toml_value(str(k))} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no TOML value for {type(value).__name__}")
