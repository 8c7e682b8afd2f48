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

import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from advinf.errors import UserError
from advinf.recipe import clip, parse_override
from advinf.values import parse_toml, toml_value

_NAMES = ("uniform", "loguniform", "randint", "choice")
_NAME = re.compile(r"\b(" + "|".join(_NAMES) + r")\s*\(")


@dataclass(frozen=True)
class _Call:
    """One distribution in a draw's value: where it stands in the text, its name and its arguments."""

    start: int
    end: int
    name: str
    args: list[Any]


@dataclass(frozen=True)
class Draw:
    """One ``--draw KEY[,KEY...]=VALUE``: the keys it sets and the value with its distributions."""

    keys: tuple[str, ...]
    template: str
    text: str
    calls: tuple[_Call, ...]

    def value(self, seed: int) -> str:
        """The TOML value seed ``seed`` trains with (its distributions replaced by drawn values)."""
        rng = random.Random(f"{seed}|{self.text}")  # a str seed: the same stream in every process and Python
        out, at = [], 0
        for call in self.calls:  # in order: each draw takes the generator's next values
            out += [self.template[at:call.start], _sample(call.name, call.args, rng)]
            at = call.end
        return "".join(out) + self.template[at:]

    def overrides(self, seed: int) -> list[str]:
        """The ``--set`` overrides of seed ``seed``."""
        value = self.value(seed)
        return [f"{key}={value}" for key in self.keys]


def parse_draw(text: str) -> Draw:
    """A ``--draw`` option's value, checked: its keys, its distributions and their arguments, and that a drawn
    value is TOML. A UserError names the option and what to write."""
    shown = f"--draw {clip(text.strip())!r}"
    raw_keys, sep, template = text.partition("=")
    keys = tuple(k.strip() for k in raw_keys.split(","))
    if not sep or not all(keys):
        raise UserError(f"{shown}: give KEY=VALUE with distributions in the value, e.g. --draw "
                        "'optimizer.lr=loguniform(1e-5, 1e-3)' (several keys, comma-separated, share one draw)")
    if len(set(keys)) != len(keys):
        raise UserError(f"{shown} names a key twice")
    template = template.strip()
    calls = _calls(template, shown)
    if not calls:
        raise UserError(f"{shown} draws nothing: its value holds none of uniform(a, b), loguniform(a, b), "
                        f"randint(a, b), choice(v1, ...) (outside quotes); for a fixed value use --set")
    draw = Draw(keys, template, text.strip(), tuple(calls))
    for key in keys:
        try:
            path, _ = parse_override(f"{key}={draw.value(0)}")
        except ValueError as exc:
            raise UserError(f"{shown}: {exc}") from None
        if path == ["seed"]:
            raise UserError(f"{shown}: each seed's run sets `seed` itself (--seeds)")
    return draw


def _calls(template: str, shown: str) -> list[_Call]:
    """The distributions in ``template``, outside string literals, with their arguments parsed and checked."""
    calls: list[_Call] = []
    i = 0
    while i < len(template):
        if template[i] in "\"'":
            i = _string_end(template, i, shown)
            continue
        match = _NAME.match(template, i) if (i == 0 or not _word(template[i - 1])) else None
        if match is None:
            i += 1
            continue
        close = _closing(template, match.end(), shown)
        inner = template[match.end():close]
        if _calls(inner, shown):
            raise UserError(f"{shown}: {match.group(1)}() holds another distribution; they do not nest")
        calls.append(_Call(i, close + 1, match.group(1), _arguments(match.group(1), inner, shown)))
        i = close + 1
    return calls


def _word(c: str) -> bool:
    return c.isalnum() or c == "_"


def _string_end(text: str, i: int, shown: str) -> int:
    """The index after the TOML string literal opening at ``text[i]``."""
    quote, j = text[i], i + 1
    while j < len(text):
        if quote == '"' and text[j] == "\\":
            j += 2
            continue
        if text[j] == quote:
            return j + 1
        j += 1
    raise UserError(f"{shown}: a string ({quote}) is not closed")


