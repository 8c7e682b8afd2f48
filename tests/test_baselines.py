"""The paper's inference baselines and ALICE (plugins/baselines.py) and `advinf compare` (advinf/compare.py):
the losses on hand-computed cases, ALICE at weight 0 is ALI, frozen and pre-initialised networks through the
CLI, and a short end-to-end comparison of the six methods."""

from __future__ import annotations

import copy
import json
import math
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import RECIPES, TINY, TINY_ENCODER
from torch import nn

import advinf
from advinf import Batch, DeterministicPosterior, GaussianPosterior, Networks, Trainer, TrainSpec, UserError
from advinf import checkpoint as ckpt
from advinf.cli import cli
from advinf.compare import RunResult, compare_runs, summarise
from advinf_plugins.baselines import (
    Alice,
    AliceOptions,
    InverseMapping,
    InverseMappingOptions,
    Vae,
    VaeOptions,
    bernoulli_nll,
    gaussian_kl,
    gaussian_nll,
)
from advinf_plugins.games import JointGame, JointGameOptions
from advinf_plugins.priors import GaussianPrior, UniformPrior
from advinf_plugins.toy_networks import CriticOptions, ToyCritic

LN2, LN2PI = math.log(2), math.log(2 * math.pi)


def softplus(v: float) -> float:
    return math.log1p(math.exp(v))


# -- stub networks with known outputs ---------------------------------------------------------------------

class FixedGaussianEncoder(advinf.Encoder):
    """q(z|x) = N(mu, sigma^2) with mu and log sigma given (a parameter, so that the player has something)."""

    def __init__(self, mean, log_sigma):
        super().__init__()
        self.mu = nn.Parameter(torch.tensor(mean))
        self.log_sigma = nn.Parameter(torch.tensor(log_sigma))

    def forward(self, x, y=None):
        return GaussianPosterior(self.mu.expand(len(x), -1), self.log_sigma.expand(len(x), -1))


class ConstantDecoder(advinf.Decoder):
    """Gx(z) = a fixed output whatever z; optionally with a learned log_sigma (p(x|z)'s scale)."""

    def __init__(self, out, log_sigma=None):
        super().__init__()
        self.out = nn.Parameter(torch.tensor(out))
        if log_sigma is not None:
            self.log_sigma = nn.Parameter(torch.tensor(log_sigma))

    def forward(self, z, y=None):
        return self.out.expand(len(z), -1) + 0 * z.sum(1, keepdim=True)


class ShiftEncoder(advinf.Encoder):
    """z_hat = x + 1, deterministic."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))

    def forward(self, x, y=None):
        return DeterministicPosterior(self.w * x + 1)


class IdentityDecoder(advinf.Decoder):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))

    def forward(self, z, y=None):
        return self.w * z


class ZeroCritic(advinf.JointCritic):
    """Logits 0 for every pair: ALI's losses are 2 ln 2 for both players."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, x, z, y=None):
        return self.w * (x.sum(1) + z.sum(1))


class DistanceCritic(advinf.JointCritic):
    """D(x, x') = a |x - x'|^2 + b: known logits on (x, x) (b) and on (x, x + 1) in 2-D (2a + b)."""

    def __init__(self, a: float, b: float):
        super().__init__()
        self.a, self.b = nn.Parameter(torch.tensor(a)), nn.Parameter(torch.tensor(b))

    def forward(self, x, z, y=None):
        return self.a * (x - z).pow(2).sum(1) + self.b


X = torch.tensor([[1.0, 2.0], [-3.0, 0.5]])


# -- VAE --------------------------------------------------------------------------------------------------

def test_closed_forms_by_hand():
    kl = gaussian_kl(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, LN2]]))  # 0.5 (1 + 0) + 0.5 (0 + 4 - 1 - 2 ln 2)
    assert kl.item() == pytest.approx(2 - LN2)
    assert gaussian_nll(torch.tensor([[1.0, 2.0]]), torch.zeros(1, 2), 0.0).item() == pytest.approx(LN2PI + 2.5)
    nll = gaussian_nll(torch.tensor([[1.0, 2.0]]), torch.zeros(1, 2), torch.tensor([0.0, LN2]))
    assert nll.item() == pytest.approx(LN2PI + LN2 + 0.5 + 0.5)  # the second dimension: sigma 2, (2 / 2)^2 / 2
    bern = bernoulli_nll(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.8, 0.25]]))
    assert bern.item() == pytest.approx(-math.log(0.8) - math.log(0.75))


