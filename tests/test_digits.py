"""The offline ``digits`` dataset, its small networks, and recipes/ali_digits.toml end to end through the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner
from conftest import RECIPES, cli_env

import advinf
from advinf import BuildContext, Dataset, UserError
from advinf.cli import cli
from advinf_plugins.digits import (
    CriticOptions,
    DecoderOptions,
    DigitsCritic,
    DigitsDecoder,
    DigitsEncoder,
    EncoderOptions,
    load_digit_arrays,
)
from advinf_plugins.priors import GaussianPrior
from advinf_plugins.probes import untrained_encoder

torch.set_num_threads(1)


def load(**options) -> Dataset:
    data = advinf.create("dataset", "digits", None, **options)
    assert isinstance(data, Dataset)
    return data


def source_index(data: Dataset, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices into scikit-learn's digits of the training and held-out images of an 8x8 ``data``."""
    pixels = (values * 255 / 16).round().to(torch.uint8).flatten(1)
    lookup = {p.tobytes(): i for i, p in enumerate(pixels.numpy())}
    assert len(lookup) == 1797  # no two shipped digits are alike: each image names its source

    def find(split) -> torch.Tensor:
        return torch.tensor([lookup[p.tobytes()] for p in split.x.flatten(1).numpy()])

    return find(data.train), find(data.heldout)


def test_digits_are_sklearns_images_as_uint8_pixels_with_a_stratified_split():
    values, labels = load_digit_arrays()
    data = load(size=8)
    assert data.train.x.dtype == torch.uint8 and data.train.x.shape == (1438, 1, 8, 8)
    assert data.heldout.x.shape == (359, 1, 8, 8) and data.sample_shape == (1, 8, 8)
    assert data.meta["classes"] == [str(i) for i in range(10)] and data.label_info()[0] == "classes"
    assert int(data.train.x.max()) == 255 and int(data.train.x.min()) == 0
    train_idx, held_idx = source_index(data, values)
    assert torch.equal(labels[train_idx], data.train.y) and torch.equal(labels[held_idx], data.heldout.y)
    # stratified: every class holds out its 20 % share, within one image
    share = torch.bincount(data.heldout.y, minlength=10).double()
    assert torch.all((share - 0.2 * torch.bincount(labels, minlength=10)).abs() <= 1)
    assert torch.all(torch.diff(train_idx) > 0) and torch.all(torch.diff(held_idx) > 0)  # the shipped order
    assert not set(train_idx.tolist()) & set(held_idx.tolist())


def test_the_split_is_fixed_by_its_seed_and_sized_by_count_or_fraction():
    a, b, c = load(size=8), load(size=8), load(size=8, split_seed=1)
    assert torch.equal(a.heldout.x, b.heldout.x) and torch.equal(a.train.y, b.train.y)
    assert not torch.equal(a.heldout.x, c.heldout.x)
    assert len(load(size=8, heldout=100).heldout) == 100 and len(load(size=8, heldout=0.5).heldout) == 898
    none = load(size=8, heldout=0)
    assert none.heldout is None and len(none.train) == 1797
    with pytest.raises(UserError, match="whole count"):
        load(heldout=10.5)
    with pytest.raises(UserError, match="leaves no training images"):
        load(heldout=1797)


def test_a_held_out_count_is_kept_whole_and_one_that_cannot_be_is_refused_by_validate():
    from click.testing import CliRunner
    from conftest import RECIPES

    from advinf.cli import cli

    res = CliRunner().invoke(cli, ["validate", str(RECIPES / "ali_digits.toml"), "--set", "dataset.heldout=300"])
    assert res.exit_code == 0 and "\nheldout = 300\n" in res.output, res.output  # a count, not 300.0
    res = CliRunner().invoke(cli, ["validate", str(RECIPES / "ali_digits.toml"), "--set", "dataset.heldout=3e2"])
    assert res.exit_code == 0 and "\nheldout = 300\n" in res.output, res.output
    for value, why in (("2000", "that leaves no training images (there are 1797) (got 2000)"),
                       ("0.9999", "that leaves no training images"), ("10.5", "give a whole count (>= 1)")):
        res = CliRunner().invoke(cli, ["validate", str(RECIPES / "ali_digits.toml"), "--set",
                                       f"dataset.heldout={value}"])
        assert res.exit_code == 2 and f"dataset.heldout: {why}" in res.output, res.output


