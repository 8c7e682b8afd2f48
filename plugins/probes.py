"""Evaluators ``svm_probe`` and ``knn_probe``: how much of the labels a trained encoder's features make readable.

**Features.** ``features = "mean_and_hidden"`` (default) reads what ali-reference §5.1 describes: the posterior
mean mu (not a sampled z) concatenated with the flattened hidden activations the encoder exposes in
``posterior.features``; ``"mean"`` reads mu alone. The paper's SVHN encoder (``ali_svhn_encoder``) exposes the BN
outputs (after BN, before the LeakyReLU) of its last three hidden layers: conv 4 (256x4x4 = 4,096), conv 5
(512x1x1) and the 1x1 conv 6 (512), so with mu (256) the probe reads **5,376 dimensions** for SVHN, as the
original script computes them. The paper's text says 8,960; that number does not reconcile with the released code
(ali-reference §5.1: the script indexed an older encoder that output [mu, log sigma] as one tensor and read five
layers before it was cut to three), so 5,376 is what the code's protocol gives, not the paper's sentence.
The digits networks (plugins/digits.py) expose the same three layers.

Features are computed in eval mode (BN population statistics, no dropout), under ``no_grad``, in batches of
``batch_size``; a conditional model's encoder gets each example's own label, as it was trained (its features then
depend on the label: ``encoder_sees_labels`` says so in the report, and such an error is not a measure of an
unsupervised representation).

**Labelled subsets** (shared by both probes: the same options give the same subsets). A validation set of
``validation`` examples is taken once from the *training* split: drawn uniformly at random, or, with
``validation_from = "last"``, its last ``validation`` examples, fixed; each of ``repeats`` labelled training sets
holds ``labels`` examples drawn from the rest, class-balanced (``labels // classes`` per class, the remainder to
randomly chosen classes). One generator seeded with ``seed`` draws the validation set and then the labelled sets
in turn, so the first draws stay the same when ``repeats`` grows. The test set is the held-out split (all of it,
or ``test_examples`` of it drawn with ``seed``).

``labelled_from`` names a registered dataset (its options in ``labelled_from_options``) whose training split
takes the place of the run's for the validation and labelled sets; the test set stays the run's held-out split.
When it names the run's own dataset, its options start from the run's (``root``, ``verify``, ...), and
``labelled_from_options`` changes some of them (``split = "train"``), so that a dataset moved elsewhere
(``--set dataset.root=DIR``) is found by both.
The paper's SVHN protocol needs it (ali-reference §5.1): the model trained on ``extra``, the SVM's labels came
from ``train[0:63257]`` and C was chosen on the fixed ``train[63257:73257]``, 10,000 examples. That dataset is
built with the evaluator, when the recipe is, so missing files fail before training; so does a pool whose
training split holds more than 1 % of the run's held-out examples (byte-for-byte copies: the same dataset split
otherwise), which would test the probe on examples it was fitted on. ``labelled_from_options`` without
``labelled_from`` is refused.

**svm_probe** (the paper's L2-SVM): scikit-learn's ``LinearSVC`` (squared hinge, L2 penalty, one-vs-rest) on
features standardised with the mean and standard deviation of each labelled training set (the original used no
scaling; standardising makes one C grid fit every feature set). C is chosen from ``c_grid`` (ascending; ties go to
the smaller C) by the error on the validation set, on the first draw as the original script did
(``select_c = "first_draw"``), or on every draw (``"each_draw"``). Reported: the test error as mean and standard
deviation (ddof = 1) over the draws, each draw's test error, the validation error (mean and std over the draws
at the chosen C), C, the feature dimension, and ``unconverged_fits`` (liblinear stopping at ``max_iter``).
The paper drew 100 sets of 1,000 SVHN labels (19.14 +- 0.50 % test error); the default here is 10.

**knn_probe** (BiGAN's 1-NN): each test example takes the label of its nearest labelled training example
(``k`` nearest by majority, ties to the nearest) by cosine similarity of the unscaled features, or by Euclidean
distance with ``metric = "euclidean"``, which is what BiGAN's code used (ali-reference §7; the BiGAN recipes set
it). Cosine is the default because it ignores the features' scale.
Reported as test error (and ``test_accuracy_mean``, BiGAN's number) over the same draws.

**Too little data.** When the training split cannot give the validation set and a class-balanced labelled set
of the configured sizes, the report is ``{"skipped": reason}`` (the reason names the sizes to lower) instead of
an error, so that an evaluator never stops a training run; the other problems (no labels, no held-out split,
no encoder) are errors.

**Baselines** in the same report (``baselines = true``): the same protocol on ``raw_pixels`` (the decoded
inputs, flattened) and on the ``untrained`` encoder: the same architecture initialised with the same seed. The
evaluator receives only the trained model, so it rebuilds the run's recipe (``model.recipe`` for a loaded run,
else RUN_DIR/recipe.toml when the output folder is a run directory) with ``advinf.build``: the same function,
recipe and seed that built the networks training started from, so the rebuilt encoder equals the initial one
(``init_from`` is skipped: "untrained" means the seeded initialisation). Without a recipe it falls back to a
deep copy of the trained encoder re-initialised under ``torch.manual_seed(recipe seed)`` by the network's own
``reset_parameters()`` if it has one (the digits networks do), else every submodule's torch default
``reset_parameters`` (an approximation: another initialisation scheme). ``untrained.init`` records which one
was used. The baselines do not change while a model trains: an evaluator computes them once per dataset and
reuses them for evaluations every N steps.
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from torch import Tensor, nn

from advinf import (
    BuildContext,
    Dataset,
    Evaluator,
    Networks,
    OptionError,
    Posterior,
    RegisteredName,
    Split,
    StreamingSplit,
    TrainedModel,
    UserError,
    evaluating,
    hookimpl,
    origin_of,
    saved_recipe,
)

FeatureKind = Literal["mean_and_hidden", "mean"]
DEFAULT_C_GRID = [float(c) for c in np.logspace(-5, 0, 11)]


# -- options -----------------------------------------------------------------------------------------------


class ProbeOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    labels: int = Field(1000, ge=1, description="labelled training examples per draw, class-balanced "
                                                "(the paper: 1,000)")
    validation: int = Field(1000, ge=1, description="validation examples, drawn once from the training split, "
                                                    "disjoint from every labelled set")
    repeats: int = Field(10, ge=1, description="labelled sets drawn; errors are mean and std over them "
                                               "(the paper: 100)")
    seed: int = Field(0, ge=0, lt=2**32, description="seed of the validation, labelled and test draws")
    test_examples: int | None = Field(None, ge=1, description="test on this many held-out examples (drawn with "
                                                               "seed); default: all of them")
    features: FeatureKind = Field("mean_and_hidden", description="mean_and_hidden: posterior mean plus the "
                                                                 "encoder's hidden features (ali-reference §5.1); "
                                                                 "mean: the posterior mean alone")
    baselines: bool = Field(True, description="also run the protocol on raw pixels and the untrained encoder")
    batch_size: int = Field(500, ge=1, description="examples per encoder forward pass")
    validation_from: Literal["random", "last"] = Field(
        "random", description="random: the validation set is drawn uniformly from the training split; last: it "
                              "is the split's last `validation` examples (the original SVHN script: "
                              "train[63257:73257])")
    labelled_from: Annotated[str | None, RegisteredName("dataset", options="labelled_from_options")] = Field(
        None, description="a registered dataset whose training split gives the validation and labelled sets "
                          "instead of the run's (the paper's SVHN protocol: svhn with split = \"train\", while the "
                          "model trained on extra); the test set stays the run's held-out split")
    labelled_from_options: dict[str, Any] = Field(default_factory=dict,
                                                  description="options of the labelled_from dataset (over the "
                                                              "run's dataset options when it names the same one)")

    @model_validator(mode="after")
    def _options_need_a_dataset(self) -> ProbeOptions:
        if self.labelled_from_options and self.labelled_from is None:
            raise OptionError("labelled_from_options is given without labelled_from (the dataset they are for)",
                              option="labelled_from_options")
        return self


class SvmProbeOptions(ProbeOptions):
    c_grid: list[float] = Field(default_factory=lambda: list(DEFAULT_C_GRID),
                                description="values of C tried on the validation set (default 1e-5 .. 1, "
                                            "half a decade apart)")
    select_c: Literal["first_draw", "each_draw"] = Field(
        "first_draw", description="choose C on the first draw and keep it (the original script), or on each draw")
    standardize: bool = Field(True, description="scale features to zero mean, unit variance on each labelled set")
    max_iter: int = Field(10_000, ge=1, le=10**9, description="liblinear iterations per fit")

    @field_validator("c_grid")
    @classmethod
    def _grid(cls, v: list[float]) -> list[float]:
        if not v or any(c <= 0 for c in v):
            raise ValueError("give one or more positive values")
        return sorted(v)


class KnnProbeOptions(ProbeOptions):
    k: int = Field(1, ge=1, description="neighbours voting (BiGAN: 1)")
    metric: Literal["cosine", "euclidean"] = Field("cosine", description="similarity of feature vectors "
                                                  "(BiGAN's code: euclidean)")

    @model_validator(mode="after")
    def _k_within_labels(self) -> KnnProbeOptions:
        if self.k > self.labels:
            raise OptionError(f"k = {self.k} neighbours among {self.labels} labelled examples: give k <= labels",
                              option="k")
        return self


# -- labelled subsets --------------------------------------------------------------------------------------


class TooLittleData(UserError):
    """The data holds too few (labelled) examples for the configured budget. The probes report it as
    ``{"skipped": reason}`` instead of failing, so that a recipe's evaluators never stop a training run (nor the
    end-to-end tests on a few images); every other problem is an error."""


@dataclass
class LabelledDraws:
    """Indices into the training split: one validation set and ``repeats`` class-balanced labelled sets."""

    validation: Tensor
    labelled: list[Tensor]

    def needed(self) -> Tensor:
        """Every training index any draw uses, ascending and unique."""
        return torch.unique(torch.cat([self.validation, *self.labelled]))


def balanced_subset(y: Tensor, pool: Tensor, size: int, classes: int, g: torch.Generator) -> Tensor:
    """``size`` indices from ``pool`` with ``size // classes`` of each class and the remainder spread over randomly
    chosen classes (one each); ascending. A class with too few examples in the pool is a UserError."""
    per = torch.full((classes,), size // classes, dtype=torch.long)
    per[torch.randperm(classes, generator=g)[: size % classes]] += 1
    pool_y = y[pool]
    picked = []
    for c in range(classes):
        members = pool[pool_y == c]
        n = int(per[c])
        if n > len(members):
            raise TooLittleData(f"a class-balanced set of {size} labels needs {n} examples of class {c}, but only "
                            f"{len(members)} are left after the validation set; lower `labels` or `validation`")
        picked.append(members[torch.randperm(len(members), generator=g)[:n]])
    return torch.sort(torch.cat(picked)).values


def draw_labelled(y: Tensor, labels: int, validation: int, repeats: int, seed: int, classes: int,
                  validation_from: Literal["random", "last"] = "random", split: str = "the training split"
                  ) -> LabelledDraws:
    """The validation set (uniform, drawn first; or the last ``validation`` examples) and ``repeats``
    class-balanced labelled sets from the rest."""
    y = y.detach().cpu().long().reshape(-1)
    n = len(y)
    if validation + labels > n:
        raise TooLittleData(f"{split} holds {n} examples, fewer than validation ({validation}) plus labels "
                            f"({labels}); lower them")
    g = torch.Generator().manual_seed(seed)
    if validation_from == "last":
        val, pool = torch.arange(n - validation, n), torch.arange(n - validation)
    else:
        perm = torch.randperm(n, generator=g)
        val = torch.sort(perm[:validation]).values
        pool = torch.sort(perm[validation:]).values
    return LabelledDraws(val, [balanced_subset(y, pool, labels, classes, g) for _ in range(repeats)])


# -- features ----------------------------------------------------------------------------------------------


def posterior_features(post: Posterior, kind: FeatureKind) -> Tensor:
    """(B, D) float32: the flattened posterior mean, and with ``mean_and_hidden`` its hidden features after it."""
    parts = [post.mean.flatten(1)]
    if kind == "mean_and_hidden":
        parts += [f.flatten(1) for f in post.features]
    return torch.cat(parts, dim=1).float()


def collect(split: Split | StreamingSplit, idx: Tensor, fn: Callable[[Tensor, Tensor | None], Tensor],
            batch_size: int) -> Tensor:
    """``fn(x, y)`` on the examples ``idx`` of ``split`` (decoded, with their labels), batch by batch, on CPU."""
    out = []
    with torch.no_grad():
        for start in range(0, len(idx), batch_size):
            x, y = split.take(idx[start:start + batch_size])
            out.append(fn(Dataset.decode(x), y).detach().float().cpu())
    return torch.cat(out) if out else torch.zeros(0, 0)


def raw_inputs(x: Tensor, y: Tensor | None) -> Tensor:
    return x.flatten(1)


def encoder_fn(model: TrainedModel, nets: Networks | None, kind: FeatureKind
               ) -> Callable[[Tensor, Tensor | None], Tensor]:
    """Features through the model's game (its conditions), of ``nets`` (default: the trained networks)."""
    def fn(x: Tensor, y: Tensor | None) -> Tensor:
        y_in = y.to(model.device) if model.conditional and y is not None else None
        post = model.encode(x, y_in) if nets is None else model.game.encode(nets, x.to(model.device), y_in)
        return posterior_features(post, kind)

    return fn