@pytest.mark.parametrize("options,decoder_sigma,nll", [
    (VaeOptions(variance="learned"), [0.0, LN2], LN2PI + LN2 + 1.0),
    (VaeOptions(variance="fixed", sigma=1.0), None, LN2PI + 2.5),
    (VaeOptions(variance="fixed", sigma=2.0), None, LN2PI + 2 * LN2 + 0.125 + 0.5),
])
def test_vae_loss_by_hand_gaussian(options, decoder_sigma, nll):
    """x = (1, 2), Gx(z) = (0, 0) whatever z, q(z|x) = N((1, 0), diag(1, 4)): KL = 2 - ln 2."""
    nets = Networks(GaussianPrior((2,)), encoder=FixedGaussianEncoder([1.0, 0.0], [0.0, LN2]),
                    decoder=ConstantDecoder([0.0, 0.0], decoder_sigma))
    game = Vae(options)
    game.check(nets)
    out = game.losses(nets, Batch(torch.tensor([[1.0, 2.0]] * 3)))
    assert out.losses["vae"].item() == pytest.approx(nll + 2 - LN2)
    assert out.scalars["kl"].item() == pytest.approx(2 - LN2) and out.scalars["nll"].item() == pytest.approx(nll)
    params = [p for m in nets.values() for p in m.parameters()]
    grads = torch.autograd.grad(out.losses["vae"], params)
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    if decoder_sigma is not None:  # d/d log s of [log s + d^2 exp(-2 log s) / 2] = 1 - d^2 / s^2: 0 at s = |d|
        assert grads[-1].tolist() == pytest.approx([0.0, 0.0])


def test_vae_loss_by_hand_bernoulli_and_beta():
    nets = Networks(GaussianPrior((2,)), encoder=FixedGaussianEncoder([1.0, 0.0], [0.0, LN2]),
                    decoder=ConstantDecoder([0.8, 0.25]))
    out = Vae(VaeOptions(likelihood="bernoulli", beta=0.5)).losses(nets, Batch(torch.tensor([[1.0, 0.0]])))
    assert out.losses["vae"].item() == pytest.approx(-math.log(0.8) - math.log(0.75) + 0.5 * (2 - LN2))
    # a saturated pixel on the wrong side still gets its gradient (a clamp at 1 - 1e-6 gave it none, for good)
    sure = Networks(GaussianPrior((2,)), encoder=FixedGaussianEncoder([1.0, 0.0], [0.0, LN2]),
                    decoder=ConstantDecoder([0.5, 1 - 1e-7]))
    out = Vae(VaeOptions(likelihood="bernoulli")).losses(sure, Batch(torch.tensor([[1.0, 0.0]])))
    [grad] = torch.autograd.grad(out.losses["vae"], [sure["decoder"].out])
    assert grad[1] > 1e5 and out.scalars["nll"].item() > 15  # -log(1e-7): 16.1, not 13.8


def test_vae_refuses_what_has_no_closed_form():
    decoder = ConstantDecoder([0.0, 0.0])
    with pytest.raises(UserError, match="standard Gaussian prior"):
        Vae(VaeOptions()).check(Networks(UniformPrior((2,)), encoder=ShiftEncoder(), decoder=decoder))
    with pytest.raises(UserError, match="toy_gaussian_decoder"):
        Vae(VaeOptions(variance="learned")).check(Networks(GaussianPrior((2,)), encoder=ShiftEncoder(),
                                                           decoder=decoder))
    with pytest.raises(UserError, match="GaussianPosterior.*toy_gaussian_encoder"):
        Vae(VaeOptions()).losses(Networks(GaussianPrior((2,)), encoder=ShiftEncoder(), decoder=decoder), Batch(X))
    with pytest.raises(ValueError, match="a Bernoulli has no variance"):
        VaeOptions(likelihood="bernoulli", variance="learned")


