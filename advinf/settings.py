"""Engine settings: how to train (``TrainSpec``), which optimiser (``OptimizerSpec``) and where (device).

These are plain pydantic models the trainer reads directly: the trainer never imports the recipe or plugin
layers, and a library user builds them by hand (``TrainSpec(steps=1000)``).
"""

from __future__ import annotations

import re
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator, model_validator

from advinf.errors import UserError

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "rmsprop": torch.optim.RMSprop,
    "sgd": torch.optim.SGD,
}
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


class OptimizerSpec(BaseModel):
    """A torch optimiser by ``name``; the other keys are its keyword arguments (checked by building it)."""

    model_config = ConfigDict(extra="allow")
    name: Literal["adam", "adamw", "rmsprop", "sgd"] = "adam"

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    def merged(self, override: dict[str, Any]) -> OptimizerSpec:
        """This spec with ``override``'s keys on top. Naming another optimiser, or ``inherit = false``, starts
        from torch's defaults instead of this spec's options."""
        override = dict(override)
        inherit = override.pop("inherit", True)
        if override.get("name", self.name) != self.name or inherit is False:
            return OptimizerSpec.model_validate({"name": self.name, **override})
        return OptimizerSpec.model_validate({"name": self.name, **self.options, **override})

    def explicit(self) -> dict[str, Any]:
        """The keys given when this spec was made (its name only if given): what it overrides when merged."""
        return {**({"name": self.name} if "name" in self.model_fields_set else {}), **self.options}

    def build(self, params: list[torch.nn.Parameter], **extra: Any) -> torch.optim.Optimizer:
        kwargs = self.options
        if "betas" in kwargs:
            kwargs["betas"] = tuple(kwargs["betas"])
        return OPTIMIZERS[self.name](params, **kwargs, **extra)


class TrainSpec(BaseModel):
    """How long and how to train; see docs/recipes.md for every key."""

    model_config = ConfigDict(extra="forbid")
    steps: PositiveInt | None = None
    epochs: PositiveInt | None = None
    batch_size: PositiveInt = 100
    update: Literal["simultaneous", "alternating"] = "simultaneous"
    critic_steps: PositiveInt = Field(1, description="critic-side steps per generator step (alternating only)")
    device: str = "auto"
    threads: PositiveInt | None = Field(None, le=4096, description="CPU threads for torch (default: torch's choice)")
    log_every: PositiveInt = 100
    sample_every: int = Field(1000, ge=0, description="fixed-noise sample pictures every N steps; 0: never")
    num_samples: PositiveInt = Field(100, le=10_000, description="samples per picture")
    ema: float | None = Field(None, ge=0, lt=1, description="decay of an exponential moving average of the "
                              "generator-side networks, used for samples, evaluation and load_run; 0: off")
    checkpoint_every: int = Field(1000, ge=0, description="checkpoint every N steps (and at the end); 0: end only")
    keep_checkpoints: PositiveInt = Field(3, description="how many of the newest checkpoints to keep")
    nonfinite: Literal["stop", "skip"] = Field(
        "stop", description="on a non-finite loss or gradient: stop the run, or skip the update (one sync a step)")
    compile: bool = False
    autocast: Literal["none", "bf16"] = "none"
    channels_last: bool = False
    progress: Literal["auto", "bar", "lines", "none"] = "auto"

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not _DEVICE_RE.match(v):
            raise ValueError("must be 'auto', 'cpu', 'cuda' or 'cuda:N'")
        return v

    @model_validator(mode="after")
    def _length(self) -> TrainSpec:
        if (self.steps is None) == (self.epochs is None):
            raise ValueError("give exactly one of `steps` and `epochs`")
        return self


def resolve_device(spec: str | torch.device) -> torch.device:
    """``auto`` -> CUDA if present else CPU; ``cuda[:n]`` checked for availability."""
    if isinstance(spec, torch.device):
        return spec
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"train.device = '{spec}' but CUDA is not available here; use 'auto' or 'cpu'")
        dev = torch.device(spec)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(f"train.device = '{spec}' but only {torch.cuda.device_count()} GPU(s) are visible")
        return dev
    return torch.device(spec)
