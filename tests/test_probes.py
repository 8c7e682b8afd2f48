"""The probes (svm_probe, knn_probe) and the reconstruction evaluator on constructed features with known answers,
and the labelled subsets they share."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import advinf
from advinf import Dataset, DeterministicPosterior, Networks, Split, StreamingSplit, TrainedModel, UserError
from advinf_plugins.games import JointGame, JointGameOptions
from advinf_plugins.priors import GaussianPrior
from advinf_plugins.probes import (
    KnnProbeOptions,
    SvmProbeOptions,
    draw_labelled,
    fit_l2svm,
    fitted_median,
    nearest_neighbour_predict,
    untrained_encoder,
)
from advinf_plugins.reconstruction import ReconstructionOptions

torch.set_num_threads(1)

CLASSES = 4
DIM = 6


def clusters(per_class: int, seed: int, spread: float = 0.05) -> tuple[torch.Tensor, torch.Tensor]:
    """Points around the first CLASSES unit vectors of R^DIM (scaled by 2): linearly separable with a wide margin."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(CLASSES).repeat_interleave(per_class)
    x = 2 * torch.eye(DIM)[y] + spread * torch.randn(len(y), DIM, generator=g)
    return x, y


def cluster_data(train: int = 60, heldout: int = 20) -> Dataset:
    return Dataset(Split(*clusters(train, 0)), Split(*clusters(heldout, 1)), meta={"classes": ["a", "b", "c", "d"]})


class Identity(advinf.Encoder):
    def forward(self, x, y=None):
        return DeterministicPosterior(x.flatten(1))


class Constant(advinf.Encoder):
    def forward(self, x, y=None):
        return DeterministicPosterior(torch.ones(len(x), 3, device=x.device))


class Linear(advinf.Encoder):
    """A trainable encoder (parameters that an untrained copy re-initialises) with one hidden feature layer."""

    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(DIM, 5)
        self.out = nn.Linear(5, 2)

    def forward(self, x, y=None):
        h = self.hidden(x)
        return DeterministicPosterior(self.out(h), features=[h])


class Reshape(advinf.Decoder):
    def __init__(self, shape):
        super().__init__()
        self.shape = shape

    def forward(self, z, y=None):
        return z.reshape(len(z), *self.shape)


class ConstantDecoder(advinf.Decoder):
    def __init__(self, value: torch.Tensor):
        super().__init__()
        self.value = value

    def forward(self, z, y=None):
        return self.value.expand(len(z), *self.value.shape).clone()


def model_with(encoder: nn.Module, decoder: nn.Module | None = None, dim: int = DIM) -> TrainedModel:
    nets = Networks(GaussianPrior((dim,)), encoder=encoder, decoder=decoder or Reshape((DIM,)))
    return TrainedModel(nets, JointGame(JointGameOptions(), stochastic=False), torch.device("cpu"))


# -- labelled subsets ----------------------------------------------------------------------------------------


def test_labelled_sets_are_class_balanced_disjoint_from_validation_and_reproducible():
    y = torch.randint(0, 10, (2000,), generator=torch.Generator().manual_seed(3))
    a = draw_labelled(y, labels=100, validation=300, repeats=4, seed=7, classes=10)
    assert len(a.validation) == 300 and len(torch.unique(a.validation)) == 300
    for draw in a.labelled:
        assert torch.equal(torch.bincount(y[draw], minlength=10), torch.full((10,), 10))
        assert len(torch.unique(draw)) == 100
        assert not set(draw.tolist()) & set(a.validation.tolist())
    assert not torch.equal(a.labelled[0], a.labelled[1])  # the draws differ
    b = draw_labelled(y, labels=100, validation=300, repeats=6, seed=7, classes=10)
    assert torch.equal(a.validation, b.validation)
    assert all(torch.equal(p, q) for p, q in zip(a.labelled, b.labelled[:4], strict=True))  # more repeats: a prefix
    c = draw_labelled(y, labels=100, validation=300, repeats=4, seed=8, classes=10)
    assert not torch.equal(a.labelled[0], c.labelled[0])