# -- inverse mapping --------------------------------------------------------------------------------------

def test_inverse_mapping_loss_by_hand():
    """Gx(z) = z and Gz(x) = x + 1: |z - Gz(Gx(z))|^2 = 2 for every z; the data error |x - Gx(Gz(x))|^2 = 2."""
    nets = Networks(GaussianPrior((2,)), encoder=ShiftEncoder(), decoder=IdentityDecoder())
    game = InverseMapping(InverseMappingOptions())
    with pytest.raises(UserError, match="trainable = false"):
        game.check(nets)
    nets.freeze("decoder")
    game.check(nets)
    out = game.losses(nets, Batch(X))
    assert out.losses["encoder"].item() == pytest.approx(2.0) and out.scalars["data_error"].item() == pytest.approx(2.0)
    assert game.players[0].networks == ("encoder",)


# -- ALICE ------------------------------------------------------------------------------------------------

def _alice_nets(**extra) -> Networks:
    return Networks(GaussianPrior((2,)), encoder=ShiftEncoder(), decoder=IdentityDecoder(), critic=ZeroCritic(),
                    **extra)


@pytest.mark.parametrize("weight", [0.0, 0.5, 3.0])
def test_alice_l2_term_by_hand(weight):
    """Reconstructions are x + 1: |x - Gx(Gz(x))|^2 = 2; the critic's logits are 0: ALI's losses are 2 ln 2."""
    game = Alice(AliceOptions(cycle="l2", weight=weight))
    assert [p.name for p in game.players] == ["critic", "generator"] and "cycle_critic" not in game.networks
    out = game.losses(_alice_nets(), Batch(X))
    assert out.losses["critic"].item() == pytest.approx(2 * LN2)
    assert out.losses["generator"].item() == pytest.approx(2 * LN2 + weight * 2.0)
    assert out.scalars["cycle_l2"].item() == pytest.approx(2.0)


@pytest.mark.parametrize("weight", [0.0, 1.0, 2.5])
def test_alice_adversarial_term_by_hand(weight):
    """The cycle critic D(x, x') = |x - x'|^2 + 0.5 gives 0.5 on (x, x) and 2.5 on (x, x + 1)."""
    game = Alice(AliceOptions(cycle="adversarial", weight=weight))
    assert [p.name for p in game.players] == ["critic", "cycle_critic", "generator"]
    assert game.networks["cycle_critic"] == "critic"
    nets = _alice_nets(cycle_critic=DistanceCritic(1.0, 0.5))
    out = game.losses(nets, Batch(X))
    assert out.losses["cycle_critic"].item() == pytest.approx(softplus(-0.5) + softplus(2.5))
    cycle_generator = softplus(0.5) + softplus(-2.5)  # the original divergence: labels swapped
    assert out.losses["generator"].item() == pytest.approx(2 * LN2 + weight * cycle_generator)
    assert out.losses["critic"].item() == pytest.approx(2 * LN2)


def _toy(seed: int = 0) -> Networks:
    from test_train import tiny_nets

    return tiny_nets(seed)


@pytest.mark.parametrize("cycle", ["l2", "adversarial"])
def test_alice_at_weight_zero_is_ali_bit_for_bit(cycle):
    from test_train import tiny_data

    data = tiny_data()
    ali = JointGame(JointGameOptions(), stochastic=True)
    alice = Alice(AliceOptions(cycle=cycle, weight=0.0))
    a_nets, b_nets = _toy(), _toy()
    if cycle == "adversarial":
        b_nets["cycle_critic"] = ToyCritic(2, 2, CriticOptions(hidden=4, init_std=0.3))
    batch = Batch(data.train.x[:32])
    torch.manual_seed(3)
    a = ali.losses(a_nets, batch)
    torch.manual_seed(3)
    b = alice.losses(b_nets, batch)
    for name in ("critic", "generator"):
        assert torch.equal(a.losses[name], b.losses[name]), name
    # three simultaneous updates from the same start: every parameter and buffer (batch-norm statistics) equal
    spec = TrainSpec(steps=3, batch_size=32, progress="none")
    runs = [Trainer(nets, game, data, train=spec, device="cpu", seed=7) for nets, game in ((a_nets, ali),
                                                                                          (b_nets, alice))]
    start = copy.deepcopy(runs[0].nets["decoder"].state_dict())
    for t in runs:
        t.fit()
    for name in ("encoder", "decoder", "critic"):
        sa, sb = runs[0].nets[name].state_dict(), runs[1].nets[name].state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa), name
    assert not torch.equal(start["net.0.weight"], runs[0].nets["decoder"].state_dict()["net.0.weight"])


