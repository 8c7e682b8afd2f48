"""Evaluators ``fid`` and ``kid``: how far the decoder's samples are from held-out data, in a feature network's
space; and the feature networks ``label_classifier`` and ``inception``.

**The metrics** are torchmetrics' ``FrechetInceptionDistance`` (FID: the Fréchet distance between Gaussians
fitted to the two feature sets) and ``KernelInceptionDistance`` (KID: the unbiased MMD with the polynomial
kernel (x.y / D + coef)^degree, mean and standard deviation over ``subsets`` random subsets of ``subset_size``),
each given the feature network as its custom feature extractor; nothing of either metric is computed here.
``samples`` decoder samples (``model.sample`` from prior draws of ``seed``; a conditional model gets the labels of
randomly drawn real examples, so its samples follow the data's class frequencies) are compared with the real
examples of the ``real`` split (all of them, or ``real_examples`` drawn with ``seed``). Both sets are quantised to
uint8 before the feature network, as the reference implementations do with generator output (round(255 x),
clamped): samples and data are compared on the same 256 grey levels (uint8 data passes unchanged).

The report names the protocol: ``protocol`` = ``fid{samples}_{real}{real_examples}_{network}`` (in the style of
stylegan's ``fid50k_full``; ``kid...`` for KID), next to ``fid`` (or ``kid_mean`` and ``kid_std``), the counts, the
feature network, its dimension and what the network says about itself (``network_info``). Numbers from
different protocols (sample counts, splits, networks) are not comparable: FID in particular is biased upwards at
small sample counts. During training (``every``) the real features are computed once (torchmetrics'
``reset_real_features = False``) and the feature network is built once.

**Feature networks** (hook ``register_feature_networks``; docs/plugins.md has the contract):

* ``label_classifier`` (default): a small convolutional classifier trained on the class labels of the dataset's
  training split (at most ``max_examples`` of it, drawn with ``seed``), deterministically: seeded initialisation
  and batch order, Adam, ``epochs`` passes. Its features are the ``hidden`` ReLU units before the class layer.
  The usual choice for digits and MNIST, where Inception's natural-image features are a poor fit; its held-out
  accuracy is in ``network_info`` (features of a classifier that cannot tell the classes apart say little).
  FIDs measured with it compare models on the same data and options only.
* ``inception``: the TF-ported FID Inception v3 (pool3, 2,048 features) of torch-fidelity, the network the papers'
  FIDs use; grey images are repeated to three channels and torch-fidelity resizes to 299 x 299. The weights are
  never downloaded and never unpickled by advinf: ``weights`` names a local ``.safetensors`` file (read by
  safetensors). torch-fidelity publishes them as a pickle (:data:`INCEPTION_URL`), which nothing in advinf reads
  (``torch.load`` appears nowhere in the project, tests/test_checkpoints.py checks); convert it once yourself,
  with torch's tensors-only loader::

      python -c "import torch; from safetensors.torch import save_file; save_file(torch.load(
          'weights-inception-2015-12-05-6726825d.pth', weights_only=True), 'inception-2015-12-05.safetensors')"

  For the same reason there is no download option: torch-fidelity's own download reads the pickle with
  ``torch.load(weights_only=False)``. advinf builds the network from the safetensors tensors: torch-fidelity's
  constructor insists on reading weights through ``torch.load``, so it is handed those tensors re-serialised in
  memory, under torch's ``TORCH_FORCE_WEIGHTS_ONLY_LOAD`` (tensors only); no file is unpickled.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, model_validator
from torch import Tensor, nn

from advinf import (
    BuildContext,
    Dataset,
    Evaluator,
    OptionError,
    RegisteredName,
    TrainedModel,
    UserError,
    checks_machine,
    hookimpl,
)

INCEPTION_URL = ("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                 "weights-inception-2015-12-05-6726825d.pth")


# -- quantisation ------------------------------------------------------------------------------------------


def quantise(x: Tensor) -> Tensor:
    """Images in [0, 1] (float) or 0..255 (uint8) as uint8: round(255 x), clamped; uint8 passes unchanged."""
    if x.dtype == torch.uint8:
        return x
    return (x.float().clamp(0, 1) * 255).round().to(torch.uint8)


# -- feature network: a classifier trained on the data's labels --------------------------------------------


class LabelClassifierOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    width: int = Field(32, ge=1, le=1024, description="channels of the first conv layer, doubled at each stride 2")
    hidden: int = Field(128, ge=2, le=8192, description="feature units (ReLU) before the class layer")
    epochs: int = Field(20, ge=1, le=1000, description="passes over the training examples")
    batch_size: int = Field(64, ge=1, le=65536, description="examples per update")
    lr: float = Field(1e-3, gt=0, le=1, allow_inf_nan=False, description="Adam learning rate")
    max_examples: int = Field(10_000, ge=1, description="train on at most this many training examples")
    seed: int = Field(0, ge=0, lt=2**32, description="seed of the initialisation, the example draw and batch order")


class LabelClassifier(nn.Module):
    """uint8 images -> conv 3x3 -> [conv 3x3 stride 2] down to 4 x 4 -> Linear(hidden) -> ReLU (the features)
    -> Linear(classes)."""

    def __init__(self, channels: int, size: int, classes: int, o: LabelClassifierOptions):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(channels, o.width, 3, padding=1), nn.ReLU()]
        c, s = o.width, size
        while s > 4:
            layers += [nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), nn.ReLU()]
            c, s = 2 * c, math.ceil(s / 2)
        layers += [nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(c * 16, o.hidden), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(o.hidden, classes)
        self.num_features = o.hidden
        self.about: dict[str, Any] = {}

    def forward(self, x: Tensor) -> Tensor:
        """Features (N, hidden) of uint8 images."""
        return self.body(x.float() / 255)

    def logits(self, x: Tensor) -> Tensor:
        return self.head(self.forward(x))


def _class_labels(data: Dataset, what: str) -> tuple[Tensor, int]:
    info = data.label_info()
    if info is None or info[0] != "classes" or data.train.y is None:  # type: ignore[union-attr]
        raise UserError(f"feature network '{what}' trains on class labels, but the dataset has none; name another "
                        "feature network (e.g. network = \"inception\")")
    y = data.train.y.detach().cpu().long().reshape(-1)  # type: ignore[union-attr]
    return y, max(info[2], int(y.max()) + 1)


def _images(data: Dataset, what: str) -> tuple[int, int]:
    shape = tuple(data.sample_shape)
    if len(shape) != 3 or shape[1] != shape[2]:
        raise UserError(f"'{what}' reads square images (C, S, S); this dataset's examples have shape {shape}")
    return shape[0], shape[1]


def label_classifier(options: LabelClassifierOptions, ctx: BuildContext) -> nn.Module:
    """A small conv classifier trained (deterministically) on the dataset's labels; features: its hidden layer."""
    data = ctx.dataset
    if data is None:
        raise UserError("feature network 'label_classifier' needs the run's dataset")
    channels, size = _images(data, "label_classifier")
    y_all, classes = _class_labels(data, "label_classifier")
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]), torch.enable_grad():  # evaluators run under no_grad
        torch.manual_seed(options.seed)
        net = LabelClassifier(channels, size, classes, options)
        g = torch.Generator().manual_seed(options.seed)
        idx = torch.randperm(len(y_all), generator=g)[: options.max_examples]
        x = torch.cat([data.train.take(idx[s:s + 4096])[0].cpu() for s in range(0, len(idx), 4096)])
        x = quantise(Dataset.decode(x)) if x.dtype != torch.uint8 else x
        y = y_all[idx]
        opt = torch.optim.Adam(net.parameters(), lr=options.lr)
        net.train()
        for _ in range(options.epochs):
            order = torch.randperm(len(idx), generator=g)
            for s in range(0, len(order), options.batch_size):
                b = order[s:s + options.batch_size]
                loss = nn.functional.cross_entropy(net.logits(x[b]), y[b])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    net.eval().requires_grad_(False)
    about: dict[str, Any] = {"classes": classes, "trained_on": len(idx), "epochs": options.epochs,
                             "train_accuracy": _accuracy(net, x, y)}
    held = data.heldout
    if held is not None and len(held) and held.y is not None:  # type: ignore[union-attr]
        hx, hy = held.take(torch.arange(len(held)))
        hx = hx.cpu() if hx.dtype == torch.uint8 else quantise(Dataset.decode(hx.cpu()))
        about["heldout_accuracy"] = _accuracy(net, hx, hy.cpu().long().reshape(-1))  # type: ignore[union-attr]
    about["seconds"] = round(time.perf_counter() - start, 3)
    net.about = about
    return net.to(ctx.device)


