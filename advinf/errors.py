"""User-facing errors: one clear message, exit status 2, no traceback unless --debug."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass


class UserError(Exception):
    """A problem the user can fix (bad recipe, unknown name, missing data, bad checkpoint).

    The CLI prints ``str(error)`` and exits with status 2; ``--debug`` shows the traceback.

    ``option``: the component's option the user should change, when it is one (``root`` of a dataset whose files
    are missing): a recipe's error then names that key (``dataset.root``), not the component (``dataset.name``).
    """

    exit_code = 2

    def __init__(self, *args: object, option: str | None = None):
        super().__init__(*args)
        self.option = option


class OptionError(UserError, ValueError):
    """A component option whose value does not fit the others, raised from an options model's validator: pydantic
    takes it as the ValueError a validator raises, and the recipe's error names ``section.option`` (with that
    option's value), not the whole section. ``option`` is required: without one, raise a ValueError."""

    def __init__(self, *args: object, option: str):
        super().__init__(*args, option=option)


def described(exc: BaseException, limit: int = 300) -> str:
    """``Type: message`` of an exception on one line, clipped to ``limit`` characters of message: how errors
    quote what a plugin's code raised."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text if len(text) <= limit else text[:limit - 3] + '...'}"


class PluginError(UserError):
    """A plugin failed to import or register, or two plugins claim the same name."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) as the ``advinf`` command line receives it: told apart from a KeyboardInterrupt a plugin
    raises itself, which is that plugin's failure."""


class Terminated(BaseException):
    """SIGTERM outside training (training handles it itself: a checkpoint, then exit status 143)."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a recipe, located by its dotted key."""

    key: str
    message: str
    value: object = None
    has_value: bool = False
    hint: str = ""

    def render(self) -> str:
        line = f"{self.key or '(top level)'}: {self.message}"
        if self.has_value:
            line += f" (got {_short_repr(self.value)})"
        if self.hint:
            line += f"; {self.hint}"
        return line


class RecipeError(UserError):
    """All problems found in one recipe, rendered as one block."""

    def __init__(self, source: str, problems: list[Problem]):
        self.source = source
        self.problems = problems
        super().__init__(self.render())

    def render(self) -> str:
        """The source and every problem, one per line: what the command line prints."""
        n = len(self.problems)
        head = f"{self.source}: {n} problem{'s' if n != 1 else ''}"
        return "\n".join([head, *("  " + p.render() for p in self.problems)])


def suggest(word: str, choices: Iterable[str]) -> str:
    """'did you mean ...' for a near miss, or ''."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else ""


def _short_repr(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