def test_the_adversarial_cycle_its_recipe_documents_builds_and_takes_a_trial_step():
    """The command in alice_mixture25.toml's header: toy_pair_critic's factory failed to build (a helper it shares
    with the toy networks changed), and only --build or a run found it."""
    import re
    import shlex

    from click.testing import CliRunner
    from conftest import RECIPES

    from advinf.cli import cli

    header = (RECIPES / "alice_mixture25.toml").read_text()
    sets = shlex.split(re.search(r"^#\s+(--set game.cycle=adversarial.*)$", header, re.M).group(1))
    res = CliRunner().invoke(cli, ["validate", "--build", str(RECIPES / "alice_mixture25.toml"), *sets,
                                   "--set", "train.steps=3"])
    assert res.exit_code == 0 and "cycle_critic: ToyCritic" in res.output, res.output
    with pytest.raises(UserError, match="critic 'toy_pair_critic' works on flat vectors, but the dataset's "
                                        r"examples have shape \(1, 8, 8\)"):
        advinf.create("critic", "toy_pair_critic", advinf.BuildContext(dataset=advinf.create("dataset", "digits")))


def test_alice_with_a_weight_differs_from_ali_and_keeps_the_decoder_statistics():
    from test_train import tiny_data

    data = tiny_data()
    spec = TrainSpec(steps=2, batch_size=32, progress="none")
    ali = Trainer(_toy(), JointGame(JointGameOptions(), stochastic=True), data, train=spec, device="cpu")
    alice = Trainer(_toy(), Alice(AliceOptions(weight=1.0)), data, train=spec, device="cpu")
    ali.fit()
    alice.fit()
    a, b = ali.nets["decoder"].state_dict(), alice.nets["decoder"].state_dict()
    assert not torch.equal(a["net.0.weight"], b["net.0.weight"])  # the cycle term changes the update
    assert int(b["net.1.num_batches_tracked"]) == int(a["net.1.num_batches_tracked"]) == 2  # one pass a step


# -- through the CLI: tiny runs of the six methods, shared by the tests below --------------------------------

def _overrides(recipe: str) -> list[str]:
    """TINY for a recipe: critic and encoder options only where the recipe has those networks."""
    text = (RECIPES / f"{recipe}.toml").read_text() + (
        (RECIPES / "ali_mixture25.toml").read_text() if "extends" in (RECIPES / f"{recipe}.toml").read_text()
        else "")
    keep = [o for o in TINY if not o.startswith("critic.") or "[critic]" in text]
    return keep + (TINY_ENCODER if "[encoder]" in text else []) + ["train.steps=20", "train.log_every=10",
                                                                   "train.sample_every=0"]


def _run(recipe: str, out: Path, *extra: str):
    args = ["run", str(RECIPES / f"{recipe}.toml"), "--out", str(out)]
    for item in [*_overrides(recipe), *extra]:
        args += ["--set", item]
    return CliRunner().invoke(cli, args)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    gan = root / "gan"
    out = {"gan": gan}
    res = _run("gan_mixture25", gan)
    assert res.exit_code == 0, res.output
    for name, recipe in (("ali", "ali_mixture25"), ("inverse", "inverse_mapping_mixture25"),
                         ("posthoc", "posthoc_mixture25"), ("vae", "vae_mixture25"), ("alice", "alice_mixture25")):
        extra = [f"decoder.init_from={gan}"] if name in ("inverse", "posthoc") else []
        res = _run(recipe, root / name, *extra)
        assert res.exit_code == 0, (name, res.output)
        out[name] = root / name
    return out