def test_upscaling_nearest_repeats_pixels_and_bilinear_is_smooth():
    small, nearest, smooth = load(size=8), load(size=16, resize="nearest"), load(size=16)
    assert nearest.train.x.shape == (1438, 1, 16, 16)
    assert torch.equal(nearest.train.x, small.train.x.repeat_interleave(2, 2).repeat_interleave(2, 3))
    assert torch.equal(smooth.train.y, small.train.y)
    # bilinear keeps the mean brightness (within rounding) but has intermediate values between the blocks
    assert (smooth.train.x.double().mean() - small.train.x.double().mean()).abs() < 1.0
    assert not torch.equal(smooth.train.x, nearest.train.x)


@pytest.mark.parametrize("size", [8, 16, 32])
def test_networks_fit_every_size_and_expose_three_feature_layers(size):
    torch.manual_seed(0)
    enc = DigitsEncoder(1, size, 10, EncoderOptions(width=4, hidden=16))
    dec = DigitsDecoder(1, size, 10, DecoderOptions(width=4))
    critic = DigitsCritic(1, size, 10, CriticOptions(width=4, hidden=8))
    x = torch.rand(5, 1, size, size)
    post = enc(x)
    assert post.mean.shape == (5, 10) and len(post.features) == 3 and post.features[-1].shape == (5, 16)
    out = dec(post.sample()).detach()
    assert out.shape == x.shape and float(out.min()) >= 0 and float(out.max()) <= 1
    assert critic(x, post.mean).shape == (5,)
    assert DigitsEncoder(1, size, 10, EncoderOptions(width=4, hidden=16, stochastic=False))(x).sample().shape == (5, 10)
    with pytest.raises(UserError, match="4 \\* 2\\^k"):
        DigitsEncoder(1, 12, 10, EncoderOptions())


def test_factories_read_the_data_and_prior_and_build_conditional_networks():
    data = load(size=16)
    ctx = BuildContext(dataset=data, prior=GaussianPrior((12, 1, 1)))
    dec = advinf.create("decoder", "digits_decoder", ctx, width=4)
    mean = Dataset.decode(data.train.x[:500]).mean(0).clamp(1e-7, 1 - 1e-7)
    assert torch.allclose(torch.sigmoid(dec.output_bias[0]), mean, atol=1e-5)  # the log-odds bias
    assert dec(torch.randn(3, 12, 1, 1)).shape == (3, 1, 16, 16)
    from advinf import Condition

    cond = Condition("classes", 10, embedding_dim=6)
    enc = advinf.create("encoder", "digits_encoder", BuildContext(dataset=data, prior=ctx.prior, condition=cond),
                        width=4, hidden=8)
    assert enc.conditional and enc.embed is not None
    y = torch.tensor([1, 2])
    x = torch.rand(2, 1, 16, 16)
    assert not torch.equal(enc(x, y).mean, enc(x, torch.tensor([3, 4])).mean)  # y reaches the output
    with pytest.raises(ValueError, match="needs y"):
        enc(x)
    with pytest.raises(UserError, match="dataset's images are .* set size = 16") as err:
        advinf.create("encoder", "digits_encoder", ctx, size=32)
    assert err.value.option == "size"  # a recipe names encoder.size, the key to change
    with pytest.raises(UserError, match="leave channels and size out .* set channels = 1, size = 16") as err:
        advinf.create("decoder", "digits_decoder", ctx, size=32, channels=3)
    assert err.value.option == "channels"


def test_encoder_reset_parameters_restores_its_own_initialisation_scheme():
    enc = DigitsEncoder(1, 16, 8, EncoderOptions(width=4, hidden=16, init_std=0.02))
    with torch.no_grad():
        for p in enc.parameters():
            p.add_(1.0)
    torch.manual_seed(5)
    enc.reset_parameters()
    first = {k: v.clone() for k, v in enc.state_dict().items()}
    torch.manual_seed(5)
    enc.reset_parameters()
    assert all(torch.equal(first[k], v) for k, v in enc.state_dict().items())
    conv = enc.hidden[1].layer.weight
    assert abs(float(conv.detach().std()) - 0.02) < 0.005 and float(enc.hidden[1].bn.weight.detach().mean()) == 1.0


