"""Logger ``wandb`` (Weights & Biases), for those who have it installed.

This module never imports wandb when it is loaded: without the package the logger is still listed, and choosing it
is a clear error at ``advinf validate`` ("pip install wandb"), not an import error of the plugin. Project, entity
and mode come from the options or wandb's own environment variables (``WANDB_PROJECT``, ``WANDB_MODE=offline``, ...).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from advinf import BuildContext, Logger, UserError, flatten_results, hookimpl


class WandbOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    project: str | None = Field(None, min_length=1, max_length=128, description="wandb project (default: "
                                "WANDB_PROJECT, else wandb's own)")
    entity: str | None = Field(None, min_length=1, max_length=128, description="wandb entity (team or user)")
    mode: str | None = Field(None, pattern="^(online|offline|disabled)$", description="online, offline or "
                             "disabled (default: WANDB_MODE, else online)")


class WandbLogger(Logger):
    """One wandb run per training run (named after the run directory; resumed runs continue it): metrics as they
    are, evaluations as ``eval/EVALUATOR/METRIC``, sample pictures as images."""

    def __init__(self, options: WandbOptions) -> None:
        if importlib.util.find_spec("wandb") is None:
            raise UserError("the wandb logger needs the wandb package: pip install wandb (or advinf[wandb])")
        self.options = options
        self._run: Any = None

    def open(self, run_dir: Path, start_step: int) -> None:
        import wandb

        run_dir = Path(run_dir)
        self._run = wandb.init(project=self.options.project, entity=self.options.entity, mode=self.options.mode,
                               dir=str(run_dir), name=run_dir.name, id=_run_id(run_dir), resume="allow")

    def log_metrics(self, step: int, metrics: Mapping[str, Any]) -> None:
        self._run.log({k: v for k, v in metrics.items() if k != "step"}, step=step)

    def log_evaluation(self, step: int, results: Mapping[str, Mapping[str, Any]], final: bool) -> None:
        prefix = "final_eval" if final else "eval"
        self._run.log({f"{prefix}/{k}": v for k, v in flatten_results(results).items()}, step=step)

    def log_image(self, step: int, name: str, path: Path) -> None:
        import wandb

        self._run.log({name: wandb.Image(str(path))}, step=step)

    def close(self) -> None:
        if self._run is not None:
            self._run.finish()
            self._run = None


def _run_id(run_dir: Path) -> str:
    """A wandb run id that stays the same for a run directory (so that a resumed run continues its wandb run)."""
    import hashlib

    return hashlib.sha256(str(run_dir.resolve()).encode()).hexdigest()[:16]


def _wandb(options: WandbOptions, ctx: BuildContext) -> WandbLogger:
    """Weights & Biases (pip install wandb; WANDB_* environment variables apply)."""
    return WandbLogger(options)


@hookimpl
def register_loggers(register) -> None:
    register("wandb", _wandb, WandbOptions)