def _accuracy(net: LabelClassifier, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        pred = torch.cat([net.logits(x[s:s + 1024]).argmax(1) for s in range(0, len(x), 1024)])
    return float((pred == y).double().mean())


# -- feature network: the FID Inception, read safely -------------------------------------------------------


class InceptionOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    weights: str | None = Field(None, min_length=1, description="local .safetensors file of torch-fidelity's FID "
                                "Inception (docs/recipes.md says how to convert the published .pth)")
    features: Literal["2048", "768", "192", "64"] = Field("2048", description="which Inception layer: 2048 is "
                                                                              "pool3, the FID standard")

    @model_validator(mode="after")
    def _weights_present(self, info: ValidationInfo) -> InceptionOptions:
        """Checked when the recipe is validated (`advinf validate` too) and when the evaluator is built: before any
        training, a missing file is found at once. A run's recipe read back to sample from
        (``checks_machine`` false) is not refused for a file only evaluation reads."""
        if self.weights is None or not self.weights.endswith(".safetensors") or (
                checks_machine(info.context) and not Path(self.weights).is_file()):
            raise OptionError(missing_weights_message(self.weights), option="weights")
        return self


def missing_weights_message(path: str | None) -> str:
    if path is None:
        where = "feature network 'inception' needs its weights"
    elif not path.endswith(".safetensors"):
        where = f"{path} is not a .safetensors file (advinf reads no pickles)"
    else:
        where = f"no Inception weights at {path}"
    return (f"{where}: download torch-fidelity's FID Inception ({INCEPTION_URL}), convert it to safetensors once "
            "(docs/recipes.md, 'Sample quality', has the one-line command) and give network_options = "
            "{weights = \"inception-2015-12-05.safetensors\"}; offline, network = \"label_classifier\" needs no "
            "weights")


def read_inception_weights(o: InceptionOptions) -> dict[str, Tensor]:
    """The Inception state dict from a local .safetensors file (nothing unpickled)."""
    from safetensors.torch import load_file

    if o.weights is None or not Path(o.weights).is_file():  # removed since the options were checked
        raise UserError(missing_weights_message(o.weights), option="weights")
    try:
        return load_file(o.weights)
    except Exception as exc:
        raise UserError(f"cannot read Inception weights from {o.weights}: {type(exc).__name__}: "
                        f"{str(exc)[:200]}", option="weights") from None


@contextlib.contextmanager
def _weights_only_loads() -> Iterator[None]:
    """Every ``torch.load`` inside reads tensors only (torch's TORCH_FORCE_WEIGHTS_ONLY_LOAD), whatever it asks."""
    old = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        if old is None:
            del os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"]
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = old


class InceptionFeatures(nn.Module):
    """torchmetrics' wrapper of torch-fidelity's FID Inception, built from a state dict; grey -> three channels."""

    def __init__(self, state: dict[str, Tensor], features: str = "2048"):
        super().__init__()
        from torchmetrics.image.fid import NoTrainInceptionV3

        buffer = io.BytesIO()
        torch.save(dict(state), buffer)  # tensors only: read back below with weights_only forced on
        buffer.seek(0)
        with _weights_only_loads():
            # antialias=False: torch-fidelity's TF1 bilinear resize to 299 x 299 (the reference FID code's);
            # torchmetrics' default resizes otherwise, and the features differ by up to 3 %
            self.net = NoTrainInceptionV3(name="inception-v3-compat", features_list=[features],
                                          feature_extractor_weights_path=buffer,  # type: ignore[arg-type]
                                          antialias=False)
        self.num_features = int(features)
        self.about = {"weights": "torch-fidelity inception-2015-12-05 (TF-ported FID Inception v3)",
                      "layer": features}

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return self.net(x).reshape(len(x), -1)


def inception(options: InceptionOptions, ctx: BuildContext) -> nn.Module:
    """torch-fidelity's FID Inception v3 (pool3, 2,048 features) from a local weights file, never unpickled."""
    if ctx.dataset is not None:
        _images(ctx.dataset, "inception")
    return InceptionFeatures(read_inception_weights(options), options.features).to(ctx.device)


# -- the evaluators ----------------------------------------------------------------------------------------


class SampleQualityOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    samples: int = Field(1000, ge=2, le=10_000_000, description="decoder samples compared with the data")
    real: Literal["heldout", "train"] = Field("heldout", description="the split the samples are compared with")
    real_examples: int | None = Field(None, ge=2, description="real examples (drawn with seed); default: the "
                                                              "whole split")
    network: Annotated[str, RegisteredName("feature_network", options="network_options")] = Field(
        "label_classifier", min_length=1, description="registered feature network")
    network_options: dict[str, Any] = Field(default_factory=dict, description="the feature network's options")
    seed: int = Field(0, ge=0, lt=2**32, description="seed of the prior draws and the real-example draw")
    batch_size: int = Field(250, ge=1, le=65536, description="images per feature-network pass")


class KidOptions(SampleQualityOptions):
    subsets: int = Field(100, ge=1, le=100_000, description="random subsets the MMD is averaged over")
    subset_size: int = Field(1000, ge=2, description="examples per subset (lowered to the smaller set's size)")
    degree: int = Field(3, ge=1, le=10, description="degree of the polynomial kernel")
    coef: float = Field(1.0, ge=0, allow_inf_nan=False, description="constant of the polynomial kernel")
    gamma: float | None = Field(None, gt=0, allow_inf_nan=False, description="kernel scale (default: 1 / D)")


def _network_options(host: Any, o: SampleQualityOptions, what: str) -> tuple[Any, BaseModel]:
    """The registered feature network and its validated options (UserError naming the key otherwise)."""
    if host is None:
        import advinf

        host = advinf.default_host()
    comp = host.get("feature_network", o.network)
    try:
        return comp, comp.options.model_validate(o.network_options)
    except ValidationError as exc:
        first = exc.errors()[0]
        cause = first.get("ctx", {}).get("error")
        loc = [*first["loc"], *([cause.option] if isinstance(cause, OptionError) else [])]
        msg = first["msg"].removeprefix("Value error, ")
        raise UserError(f"{msg} (feature network '{o.network}')",
                        option=".".join(["network_options", *map(str, loc)])) from None


class _SampleQuality(Evaluator):
    kind = ""

    def __init__(self, options: SampleQualityOptions, ctx: BuildContext):
        self.o = options
        self.ctx = ctx
        self.component, self.network_options = _network_options(ctx.host, options, self.kind)
        self._net: tuple[tuple, nn.Module] | None = None
        self._metric: tuple[tuple, Any] | None = None

    def make_metric(self, net: nn.Module, subset_size: int) -> Any:
        raise NotImplementedError

    def network(self, data: Dataset, device: torch.device) -> nn.Module:
        key = (id(data), len(data.train), str(device))
        if self._net is None or self._net[0] != key:
            ctx = BuildContext(dataset=data, device=device, seed=self.ctx.seed, host=self.ctx.host)
            with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
                net = self.component.factory(self.network_options, ctx)
            if not isinstance(getattr(net, "num_features", None), int):
                raise UserError(f"feature network '{self.o.network}' has no int attribute num_features")
            self._net = (key, net.eval().requires_grad_(False))
            self._metric = None
        return self._net[1]

    def evaluate(self, model: TrainedModel, data: Dataset, out_dir: Path) -> dict[str, Any]:
        o = self.o
        if model.decoder is None:
            raise UserError(f"evaluator '{self.kind}' scores decoder samples, but this model has no decoder")
        split = _real_split(data, o, self.kind)
        start = time.perf_counter()
        device = model.device
        net = self.network(data, device)
        n_real = len(split) if o.real_examples is None else min(o.real_examples, len(split))
        g = torch.Generator().manual_seed(o.seed)
        real_idx = torch.sort(torch.randperm(len(split), generator=g)[:n_real]).values
        subset_size = min(getattr(o, "subset_size", 0), n_real, o.samples)
        key = (self._net[0] if self._net else None, o.real, n_real, subset_size)  # type: ignore[index]
        if self._metric is None or self._metric[0] != key:
            metric = self.make_metric(net, subset_size).to(device)
            with torch.no_grad():
                for s in range(0, n_real, o.batch_size):
                    x, _ = split.take(real_idx[s:s + o.batch_size])
                    metric.update(quantise(Dataset.decode(x)).to(device), real=True)
            self._metric = (key, metric)
        metric = self._metric[1]
        metric.reset()  # the fake features only: reset_real_features = False keeps the data's
        y_all = None
        if model.conditional:
            labels = split.take(real_idx)[1]
            if labels is None:
                raise UserError(f"this model is conditional, but the {o.real} split has no labels to sample with")
            y_all = labels[torch.randint(len(labels), (o.samples,), generator=g)]
        z_all = model.prior_sample(o.samples, o.seed)
        non_finite = 0
        with torch.no_grad():
            for s in range(0, o.samples, o.batch_size):
                y = None if y_all is None else y_all[s:s + o.batch_size]
                x = model.sample(z=z_all[s:s + o.batch_size], y=y)
                if x.shape[1:] != tuple(data.sample_shape):
                    raise UserError(f"samples have shape {tuple(x.shape[1:])}, the data {tuple(data.sample_shape)}")
                non_finite += int((~torch.isfinite(x.flatten(1))).any(1).sum())
                metric.update(quantise(x).to(device), real=False)
        if non_finite:  # quantised, NaN would be black pixels: a diverged decoder scored as black images
            return {"skipped": f"{non_finite} of {o.samples} samples are not finite (NaN or inf): the decoder has "
                               "diverged", "non_finite_samples": non_finite}
        with torch.no_grad(), torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
            torch.manual_seed(o.seed)  # KID's subsets are drawn with the global RNG
            values = self.compute(metric)
        name = f"{self.kind}{o.samples}_{o.real}{n_real}_{o.network}"
        result: dict[str, Any] = {**values, "protocol": name, "samples": o.samples, "real": o.real,
                                  "real_examples": n_real, "network": o.network,
                                  "feature_dim": int(net.num_features), "quantised": "uint8",
                                  "network_info": dict(getattr(net, "about", {}) or {})}
        if subset_size:
            result.update(subsets=o.subsets, subset_size=subset_size)  # type: ignore[attr-defined]
        result["seconds"] = round(time.perf_counter() - start, 3)
        return result

    def compute(self, metric: Any) -> dict[str, float]:
        raise NotImplementedError


class Fid(_SampleQuality):
    kind = "fid"

    def make_metric(self, net: nn.Module, subset_size: int) -> Any:
        from torchmetrics.image.fid import FrechetInceptionDistance

        # sums and covariances in float64; computed by one process (rank 0 of a data-parallel run) over all the
        # samples, so nothing to gather from other ranks (torchmetrics would wait on them)
        return FrechetInceptionDistance(feature=net, reset_real_features=False, sync_on_compute=False)

    def compute(self, metric: Any) -> dict[str, float | bool]:
        dim = int(metric.real_features_cov_sum.shape[0])
        singular = min(int(metric.real_features_num_samples), int(metric.fake_features_num_samples)) <= dim
        # with no more samples than features a covariance is singular: the estimate holds (it is what the
        # reference code computes) but is biased and can come out slightly below 0 for two sets alike
        return {"fid": float(metric.compute()), "singular_covariances": singular}


class Kid(_SampleQuality):
    kind = "kid"
    o: KidOptions

    def make_metric(self, net: nn.Module, subset_size: int) -> Any:
        from torchmetrics.image.kid import KernelInceptionDistance

        o = self.o
        with warnings.catch_warnings():  # "will save all extracted features": yes, `samples` + `real_examples`
            warnings.simplefilter("ignore", UserWarning)
            return KernelInceptionDistance(feature=net, subsets=o.subsets, subset_size=subset_size, degree=o.degree,
                                           gamma=o.gamma, coef=o.coef, reset_real_features=False,
                                           sync_on_compute=False)  # as FID's

    def compute(self, metric: Any) -> dict[str, float]:
        mean, std = metric.compute()
        return {"kid_mean": float(mean), "kid_std": float(std)}


def _real_split(data: Dataset, o: SampleQualityOptions, kind: str):
    """The split samples are compared with (checked when a recipe is built as well as when it is evaluated)."""
    split = data.heldout if o.real == "heldout" else data.train
    if split is None or len(split) < 2:
        raise UserError(f"evaluator '{kind}' compares samples with the {o.real} split, which holds fewer "
                        f"than 2 examples; set evaluators.{kind}.real = \"train\" or give the dataset one")
    return split


def _check_data(ctx: BuildContext, options: SampleQualityOptions, kind: str) -> None:
    """What the evaluator will need of the data, refused when the recipe is built, not after its training."""
    if ctx.dataset is None:
        return
    _real_split(ctx.dataset, options, kind)
    if options.network == "label_classifier":  # the built-in feature network's needs (it trains when used)
        try:
            _images(ctx.dataset, "label_classifier")
            _class_labels(ctx.dataset, "label_classifier")
        except UserError as exc:
            raise UserError(str(exc), option="network") from None


def fid(options: SampleQualityOptions, ctx: BuildContext) -> Evaluator:
    """Fréchet distance (torchmetrics' FID) between decoder samples and data in a feature network's space."""
    _check_data(ctx, options, "fid")
    return Fid(options, ctx)


def kid(options: KidOptions, ctx: BuildContext) -> Evaluator:
    """Kernel (MMD) distance (torchmetrics' KID) between decoder samples and data in a feature network's space."""
    _check_data(ctx, options, "kid")
    return Kid(options, ctx)


@hookimpl
def register_evaluators(register) -> None:
    register("fid", fid, SampleQualityOptions)
    register("kid", kid, KidOptions)


@hookimpl
def register_feature_networks(register) -> None:
    register("label_classifier", label_classifier, LabelClassifierOptions)
    register("inception", inception, InceptionOptions)
