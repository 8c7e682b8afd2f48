"""Datasets: train and held-out splits, in memory (tensors) or streamed (read by DataLoader workers).

A dataset that fits is held as a tensor on the training device (uint8 for images, float otherwise); how
batches are drawn from it is the job of :mod:`advinf.batches`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor


@dataclass
class Split:
    """One split: ``x`` of shape (N, ...) (uint8 pixels or floats) and optional labels ``y`` (N, ...)."""

    x: Tensor
    y: Tensor | None = None

    def __post_init__(self) -> None:
        if self.y is not None and len(self.y) != len(self.x):
            raise ValueError(f"split has {len(self.x)} examples but {len(self.y)} labels")

    def __len__(self) -> int:
        return len(self.x)

    def to(self, device: torch.device | str) -> Split:
        """This split on ``device``, its stored values unchanged (uint8 pixels stay uint8 until decoded)."""
        return Split(self.x.to(device), None if self.y is None else self.y.to(device))

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def take(self, idx: Tensor) -> tuple[Tensor, Tensor | None]:
        """The examples at ``idx`` (stored values) and their labels."""
        idx = idx.to(self.x.device)
        return self.x[idx], None if self.y is None else self.y[idx]

    def labels(self) -> Tensor | None:
        """Every example's label on the host (int64, flattened for class indices), or None without labels."""
        return None if self.y is None else self.y.detach().cpu().long().reshape(len(self.y), -1).squeeze(1)


class StreamingSplit:
    """A split too large to hold in memory: DataLoader workers read it batch by batch from ``source``.

    ``source`` is a map-style ``torch.utils.data.Dataset`` whose items are ``x`` or ``(x, y)`` tensors (uint8
    pixels or floats). The batches follow the same seeded order as an in-memory split, so resume is exact.
    """

    def __init__(self, source: torch.utils.data.Dataset, workers: int = 4, labelled: bool = False):
        self.source, self.workers, self.labelled = source, workers, labelled

    def __len__(self) -> int:
        return len(self.source)  # type: ignore[arg-type]

    @property
    def sample_shape(self) -> tuple[int, ...]:
        item = self.source[0]
        return tuple((item[0] if isinstance(item, tuple) else item).shape)

    def to(self, device: torch.device | str) -> StreamingSplit:
        """This split itself: it stays on the host, and batches are copied to the device as they are drawn."""
        return self  # stays on the host; batches are copied to the device as they are drawn

    def take(self, idx: Tensor) -> tuple[Tensor, Tensor | None]:
        """The examples at ``idx`` (stored values) and their labels (None without labels), read from ``source``."""
        return _collate([self.source[int(i)] for i in idx])

    def labels(self, chunk: int = 4096) -> Tensor | None:
        """Every example's label on the host, read through ``take`` (every example is loaded once)."""
        if not self.labelled or len(self) == 0:
            return None
        parts = [self.take(torch.arange(i, min(i + chunk, len(self))))[1] for i in range(0, len(self), chunk)]
        return torch.cat([p for p in parts if p is not None]).long()


def _collate(items: list) -> tuple[Tensor, Tensor | None]:
    if isinstance(items[0], tuple):
        return torch.stack([i[0] for i in items]), torch.as_tensor([int(i[1]) for i in items])
    return torch.stack(items), None


@dataclass
class Dataset:
    """Train and held-out splits plus what a dataset plugin knows about them (``meta``).

    Stored uint8 values are pixels in [0, 255] and decode to floats in [0, 1] (the original ALI range);
    float values decode unchanged.
    """

    train: Split | StreamingSplit
    heldout: Split | StreamingSplit | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return self.train.sample_shape

    @property
    def labelled(self) -> bool:
        """Whether the training examples have labels y."""
        train = self.train
        return train.labelled if isinstance(train, StreamingSplit) else train.y is not None

    def label_info(self) -> tuple[str, tuple[str, ...], int] | None:
        """What the labels are, for conditional models: ``(kind, names, dim)`` or None without labels.

        ``kind`` is ``attributes`` when ``meta["attributes"]`` names them (y holds one 0/1 per attribute),
        else ``classes`` (y holds class indices; names from ``meta["classes"]`` when given).
        """
        if not self.labelled:
            return None
        if self.meta.get("attributes"):
            names = tuple(str(a) for a in self.meta["attributes"])
            return "attributes", names, len(names)
        names = tuple(str(c) for c in self.meta.get("classes") or ())
        if names:
            return "classes", names, len(names)
        y = self.train.y if isinstance(self.train, Split) else None
        count = int(y.max()) + 1 if y is not None and len(y) else 0
        return "classes", tuple(str(i) for i in range(count)), count

    def to(self, device: torch.device | str) -> Dataset:
        """Both splits on ``device``."""
        return Dataset(self.train.to(device), None if self.heldout is None else self.heldout.to(device),
                       dict(self.meta))

    @staticmethod
    def decode(x: Tensor) -> Tensor:
        """Stored values to model inputs: uint8 pixels to [0, 1] floats, floats unchanged."""
        if x.dtype == torch.uint8:
            return x.float().div_(255.0)
        return x


# -- what a model depends on --------------------------------------------------------------------------------

#: The dtypes a description may name (``torch.<name>``): what datasets store, never anything else.
DTYPES = ("uint8", "int8", "int16", "int32", "int64", "bool", "float16", "bfloat16", "float32", "float64")
_DType = Literal[DTYPES]  # type: ignore[valid-type]


class DataAccess:
    """Marks a dataset option that says where or how the data is read, not which data it is (``root``,
    ``download``, ``workers``): ``root: Annotated[str, DataAccess()] = Field(...)``.

    Changing one is not a change to a run: ``advinf run --resume RUN --set dataset.root=NEW`` continues without
    ``--allow-changes`` (the data found is checked against what the run trained on all the same), an evaluation
    with it records no dataset change, and ``advinf compare`` takes runs that differ only there for the same
    experiment. Mark nothing that can change the examples, their order or their labels."""

    def __repr__(self) -> str:
        return "DataAccess()"