TINY = ["train.steps=6", "train.log_every=3", "train.sample_every=3", "train.progress=none", "train.threads=1",
        "dataset.size=8", "encoder.width=4", "encoder.hidden=16", "decoder.width=4", "critic.width=4",
        "critic.hidden=16", "prior.dim=8",
        "evaluators.svm_probe.labels=30", "evaluators.svm_probe.validation=50", "evaluators.svm_probe.repeats=2",
        "evaluators.svm_probe.c_grid=[0.001, 0.1]",
        "evaluators.knn_probe.labels=30", "evaluators.knn_probe.validation=50", "evaluators.knn_probe.repeats=2",
        "evaluators.reconstruction.classifier_labels=100", "evaluators.reconstruction.classifier_validation=50",
        "evaluators.reconstruction.c_grid=[0.01]",
        "evaluators.fid.samples=50", "evaluators.fid.network_options={epochs = 1, width = 4, hidden = 8}",
        "evaluators.kid.samples=50", "evaluators.kid.subsets=5",
        "evaluators.kid.network_options={epochs = 1, width = 4, hidden = 8}"]


def test_the_digits_recipe_runs_end_to_end_and_reports_the_probes(tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["run", str(RECIPES / "ali_digits.toml"), "--out", str(out),
                                      *[a for s in TINY for a in ("--set", s)]])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "eval.json").read_text())
    svm, knn, rec = report["svm_probe"], report["knn_probe"], report["reconstruction"]
    for probe in (svm, knn):
        assert 0 <= probe["test_error_mean"] <= 1 and len(probe["test_errors"]) == 2
        assert probe["labels"] == 30 and probe["repeats"] == 2 and probe["test_examples"] == 359
        assert probe["raw_pixels"]["feature_dim"] == 64
        assert probe["untrained"]["init"].startswith("rebuilt by advinf.build from")  # the run's recipe.toml
        # mean (8) + the last three hidden layers at 8x8, width 4: conv 4x8x8, conv 8x4x4, Linear 16
        assert probe["feature_dim"] == probe["untrained"]["feature_dim"] == 8 + 4 * 8 * 8 + 8 * 4 * 4 + 16
    assert svm["C"] in (0.001, 0.1) and svm["raw_pixels"]["test_error_mean"] < 0.5  # pixels do read digits
    assert rec["examples"] == 359 and 0 < rec["mse_mean"] < 1 and 0 <= rec["label_kept_mean"] <= 1
    assert rec["classifier_accuracy"] > 0.6
    assert report["fid"]["protocol"] == "fid50_heldout359_label_classifier" and report["fid"]["fid"] > 0
    assert report["kid"]["subset_size"] == 50 and report["kid"]["feature_dim"] == 8
    assert (out / "eval_reconstructions.png").is_file() and (out / "samples" / "step_0000006.png").is_file()
    # evaluated again on the trained run: the same draws give the same errors (the untrained encoder is rebuilt
    # from the loaded run's recipe); other entries of eval.json are kept
    again = CliRunner().invoke(cli, ["evaluate", str(out), "--with", "svm_probe", "--set",
                                     "evaluators.svm_probe.repeats=1"])
    assert again.exit_code == 0, again.output
    merged = json.loads((out / "eval.json").read_text())
    assert merged["svm_probe"]["test_errors"] == svm["test_errors"][:1] and merged["knn_probe"] == knn
    assert merged["svm_probe"]["untrained"]["test_errors"] == svm["untrained"]["test_errors"][:1]


