"""Conditions: what the labels y of a conditional model are, how networks embed them, and example conditions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

import torch
from torch import Tensor, nn

from advinf.errors import UserError, suggest

if TYPE_CHECKING:
    from advinf.data import Dataset


class _Embeds(Protocol):
    """What a conditional game says about the embedding of y (``advinf.Game`` has both)."""

    embedding_dim: int
    train_embedding: bool


@dataclass(frozen=True)
class Condition:
    """What the labels y of a conditional model are, and how its networks embed them.

    ``kind`` is ``classes`` (y holds class indices, ``dim`` classes) or ``attributes`` (y holds ``dim``
    binary attributes in {0, 1}). ``names`` are the class or attribute names. Every network of a conditional
    game embeds y with a :class:`ConditionEmbedding` built from the same Condition, so all of them start from
    the same projection (the original code's one shared, never-trained embedding when ``train_embedding`` is
    false).
    """

    kind: Literal["classes", "attributes"]
    dim: int
    names: tuple[str, ...] = ()
    embedding_dim: int = 256
    train_embedding: bool = True
    init_std: float = 0.01
    seed: int = 0

    @classmethod
    def for_game(cls, game: _Embeds, data: Dataset, seed: int = 0) -> Condition:
        """The Condition a conditional ``game`` builds its networks with on ``data``: the data's labels (kind,
        names, count) and the game's embedding (``embedding_dim``, ``train_embedding``), seeded by ``seed`` (the
        run's: what a recipe builds). Give it to the networks (``BuildContext(condition=...)``) and the
        Trainer."""
        info = data.label_info()
        if info is None:
            raise UserError("a conditional game needs labelled data, and this dataset has no labels")
        kind, names, dim = info
        if dim < 1:
            raise UserError("the dataset's labels are empty; a conditional game needs at least one class or "
                            "attribute")
        return cls(kind, dim, names, embedding_dim=game.embedding_dim, train_embedding=game.train_embedding,  # type: ignore[arg-type]
                   seed=seed)

    def disagreement(self, game: _Embeds, data: Dataset) -> str | None:
        """How this Condition differs from the one ``game`` builds on ``data`` (:meth:`for_game`), or None;
        the seed aside (it only says where the embedding starts)."""
        want = Condition.for_game(game, data, self.seed)
        keys = ("kind", "dim", "embedding_dim", "train_embedding")
        diff = [f"{k} = {getattr(self, k)!r} (the game and data give {getattr(want, k)!r})" for k in keys
                if getattr(self, k) != getattr(want, k)]
        return "; ".join(diff) or None

    def as_input(self, y: Tensor) -> Tensor:
        """y as a float matrix (B, dim): one-hot class indices, or the attributes as floats."""
        if self.kind == "classes":
            return torch.nn.functional.one_hot(y.long().reshape(-1), self.dim).float()
        return y.reshape(y.shape[0], -1).float()

    def parse(self, text: str) -> Tensor:
        """One condition from text: a class index or name; or comma-separated attribute names set to 1.

        ``"3"``, ``"cat"``; ``"Male,Smiling"`` (the others 0), ``"none"`` (all attributes 0).
        """
        text = text.strip()
        if self.kind == "classes":
            if text.isdigit() and int(text) < self.dim:
                return torch.tensor(int(text))
            if text in self.names:
                return torch.tensor(self.names.index(text))
            names = f"; class names: {', '.join(self.names)}" if self.names else ""
            raise UserError(f"condition {text!r}: give a class index from 0 to {self.dim - 1}{names}")
        y = torch.zeros(self.dim, dtype=torch.uint8)
        if text.lower() in ("", "none"):
            return y
        for part in (p.strip() for p in text.split(",")):
            if part not in self.names:
                hint = suggest(part, self.names)
                raise UserError(f"condition {text!r}: unknown attribute {part!r}"
                                f"{'; ' + hint if hint else ''}. Attributes: {', '.join(self.names)}")
            y[self.names.index(part)] = 1
        return y

    def describe(self, y: Tensor) -> str:
        """A short text for one condition (the inverse of ``parse``)."""
        if self.kind == "classes":
            i = int(y)
            return self.names[i] if i < len(self.names) else str(i)
        on = [self.names[i] if i < len(self.names) else str(i) for i in y.nonzero().flatten().tolist()]
        return ",".join(on) or "none"


class ConditionEmbedding(nn.Module):
    """y -> Linear(dim -> embedding_dim): the label/attribute embedding a conditional network owns.

    Weights start N(0, init_std^2) from a generator seeded by the Condition (the same matrix in every network
    built from one Condition), biases 0. With ``train_embedding = false`` the parameters are frozen.
    """

    def __init__(self, condition: Condition):
        super().__init__()
        self.condition = condition
        self.linear = nn.Linear(condition.dim, condition.embedding_dim)
        with torch.no_grad():
            g = torch.Generator().manual_seed(condition.seed)
            self.linear.weight.copy_(torch.randn(self.linear.weight.shape, generator=g) * condition.init_std)
            self.linear.bias.zero_()
        self.requires_grad_(condition.train_embedding)

    def forward(self, y: Tensor) -> Tensor:
        """The embedding of labels y (class indices or attribute vectors), one row per example."""
        return self.linear(self.condition.as_input(y).to(self.linear.weight.dtype))


def embedding_for(condition: Condition | None) -> ConditionEmbedding | None:
    """The embedding a network built with ``ctx.condition`` owns; None for an unconditional network."""
    return None if condition is None else ConditionEmbedding(condition)


def with_condition(h: Tensor, embed: ConditionEmbedding | None, y: Tensor | None) -> Tensor:
    """``h`` (B, C) or (B, C, H, W) with the embedding of y appended as extra features or channels; ``h`` itself
    when ``embed`` is None (an unconditional network)."""
    if embed is None:
        return h
    if y is None:
        raise ValueError("this network is conditional and needs y")
    e = embed(y).to(h.dtype)
    if h.dim() == 4:
        e = e[:, :, None, None].expand(-1, -1, h.shape[2], h.shape[3])
    return torch.cat([h, e], dim=1)


def example_conditions(condition: Condition, data: Dataset | None, n: int, seed: int = 0) -> Tensor:
    """``n`` conditions to draw pictures with: for classes, the classes in equal consecutive blocks (a row
    each in a grid of ``n`` = classes x k pictures); for attributes, the attribute vectors of ``n`` examples
    drawn with ``seed`` from the held-out split (else the training split): real combinations of attributes."""
    if condition.kind == "classes":
        return (torch.arange(n) * condition.dim // n).clamp(max=condition.dim - 1)
    split = None if data is None else (data.heldout if data.heldout is not None else data.train)
    if split is None or len(split) == 0:
        return torch.zeros(n, condition.dim, dtype=torch.uint8)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(split), (n,), generator=g)
    y = split.take(idx)[1]
    if y is None:
        raise UserError("the dataset's held-out split has no labels to take example conditions from")
    return y.cpu()