def data_access_keys(options: type[BaseModel] | BaseModel) -> frozenset[str]:
    """The options of a dataset's options model marked :class:`DataAccess`."""
    model = options if isinstance(options, type) else type(options)
    return frozenset(name for name, info in model.model_fields.items()
                     if any(isinstance(m, DataAccess) for m in info.metadata))


class _Described(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class LabelDescription(_Described):
    """The labels y: class indices or 0/1 attributes, their names, and one example's label shape and dtype."""

    kind: Literal["classes", "attributes"]
    names: list[str] = Field(max_length=100_000)
    shape: list[int] = Field(max_length=8)
    dtype: _DType


class DataDescription(_Described):
    """What a model trained on a dataset depends on (:func:`describe`); checkpoints keep it as JSON."""

    sample_shape: list[int] = Field(min_length=1, max_length=8)
    dtype: _DType
    labels: LabelDescription | None = None
    #: how many training and held-out examples (None: no held-out split); absent from older checkpoints' (None)
    examples: int | None = Field(default=None, ge=0, le=1 << 62)
    heldout_examples: int | None = Field(default=None, ge=0, le=1 << 62)

    def model_post_init(self, context: Any) -> None:
        sizes = self.sample_shape + (self.labels.shape if self.labels else [])
        if any(not 0 < n <= 1 << 20 for n in sizes):
            raise ValueError(f"shapes must hold sizes from 1 to {1 << 20}, not {sizes}")


def describe(data: Dataset) -> DataDescription:
    """What a model built on ``data`` depends on: one example's shape and dtype and, with labels, their kind,
    names, shape and dtype. Checkpoints keep it, so that a trained run can be rebuilt (to sample from it) where
    its data is not, and data found again is checked against what the run trained on."""
    train = data.train
    if isinstance(train, Split):
        x, y = train.x, train.y
    else:
        x, y = train.take(torch.zeros(1, dtype=torch.long))
    info = data.label_info()
    labels = None if info is None or y is None else LabelDescription(
        kind=info[0], names=list(info[1]), shape=list(y.shape[1:]), dtype=_dtype_name(y.dtype))
    return DataDescription(sample_shape=list(data.sample_shape), dtype=_dtype_name(x.dtype), labels=labels,
                           examples=len(train), heldout_examples=None if data.heldout is None else len(data.heldout))


def described_dataset(description: DataDescription | Mapping[str, Any]) -> Dataset:
    """A dataset with no examples that holds only what ``description`` says (``meta["described_only"]``):
    enough to build a trained run's networks, their sizes and conditions, where its data is not."""
    d = description if isinstance(description, DataDescription) else DataDescription.model_validate(description)
    x = torch.empty((0, *d.sample_shape), dtype=getattr(torch, d.dtype))
    meta: dict[str, Any] = {"described_only": True}
    y = None
    if d.labels is not None:
        y = torch.empty((0, *d.labels.shape), dtype=getattr(torch, d.labels.dtype))
        meta[d.labels.kind] = list(d.labels.names)
    return Dataset(Split(x, y), None, meta)


def unlike_description(found: DataDescription, trained: DataDescription, labels: bool = True,
                       sizes: bool = True) -> str | None:
    """How data found now differs from what a run trained on (None when it matches); ``labels = False`` leaves
    the labels out (a game whose networks never see them), ``sizes = False`` the numbers of examples (what the
    networks can take whatever they are; a description of an older version has none)."""
    if not labels:
        found, trained = found.model_copy(update={"labels": None}), trained.model_copy(update={"labels": None})
    if found.sample_shape != trained.sample_shape:
        return f"its examples have shape {tuple(found.sample_shape)}, the run's {tuple(trained.sample_shape)}"
    if found.dtype != trained.dtype:
        return f"its examples are {found.dtype}, the run's were {trained.dtype}"
    if (found.labels is None) != (trained.labels is None):
        return "it has no labels, the run's data had" if found.labels is None else \
            "it has labels, the run's data had none"
    if found.labels is not None and trained.labels is not None and found.labels != trained.labels:
        return (f"its labels ({found.labels.kind}: {_few(found.labels.names)}) are not the run's "
                f"({trained.labels.kind}: {_few(trained.labels.names)})")
    return other_sizes(found, trained) if sizes else None


def other_sizes(found: DataDescription, trained: DataDescription) -> str | None:
    """How the numbers of training and held-out examples found differ from a run's (None: the same, or not
    known: a description of an older version)."""
    if None in (found.examples, trained.examples):
        return None
    for what, now, then in (("training", found.examples, trained.examples),
                            ("held-out", found.heldout_examples, trained.heldout_examples)):
        if now != then:
            return (f"it holds {'no' if now is None else now} {what} examples, the run's data "
                    f"{'none' if then is None else then} (another copy, folder or selection of the data?)")
    return None


def relabels(found: DataDescription, trained: DataDescription) -> bool:
    """Whether ``found``'s labels are of another kind, number or shape than ``trained``'s: networks built for
    one set cannot take the other (other names alone, they can)."""
    f, t = found.labels, trained.labels
    if f is None or t is None:
        return f is not t  # labels on one side only
    return (f.kind, len(f.names), f.shape) != (t.kind, len(t.names), t.shape)


def _few(names: list[str], limit: int = 5) -> str:
    return ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _dtype_name(dtype: torch.dtype) -> str:
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise ValueError(f"a dataset stores {name}; datasets hold one of {', '.join(DTYPES)}")
    return name