def _closing(text: str, i: int, shown: str) -> int:
    """The index of the ``)`` that closes the call whose arguments start at ``text[i]`` (quotes and brackets in
    the arguments respected)."""
    depth = 0
    while i < len(text):
        c = text[i]
        if c in "\"'":
            i = _string_end(text, i, shown)
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            if depth == 0:
                if c == ")":
                    return i
                break
            depth -= 1
        i += 1
    raise UserError(f"{shown}: a distribution's ( is not closed by its )")


def drawn_overrides(draws: Sequence[Draw], seed: int) -> list[str]:
    """Every draw's ``--set`` overrides for seed ``seed``."""
    return [item for d in draws for item in d.overrides(seed)]


def drawn_values(draws: Sequence[Draw], seed: int) -> dict[str, Any]:
    """What seed ``seed`` drew, by key (as JSON gives it back), for the group's summary."""
    return {key: value for d in draws for key, value in
            ((k, parse_override(item)[1]) for k, item in zip(d.keys, d.overrides(seed), strict=True))}


def check_draws(draws: Sequence[Draw], overrides: Sequence[str]) -> None:
    """Refuse a key drawn twice, or both drawn and set, also where one is a table holding the other (a drawn
    ``optimizer`` table and a drawn ``optimizer.lr``): which value would a seed train with?"""
    seen: list[tuple[tuple[str, ...], str]] = []
    for d in draws:
        for key in d.keys:
            path = tuple(parse_override(f"{key}=0")[0])
            for other, by in seen:
                if _overlap(path, other):
                    raise UserError(f"--draw {clip(d.text)!r} draws {key}, and --draw {clip(by)!r} draws "
                                    f"{'.'.join(other)}: one holds the other; draw each key once")
            seen.append((path, d.text))
    for item in overrides:
        try:
            path = tuple(parse_override(item)[0])
        except ValueError:
            continue  # a malformed --set is load_recipe's to report
        for other, by in seen:
            if _overlap(path, other):
                raise UserError(f"--set {clip(item.strip())} and --draw {clip(by)!r} both give "
                                f"{'.'.join(min(path, other, key=len))}; keep one")


def _overlap(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    """Whether one dotted key is the other or a table holding it."""
    n = min(len(a), len(b))
    return a[:n] == b[:n]


def _arguments(name: str, inner: str, shown: str) -> list[Any]:
    try:
        args = parse_toml(f"v = [{inner}]")["v"]
    except ValueError:
        raise UserError(f"{shown}: the arguments of {name}({clip(inner, 60)}) are not TOML values") from None
    if name == "choice":
        if not args:
            raise UserError(f"{shown}: choice() needs at least one value")
        if not all(_plain(a) for a in args):
            raise UserError(f"{shown}: choice() takes numbers, booleans, strings, lists and tables (no dates or "
                            "times)")
        return args
    numbers = [a for a in args if isinstance(a, int | float) and not isinstance(a, bool) and math.isfinite(a)]
    if len(args) != 2 or len(numbers) != 2:
        raise UserError(f"{shown}: {name}(a, b) takes two finite numbers, not {name}({clip(inner, 60)})")
    a, b = numbers
    if name == "randint" and not (isinstance(a, int) and isinstance(b, int) and a <= b):
        raise UserError(f"{shown}: randint(a, b) needs integers a <= b, not randint({inner})")
    if name == "uniform" and not (a < b and math.isfinite(b - a)):
        raise UserError(f"{shown}: uniform(a, b) needs a < b (and b - a finite), not uniform({inner})")
    if name == "loguniform" and not 0 < a < b:
        raise UserError(f"{shown}: loguniform(a, b) needs 0 < a < b, not loguniform({inner})")
    return numbers


def _plain(value: Any) -> bool:
    """Whether ``value`` is made of numbers, booleans, strings, lists and tables only (what toml_value writes)."""
    if isinstance(value, list):
        return all(map(_plain, value))
    if isinstance(value, dict):
        return all(map(_plain, value.values()))
    return isinstance(value, bool | int | float | str)


def _sample(name: str, args: list[Any], rng: random.Random) -> str:
    if name == "uniform":
        return repr(rng.uniform(args[0], args[1]))
    if name == "loguniform":
        return repr(math.exp(rng.uniform(math.log(args[0]), math.log(args[1]))))
    if name == "randint":
        return str(rng.randint(args[0], args[1]))
    return toml_value(rng.choice(args))