def _tensors(run: Path, step: int | None = None) -> dict[str, torch.Tensor]:
    path = run / "checkpoints" / f"step_{step:07d}" if step is not None else ckpt.latest_checkpoint(run / "checkpoints")
    return ckpt.load_checkpoint(path).tensors["model"]


@pytest.mark.parametrize("name", ["inverse", "posthoc"])
def test_a_frozen_decoder_from_a_gan_run_does_not_change(runs, name):
    gan, after = _tensors(runs["gan"]), _tensors(runs[name])
    decoder = {k: v for k, v in after.items() if k.startswith("decoder.")}
    assert decoder and all(torch.equal(v, gan["ema_decoder.module." + k.removeprefix("decoder.")])
                           for k, v in decoder.items())  # the GAN's averaged decoder, bit for bit, buffers too
    assert not any(k.startswith("ema_decoder") for k in after)  # frozen: no moving average of it either
    recipe = json.loads(json.dumps(advinf.load_recipe(runs[name] / "recipe.toml").resolved()))
    assert recipe["decoder"]["trainable"] is False and recipe["decoder"]["init_from"] == str(runs["gan"])
    optim = ckpt.load_checkpoint(ckpt.latest_checkpoint(runs[name] / "checkpoints")).tensors["optim"]
    assert any(".encoder." in k or "/encoder." in k for k in optim)
    assert not any("decoder." in k for k in optim)
    assert json.loads((runs[name] / "eval.json").read_text())["mode_coverage"]["modes_total"] == 25


def test_the_frozen_decoder_stays_the_same_at_every_checkpoint(tmp_path, runs):
    out = tmp_path / "inverse"
    res = _run("inverse_mapping_mixture25", out, f"decoder.init_from={runs['gan']}", "train.checkpoint_every=5",
               "train.keep_checkpoints=10", "train.ema=0")
    assert res.exit_code == 0, res.output
    steps = [_tensors(out, s) for s in (5, 10, 15, 20)]
    for key in (k for k in steps[0] if k.startswith("decoder.")):
        assert all(torch.equal(steps[0][key], s[key]) for s in steps[1:]), key
    assert not torch.equal(steps[0]["encoder.net.0.weight"], steps[-1]["encoder.net.0.weight"])
    res = _run("inverse_mapping_mixture25", tmp_path / "unfrozen", f"decoder.init_from={runs['gan']}",
               "decoder.trainable=true")
    assert res.exit_code == 2 and "set [decoder] trainable = false" in res.output


def test_a_network_initialised_from_a_run_starts_from_its_weights(runs):
    """ALICE's trainable decoder initialised from the GAN run: built with the GAN's (averaged) weights."""
    recipe = advinf.load_recipe(RECIPES / "alice_mixture25.toml",
                                [*_overrides("alice_mixture25"), f"decoder.init_from={runs['gan']}"])
    built = advinf.build(recipe)
    gan = _tensors(runs["gan"])
    state = built.nets["decoder"].state_dict()
    assert all(torch.equal(v, gan["ema_decoder.module." + k]) for k, v in state.items())
    assert "decoder" not in built.nets.frozen and built.nets["decoder"].net[0].weight.requires_grad
    fresh = advinf.build(advinf.load_recipe(RECIPES / "alice_mixture25.toml", _overrides("alice_mixture25")))
    assert not torch.equal(fresh.nets["decoder"].net[0].weight, built.nets["decoder"].net[0].weight)
    narrower = [*_overrides("alice_mixture25"), f"decoder.init_from={runs['gan']}", "decoder.hidden=7"]
    other = advinf.load_recipe(RECIPES / "alice_mixture25.toml", narrower)
    with pytest.raises(advinf.RecipeError, match=r"the checkpoint's ema_decoder.module does not fit the recipe's "
                                                 r"decoder \(a different architecture"):  # the recipe's own name
        advinf.build(other)