def test_a_remainder_goes_to_distinct_classes_and_shortages_are_clear():
    y = torch.arange(10).repeat(30)
    d = draw_labelled(y, labels=23, validation=10, repeats=1, seed=0, classes=10)
    counts = torch.bincount(y[d.labelled[0]], minlength=10)
    assert counts.sum() == 23 and sorted(counts.tolist()) == [2] * 7 + [3] * 3
    with pytest.raises(UserError, match="class-balanced"):
        draw_labelled(torch.tensor([0] * 50 + [1] * 3), labels=20, validation=5, repeats=1, seed=0, classes=2)
    with pytest.raises(UserError, match="fewer than validation"):
        draw_labelled(y, labels=250, validation=100, repeats=1, seed=0, classes=10)


# -- the L2-SVM --------------------------------------------------------------------------------------------


def test_svm_separates_a_separable_set_and_the_span_reformulation_is_exact():
    from sklearn.svm import LinearSVC

    x, y = clusters(10, 0)
    model, converged = fit_l2svm(x, y, 1.0)
    assert converged and torch.equal(model.predict(x), y)
    xt, yt = clusters(50, 1)
    assert torch.equal(model.predict(xt), yt)
    # fewer examples than features: fitted in the examples' span; the same weights as sklearn on all features
    g = torch.Generator().manual_seed(0)
    wide = torch.randn(30, 200, generator=g, dtype=torch.float64)
    labels = torch.arange(30) % 3
    span, _ = fit_l2svm(wide, labels, 0.01, standardize=False)
    full = LinearSVC(C=0.01, dual=True, max_iter=100_000, tol=1e-6).fit(wide.numpy(), labels.numpy())
    assert torch.allclose(span.weight, torch.from_numpy(full.coef_), atol=1e-4)
    assert torch.allclose(span.bias, torch.from_numpy(full.intercept_), atol=1e-4)


def test_svm_probe_scores_zero_on_separable_features_and_chance_on_constant_ones(tmp_path):
    data = cluster_data()
    options = dict(labels=20, validation=40, repeats=3, c_grid=[0.01, 1.0])
    probe = advinf.create("evaluator", "svm_probe", None, **options)
    result = probe.evaluate(model_with(Identity()), data, tmp_path)
    assert result["test_error_mean"] == 0.0 and result["test_error_std"] == 0.0 and result["val_error"] == 0.0
    assert result["test_errors"] == [0.0] * 3 and result["feature_dim"] == DIM
    assert (result["labels"], result["repeats"], result["validation"], result["test_examples"]) == (20, 3, 40, 80)
    assert result["raw_pixels"]["test_error_mean"] == 0.0 and result["C"] in (0.01, 1.0)
    assert "untrained" in result and not result["encoder_sees_labels"]
    cached = probe._baselines
    again = probe.evaluate(model_with(Identity()), data, tmp_path)  # e.g. the next evaluation during training
    assert probe._baselines is cached and again["raw_pixels"] == result["raw_pixels"]  # computed once
    # constant features: every test example gets the same class, 3 of 4 balanced classes are wrong
    constant = advinf.create("evaluator", "svm_probe", None, baselines=False, **options)
    assert constant.evaluate(model_with(Constant(), dim=3), data, tmp_path)["test_error_mean"] == pytest.approx(0.75)


def test_svm_probe_options_pick_c_per_draw_and_features():
    data = cluster_data()
    probe = advinf.create("evaluator", "svm_probe", None, labels=8, validation=40, repeats=2, select_c="each_draw",
                          features="mean", baselines=False, c_grid=[1.0, 1e-3])
    result = probe.evaluate(model_with(Linear()), data, None)
    assert len(result["C_per_draw"]) == 2 and result["feature_dim"] == 2
    assert result["C"] in result["C_per_draw"]  # the lower middle one: a C that was fitted, not a mean of two
    assert fitted_median([1e-2, 1e-3]) == 1e-3 and fitted_median([1.0, 1e-3, 0.1]) == 0.1  # np.median: 0.0055
    assert SvmProbeOptions(c_grid=[1.0, 1e-3]).c_grid == [1e-3, 1.0]
    with pytest.raises(ValueError):
        SvmProbeOptions(c_grid=[0.0])
    both = advinf.create("evaluator", "svm_probe", None, labels=8, validation=40, repeats=1, baselines=False)
    assert both.evaluate(model_with(Linear()), data, None)["feature_dim"] == 2 + 5  # mean + hidden layer


