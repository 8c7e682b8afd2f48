"""Evaluator ``reconstruction``: how close x -> z -> x comes back, and whether it keeps the class.

On ``examples`` held-out examples (drawn with ``seed``; all of them by default) the model reconstructs
Gx(Gz(x)) through its game, once from the posterior mean and once from a posterior sample, in eval mode:

* ``mse_mean``, ``mse_sample``: per-pixel (per-coordinate) mean squared error in the data's range ([0, 1] for
  images), averaged over pixels and examples. Two references make them readable: ``mse_mean_image``, the
  error of always answering the training split's mean image, and ``mse_random_pair``, the error between an
  example and another random held-out example (what an encoder that ignores x would score).
* With class labels (``classifier = true``), the paper's "reconstructions keep the digit, change the style"
  made measurable: an L2-SVM (``LinearSVC``, the svm_probe machinery) is trained on the *raw pixels* of a
  class-balanced labelled subset of the training split (``classifier_labels``; C chosen on a disjoint
  validation set of ``classifier_validation`` examples over ``c_grid``). Reported: its accuracy on the held-out
  data itself (``classifier_accuracy``, the ceiling), the fraction of reconstructions it gives the label of their
  source (``label_kept_mean``, ``label_kept_sample``), and that fraction among the examples it classifies
  correctly (``label_kept_mean_where_correct``). An identity autoencoder scores ``label_kept_mean`` =
  ``classifier_accuracy``.

A conditional model reconstructs with each example's own label, which its decoder sees: it keeps the class by
construction more than by inference (``decoder_sees_labels`` says so). When the training split is too small
for the classifier's labelled and validation sets, ``classifier`` holds ``{"skipped": reason}`` and the MSEs are
still reported. ``pictures`` pairs (data, reconstruction
from the mean) are written to ``eval_reconstructions.png`` for image data.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import Tensor

from advinf import Dataset, Evaluator, Split, TrainedModel, UserError, evaluating, hookimpl, save_grid
from advinf_plugins.probes import (
    DEFAULT_C_GRID,
    LinearModel,
    TooLittleData,
    collect,
    draw_labelled,
    error,
    fit_l2svm,
)


class ReconstructionOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    examples: int | None = Field(None, ge=1, description="held-out examples reconstructed (drawn with seed); "
                                                         "default: all of them")
    seed: int = Field(0, ge=0, lt=2**32,
                      description="seed of the example draws, the labelled subset and the posterior samples")
    batch_size: int = Field(500, ge=1, description="examples per forward pass")
    classifier: bool = Field(True, description="with class labels: how often a pixel classifier keeps the label")
    classifier_labels: int = Field(1000, ge=1, description="class-balanced training examples of the classifier")
    classifier_validation: int = Field(1000, ge=1, description="validation examples that choose its C")
    c_grid: list[float] = Field(default_factory=lambda: list(DEFAULT_C_GRID), description="values of C tried")
    pictures: int = Field(40, ge=0, description="(data, reconstruction) pairs in eval_reconstructions.png; 0: none")

    @field_validator("c_grid")
    @classmethod
    def _grid(cls, v: list[float]) -> list[float]:
        if not v or any(c <= 0 for c in v):
            raise ValueError("give one or more positive values")
        return sorted(v)


def mse(a: Tensor, b: Tensor) -> float:
    """Mean squared error per coordinate."""
    return float((a.double() - b.double()).pow(2).mean())


def label_kept(classifier: LinearModel, x: Tensor, recon_mean: Tensor, recon_sample: Tensor, y: Tensor
               ) -> dict[str, float]:
    """The classifier's accuracy on ``x`` and how often it gives each reconstruction its source's label."""
    on_data = classifier.predict(x.flatten(1))
    kept_mean = classifier.predict(recon_mean.flatten(1)) == y
    kept_sample = classifier.predict(recon_sample.flatten(1)) == y
    correct = on_data == y
    return {"classifier_accuracy": 1.0 - error(on_data, y),
            "label_kept_mean": float(kept_mean.double().mean()),
            "label_kept_sample": float(kept_sample.double().mean()),
            "label_kept_mean_where_correct": float(kept_mean[correct].double().mean()) if correct.any()
            else float("nan")}


def train_pixel_classifier(data: Dataset, o: ReconstructionOptions, classes: int, y_train: Tensor
                           ) -> tuple[LinearModel, dict]:
    """An L2-SVM on the raw pixels of a class-balanced labelled subset of the training split (its labels
    ``y_train``), C by validation."""
    draws = draw_labelled(y_train, o.classifier_labels, o.classifier_validation, 1, o.seed, classes)
    flat = lambda x, y: x.flatten(1)  # noqa: E731
    x_lab = collect(data.train, draws.labelled[0], flat, o.batch_size)
    x_val = collect(data.train, draws.validation, flat, o.batch_size)
    y_lab, y_val = y_train[draws.labelled[0]], y_train[draws.validation]
    best: tuple[float, float, LinearModel] | None = None
    unconverged = 0
    for c in o.c_grid:
        model, ok = fit_l2svm(x_lab, y_lab, c, seed=o.seed)
        unconverged += not ok
        err = error(model.predict(x_val), y_val)
        if best is None or err < best[0]:
            best = (err, c, model)
    assert best is not None
    return best[2], {"C": best[1], "val_error": best[0], "labels": o.classifier_labels,
                     "validation": o.classifier_validation, "features": "raw pixels", "unconverged_fits": unconverged}


_CLASSIFIER_KEYS = "evaluators.reconstruction.classifier_labels, classifier_validation"


class Reconstruction(Evaluator):
    pictures_only = frozenset({"pictures"})  # the figure's options, not the numbers'

    def __init__(self, options: ReconstructionOptions):
        self.o = options
        # what depends on the data only (the mean image, the pixel classifier), kept for evaluations every N steps
        self._cache: dict[tuple, Any] = {}

    def _once(self, data: Dataset, what: str, make):
        key = (id(data), len(data.train), what)
        if key not in self._cache:
            self._cache = {k: v for k, v in self._cache.items() if k[0] == id(data)}
            self._cache[key] = make()
        return self._cache[key]

    def skip_reason(self, data: Dataset) -> str | None:
        """The classifier's labelled draws that the configured sizes cannot make (the MSEs are reported anyway)."""
        o, info, train = self.o, data.label_info(), data.train
        if not (o.classifier and info is not None and info[0] == "classes" and isinstance(train, Split)
                and train.y is not None and len(train)):
            return None
        y_train = train.y.detach().cpu().long().reshape(-1)
        try:
            draw_labelled(y_train, o.classifier_labels, o.classifier_validation, 1, o.seed,
                          max(info[2], int(y_train.max()) + 1))
        except TooLittleData as exc:
            return f"for its classifier: {exc} ({_CLASSIFIER_KEYS})"
        return None

    def evaluate(self, model: TrainedModel, data: Dataset, out_dir: Path) -> dict[str, Any]:
        o = self.o
        if model.encoder is None or model.decoder is None:
            raise UserError("needs an encoder and a decoder (a plain GAN has no encoder)")  # named by evaluate()
        held = _require_heldout(data)
        start = time.perf_counter()
        n = len(held)
        if o.examples is not None and o.examples < n:
            idx = torch.sort(torch.randperm(n, generator=torch.Generator().manual_seed(o.seed))[: o.examples]).values
        else:
            idx = torch.arange(n)
        x, y = collect_pairs(held, idx, o.batch_size)
        if model.conditional and y is None:
            raise UserError("this model is conditional, but the held-out examples have no labels")
        y_in = y if model.conditional else None
        recon_mean, recon_sample = [], []
        with evaluating(model.nets), torch.random.fork_rng(devices=_cuda(model)):
            torch.manual_seed(o.seed)
            for s in range(0, len(x), o.batch_size):
                xb = x[s:s + o.batch_size]
                yb = None if y_in is None else y_in[s:s + o.batch_size]
                recon_mean.append(model.reconstruct(xb, yb, use_mean=True).float().cpu())
                recon_sample.append(model.reconstruct(xb, yb, use_mean=False).float().cpu())
        r_mean, r_sample = torch.cat(recon_mean), torch.cat(recon_sample)
        if r_mean.shape != x.shape:
            raise UserError(f"reconstructions have shape {tuple(r_mean.shape[1:])}, the data "
                            f"{tuple(x.shape[1:])}")
        mean_image = self._once(data, "mean", lambda: split_mean(data.train, o.batch_size))
        g = torch.Generator().manual_seed(o.seed)
        perm = torch.randperm(len(x), generator=g)
        other = torch.empty_like(perm)
        other[perm] = perm.roll(1)  # a random pairing in which no example meets itself (when there are two)
        result: dict[str, Any] = {
            "examples": len(x), "mse_mean": mse(x, r_mean), "mse_sample": mse(x, r_sample),
            "mse_mean_image": mse(x, mean_image.expand_as(x)), "mse_random_pair": mse(x, x[other]),
            "decoder_sees_labels": model.conditional,
        }
        info = data.label_info()
        y_train = self._once(data, "labels", data.train.labels) if o.classifier and data.labelled else None
        if o.classifier and info is not None and info[0] == "classes" and y is not None and y_train is not None \
                and len(y_train):
            classes = max(info[2], int(y_train.max()) + 1)
            try:
                classifier, about = self._once(data, "classifier",
                                               lambda: train_pixel_classifier(data, o, classes, y_train))
            except TooLittleData as exc:  # the MSEs stand; the label measure needs more labelled data
                result["classifier"] = {"skipped": f"{exc} ({_CLASSIFIER_KEYS})"}
            else:
                result.update(label_kept(classifier, x, r_mean, r_sample, y.cpu().long().reshape(-1)))
                result["classifier"] = dict(about)
        if o.pictures and x.dim() == 4:
            k = min(o.pictures, len(x))
            save_grid(torch.stack([x[:k], r_mean[:k]], dim=1).flatten(0, 1), out_dir / "eval_reconstructions.png",
                      nrow=20)
        result["seconds"] = round(time.perf_counter() - start, 3)
        return result