def test_compare_six_runs_through_the_cli(tmp_path, runs):
    order = ["gan", "ali", "inverse", "posthoc", "vae", "alice"]
    res = CliRunner().invoke(cli, ["compare", *(str(runs[n]) for n in order), "--out", str(tmp_path / "cmp"),
                                   "--points", "200", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    figure = tmp_path / "cmp" / "compare.png"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and figure.stat().st_size > 20_000
    table = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert [Path(r["run_dir"]).name for r in table["runs"]] == order
    assert [r["game"] for r in table["runs"]] == ["gan", "ali", "inverse_mapping", "ali", "vae", "alice"]
    assert [r["encoder"] for r in table["runs"]] == [False, True, True, True, True, True]
    for r in table["runs"]:
        saved = json.loads((Path(r["run_dir"]) / "eval.json").read_text())
        assert {name: entry.pop("step") for name, entry in saved.items()} == {"mode_coverage": 20}  # of step 20
        assert saved["mode_coverage"].pop("options")["samples"] == 500  # the recipe's options, stamped
        assert r["metrics"] == saved and r["metrics_from"] == "eval.json" and r["step"] == 20
        assert ("reconstruction_accuracy" in r["metrics"]["mode_coverage"]) == r["encoder"]
    assert table["groups"] == []  # one run per experiment
    for column in ("modes covered", "reconstruction accuracy", "posthoc", "inverse_mapping"):
        assert column in res.output

    # a run without eval.json: its evaluators run again (the decoder side is seeded: the same counts)
    bare = tmp_path / "bare_ali"
    shutil.copytree(runs["ali"], bare)
    (bare / "eval.json").unlink()
    res = CliRunner().invoke(cli, ["compare", str(runs["gan"]), str(bare), "--json", "--out", str(tmp_path / "j"),
                                   "--points", "50", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    printed = json.loads(res.stdout)
    assert printed == json.loads((tmp_path / "j" / "compare.json").read_text())
    again = printed["runs"][1]
    assert again["metrics_from"] == "recomputed" and not (bare / "eval.json").exists()
    saved = json.loads((runs["ali"] / "eval.json").read_text())["mode_coverage"]
    for key in ("modes_covered", "modes_covered_strict", "high_quality_fraction"):
        assert again["metrics"]["mode_coverage"][key] == saved[key]

    # one run evaluated again with other options: its numbers are not comparable with the others'
    other = tmp_path / "other_ali"
    shutil.copytree(runs["ali"], other)
    res = CliRunner().invoke(cli, ["evaluate", str(other), "--with", "mode_coverage", "--set",
                                   "evaluators.mode_coverage.samples=300", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    with pytest.warns(UserWarning) as warned:  # also: the copy has the same seed as the original
        compare_runs([runs["ali"], other], tmp_path / "unlike", figure=False, device="cpu")
    assert any("'mode_coverage' was computed with different options in these runs (samples: 500 (ali), 300 "
               "(other_ali)): its numbers are not comparable" in str(w.message) for w in warned)

    res = CliRunner().invoke(cli, ["compare", str(tmp_path)])
    assert res.exit_code == 2 and "not an advinf run directory" in res.output
    res = CliRunner().invoke(cli, ["compare"])
    assert res.exit_code == 2 and "RUN_DIR" in res.output


def test_runs_of_one_experiment_at_several_seeds_are_summarised():
    def result(name, seed, modes, recon, setting="s"):
        return RunResult(f"runs/{name}{seed}", f"{name}{seed}", name, "ali", seed, 100, True,
                         {"mode_coverage": {"modes_covered": modes, "reconstruction_accuracy": recon}},
                         "eval.json", setting)

    runs = [result("ali", 0, 25, 0.9), result("ali", 1, 23, 0.7), result("ali", 2, 24, 0.8),
            result("gan", 0, 20, None, setting="g"), result("ali", 3, 1, 0.1, setting="other")]
    groups = summarise(runs)
    assert len(groups) == 1 and groups[0]["seeds"] == [0, 1, 2]
    stats = groups[0]["metrics"]["mode_coverage"]
    assert stats["modes_covered"] == {"mean": 24.0, "std": 1.0, "n": 3}
    assert stats["reconstruction_accuracy"]["mean"] == pytest.approx(0.8)
    assert stats["reconstruction_accuracy"]["std"] == pytest.approx(0.1)
    twin = RunResult("runs/other0", "other0", "ali", "ali", 0, 100, True, {}, "eval.json", "s")
    with pytest.warns(UserWarning, match=r"runs/ali0, runs/other0 are runs of ali with the same seed 0: its mean ± "
                                         r"std counts that seed 2 times"):
        assert summarise([*runs, twin])[0]["seeds"] == [0, 1, 2, 0]


def test_compare_refuses_a_run_given_twice(tmp_path):

    with pytest.raises(UserError, match=r"given twice \(as .*/run too\); give each run once"):
        compare_runs([tmp_path / "run", str(tmp_path / "x" / ".." / "run")], tmp_path / "cmp")


def test_compare_prints_many_metrics_as_rows():
    """A few metrics are columns, one row per run; an image run's dozens would fold into an unreadable table, so
    past WIDE they are rows, one column per run (and per experiment in the mean ± std table)."""
    from rich.console import Console

    from advinf.cli import WIDE, comparison_tables
    from advinf.compare import Comparison

    def text(comparison):
        console = Console(record=True, width=200)
        for table in comparison_tables(comparison):
            console.print(table)
        return console.export_text()

    def runs(n_metrics):
        metrics = {"probe": {f"layer_{i}_accuracy": 0.5 + i / 100 for i in range(n_metrics)}}
        return [RunResult(f"runs/a{s}", f"a{s}", "ali_digits", "ali", s, 100, True, metrics, "eval.json", "x")
                for s in (0, 1)]

    few = runs(3)
    lines = text(Comparison(few, summarise(few))).splitlines()
    header = next(ln for ln in lines if "layer 0 accuracy" in ln)
    assert "layer 2 accuracy" in header and "seed" in header  # metrics are columns
    assert sum(ln.lstrip("│ ").startswith("a0 ") or "│ a0 " in ln for ln in lines) == 1  # a row per run

    assert WIDE < 12
    many = runs(12)
    printed = text(Comparison(many, summarise(many)))
    lines = printed.splitlines()
    header = next(ln for ln in lines if " a0 " in ln)
    assert " a1 " in header and "layer" not in header  # the runs are columns
    rows = [ln for ln in lines if "layer 11 accuracy" in ln]
    assert len(rows) == 2 and "0.610" in rows[0] and "0.61 ± 0" in rows[1]  # per run, then mean ± std
    assert "ali_digits" in printed and "0,1" in printed  # the experiment's column, its seeds


def test_compare_weighs_only_the_options_every_stamp_holds():
    """A stamp leaves out its evaluator's pictures-only options (and an older advinf's knew fewer options): runs
    are unlike only in options all their stamps hold."""
    from advinf.compare import _warn_unlike_options

    def result(label, options):
        return RunResult(f"runs/{label}", label, "ali", "ali", 0, 100, True, {"mode_coverage": {"m": 1}},
                         "eval.json", "s", {"mode_coverage": options})

    old = result("old", {"samples": 500, "plot": True, "plot_points": 200})  # no stamp: the recipe's options
    new = result("new", {"samples": 500})  # stamped: pictures-only options left out
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _warn_unlike_options([old, new])
    with pytest.warns(UserWarning, match=r"samples: 500 \(old\), 500 \(new\), 300 \(other\)"):
        _warn_unlike_options([old, new, result("other", {"samples": 300})])



def test_compare_labels_tell_runs_in_folders_of_one_name_apart():
    """`advinf compare g1/x g2/x` titled both rows and both figure columns "x"."""
    from pathlib import Path

    from advinf.compare import distinct_labels

    assert distinct_labels([Path("g1/x"), Path("g2/x"), Path("y")]) == ["g1/x", "g2/x", "y"]
    assert distinct_labels([Path("/a/b/x"), Path("/c/b/x"), Path("/c/z")]) == ["a/b/x", "c/b/x", "z"]
    assert distinct_labels([Path("runs/seed_0"), Path("runs/seed_1")]) == ["seed_0", "seed_1"]
