"""Mode coverage on constructed sample sets with known answers."""

from __future__ import annotations

import pytest
import torch

from advinf import Dataset, Split, TrainedModel, UserError
from advinf_plugins.mixture import grid_centres
from advinf_plugins.mode_coverage import ModeCoverage, ModeCoverageOptions, coverage_metrics, reconstruction_accuracy

CENTRES = grid_centres(5, 2.0)
STD = 0.05


def around(i: int, n: int, spread: float = 0.01) -> torch.Tensor:
    return CENTRES[i] + spread * torch.randn(n, 2)


def test_grid_is_the_papers():
    assert CENTRES.shape == (25, 2)
    assert sorted({float(v) for v in CENTRES[:, 0]}) == [-4.0, -2.0, 0.0, 2.0, 4.0]


def test_every_mode_well_covered():
    x = torch.cat([around(i, 20) for i in range(25)])
    m = coverage_metrics(x, CENTRES, STD)
    assert m == {"modes_total": 25, "modes_covered": 25, "modes_covered_strict": 25, "high_quality_fraction": 1.0,
                 "non_finite_samples": 0}


def test_paper_count_counts_far_samples_but_strict_count_does_not():
    torch.manual_seed(0)
    good = torch.cat([around(i, 30) for i in range(3)])  # modes 0, 1, 2 well covered
    # one sample 0.9 away from each of modes 10..14: nearest to them, but far outside 3 std
    far = CENTRES[10:15] + torch.tensor([0.9, 0.0])
    m = coverage_metrics(torch.cat([good, far]), CENTRES, STD)
    assert m["modes_covered"] == 8
    assert m["modes_covered_strict"] == 3
    assert m["high_quality_fraction"] == pytest.approx(90 / 95)


def test_strict_threshold_is_at_least_min_samples_within_radius():
    x = torch.cat([around(0, 19), around(1, 20), CENTRES[2] + torch.tensor([[0.16, 0.0]]).repeat(40, 1)])
    m = coverage_metrics(x, CENTRES, STD, radius_std=3.0, min_samples=20)
    assert m["modes_covered"] == 3 and m["modes_covered_strict"] == 1


def test_reconstruction_accuracy():
    x = torch.cat([around(i, 10) for i in range(4)])
    recon = x.clone()
    recon[:10] = CENTRES[5]  # the first mode's points come back at another mode
    assert reconstruction_accuracy(x, recon, CENTRES) == pytest.approx(30 / 40)
    recon[10:20] = float("nan")  # mode 1's points: not finite, so near no mode (argmin gave mode 0)
    x[10:20] = CENTRES[0]
    assert reconstruction_accuracy(x, recon, CENTRES) == pytest.approx(20 / 40)


def test_samples_that_are_not_finite_cover_no_mode():
    """A diverged decoder: argmin over a NaN row is 0, so all-NaN samples covered mode 0."""
    nan = torch.full((100, 2), float("nan"))
    m = coverage_metrics(nan, CENTRES, STD)
    assert m["modes_covered"] == 0 and m["modes_covered_strict"] == 0 and m["non_finite_samples"] == 100
    m = coverage_metrics(torch.cat([around(3, 20), nan[:5]]), CENTRES, STD)
    assert m["modes_covered"] == 1 and m["modes_covered_strict"] == 1 and m["non_finite_samples"] == 5
    assert m["high_quality_fraction"] == pytest.approx(20 / 25)


def test_evaluator_on_a_known_decoder_and_a_non_mixture(tmp_path):
    class Snap(torch.nn.Module):  # decoder mapping every z to mode 7
        def forward(self, z, y=None):
            return CENTRES[7].expand(len(z), 2).clone()

    from advinf import Networks
    from advinf_plugins.games import GanGame, GanOptions
    from advinf_plugins.priors import GaussianPrior

    model = TrainedModel(Networks(GaussianPrior((2,)), decoder=Snap()), GanGame(GanOptions()), torch.device("cpu"))
    data = Dataset(Split(around(0, 100)), Split(around(1, 50)), meta={"centres": CENTRES, "std": STD})
    m = ModeCoverage(ModeCoverageOptions(samples=100)).evaluate(model, data, tmp_path)
    assert (m["modes_covered"], m["modes_covered_strict"], m["high_quality_fraction"]) == (1, 1, 1.0)
    assert (tmp_path / "mode_coverage.png").stat().st_size > 1000
    with pytest.raises(UserError, match="needs a mixture dataset"):
        ModeCoverage(ModeCoverageOptions()).evaluate(model, Dataset(Split(torch.zeros(4, 2))), tmp_path)


