"""Engine settings: how to train (``TrainSpec``), which optimiser (``OptimizerSpec``) with which learning-rate
schedule (``ScheduleSpec``), and where (device).

These are plain pydantic models the trainer reads directly: the trainer never imports the recipe or plugin
layers, and a library user builds them by hand (``TrainSpec(steps=1000)``).
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable, Iterable
from typing import Any, Literal

import torch
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from advinf.errors import Problem, UserError, suggest
from advinf.values import bools_posing_as_numbers, non_finite

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "rmsprop": torch.optim.RMSprop,
    "sgd": torch.optim.SGD,
}
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


class ScheduleSpec(BaseModel):
    """A learning-rate schedule: after t training steps a player's learning rate is ``lr · f(t)``.

    ``f`` is 1 for the first ``hold`` steps, then (with ``u = min(1, (t - hold) / decay)``):

    * ``constant``: 1 throughout (the default; ALI's);
    * ``exponential``: ``final ** u``, so from 1 down to ``final`` over ``decay`` steps, then ``final``
      (BiGAN's: constant, then down to 0.01 over as many epochs again);
    * ``linear``: ``1 - (1 - final) · u``;
    * ``cosine``: ``final + (1 - final) · (1 + cos(π u)) / 2``;
    * ``step``: ``gamma ** floor((t - hold) / every)``.

    ``unit = "epochs"`` counts ``hold``, ``decay`` and ``every`` in epochs of the main data stream instead.
    The factor is a closed form of t (not compounded step by step), so a resumed run's rates are the same
    numbers and a schedule changed on resume applies at once, as if it had been used from the start.
    """

    model_config = ConfigDict(extra="forbid", strict=True)
    name: Literal["constant", "exponential", "linear", "cosine", "step"] = "constant"
    unit: Literal["steps", "epochs"] = "steps"
    hold: int = Field(default=0, ge=0, le=10**12, description="steps (or epochs) at the full rate before the decay")
    decay: int | None = Field(default=None, ge=1, le=10**12,
                              description="length of the decay (exponential, linear, cosine)")
    final: float | None = Field(default=None, ge=0, le=1, description="factor reached at the end of the decay; "
                                "exponential: required, > 0; linear and cosine: default 0")
    every: int | None = Field(default=None, ge=1, le=10**12,
                              description="step: multiply by gamma every N steps (or epochs)")
    gamma: float | None = Field(default=None, gt=0, le=1, description="step: the factor applied every `every`")

    def as_table(self) -> dict[str, Any]:
        """The schedule as a recipe table, every key it takes filled in (``constant`` takes none but its name)."""
        if self.name == "constant":
            return {"name": "constant"}
        return self.model_dump(exclude_none=True)

    @model_validator(mode="after")
    def _fits_name(self) -> ScheduleSpec:
        needs = {"constant": (), "exponential": ("decay", "final"), "linear": ("decay",), "cosine": ("decay",),
                 "step": ("every", "gamma")}[self.name]
        allowed = {"constant": ()}.get(self.name, ("hold", *needs, *(("final",) if "decay" in needs else ())))
        missing = [k for k in needs if getattr(self, k) is None]
        if missing:
            raise ValueError(f"schedule '{self.name}' needs {' and '.join(f'`{k}`' for k in missing)}")
        extra = [k for k in ("hold", "decay", "final", "every", "gamma")
                 if k in self.model_fields_set and k not in allowed]
        if extra:
            raise ValueError(f"schedule '{self.name}' takes no {', '.join(f'`{k}`' for k in extra)}"
                             + (f" (its keys: {', '.join(allowed)})" if allowed else ""))
        if self.name == "exponential" and self.final == 0:
            raise ValueError("schedule 'exponential' needs `final` > 0 (it decays towards it geometrically)")
        return self

    def factor(self, steps_per_epoch: int = 1) -> Callable[[int], float]:
        """f(t): the learning-rate multiplier after t training steps (``steps_per_epoch`` for unit epochs)."""
        scale = steps_per_epoch if self.unit == "epochs" else 1
        hold = self.hold * scale
        decay = (self.decay or 1) * scale
        every = (self.every or 1) * scale
        final = 0.0 if self.final is None else self.final
        name, gamma = self.name, self.gamma

        def f(t: int) -> float:  # a plain function: torch's LambdaLR then keeps no state of it
            if name == "constant" or t < hold:
                return 1.0
            if name == "step":
                return gamma ** ((t - hold) // every)  # type: ignore[operator]
            u = min(1.0, (t - hold) / decay)
            if name == "exponential":
                return final ** u
            if name == "linear":
                return 1.0 - (1.0 - final) * u
            return final + (1.0 - final) * (1.0 + math.cos(math.pi * u)) / 2.0

        return f


#: The validation context of a recipe's checks, which name each key themselves (``_refuse`` is for Python).
RECIPE_CONTEXT = {"recipe": True}


def _from_recipe(info: ValidationInfo) -> bool:
    return isinstance(info.context, dict) and bool(info.context.get("recipe"))


def optimizer_option_problems(key: str, name: str, options: dict[str, Any]) -> list[Problem]:
    """An optimiser's keyword arguments checked against its signature: unknown ones (with a did-you-mean), a
    boolean or text where torch's default is a number, a number where it is a flag, and ``betas``."""
    dot = f"{key}." if key else ""
    signature = inspect.signature(OPTIMIZERS[name].__init__).parameters
    allowed = [p for p in signature if p not in ("self", "params")]
    problems = [Problem(f"{dot}{k}", f"unknown option of optimizer '{name}'", v, True,
                        suggest(k, allowed) or f"options: {', '.join(allowed)}")
                for k, v in options.items() if k not in allowed]
    for k, v in options.items():
        default = signature[k].default if k in signature else None
        number = isinstance(v, int | float) and not isinstance(v, bool)
        if isinstance(default, bool) and not isinstance(v, bool):
            problems.append(Problem(f"{dot}{k}", "must be true or false", v, True))
        elif isinstance(default, int | float) and not isinstance(default, bool) and not number:
            what = "a boolean where a number is expected" if isinstance(v, bool) else "must be a number"
            problems.append(Problem(f"{dot}{k}", what, v, True))
        elif k in _FLAGS and not isinstance(v, bool) and v is not None:  # torch's default None: it would take anything
            problems.append(Problem(f"{dot}{k}", "must be true or false", v, True))
    betas = options.get("betas")
    if betas is not None and not (isinstance(betas, list | tuple) and len(betas) == 2 and all(
            isinstance(b, int | float) and not isinstance(b, bool) and 0 <= b < 1 for b in betas)):
        problems.append(Problem(f"{dot}betas", "must be two numbers in [0, 1), e.g. [0.5, 0.999]", betas, True))
    for k, (within, why) in _RANGES.items():
        v = options.get(k)
        if k in signature and isinstance(v, int | float) and not isinstance(v, bool) and not within(v):
            problems.append(Problem(f"{dot}{k}", why, v, True))
    return problems


#: Optimiser flags whose torch default is None (torch takes any value there): true or false.
_FLAGS = ("fused", "foreach", "capturable", "differentiable")
#: Ranges of optimiser options where torch accepts values that train nothing or blow up at once.
_RANGES: dict[str, tuple[Callable[[float], bool], str]] = {
    "lr": (lambda v: v > 0, "must be > 0 (a learning rate of 0 trains nothing: set the network's trainable = false "
                            "to keep it fixed)"),
    "eps": (lambda v: v > 0, "must be > 0 (with 0, a parameter whose gradient is 0 divides 0 by 0)"),
    "alpha": (lambda v: 0 <= v < 1, "must be in [0, 1): the decay of RMSprop's running average of squared "
                                    "gradients"),
    "momentum": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
}


def _refuse(problems: list[Problem]) -> None:
    """The checks a recipe makes, for a spec built in Python: its problems as one pydantic ValueError."""
    if problems:
        raise ValueError("; ".join(p.render() for p in problems))


class OptimizerSpec(BaseModel):
    """A torch optimiser by ``name``; the other keys are its keyword arguments (checked by building it), except
    ``schedule``, its learning-rate schedule."""

    model_config = ConfigDict(extra="allow")
    name: Literal["adam", "adamw", "rmsprop", "sgd"] = "adam"
    schedule: ScheduleSpec | None = None
    _complete: bool = PrivateAttr(default=False)

    @model_validator(mode="before")
    @classmethod
    def _numbers(cls, data: Any, info: ValidationInfo) -> Any:
        """In Python, the recipe's checks of the keyword arguments (a recipe makes them itself, naming each key):
        ``OptimizerSpec(lr=True)`` is not lr 1, nor ``lr=float("inf")`` a run that diverges at once."""
        if isinstance(data, dict) and not _from_recipe(info) and data.get("name", "adam") in OPTIMIZERS:
            kwargs = {k: v for k, v in data.items() if k not in cls.model_fields}
            _refuse(optimizer_option_problems("", data.get("name", "adam"), kwargs) + non_finite(kwargs))
        return data

    @model_validator(mode="after")
    def _float_betas(self) -> OptimizerSpec:
        """``betas = [0, 0.9]`` as torch takes it: two floats (it refuses an int beside a float)."""
        betas = (self.model_extra or {}).get("betas")
        if isinstance(betas, list | tuple) and all(isinstance(b, int | float) and not isinstance(b, bool)
                                                   for b in betas):
            self.model_extra["betas"] = [float(b) for b in betas]  # type: ignore[index]
        return self

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    def merged(self, override: dict[str, Any], context: dict[str, Any] | None = None) -> OptimizerSpec:
        """This spec with ``override``'s keys on top. Naming another optimiser, or ``inherit = false``, starts
        from torch's defaults instead of this spec's options. The result is ``complete``: a Trainer takes it as
        it is, not merged over its ``optimizer`` again."""
        override = dict(override)
        inherit = override.pop("inherit", True)
        if override.get("name", self.name) != self.name or inherit is False:
            spec = OptimizerSpec.model_validate({"name": self.name, **override}, context=context)
        else:
            spec = OptimizerSpec.model_validate({**self.as_table(), **override}, context=context)
        spec._complete = True
        return spec

    @property
    def complete(self) -> bool:
        """Whether this spec is a player's whole optimiser (made by ``merged``, as a recipe's per-player specs
        are), not keys to merge over a Trainer's ``optimizer``."""
        return self._complete

    def as_table(self) -> dict[str, Any]:
        """The spec as a recipe table: name, the optimiser's options and the schedule (if any)."""
        schedule = {"schedule": self.schedule.as_table()} if self.schedule is not None else {}
        return {"name": self.name, **self.options, **schedule}

    def explicit(self) -> dict[str, Any]:
        """The keys given when this spec was made (its name only if given): what it overrides when merged."""
        table = self.as_table()
        return {k: v for k, v in table.items() if k not in ("name", "schedule") or k in self.model_fields_set}

    def fusable(self) -> bool:
        """Whether advinf may choose torch's fused implementation: Adam or AdamW where the recipe chose no
        implementation itself (``fused``, or ``foreach = true``, which excludes it)."""
        return self.name in ("adam", "adamw") and "fused" not in self.options and not self.options.get("foreach")

    def build(self, params: list[torch.nn.Parameter], **extra: Any) -> torch.optim.Optimizer:
        """The torch optimiser these settings describe, over ``params`` (``extra``: e.g. fused=True)."""
        kwargs = self.options
        if "betas" in kwargs:
            kwargs["betas"] = tuple(kwargs["betas"])
        return OPTIMIZERS[self.name](params, **kwargs, **extra)


class TrainSpec(BaseModel):
    """How long and how to train; see docs/recipes.md for every key."""

    model_config = ConfigDict(extra="forbid")
    # at most 2**53: a step is counted in int64 tensors and written to JSON, where larger integers lose digits
    steps: PositiveInt | None = Field(default=None, le=2**53)
    epochs: PositiveInt | None = Field(default=None, le=2**53)
    batch_size: PositiveInt = 100
    update: Literal["simultaneous", "alternating"] = "simultaneous"
    critic_steps: PositiveInt = Field(default=1, description="critic-side steps per generator step (alternating only)")
    device: str = "auto"
    threads: PositiveInt | None = Field(default=None, le=4096,
                                        description="CPU threads for torch (default: torch's choice)")
    log_every: PositiveInt = 100
    sample_every: int = Field(default=1000, ge=0, description="fixed-noise sample pictures every N steps; 0: never")
    num_samples: PositiveInt = Field(default=100, le=10_000, description="samples per picture")
    ema: float | None = Field(default=None, ge=0, lt=1, description="decay of an exponential moving average of the "
                              "generator-side networks, used for samples, evaluation and load_run; 0: off")
    checkpoint_every: int = Field(default=1000, ge=0,
                                  description="checkpoint every N steps (and at the end); 0: end only")
    keep_checkpoints: PositiveInt = Field(default=3, description="how many of the newest checkpoints to keep")
    nonfinite: Literal["stop", "skip"] = Field(
        default="stop",
        description="on a non-finite loss or gradient: stop the run, or skip the update (one sync a step)")
    compile: bool = False
    cuda_graph: bool = Field(default=False,
                             description="CUDA only: record the whole training step (forwards, backwards, "
                                         "optimiser steps, moving average) as a CUDA graph once and replay it every "
                                         "step")
    autocast: Literal["none", "bf16"] = "none"
    tf32: bool = Field(default=False,
                       description="CUDA: fp32 convolutions and matrix products in TF32 (faster on Ampere and newer, "
                                   "10-bit mantissa); false: IEEE fp32 for both (torch's default has TF32 "
                                   "convolutions)")
    channels_last: bool = False
    progress: Literal["auto", "bar", "lines", "none"] = "auto"
    loggers: list[str] = Field(default_factory=lambda: ["jsonl"], description="where metrics go: registered "
                               "loggers by name (jsonl: metrics.jsonl and evals.jsonl; csv; tensorboard; ...)")
    dist_backend: Literal["auto", "nccl", "gloo"] = Field(
        default="auto", description="torch.distributed backend under torchrun: nccl on CUDA, gloo on CPU when 'auto'")
    sync_batch_norm: bool = Field(default=False, description="under torchrun: batch norm statistics over the global "
                                  "batch (SyncBatchNorm, CUDA only) instead of each rank's shard")

    @model_validator(mode="before")
    @classmethod
    def _numbers(cls, data: Any, info: ValidationInfo) -> Any:
        """In Python, the recipe's checks: ``TrainSpec(batch_size=True)`` is not a batch of 1."""
        if isinstance(data, dict) and not _from_recipe(info):
            _refuse(bools_posing_as_numbers(cls, data, "") + non_finite(data))
        return data

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not _DEVICE_RE.match(v):
            raise ValueError("must be 'auto', 'cpu', 'cuda' or 'cuda:N'")
        return v

    @field_validator("critic_steps")
    @classmethod
    def _critic_steps(cls, v: int, info: ValidationInfo) -> int:
        if v != 1 and info.data.get("update", "alternating") != "alternating":
            raise ValueError('counts only with update = "alternating" (the simultaneous update steps every player '
                             'once)')
        return v

    @field_validator("loggers")
    @classmethod
    def _loggers(cls, v: list[str]) -> list[str]:
        twice = sorted({n for n in v if v.count(n) > 1})
        if twice:
            raise ValueError(f"names {', '.join(twice)} more than once")
        return v

    @model_validator(mode="after")
    def _length(self) -> TrainSpec:
        if (self.steps is None) == (self.epochs is None):
            raise ValueError("give exactly one of `steps` and `epochs`")
        return self


def cuda_graph_refusal(train: TrainSpec, optimizers: Iterable[OptimizerSpec], host_decisions: str | None,
                       device: torch.device | None, world_size: int = 1) -> str | None:
    """Why a run's step cannot be recorded as a CUDA graph (``train.cuda_graph``): the first reason, or None. The
    recipe's own conflicts come first (``optimizers``: each player's effective spec; ``host_decisions``: the
    game's ``host_decisions()``), then what this machine (``device``; None: not asked) or launch lacks."""
    scheduled = any(spec.schedule is not None and spec.schedule.name != "constant" for spec in optimizers)
    reasons = [
        'train.nonfinite = "skip" decides on the host whether to apply each update'
        if train.nonfinite == "skip" else None,
        "a learning-rate schedule changes the rate on the host each step" if scheduled else None,
        host_decisions,
        "it needs a CUDA device (train.device)" if device is not None and device.type != "cuda" else None,
        "a data-parallel run's gradient all-reduce is not captured (yet)" if world_size > 1 else None,
    ]
    return next((r for r in reasons if r is not None), None)


def resolve_device(spec: str | torch.device, what: str = "train.device") -> torch.device:
    """``auto`` -> CUDA if present else CPU; ``cuda[:n]`` checked for availability; anything but ``auto``, ``cpu``,
    ``cuda`` and ``cuda:N`` refused. ``what`` names where the value came from in the messages."""
    if isinstance(spec, torch.device):
        return spec
    if not isinstance(spec, str) or not _DEVICE_RE.match(spec):
        raise UserError(f"{what} = {spec!r}: give 'auto', 'cpu', 'cuda' or 'cuda:N'")
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"{what} = '{spec}' but CUDA is not available here; use 'auto' or 'cpu'")
        dev = torch.device(spec)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(f"{what} = '{spec}' but only {torch.cuda.device_count()} GPU(s) are visible")
        return dev
    return torch.device(spec)


def set_fp32_precision(device: torch.device, tf32: bool) -> None:
    """On CUDA, fp32 convolutions and matrix products both in TF32 or both in IEEE fp32 (``train.tf32``); torch's
    own default mixes them (TF32 convolutions, IEEE products), which would make a step's precision depend on which
    of the two a layer happens to use (``advinf.layers`` computes some convolutions as products). These are
    process-wide torch settings, as ``train.threads`` is; on the CPU nothing changes."""
    if device.type == "cuda":
        # the allow_tf32 switches, which also set the newer per-operation fp32_precision values; setting those
        # directly instead makes torch refuse later reads of allow_tf32 (which some of its own code still does)
        torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