def untrained_encoder(model: TrainedModel, out_dir: Path | None, seed: int, data: Dataset | None = None
                      ) -> tuple[nn.Module, str]:
    """The encoder as training started: same architecture, same seed (see the module docstring), and how it
    was made. ``data``: the data being evaluated, which the rebuild uses instead of loading the recipe's again
    (which may have moved: ``advinf evaluate --set dataset.root=...``)."""
    trained = model.encoder
    assert trained is not None
    recipe = getattr(model, "recipe", None)
    where = "the loaded run's recipe"
    problem = ""
    if recipe is None and out_dir is not None:
        try:
            recipe = saved_recipe(out_dir)
            where = f"{out_dir}'s recipe.toml"
        except Exception as exc:  # the fallback below still gives a baseline; the report says why
            problem = f"; reading {out_dir}'s recipe.toml failed: {exc}"
    if recipe is not None and "encoder" in recipe.spec.network_specs():
        from advinf import build

        try:
            with torch.random.fork_rng(devices=_cuda(model)):
                built = build(recipe, device=model.device, init=False, dataset=data, evaluators=False,
                              loggers=False)
            encoder = built.nets["encoder"]
            if _same_shapes(encoder, trained):
                return (encoder.to(model.device).eval(),
                        f"rebuilt by advinf.build from {where} (seed {recipe.spec.seed}): the initial weights")
            problem = f"; the encoder rebuilt from {where} does not match the trained one"
        except Exception as exc:
            problem = f"; rebuilding {where} failed: {exc}"
    encoder = copy.deepcopy(trained)
    with torch.random.fork_rng(devices=_cuda(model)):
        torch.manual_seed(seed)
        if callable(getattr(type(encoder), "reset_parameters", None)):
            encoder.reset_parameters()
            how = f"a copy re-initialised by {type(encoder).__name__}.reset_parameters() under seed {seed}"
        else:
            for m in encoder.modules():
                if m is not encoder and callable(getattr(m, "reset_parameters", None)):
                    m.reset_parameters()
            how = (f"a copy whose layers were reset to torch's default initialisation under seed {seed} "
                   "(approximate: not the network's own scheme)")
    return encoder.eval(), how + problem