def test_a_recipe_pairing_it_with_another_dataset_fails_before_training(tmp_path):
    from click.testing import CliRunner
    from conftest import RECIPES

    from advinf.cli import cli

    out = tmp_path / "run"  # the digits data ships with scikit-learn: no download
    res = CliRunner().invoke(cli, ["run", str(RECIPES / "ali_digits.toml"), "--out", str(out),
                                   "--set", "evaluators.mode_coverage.samples=100", "--set", "train.steps=5"])
    assert res.exit_code == 2 and "evaluators.mode_coverage: evaluator 'mode_coverage' needs a mixture" in res.output
    assert not out.exists()  # nothing trained, nothing written


@pytest.mark.parametrize("latent", [1, 3])
def test_the_figure_draws_latents_of_one_or_more_than_two_dimensions(tmp_path, latent):
    """An encoder and a prior of 1 or 3 dimensions (the panels of codes and prior samples had 2 assumed)."""
    from advinf import DeterministicPosterior, Encoder, Networks
    from advinf_plugins.games import JointGame, JointGameOptions
    from advinf_plugins.priors import GaussianPrior

    class Code(Encoder):
        def forward(self, x, y=None):
            return DeterministicPosterior(x[:, :1].repeat(1, latent))

    class Back(torch.nn.Module):
        def forward(self, z, y=None):
            return z[:, :1].repeat(1, 2)

    nets = Networks(GaussianPrior((latent,)), encoder=Code(), decoder=Back())
    model = TrainedModel(nets, JointGame(JointGameOptions(), stochastic=False), torch.device("cpu"))
    data = Dataset(Split(around(0, 100)), Split(around(1, 50)), meta={"centres": CENTRES, "std": STD})
    m = ModeCoverage(ModeCoverageOptions(samples=100)).evaluate(model, data, tmp_path)
    assert m["modes_total"] == 25 and (tmp_path / "mode_coverage.png").stat().st_size > 1000


def test_reconstruction_accuracy_is_the_same_at_every_evaluation_of_a_stochastic_encoder(tmp_path):
    """The toy encoder draws noise: it comes from the evaluator's seed, not from whatever state torch's generator
    is in (the end of training and a later ``advinf evaluate`` gave different numbers for one checkpoint)."""
    from advinf import Networks
    from advinf_plugins.games import JointGame, JointGameOptions
    from advinf_plugins.priors import GaussianPrior
    from advinf_plugins.toy_networks import DecoderOptions, EncoderOptions, ToyDecoder, ToyEncoder

    torch.manual_seed(0)
    nets = Networks(GaussianPrior((2,)), encoder=ToyEncoder(2, 2, EncoderOptions(hidden=16, init_std=1.0)),
                    decoder=ToyDecoder(2, 2, DecoderOptions(hidden=16, init_std=1.0)))
    nets.train(False)
    model = TrainedModel(nets, JointGame(JointGameOptions(), stochastic=True), torch.device("cpu"))
    data = Dataset(Split(around(0, 100)), Split(torch.cat([around(i, 8) for i in range(25)])),
                   meta={"centres": CENTRES, "std": STD})
    evaluator = ModeCoverage(ModeCoverageOptions(samples=200, plot=False))
    results = []
    for state in (1, 2):
        torch.manual_seed(state)
        before = torch.get_rng_state()
        results.append(evaluator.evaluate(model, data, tmp_path)["reconstruction_accuracy"])
        assert torch.equal(torch.get_rng_state(), before)  # the caller's generator is left as it was
    assert results[0] == results[1]
    other = ModeCoverage(ModeCoverageOptions(samples=200, plot=False, seed=5)).evaluate(model, data, tmp_path)
    assert other["reconstruction_accuracy"] != results[0]  # the noise does matter to this encoder


def test_a_sample_counts_for_its_nearest_mode_only_in_the_strict_count():
    """With a radius wider than half the spacing (std 1 on a grid of spacing 2), samples at one centre lay within
    the radius of its neighbours too: the strict count gave 9 modes for samples at 1."""
    x = CENTRES[12].repeat(100, 1)  # the middle mode, with 4 neighbours 2 away
    m = coverage_metrics(x, CENTRES, std=1.0, radius_std=3.0, min_samples=20)
    assert (m["modes_covered"], m["modes_covered_strict"], m["high_quality_fraction"]) == (1, 1, 1.0)