def collect_pairs(split, idx: Tensor, batch_size: int) -> tuple[Tensor, Tensor | None]:
    """The decoded examples at ``idx`` and their labels, on CPU."""
    xs, ys = [], []
    for s in range(0, len(idx), batch_size):
        xb, yb = split.take(idx[s:s + batch_size])
        xs.append(Dataset.decode(xb).float().cpu())
        if yb is not None:
            ys.append(yb.cpu())
    return torch.cat(xs), (torch.cat(ys) if ys else None)


def split_mean(split, batch_size: int) -> Tensor:
    """The mean decoded example of a split, accumulated batch by batch (float64)."""
    total: Tensor | None = None
    for s in range(0, len(split), batch_size):
        xb = Dataset.decode(split.take(torch.arange(s, min(s + batch_size, len(split))))[0]).double().sum(0).cpu()
        total = xb if total is None else total + xb
    assert total is not None
    return (total / len(split)).float()


def _cuda(model: TrainedModel) -> list[int]:
    return [model.device.index or 0] if model.device.type == "cuda" else []


def _require_heldout(data: Dataset):
    if data.heldout is None or len(data.heldout) == 0:
        raise UserError("evaluator 'reconstruction' works on the held-out split, but the dataset has none")
    return data.heldout


def reconstruction(options: ReconstructionOptions, ctx) -> Evaluator:
    """Per-pixel MSE of x -> z -> x on held-out data, and how often reconstructions keep their class."""
    if getattr(ctx, "dataset", None) is not None:  # refused when the recipe is built, not after its training
        _require_heldout(ctx.dataset)
    return Reconstruction(options)


@hookimpl
def register_evaluators(register) -> None:
    register("reconstruction", reconstruction, ReconstructionOptions)