def _cuda(model: TrainedModel) -> list[int]:
    return [model.device.index or 0] if model.device.type == "cuda" else []


def _same_shapes(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return type(a) is type(b) and sa.keys() == sb.keys() and all(sa[k].shape == sb[k].shape for k in sa)


@dataclass
class FeatureSets:
    """Features of the training examples the draws use (row ``pos[i]`` for training index i) and of the test set."""

    train: Tensor
    pos: Tensor
    test: Tensor

    def rows(self, idx: Tensor) -> Tensor:
        return self.train[self.pos[idx]]


@dataclass
class ProbeData:
    """What every probe reads: the draws (indices into ``pool``, the training split they come from), the labels
    and the test indices."""

    data: Dataset
    pool: Split | StreamingSplit
    draws: LabelledDraws
    y_train: Tensor
    test_idx: Tensor
    y_test: Tensor
    classes: int

    def features(self, fn: Callable[[Tensor, Tensor | None], Tensor], batch_size: int) -> FeatureSets:
        needed = self.draws.needed()
        pos = torch.full((len(self.y_train),), -1, dtype=torch.long)
        pos[needed] = torch.arange(len(needed))
        train = collect(self.pool, needed, fn, batch_size)
        test = collect(self.data.heldout, self.test_idx, fn, batch_size)  # type: ignore[arg-type]
        return FeatureSets(train, pos, test)


def require_probe_data(data: Dataset, what: str) -> tuple:
    """The dataset's label info, if it can be probed: class labels and a held-out split (checked when a recipe is
    built as well as when it is evaluated)."""
    info = data.label_info()
    if info is None or info[0] != "classes":
        raise UserError(f"evaluator '{what}' needs a dataset with class labels (e.g. digits, svhn, mnist)")
    if data.heldout is None or len(data.heldout) == 0:
        raise UserError(f"evaluator '{what}' tests on the held-out split, but the dataset has none; give the "
                        "dataset a held-out split")
    return info


def probe_data(data: Dataset, o: ProbeOptions, what: str, pool: Split | StreamingSplit | None = None) -> ProbeData:
    """Check the data can be probed and draw the subsets, from ``pool`` (default: the training split)."""
    info = require_probe_data(data, what)
    pool = pool if pool is not None else data.train
    y_train = _labels(pool)
    y_test_all = _labels(data.heldout)
    classes = max(info[2], int(y_train.max()) + 1)
    split = "the training split" if pool is data.train else \
        f"the training split of labelled_from = '{o.labelled_from}'"
    draws = draw_labelled(y_train, o.labels, o.validation, o.repeats, o.seed, classes, o.validation_from, split)
    n_test = len(data.heldout)
    if o.test_examples is not None and o.test_examples < n_test:
        g = torch.Generator().manual_seed(o.seed + 1)
        test_idx = torch.sort(torch.randperm(n_test, generator=g)[: o.test_examples]).values
    else:
        test_idx = torch.arange(n_test)
    return ProbeData(data, pool, draws, y_train, test_idx, y_test_all[test_idx], classes)


def _shared_examples(pool: Split | StreamingSplit, heldout: Split | StreamingSplit) -> int | None:
    """How many of ``heldout``'s examples appear, byte for byte, in ``pool`` (None for splits read lazily)."""
    if not isinstance(pool, Split) or not isinstance(heldout, Split) or pool.x.shape[1:] != heldout.x.shape[1:]:
        return None
    seen = {hash(row.tobytes()) for row in pool.x.reshape(len(pool), -1).cpu().numpy()}
    return sum(hash(row.tobytes()) in seen for row in heldout.x.reshape(len(heldout), -1).cpu().numpy())


def labelled_pool(o: ProbeOptions, ctx: Any, what: str) -> tuple[Split | StreamingSplit, dict[str, Any]] | None:
    """The training split of the ``labelled_from`` dataset and the options it was built with (None without one),
    built now: its problems are the recipe's, keyed by the option to change, before training."""
    if o.labelled_from is None:
        return None
    host = getattr(ctx, "host", None)
    if host is None:
        import advinf

        host = advinf.default_host()
    run = getattr(ctx, "dataset", None)
    origin = origin_of(run) if run is not None else None
    same = origin is not None and origin.kind == "dataset" and origin.name == o.labelled_from
    options = {**(origin.options if same else {}), **o.labelled_from_options}  # type: ignore[union-attr]
    try:
        other = host.create("dataset", o.labelled_from, BuildContext(seed=getattr(ctx, "seed", 0), host=host),
                            **options)
    except UserError as exc:
        key = f"labelled_from_options.{exc.option}" if exc.option else "labelled_from"
        raise UserError(f"evaluator '{what}', labelled_from = '{o.labelled_from}': {exc}", option=key) from None
    info = other.label_info()
    if info is None or info[0] != "classes":
        raise UserError(f"evaluator '{what}': labelled_from = '{o.labelled_from}' has no class labels",
                        option="labelled_from")
    if o.labels < len(info[1]):  # as _one_label_per_class, against the classes of the labelled pool
        raise UserError(f"evaluator '{what}': labels = {o.labels} is fewer than the {len(info[1])} classes of "
                        f"labelled_from = '{o.labelled_from}'; a class-balanced draw needs at least one label of "
                        "each", option="labels")
    if run is not None and run.heldout is not None:
        shared = _shared_examples(other.train, run.heldout)
        if shared is not None and shared > 0.01 * len(run.heldout):  # a few exact copies can be genuine
            raise UserError(f"evaluator '{what}': the training split of labelled_from = '{o.labelled_from}' holds "
                            f"{shared} of the run's {len(run.heldout)} held-out examples (byte for byte), which the "
                            "probe tests on; give it options whose training split leaves them out (the run's "
                            "held-out split and seed)", option="labelled_from_options")
    if run is not None and tuple(other.sample_shape) != tuple(run.sample_shape):
        raise UserError(f"evaluator '{what}': labelled_from = '{o.labelled_from}' has examples of shape "
                        f"{tuple(other.sample_shape)}, but the run's are {tuple(run.sample_shape)}",
                        option="labelled_from")
    return other.train, options


def _labels(split: Split | StreamingSplit) -> Tensor:
    y = split.labels()
    if y is None:
        raise UserError("the probes need labels on both splits")
    return y.reshape(-1)


# -- the L2-SVM --------------------------------------------------------------------------------------------


@dataclass
class LinearModel:
    """A fitted linear classifier over unscaled features: scores = x @ weight.T + bias (scaling folded in)."""

    weight: Tensor  # (K, D), or (1, D) for two classes (sklearn's binary convention)
    bias: Tensor
    classes: Tensor

    def predict(self, x: Tensor, chunk: int = 8192) -> Tensor:
        out = []
        for start in range(0, len(x), chunk):
            s = x[start:start + chunk].double() @ self.weight.T + self.bias
            out.append(self.classes[(s[:, 0] > 0).long()] if s.shape[1] == 1 else self.classes[s.argmax(1)])
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def fit_l2svm(x: Tensor, y: Tensor, c: float, *, standardize: bool = True, max_iter: int = 10_000,
              seed: int = 0) -> tuple[LinearModel, bool]:
    """``LinearSVC(C=c)`` (squared hinge, L2) on ``x`` (optionally standardised on ``x`` itself); returns the
    model over unscaled features and whether liblinear converged.

    With fewer examples than features the SVM is fitted on the coordinates of the examples in an orthonormal
    basis of their span (thin SVD) and mapped back: an exact reformulation, since the L2-regularised solution
    (intercept included, which liblinear regularises as one more feature) has no component orthogonal to the
    examples. liblinear's dual solver then works on n instead of D dimensions: on 200 x 6,464 encoder features
    of digits it is about 30 times faster, with the same weights to 1e-6.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.svm import LinearSVC

    xd = x.double()
    mean = xd.mean(0) if standardize else torch.zeros(x.shape[1], dtype=torch.float64)
    std = xd.std(0, correction=0) if standardize else torch.ones(x.shape[1], dtype=torch.float64)
    std = torch.where(std > 1e-8, std, torch.ones_like(std))
    xs = (xd - mean) / std
    basis: Tensor | None = None
    if xs.shape[1] > xs.shape[0]:
        _, sv, vh = torch.linalg.svd(xs, full_matrices=False)
        keep = sv > sv[0] * max(xs.shape) * torch.finfo(torch.float64).eps if len(sv) else sv > 0
        basis = vh[keep].T  # (D, r)
        xs = xs @ basis
    svm = LinearSVC(C=c, loss="squared_hinge", penalty="l2", dual=True if basis is not None else "auto",
                    max_iter=max_iter, tol=1e-4, random_state=seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        svm.fit(xs.numpy(), y.numpy())
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    coef = torch.from_numpy(svm.coef_).double()
    if basis is not None:
        coef = coef @ basis.T
    w = coef / std
    b = torch.from_numpy(np.atleast_1d(svm.intercept_)).double() - w @ mean
    return LinearModel(w, b, torch.from_numpy(svm.classes_).long()), converged


def error(pred: Tensor, y: Tensor) -> float:
    return float((pred != y).double().mean()) if len(y) else float("nan")


def _mean_std(values: list[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def svm_protocol(f: FeatureSets, pd: ProbeData, o: SvmProbeOptions) -> dict[str, Any]:
    """The L2-SVM protocol on one feature set: C by validation error, test error over the draws."""
    x_val, y_val = f.rows(pd.draws.validation), pd.y_train[pd.draws.validation]
    unconverged = 0

    def fit(draw: Tensor, c: float) -> LinearModel:
        nonlocal unconverged
        model, ok = fit_l2svm(f.rows(draw), pd.y_train[draw], c, standardize=o.standardize, max_iter=o.max_iter,
                              seed=o.seed)
        unconverged += not ok
        return model

    def choose(draw: Tensor) -> tuple[float, LinearModel]:
        fits = [(c, fit(draw, c)) for c in o.c_grid]
        errs = [error(m.predict(x_val), y_val) for _, m in fits]
        return fits[int(np.argmin(errs))]  # the first minimum: the smallest C among ties

    chosen, val_errs, test_errs = [], [], []
    c_first, model_first = choose(pd.draws.labelled[0])
    for r, draw in enumerate(pd.draws.labelled):
        if r == 0:
            c, model = c_first, model_first
        elif o.select_c == "each_draw":
            c, model = choose(draw)
        else:
            c, model = c_first, fit(draw, c_first)
        chosen.append(c)
        val_errs.append(error(model.predict(x_val), y_val))
        test_errs.append(error(model.predict(f.test), pd.y_test))
    test_mean, test_std = _mean_std(test_errs)
    val_mean, val_std = _mean_std(val_errs)
    out = {"test_error_mean": test_mean, "test_error_std": test_std, "val_error": val_mean,
           "val_error_std": val_std, "C": fitted_median(chosen), "feature_dim": int(f.train.shape[1]),
           "test_errors": test_errs, "unconverged_fits": unconverged}
    if o.select_c == "each_draw":
        out["C_per_draw"] = chosen
    return out


def fitted_median(values: list[float]) -> float:
    """The lower middle of ``values``: a median that is one of them (the C reported for several draws is one that
    was fitted, never a mean of two)."""
    return float(sorted(values)[(len(values) - 1) // 2])


# -- nearest neighbours ------------------------------------------------------------------------------------


def nearest_neighbour_predict(train: Tensor, y_train: Tensor, query: Tensor, k: int = 1, metric: str = "cosine",
                              chunk: int = 2048) -> Tensor:
    """The label of each query's nearest training example (``k`` > 1: majority of the k nearest, ties to the
    tied class whose member is nearest; equally near examples: the lower index first). Cosine similarity treats
    an all-zero vector as similar to nothing (0)."""
    k = min(k, len(train))
    train = train.double()
    if metric == "cosine":
        train = train / train.norm(dim=1, keepdim=True).clamp_min(1e-12)
    classes = int(y_train.max()) + 1
    out = []
    for start in range(0, len(query), chunk):
        q = query[start:start + chunk].double()
        if metric == "cosine":
            score = (q / q.norm(dim=1, keepdim=True).clamp_min(1e-12)) @ train.T
        else:
            score = -torch.cdist(q, train)
        if k == 1:
            out.append(y_train[score.argmax(dim=1)])  # ties: the first (lowest) index
            continue
        top = torch.sort(score, dim=1, descending=True, stable=True).indices[:, :k]  # nearest first, ties by index
        labels = y_train[top]
        votes = torch.zeros(len(q), classes, dtype=torch.long)
        votes.scatter_add_(1, labels, torch.ones_like(labels))
        nearest = torch.zeros_like(votes)  # k - the rank of each class's nearest member (0: none in the k)
        for rank in range(k - 1, -1, -1):  # the nearest last, so its rank stays
            nearest.scatter_(1, labels[:, rank:rank + 1], torch.full_like(labels[:, :1], k - rank))
        out.append((votes * (k + 1) + nearest).argmax(1))  # majority; ties to the class with the nearest member
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def knn_protocol(f: FeatureSets, pd: ProbeData, o: KnnProbeOptions) -> dict[str, Any]:
    x_val, y_val = f.rows(pd.draws.validation), pd.y_train[pd.draws.validation]
    val_errs, test_errs = [], []
    for draw in pd.draws.labelled:
        x_lab, y_lab = f.rows(draw), pd.y_train[draw]
        val_errs.append(error(nearest_neighbour_predict(x_lab, y_lab, x_val, o.k, o.metric), y_val))
        test_errs.append(error(nearest_neighbour_predict(x_lab, y_lab, f.test, o.k, o.metric), pd.y_test))
    test_mean, test_std = _mean_std(test_errs)
    val_mean, val_std = _mean_std(val_errs)
    return {"test_error_mean": test_mean, "test_error_std": test_std, "test_accuracy_mean": 1.0 - test_mean,
            "val_error": val_mean, "val_error_std": val_std, "feature_dim": int(f.train.shape[1]),
            "test_errors": test_errs}


# -- the evaluators ----------------------------------------------------------------------------------------


class _Probe(Evaluator):
    name = ""

    def __init__(self, options: ProbeOptions, recipe_seed: int = 0,
                 pool: tuple[Split | StreamingSplit, dict[str, Any]] | None = None):
        self.o, self.recipe_seed = options, recipe_seed
        self.pool, self.pool_options = pool if pool is not None else (None, None)
        # the baselines do not change while a run trains: evaluations every N steps compute them once
        self._baselines: dict[tuple, dict[str, Any]] = {}

    def protocol(self, f: FeatureSets, pd: ProbeData) -> dict[str, Any]:
        raise NotImplementedError

    def skip_reason(self, data: Dataset) -> str | None:
        """The draws of labelled sets the configured sizes cannot make, found before training (a pool read
        batch by batch is not read through here: that would be a slow start; its evaluation says it)."""
        pool = self.pool if self.pool is not None else data.train
        if isinstance(pool, StreamingSplit) or isinstance(data.heldout, StreamingSplit):
            return None
        try:
            probe_data(data, self.o, self.name, self.pool)
        except TooLittleData as exc:
            return f"{exc} (evaluators.{self.name})"
        return None

    def evaluate(self, model: TrainedModel, data: Dataset, out_dir: Path) -> dict[str, Any]:
        if model.encoder is None:
            raise UserError(f"evaluator '{self.name}' reads encoder features, but this model has no encoder "
                            "(a plain GAN)")
        start = time.perf_counter()
        o = self.o
        try:
            pd = probe_data(data, o, self.name, self.pool)
        except TooLittleData as exc:
            return {"skipped": f"{exc} (evaluators.{self.name})"}
        with evaluating(model.nets):
            trained = pd.features(encoder_fn(model, None, o.features), o.batch_size)
        not_finite = _not_finite(trained)
        if not_finite:  # an overflowing or diverged encoder: nothing a classifier could be fitted on
            return {"skipped": f"the encoder's features are not finite for {not_finite} of "
                               f"{len(trained.train) + len(trained.test)} examples (evaluators.{self.name})"}
        result = self.protocol(trained, pd)
        result.update(labels=o.labels, repeats=o.repeats, validation=o.validation, test_examples=len(pd.test_idx),
                      features=o.features, encoder_sees_labels=model.conditional)
        if self.pool_options is not None:
            result["labelled_from"] = {"name": o.labelled_from, **self.pool_options}
        if o.baselines:
            result.update(self._baseline_results(model, data, out_dir, pd))
        result["seconds"] = round(time.perf_counter() - start, 3)
        return result


    def _baseline_results(self, model: TrainedModel, data: Dataset, out_dir: Path | None, pd: ProbeData
                          ) -> dict[str, Any]:
        key = (id(data), id(pd.pool), len(data.train), str(out_dir), type(model.encoder).__name__)
        if key not in self._baselines:
            raw = self.protocol(pd.features(raw_inputs, self.o.batch_size), pd)
            encoder, how = untrained_encoder(model, out_dir, self.recipe_seed, data)
            nets = Networks(model.prior, encoder=encoder)
            with torch.no_grad():
                untrained = pd.features(encoder_fn(model, nets, self.o.features), self.o.batch_size)
            bad = _not_finite(untrained)
            scores = {"skipped": f"its features are not finite for {bad} examples"} if bad else \
                self.protocol(untrained, pd)
            self._baselines = {key: {"raw_pixels": raw, "untrained": {**scores, "init": how}}}
        return copy.deepcopy(self._baselines[key])


def _not_finite(f: FeatureSets) -> int:
    """How many examples (training rows the draws use, and test rows) have a non-finite feature."""
    return int((~torch.isfinite(f.train).all(1)).sum() + (~torch.isfinite(f.test).all(1)).sum())


class SvmProbe(_Probe):
    name = "svm_probe"
    o: SvmProbeOptions

    def protocol(self, f: FeatureSets, pd: ProbeData) -> dict[str, Any]:
        return svm_protocol(f, pd, self.o)


class KnnProbe(_Probe):
    name = "knn_probe"
    o: KnnProbeOptions

    def protocol(self, f: FeatureSets, pd: ProbeData) -> dict[str, Any]:
        return {**knn_protocol(f, pd, self.o), "k": self.o.k, "metric": self.o.metric}


def _one_label_per_class(options: ProbeOptions, info: tuple, what: str) -> None:
    """A class-balanced draw of fewer labels than classes leaves classes without a label: the probe would never
    predict them, and its error would not be the protocol's."""
    classes = info[2]
    if options.labelled_from is None and options.labels < classes:  # with labelled_from: labelled_pool checks
        raise UserError(f"evaluator '{what}': labels = {options.labels} is fewer than the dataset's {classes} "
                        "classes; a class-balanced draw needs at least one label of each", option="labels")


def svm_probe(options: SvmProbeOptions, ctx) -> Evaluator:
    """The paper's L2-SVM on encoder features: test error over class-balanced labelled draws, with baselines."""
    if getattr(ctx, "dataset", None) is not None:  # refused when the recipe is built, not after its training
        _one_label_per_class(options, require_probe_data(ctx.dataset, "svm_probe"), "svm_probe")
    return SvmProbe(options, getattr(ctx, "seed", 0), labelled_pool(options, ctx, "svm_probe"))


def knn_probe(options: KnnProbeOptions, ctx) -> Evaluator:
    """BiGAN's 1-nearest-neighbour error on encoder features (cosine; BiGAN: euclidean), svm_probe's draws."""
    if getattr(ctx, "dataset", None) is not None:
        _one_label_per_class(options, require_probe_data(ctx.dataset, "knn_probe"), "knn_probe")
    return KnnProbe(options, getattr(ctx, "seed", 0), labelled_pool(options, ctx, "knn_probe"))


@hookimpl
def register_evaluators(register) -> None:
    register("svm_probe", svm_probe, SvmProbeOptions)
    register("knn_probe", knn_probe, KnnProbeOptions)