def test_probes_refuse_what_they_cannot_probe(tmp_path):
    probe = advinf.create("evaluator", "svm_probe", None, labels=8, validation=8, repeats=1)
    x, y = clusters(10, 0)
    with pytest.raises(UserError, match="held-out"):
        probe.evaluate(model_with(Identity()), Dataset(Split(x, y), None, {}), tmp_path)
    with pytest.raises(UserError, match="class labels"):
        probe.evaluate(model_with(Identity()), Dataset(Split(x), Split(x), {}), tmp_path)
    no_encoder = TrainedModel(Networks(GaussianPrior((DIM,)), decoder=Reshape((DIM,))), JointGame(
        JointGameOptions(), stochastic=False), torch.device("cpu"))
    with pytest.raises(UserError, match="no encoder"):
        probe.evaluate(no_encoder, cluster_data(), tmp_path)


def test_too_little_data_for_the_budget_is_reported_not_raised(tmp_path):
    """A recipe's probes on a few images (a tiny test run, a small dataset) say why they did not run."""
    for name in ("svm_probe", "knn_probe"):
        probe = advinf.create("evaluator", name, None, labels=1000, validation=1000)
        out = probe.evaluate(model_with(Identity()), cluster_data(), tmp_path)
        assert out == {"skipped": "the training split holds 240 examples, fewer than validation (1000) plus labels "
                                  f"(1000); lower them (evaluators.{name})"}
        assert probe.skip_reason(cluster_data()) == out["skipped"]  # told before training
        assert advinf.create("evaluator", name, None, labels=8, validation=4).skip_reason(cluster_data()) is None
    x, y = clusters(60, 0)
    keep = (y != 3) | (torch.arange(len(y)) == int((y == 3).nonzero()[0]))  # one example of class 3
    few = Dataset(Split(x[keep], y[keep]), Split(*clusters(5, 1)), meta={"classes": ["a", "b", "c", "d"]})
    short = advinf.create("evaluator", "svm_probe", None, labels=8, validation=1)
    assert "needs 2 examples of class 3" in short.evaluate(model_with(Identity()), few, tmp_path)["skipped"]
    rec = advinf.create("evaluator", "reconstruction", None, classifier_labels=1000, pictures=0)
    out = rec.evaluate(model_with(Identity()), cluster_data(), tmp_path)
    assert out["mse_mean"] == 0 and "fewer than validation (1000)" in out["classifier"]["skipped"]
    assert rec.skip_reason(cluster_data()) == f"for its classifier: {out['classifier']['skipped']}"


def test_the_reconstruction_classifier_reads_a_streamed_training_split_as_an_in_memory_one(tmp_path):
    data = cluster_data()
    streamed = Dataset(StreamingSplit([(x, int(y)) for x, y in zip(data.train.x, data.train.y, strict=True)],
                                      labelled=True), data.heldout, dict(data.meta))
    rec = advinf.create("evaluator", "reconstruction", None, classifier_labels=20, classifier_validation=8,
                        pictures=0)
    held = rec.evaluate(model_with(Identity()), data, tmp_path)
    flowing = advinf.create("evaluator", "reconstruction", None, classifier_labels=20, classifier_validation=8,
                            pictures=0).evaluate(model_with(Identity()), streamed, tmp_path)
    assert "classifier_accuracy" in held
    assert {k: v for k, v in flowing.items() if k != "seconds"} == {k: v for k, v in held.items() if k != "seconds"}


def test_untrained_encoder_without_a_recipe_is_a_seeded_reinitialised_copy(tmp_path):
    trained = Linear()
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(5.0)  # "training" moved every weight far from any initialisation
    a, how = untrained_encoder(model_with(trained), tmp_path, seed=3)
    b, _ = untrained_encoder(model_with(trained), tmp_path, seed=3)
    c, _ = untrained_encoder(model_with(trained), tmp_path, seed=4)
    assert "torch's default initialisation under seed 3" in how
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert not torch.equal(a.hidden.weight, c.hidden.weight)
    assert a.hidden.weight.abs().max() < 1 and trained.hidden.weight.min() > 3  # reset, and the original untouched


# -- nearest neighbours ------------------------------------------------------------------------------------


