"""Random search over seeds: ``advinf run RECIPE --seeds 0-9 --draw 'optimizer.lr=loguniform(1e-5, 1e-3)'``.

The ALI paper trained each toy model 10 times "using Adam with random learning rate and β1 values, and weights
initialized from a Gaussian with a random standard deviation" (docs/ali-reference.md §4). A draw is a ``--set``
whose value holds distributions: ``uniform(a, b)``, ``loguniform(a, b)``, ``randint(a, b)`` (both ends
included) and ``choice(v1, v2, ...)`` (TOML values), anywhere in a TOML value (``[uniform(0.1, 0.9), 0.999]``).
Several keys before the ``=`` (``encoder.init_std,decoder.init_std=...``) take the same drawn value. Each seed K
replaces the distributions with values drawn from a generator seeded by K and the draw's text, so what seed K
draws does not depend on the other seeds or their order, and its run directory's recipe holds the values it
trained with (``advinf run --resume OUT/seed_K`` continues it as it is).
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from advinf.errors import UserError
from advinf.recipe import parse_override
from advinf.values import parse_toml

_CALL = re.compile(r"\b(uniform|loguniform|randint|choice)\s*\(([^()]*)\)")


@dataclass(frozen=True)
class Draw:
    """One ``--draw KEY[,KEY...]=VALUE``: the keys it sets and the value with its distributions."""

    keys: tuple[str, ...]
    template: str
    text: str

    def value(self, seed: int) -> str:
        """The TOML value seed ``seed`` trains with (its distributions replaced by drawn values)."""
        rng = random.Random(f"{seed}|{self.text}")  # a str seed: the same stream in every process and Python
        return _CALL.sub(lambda m: _sample(m.group(1), _arguments(m, self.text), rng), self.template)

    def overrides(self, seed: int) -> list[str]:
        """The ``--set`` overrides of seed ``seed``."""
        value = self.value(seed)
        return [f"{key}={value}" for key in self.keys]


def parse_draw(text: str) -> Draw:
    """A ``--draw`` option's value, checked: its keys, its distributions and their arguments, and that a drawn
    value is TOML. A UserError names the option and what to write."""
    raw_keys, sep, template = text.partition("=")
    keys = tuple(k.strip() for k in raw_keys.split(","))
    if not sep or not all(keys):
        raise UserError(f"--draw {text!r}: give KEY=VALUE with distributions in the value, e.g. --draw "
                        "'optimizer.lr=loguniform(1e-5, 1e-3)' (several keys, comma-separated, share one draw)")
    if len(set(keys)) != len(keys):
        raise UserError(f"--draw {text!r} names a key twice")
    template = template.strip()
    if not _CALL.search(template):
        raise UserError(f"--draw {text!r} draws nothing: its value holds none of uniform(a, b), loguniform(a, b), "
                        f"randint(a, b), choice(v1, ...); for a fixed value use --set")
    draw = Draw(keys, template, text.strip())
    for key in keys:
        try:
            path, _ = parse_override(f"{key}={draw.value(0)}")
        except ValueError as exc:
            raise UserError(f"--draw {text!r}: {exc}") from None
        if path == ["seed"]:
            raise UserError(f"--draw {text!r}: each seed's run sets `seed` itself (--seeds)")
    return draw


def drawn_overrides(draws: Sequence[Draw], seed: int) -> list[str]:
    """Every draw's ``--set`` overrides for seed ``seed``."""
    return [item for d in draws for item in d.overrides(seed)]


def drawn_values(draws: Sequence[Draw], seed: int) -> dict[str, Any]:
    """What seed ``seed`` drew, by key (as JSON gives it back), for the group's summary."""
    return {key: value for d in draws for key, value in
            ((k, parse_override(item)[1]) for k, item in zip(d.keys, d.overrides(seed), strict=True))}


def check_draws(draws: Sequence[Draw], overrides: Sequence[str]) -> None:
    """Refuse a key drawn twice, or both drawn and set: which value would a seed train with?"""
    seen: dict[tuple[str, ...], str] = {}
    for d in draws:
        for key in d.keys:
            path = tuple(parse_override(f"{key}=0")[0])
            if path in seen:
                raise UserError(f"--draw {d.text!r}: {key} is drawn twice (also by --draw {seen[path]!r})")
            seen[path] = d.text
    for item in overrides:
        try:
            path = tuple(parse_override(item)[0])
        except ValueError:
            continue  # a malformed --set is load_recipe's to report
        if path in seen:
            raise UserError(f"--set {item.strip()} and --draw {seen[path]!r} both give {'.'.join(path)}; keep one")


def _arguments(match: re.Match[str], text: str) -> list[Any]:
    name, inner = match.group(1), match.group(2)
    try:
        args = parse_toml(f"v = [{inner}]")["v"]
    except ValueError:
        raise UserError(f"--draw {text!r}: the arguments of {name}({inner}) are not TOML values") from None
    numbers = [a for a in args if isinstance(a, int | float) and not isinstance(a, bool) and math.isfinite(a)]
    if name == "choice":
        if not args:
            raise UserError(f"--draw {text!r}: choice() needs at least one value")
        return args
    if len(args) != 2 or len(numbers) != 2:
        raise UserError(f"--draw {text!r}: {name}(a, b) takes two finite numbers, not {name}({inner})")
    a, b = numbers
    if name == "randint" and not (isinstance(a, int) and isinstance(b, int) and a <= b):
        raise UserError(f"--draw {text!r}: randint(a, b) needs integers a <= b, not randint({inner})")
    if name == "uniform" and not a < b:
        raise UserError(f"--draw {text!r}: uniform(a, b) needs a < b, not uniform({inner})")
    if name == "loguniform" and not 0 < a < b:
        raise UserError(f"--draw {text!r}: loguniform(a, b) needs 0 < a < b, not loguniform({inner})")
    return numbers


def _sample(name: str, args: list[Any], rng: random.Random) -> str:
    if name == "uniform":
        return repr(rng.uniform(args[0], args[1]))
    if name == "loguniform":
        return repr(math.exp(rng.uniform(math.log(args[0]), math.log(args[1]))))
    if name == "randint":
        return str(rng.randint(args[0], args[1]))
    return toml_value(rng.choice(args))


def toml_value(value: Any) -> str:
    """``value`` as one line of TOML (what ``--set KEY=...`` takes): numbers, booleans, strings, lists, tables."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(map(toml_value, value)) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(str(k))} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no TOML value for {type(value).__name__}")