def test_the_untrained_baseline_is_the_encoder_training_started_from(tmp_path):
    out = tmp_path / "run"
    sets = [s for s in TINY if not s.startswith("evaluators.")]
    result = CliRunner().invoke(cli, ["run", str(RECIPES / "ali_digits.toml"), "--out", str(out), "--stop-after", "3",
                                      *[a for s in sets for a in ("--set", s)]])  # stopped early: no evaluation
    assert result.exit_code == 0, result.output
    initial = advinf.build(advinf.load_recipe(RECIPES / "ali_digits.toml", sets)).nets["encoder"].state_dict()
    run = advinf.load_run(out, device="cpu")
    rebuilt, how = untrained_encoder(run, out, seed=0)
    assert "the initial weights" in how
    state = rebuilt.state_dict()
    assert all(torch.equal(initial[k], state[k]) for k in initial)
    trained = run.encoder.state_dict()
    assert not torch.equal(trained["hidden.0.layer.weight"], state["hidden.0.layer.weight"])


def test_a_conditional_digits_model_probes_with_its_labels(tmp_path):
    out = tmp_path / "run"
    sets = [*TINY, "game.name=conditional_ali", "game.embedding_dim=8", "train.steps=2",
            "evaluators.svm_probe.baselines=false", "evaluators.knn_probe.baselines=false"]
    result = CliRunner().invoke(cli, ["run", str(RECIPES / "ali_digits.toml"), "--out", str(out),
                                      *[a for s in sets for a in ("--set", s)]])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "eval.json").read_text())
    assert report["svm_probe"]["encoder_sees_labels"] is True and "raw_pixels" not in report["svm_probe"]
    assert report["reconstruction"]["decoder_sees_labels"] is True


def test_a_probe_budget_the_data_cannot_meet_is_told_before_training(tmp_path):
    """The probes report 'skipped' rather than stop a run; that they will is known from the data's size, so
    advinf validate --build and the start of advinf run say it (and nothing when the budget fits)."""
    big = [*TINY, "evaluators.knn_probe.labels=5000", "evaluators.reconstruction.classifier_labels=5000"]
    res = CliRunner().invoke(cli, ["validate", "--build", str(RECIPES / "ali_digits.toml"),
                                   *[a for s in big for a in ("--set", s)]])
    assert res.exit_code == 0, res.output
    assert "warning: evaluator 'knn_probe' will report 'skipped' on this data: the training split holds 1438 " \
           "examples, fewer than validation (50) plus labels (5000); lower them (evaluators.knn_probe)" in res.output
    assert "warning: evaluator 'reconstruction' will report 'skipped' on this data: for its classifier: the " \
           "training split holds 1438 examples" in res.output
    assert "svm_probe' will" not in res.output
    res = CliRunner().invoke(cli, ["run", str(RECIPES / "ali_digits.toml"), "--out", str(tmp_path / "run"),
                                   "--stop-after", "1", *[a for s in big for a in ("--set", s)]])
    assert res.exit_code == 0 and "warning: evaluator 'knn_probe' will report 'skipped'" in res.output
    res = CliRunner().invoke(cli, ["run", "--resume", str(tmp_path / "run")])  # trains to the end
    assert res.exit_code == 0 and "warning: evaluator 'knn_probe' will report 'skipped'" in res.output
    res = CliRunner().invoke(cli, ["run", "--resume", str(tmp_path / "run")])
    assert res.exit_code == 0 and "nothing to do" in res.output  # a finished run trains nothing: no warning
    assert "will report 'skipped'" not in res.output
    res = CliRunner().invoke(cli, ["validate", "--build", str(RECIPES / "ali_digits.toml"),
                                   *[a for s in TINY for a in ("--set", s)]])
    assert res.exit_code == 0 and "will report 'skipped'" not in res.output
    proc = subprocess.run([sys.executable, "-m", "advinf", "run", str(RECIPES / "ali_digits.toml"), "--seeds", "0-1",
                           "--jobs", "2", "--stop-after", "1", "--out", str(tmp_path / "group"),
                           *[a for s in big for a in ("--set", s)]], capture_output=True, text=True, env=cli_env(),
                          timeout=600)
    assert proc.returncode == 0, proc.stderr  # workers run quietly, but for their warnings
    assert "seed 1: warning: evaluator 'knn_probe' will report 'skipped'" in proc.stderr