def test_nearest_neighbour_by_cosine_and_by_distance():
    train = torch.tensor([[1.0, 0.0], [10.0, 10.0]])
    labels = torch.tensor([0, 1])
    query = torch.tensor([[5.0, 4.0], [0.0, 3.0]])
    # (5, 4) points almost along (10, 10) but lies closer to (1, 0); (0, 3) is closer to (1, 0) either way
    assert nearest_neighbour_predict(train, labels, query, metric="cosine").tolist() == [1, 1]
    assert nearest_neighbour_predict(train, labels, query, metric="euclidean").tolist() == [0, 0]
    # k = 3: the majority of the three nearest; a 1-1-1 tie goes to the nearest
    train3 = torch.tensor([[0.0], [1.0], [1.1], [5.0]])
    assert nearest_neighbour_predict(train3, torch.tensor([0, 1, 1, 2]), torch.tensor([[0.2]]), k=3,
                                     metric="euclidean").tolist() == [1]
    assert nearest_neighbour_predict(train3, torch.tensor([0, 1, 2, 2]), torch.tensor([[0.2]]), k=3,
                                     metric="euclidean").tolist() == [0]
    # k = 5, the nearest's class (0) not among the tied ones (1 and 2, two votes each): the tie goes to the class
    # whose member is nearer (2, at 1.0), not to the lower class index
    train5 = torch.tensor([[0.0], [1.0], [1.5], [2.0], [2.5]])
    assert nearest_neighbour_predict(train5, torch.tensor([0, 2, 1, 2, 1]), torch.tensor([[0.0]]), k=5,
                                     metric="euclidean").tolist() == [2]
    assert nearest_neighbour_predict(train5, torch.tensor([0, 1, 2, 1, 2]), torch.tensor([[0.0]]), k=5,
                                     metric="euclidean").tolist() == [1]


def test_knn_probe_on_known_features(tmp_path):
    data = cluster_data()
    probe = advinf.create("evaluator", "knn_probe", None, labels=8, validation=40, repeats=2)
    result = probe.evaluate(model_with(Identity()), data, tmp_path)
    assert result["test_error_mean"] == 0.0 and result["test_accuracy_mean"] == 1.0
    assert result["k"] == 1 and result["metric"] == "cosine" and result["raw_pixels"]["test_error_mean"] == 0.0
    # the same labelled sets as svm_probe with the same options: its nearest neighbours come from them
    assert KnnProbeOptions(labels=8, validation=40, repeats=2).seed == SvmProbeOptions().seed
    constant = advinf.create("evaluator", "knn_probe", None, labels=8, validation=40, repeats=2, baselines=False)
    # every example is equally similar to all labelled ones: the first (lowest index) wins, one class of 4
    assert constant.evaluate(model_with(Constant(), dim=3), data, tmp_path)["test_error_mean"] == 0.75


# -- reconstruction ----------------------------------------------------------------------------------------


