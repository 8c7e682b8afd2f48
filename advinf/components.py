"""``create``: a registered component by kind and name, with its options checked as a recipe's are, typed by
kind for type checkers (``create("game", ...)`` is a ``Game``)."""

from __future__ import annotations

from typing import Literal, overload

from torch import nn

from advinf.data import Dataset
from advinf.divergences import Divergence
from advinf.interfaces import BuildContext, Decoder, Encoder, Evaluator, Game, JointCritic, Logger, Prior
from advinf.plugins import default_host


@overload
def create(kind: Literal["game"], name: str, ctx: BuildContext | None = None, /,
           **options: object) -> Game: ...
@overload
def create(kind: Literal["encoder"], name: str, ctx: BuildContext | None = None, /,
           **options: object) -> Encoder: ...
@overload
def create(kind: Literal["decoder"], name: str, ctx: BuildContext | None = None, /,
           **options: object) -> Decoder: ...
@overload
def create(kind: Literal["critic"], name: str, ctx: BuildContext | None = None, /,
           **options: object) -> JointCritic: ...
@overload
def create(kind: Literal["prior"], name: str, ctx: BuildContext | None = None, /,
           **options: object) -> Prior: ...
@overload
def create(kind: Literal["dataset"], name: str, ctx: BuildContext | None = None, /,
           **options: object) -> Dataset: ...
@overload
def create(kind: Literal["evaluator"], name: str, ctx: BuildContext | None = None, /,
           **options: object) -> Evaluator: ...
@overload
def create(kind: Literal["divergence"], name: str, ctx: BuildContext | None = None, /,
           **options: object) -> Divergence: ...
@overload
def create(kind: Literal["feature_network"], name: str, ctx: BuildContext | None = None, /,
           **options: object) -> nn.Module: ...
@overload
def create(kind: Literal["logger"], name: str, ctx: BuildContext | None = None, /,
           **options: object) -> Logger: ...
@overload
def create(kind: str, name: str, ctx: BuildContext | None = None, /, **options: object) -> object: ...


def create(kind: str, name: str, ctx: BuildContext | None = None, /, **options: object) -> object:
    """Build a registered component by kind and name, e.g. ``create("game", "ali")``; typed by kind for checkers.
    Options are checked as a recipe's are (unknown keys, bounds, booleans posing as numbers), as a RecipeError."""
    return default_host().create(kind, name, ctx, **options)