def image_clusters(per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """4x4 one-channel 'images' in [0, 1] whose class is which quadrant is bright, plus noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(CLASSES).repeat_interleave(per_class)
    base = torch.zeros(CLASSES, 1, 4, 4)
    for c, (r, s) in enumerate([(0, 0), (0, 2), (2, 0), (2, 2)]):
        base[c, 0, r:r + 2, s:s + 2] = 0.8
    x = (base[y] + 0.3 * torch.rand(len(y), 1, 4, 4, generator=g)).clamp(0, 1)
    return (x * 255).round().to(torch.uint8), y


def test_identity_autoencoder_reconstructs_exactly_and_keeps_every_label_the_classifier_reads(tmp_path):
    data = Dataset(Split(*image_clusters(40, 0)), Split(*image_clusters(15, 1)), meta={"classes": list("abcd")})
    model = model_with(Identity(), Reshape((1, 4, 4)), dim=16)
    ev = advinf.create("evaluator", "reconstruction", None, classifier_labels=40, classifier_validation=40,
                       c_grid=[1e-3, 1e-1], pictures=8)
    result = ev.evaluate(model, data, tmp_path)
    assert result["mse_mean"] == 0.0 and result["mse_sample"] == 0.0 and result["examples"] == 60
    assert result["label_kept_mean"] == result["classifier_accuracy"] == result["label_kept_sample"]
    assert result["mse_random_pair"] > result["mse_mean_image"] > 0
    assert (tmp_path / "eval_reconstructions.png").is_file()
    # a decoder that always draws the training mean image scores the mean-image reference exactly
    mean = Dataset.decode(data.train.x).mean(0)
    blurry = model_with(Identity(), ConstantDecoder(mean), dim=16)
    cached = dict(ev._cache)
    out = ev.evaluate(blurry, data, tmp_path)
    assert ev._cache.keys() == cached.keys() and all(ev._cache[k] is v for k, v in cached.items())  # reused
    assert out["classifier_accuracy"] == result["classifier_accuracy"] and out["classifier"] == result["classifier"]
    assert out["mse_mean"] == pytest.approx(out["mse_mean_image"], rel=1e-6)
    assert out["label_kept_mean"] == 0.25  # one image for all: one class of four kept


def test_reconstruction_options_and_unlabelled_data(tmp_path):
    x, _ = image_clusters(10, 0)
    data = Dataset(Split(x), Split(x[:12]), meta={})
    model = model_with(Identity(), Reshape((1, 4, 4)), dim=16)
    out = advinf.create("evaluator", "reconstruction", None, examples=5, pictures=0).evaluate(model, data, tmp_path)
    assert out["examples"] == 5 and "label_kept_mean" not in out and out["mse_mean"] == 0.0
    assert not (tmp_path / "eval_reconstructions.png").exists()
    assert ReconstructionOptions(c_grid=[1.0, 0.1]).c_grid == [0.1, 1.0]


def test_the_paper_svhn_encoder_gives_the_documented_5376_features():
    """mu (256) + BN outputs of conv 4 (256x4x4), conv 5 (512) and the 1x1 conv 6 (512): ali-reference §5.1."""
    from advinf_plugins.probes import posterior_features

    encoder = advinf.create("encoder", "ali_svhn_encoder", None).eval()
    with torch.no_grad():
        post = encoder(torch.rand(2, 3, 32, 32))
    assert [f[0].numel() for f in post.features] == [4096, 512, 512]
    assert posterior_features(post, "mean_and_hidden").shape == (2, 5376)
    assert posterior_features(post, "mean").shape == (2, 256)


@pytest.mark.parametrize("evaluator,expected", [
    ("svm_probe", "evaluators.svm_probe: evaluator 'svm_probe' tests on the held-out split, but the dataset has none"),
    ("knn_probe", "evaluators.knn_probe: evaluator 'knn_probe' tests on the held-out split"),
    ("reconstruction", "evaluators.reconstruction: evaluator 'reconstruction' works on the held-out split"),
    ("fid", "evaluators.fid: evaluator 'fid' compares samples with the heldout split, which holds fewer than 2"),
])
def test_an_evaluator_the_data_cannot_serve_fails_before_training(tmp_path, evaluator, expected):
    from click.testing import CliRunner
    from conftest import RECIPES

    from advinf.cli import cli

    out = tmp_path / "run"
    res = CliRunner().invoke(cli, ["run", str(RECIPES / "ali_mixture25.toml"), "--out", str(out), "--set",
                                   f"evaluators.{evaluator}.seed=1", "--set", "dataset.heldout=0"])
    assert res.exit_code == 2 and expected in res.output, res.output
    assert not out.exists()  # nothing trained, nothing written


# -- the labelled pool from another dataset (the paper's SVHN protocol) ---------------------------------------


def test_validation_from_last_is_the_split_s_fixed_tail():
    y = torch.arange(10).repeat(50)
    d = draw_labelled(y, labels=40, validation=100, repeats=3, seed=5, classes=10, validation_from="last")
    assert torch.equal(d.validation, torch.arange(400, 500))
    assert all(int(draw.max()) < 400 for draw in d.labelled)
    e = draw_labelled(y, labels=40, validation=100, repeats=3, seed=6, classes=10, validation_from="last")
    assert torch.equal(e.validation, d.validation) and not torch.equal(e.labelled[0], d.labelled[0])


def test_labelled_from_draws_labels_from_another_dataset_and_tests_on_the_run_s_heldout(tmp_path):
    run_data = advinf.create("dataset", "digits", None)  # 1,438 training digits, 359 held out
    ctx = advinf.BuildContext(dataset=run_data, seed=0)
    common = {"labels": 100, "validation": 100, "repeats": 2, "baselines": False}
    own = advinf.create("evaluator", "svm_probe", ctx, **common)
    other = advinf.create("evaluator", "svm_probe", ctx, **common, validation_from="last",
                          labelled_from="digits", labelled_from_options={"heldout": 0.8})  # none of its test digits
    assert own.pool is None and len(other.pool) == 359
    model = model_with(Identity(), Reshape((1, 8, 8)), dim=64)
    a, b = own.evaluate(model, run_data, tmp_path), other.evaluate(model, run_data, tmp_path)
    assert a["test_examples"] == b["test_examples"] == 359  # the run's held-out split either way
    # the run's dataset options, changed by labelled_from_options
    assert b["labelled_from"] == {"name": "digits", "size": 8, "resize": "bilinear", "heldout": 0.8,
                                  "split_seed": 0} and "labelled_from" not in a
    assert a["test_errors"] != b["test_errors"]
    # the budget is the other dataset's: its 359 training digits cannot give 300 + 100
    small = advinf.create("evaluator", "svm_probe", ctx, **{**common, "validation": 300},
                          labelled_from="digits", labelled_from_options={"heldout": 0.8})
    assert "the training split of labelled_from = 'digits' holds 359 examples" in \
        small.evaluate(model, run_data, tmp_path)["skipped"]


@pytest.mark.parametrize("override,expected", [
    ("evaluators.svm_probe.labelled_from_options.heldout=5000",
     "evaluators.svm_probe.labelled_from_options.heldout: that leaves no training images (there are 1797) (got "
     "5000)"),
    ("evaluators.svm_probe.labelled_from_options.size=16",
     "evaluators.svm_probe.labelled_from: evaluator 'svm_probe': labelled_from = 'digits' has examples of shape "
     "(1, 16, 16), but the run's are (1, 8, 8)"),
    ("evaluators.svm_probe.labelled_from_options.sise=16",
     "evaluators.svm_probe.labelled_from_options.sise"),
    ("evaluators.svm_probe.labels=3",  # was a reported error over 3 of 10 classes (labels=1: sklearn's crash)
     "evaluators.svm_probe.labels: evaluator 'svm_probe': labels = 3 is fewer than the 10 classes of labelled_from "
     "= 'digits'"),
])
def test_a_labelled_from_dataset_that_cannot_serve_fails_before_training(tmp_path, override, expected):
    from click.testing import CliRunner
    from conftest import RECIPES

    from advinf.cli import cli

    out = tmp_path / "run"
    res = CliRunner().invoke(cli, ["run", str(RECIPES / "ali_digits.toml"), "--out", str(out),
                                   "--set", "evaluators.svm_probe.labelled_from=digits", "--set", override])
    assert res.exit_code == 2 and expected in res.output, res.output
    assert "Traceback" not in res.output and not out.exists()


class Overflowing(advinf.Encoder):
    """Finite weights, features that overflow for some inputs (what a diverging model gives)."""

    def forward(self, x, y=None):
        h = x.flatten(1).clone()
        h[x[:, 0] > 1.9] = float("inf")
        return DeterministicPosterior(h)


@pytest.mark.parametrize("name", ["svm_probe", "knn_probe"])
def test_non_finite_features_are_reported_not_a_crash(tmp_path, name):
    data = cluster_data()
    probe = advinf.create("evaluator", name, None, labels=20, validation=40, repeats=2)
    result = probe.evaluate(model_with(Overflowing()), data, tmp_path)
    assert result["skipped"].startswith("the encoder's features are not finite for ")
    assert result["skipped"].endswith(f"examples (evaluators.{name})")


def test_a_labelled_from_pool_holding_the_test_examples_is_refused():
    """The same dataset split otherwise: its training split would hold the held-out digits the probe tests on."""
    run_data = advinf.create("dataset", "digits", None)  # 359 held out
    ctx = advinf.BuildContext(dataset=run_data, seed=0)
    with pytest.raises(UserError, match=r"the training split of labelled_from = 'digits' holds \d+ of the run's "
                                        r"359 held-out examples \(byte for byte\)") as err:
        advinf.create("evaluator", "knn_probe", ctx, labelled_from="digits", labelled_from_options={"heldout": 0.01})
    assert err.value.option == "labelled_from_options"
    same_split = {"size": 8}
    advinf.create("evaluator", "knn_probe", ctx, labelled_from="digits", labelled_from_options=same_split)


def test_labelled_from_options_without_labelled_from_are_refused():
    with pytest.raises(advinf.RecipeError, match="labelled_from_options is given without labelled_from"):
        advinf.create("evaluator", "knn_probe", None, labelled_from_options={"root": "/nowhere"})
