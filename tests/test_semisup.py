"""Semi-supervised ALI (game ali_semisup, evaluator critic_classifier): losses on hand-computed logits, the
labelled subset, the K+1 heads, end-to-end runs on real-format data, exact resume, the evaluator's known answer."""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest
import torch
from click.testing import CliRunner
from conftest import RECIPES
from image_formats import write_cifar10_bin, write_svhn
from torch import nn

import advinf
from advinf import Batch, BatchSource, DeterministicPosterior, Networks, UserError
from advinf import checkpoint as ckpt
from advinf.cli import cli
from advinf_plugins.paper_networks import create_networks
from advinf_plugins.priors import GaussianPrior
from advinf_plugins.semisup import (
    CriticClassifier,
    CriticClassifierOptions,
    SemisupAli,
    SemisupOptions,
    labelled_subset,
)

LOG2, LOG3 = math.log(2), math.log(3)


# -- stub networks: the critic's logits are its input x, so the test chooses them --------------------------------

class LogitsCritic(nn.Module):
    """D(x, z) = head(x) with an identity head: the logits are the rows of x (z is ignored)."""

    uses_z, conditional = True, False

    def __init__(self, width: int):
        super().__init__()
        self.outputs = width
        self.head = nn.Linear(width, width, bias=False)
        with torch.no_grad():
            self.head.weight.copy_(torch.eye(width))

    def forward(self, x, z, y=None):
        return self.head(x)


class ZeroEncoder(nn.Module):
    conditional = False

    def forward(self, x, y=None):
        return DeterministicPosterior(x.new_zeros(x.shape[0], 1))


class FixedDecoder(nn.Module):
    """Always the same model 'images' (here: the critic's logits on model pairs)."""

    conditional = False

    def __init__(self, rows):
        super().__init__()
        self.rows = torch.tensor(rows)

    def forward(self, z, y=None):
        return self.rows


def game_and_losses(labelled, y, unlabelled, model, **options):
    width = len(labelled[0])
    game = SemisupAli(SemisupOptions(labels=1, labelled_batch_size=1, **options), classes=2)
    nets = Networks(GaussianPrior((1,)), encoder=ZeroEncoder(), decoder=FixedDecoder(model),
                    critic=LogitsCritic(width))
    game.check(nets)
    batch = Batch(torch.tensor(unlabelled), streams={"labelled": Batch(torch.tensor(labelled), torch.tensor(y))})
    return game, game.losses(nets, batch)


# K = 2. Labelled pair: logits (log 3, 0 | fake 0), class 0: -log p(0 | real) = -log(3/4).
# Unlabelled pair: (0, 0 | 0): d = logsumexp(0, 0) - 0 = log 2. Model pair: (0, 0 | log 2): d = 0.
LAB, Y, UNL, MOD = [[LOG3, 0.0, 0.0]], [0], [[0.0, 0.0, 0.0]], [[0.0, 0.0, LOG2]]


def test_losses_on_hand_computed_logits():
    game, out = game_and_losses(LAB, Y, UNL, MOD)
    # critic: log(4/3) + softplus(-log 2) + softplus(0) = log(4/3) + log(3/2) + log 2 = log 4
    assert out.losses["critic"].item() == pytest.approx(math.log(4))
    # generator (swapped labels): softplus(log 2) + softplus(-0) = log 3 + log 2
    assert out.losses["generator"].item() == pytest.approx(math.log(6))
    assert out.scalars["supervised"].item() == pytest.approx(math.log(4 / 3))
    assert out.scalars["unsupervised"].item() == pytest.approx(LOG3)
    assert out.scalars["labelled_accuracy"].item() == 1.0
    assert out.scalars["critic_data"].item() == pytest.approx(2 / 3) and out.scalars["critic_model"].item() == 0.5


def test_every_open_choice_changes_the_losses_as_documented():
    # over all K+1 classes: -log(3 / (3 + 1 + 1)) = log(5/3)
    _, out = game_and_losses(LAB, Y, UNL, MOD, supervised="all_classes")
    assert out.losses["critic"].item() == pytest.approx(math.log(5 / 3) + LOG3)
    _, out = game_and_losses(LAB, Y, UNL, MOD, supervised_weight=2.0, unsupervised_weight=0.5)
    assert out.losses["critic"].item() == pytest.approx(2 * math.log(4 / 3) + 0.5 * LOG3)
    _, out = game_and_losses(LAB, Y, UNL, MOD, encoder_supervised_weight=1.0)
    assert out.losses["generator"].item() == pytest.approx(math.log(6) + math.log(4 / 3))
    # the fake logit fixed at 0: the critic gives K = 2 logits; model pair (-log 2, -log 2): d = 0
    _, out = game_and_losses([[LOG3, 0.0]], Y, [[0.0, 0.0]], [[-LOG2, -LOG2]], fake_logit="zero")
    assert out.losses["critic"].item() == pytest.approx(math.log(4))
    assert out.losses["generator"].item() == pytest.approx(math.log(6))
    # feature matching: the mean over features of (mean f(unlabelled) - mean f(model))^2, f the head's input
    for joint in (True, False):
        _, out = game_and_losses(LAB, Y, UNL, MOD, generator="feature_matching", joint_batch=joint)
        assert out.losses["generator"].item() == pytest.approx(LOG2 ** 2 / 3)
        assert out.losses["critic"].item() == pytest.approx(math.log(4))


def test_the_critic_s_width_must_be_k_plus_one():
    game = SemisupAli(SemisupOptions(labels=1, labelled_batch_size=1), classes=10)
    nets = Networks(GaussianPrior((1,)), encoder=ZeroEncoder(), decoder=FixedDecoder([[0.0]]), critic=LogitsCritic(1))
    with pytest.raises(UserError, match=r"needs a critic with 11 outputs .* gives 1; set `outputs = 11` in \[critic\]"):
        game.check(nets)
    with pytest.raises(UserError, match="set `outputs = 11`"):
        game.split_logits(torch.zeros(4))  # a (B,) critic without an `outputs` attribute is caught at its logits
    fixed = SemisupAli(SemisupOptions(labels=1, labelled_batch_size=1, fake_logit="zero"), classes=10)
    with pytest.raises(UserError, match="set `outputs = 10`"):
        fixed.split_logits(torch.zeros(4, 11))
    with pytest.raises(UserError, match="classes = 3, but the dataset has 10"):
        SemisupAli(SemisupOptions(labels=1, labelled_batch_size=1, classes=3), classes=10)


def test_the_paper_critics_take_a_k_plus_one_head():
    ctx = advinf.BuildContext(prior=GaussianPrior((64, 1, 1)))
    for arch in ("svhn", "cifar10"):
        _, _, critic = create_networks(arch, ctx if arch == "cifar10" else None, critic={"outputs": 11})
        x, z = torch.rand(3, 3, 32, 32), torch.randn(3, critic.z_net[0].conv.in_channels, 1, 1)
        assert critic.outputs == 11 and critic(x, z).shape == (3, 11) and critic.head.out_channels == 11
        _, _, plain = create_networks(arch, ctx if arch == "cifar10" else None)
        assert plain(x, z).shape == (3,)


def test_recipe_options_are_checked():
    res = CliRunner().invoke(cli, ["validate", str(RECIPES / "ali_semisup_digits.toml"), "--set",
                                   "game.labelled_batch_size=60"])
    assert res.exit_code == 2 and "labelled_batch_size (60) is larger than labels (50)" in res.output


# -- the labelled subset -----------------------------------------------------------------------------------------

def test_the_labelled_subset_is_class_balanced_seeded_and_reproducible():
    y = torch.arange(1000) % 10
    y = y[torch.randperm(1000, generator=torch.Generator().manual_seed(3))]
    a = labelled_subset(y, 50, 10, seed=7)
    assert Counter(y[a].tolist()) == {c: 5 for c in range(10)} and len(set(a.tolist())) == 50
    assert torch.equal(a, labelled_subset(y, 50, 10, seed=7))
    assert not torch.equal(a, labelled_subset(y, 50, 10, seed=8))
    counts = Counter(y[labelled_subset(y, 53, 10, seed=7)].tolist())
    assert sorted(counts.values()) == [5] * 7 + [6] * 3  # the remainder: one more for 3 classes
    with pytest.raises(UserError, match="need up to 1 examples of each of the 4 classes, but class 3 has 0"):
        labelled_subset(torch.tensor([0, 1, 2, 0, 1, 2]), 4, 4, seed=0)


def test_the_streams_split_the_training_data_into_the_labelled_subset_and_the_rest():
    y = torch.arange(200) % 4
    data = advinf.Dataset(advinf.Split(torch.arange(200, dtype=torch.float32)[:, None], y))
    game = SemisupAli(SemisupOptions(labels=12, labelled_batch_size=6), classes=4)
    subset = game.select_labelled(data.train, 5)
    assert Counter(y[subset].tolist()) == {0: 3, 1: 3, 2: 3, 3: 3}
    source = BatchSource(data, 20, torch.device("cpu"), 5, game.streams)
    seen_main, seen_lab = set(), set()
    for _ in range(30):
        batch = source.next()
        seen_main |= set(batch.x.flatten().long().tolist())
        seen_lab |= set(batch.streams["labelled"].x.flatten().long().tolist())
    assert seen_lab == set(subset.tolist()) and seen_main == set(range(200)) - seen_lab
    everything = SemisupAli(SemisupOptions(labels=12, labelled_batch_size=6, unlabelled="all"), classes=4)
    assert [s.name for s in everything.streams] == ["labelled"]  # the main stream reads all 200
    assert not torch.equal(subset, SemisupAli(SemisupOptions(labels=12, labelled_batch_size=6, labels_seed=1),
                                              classes=4).select_labelled(data.train, 5))


# -- end to end --------------------------------------------------------------------------------------------------

TINY = ["train.steps=6", "train.log_every=3", "train.sample_every=3", "train.progress=none", "train.threads=1",
        "train.checkpoint_every=3", "encoder.width=4", "encoder.hidden=16", "decoder.width=4", "critic.width=4",
        "critic.hidden=16", "prior.dim=8", "game.labels=20", "game.labelled_batch_size=10",
        "evaluators.svm_probe.labels=20", "evaluators.svm_probe.validation=50", "evaluators.svm_probe.repeats=2",
        "evaluators.svm_probe.c_grid=[0.01]"]


def run(recipe, out, sets, *extra):
    return CliRunner().invoke(cli, ["run", str(recipe), "--out", str(out), *extra,
                                    *[a for s in sets for a in ("--set", s)]])


def test_the_digits_recipe_runs_end_to_end_and_resumes_exactly(tmp_path):
    full, sliced = tmp_path / "full", tmp_path / "sliced"
    res = run(RECIPES / "ali_semisup_digits.toml", full, TINY)
    assert res.exit_code == 0, res.output
    records = [json.loads(ln) for ln in (full / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [3, 6]
    assert set(records[-1]) >= {"loss_critic", "loss_generator", "supervised", "unsupervised", "labelled_accuracy"}
    report = json.loads((full / "eval.json").read_text())
    cc = report["critic_classifier"]
    assert 0 <= cc["test_error"] <= 1 and 0 <= cc["labelled_only_test_error"] <= 1
    assert cc["test_examples"] == 359 and cc["labels"] == 20 and cc["classes"] == 10
    assert cc["labelled_only"]["steps"] == 6 and cc["labelled_only"]["labelled_batch_size"] == 10
    assert report["svm_probe"]["labels"] == 20
    state = ckpt.load_checkpoint(ckpt.latest_checkpoint(full / "checkpoints")).state
    assert state["sampler"]["streams"]["labelled"]["position"] > 0  # the labelled stream's position is saved

    # in two slices with --resume: bit for bit the same networks, optimisers and data positions
    assert run(RECIPES / "ali_semisup_digits.toml", sliced, TINY, "--stop-after", "4").exit_code == 0
    res = CliRunner().invoke(cli, ["run", "--resume", str(sliced)])
    assert res.exit_code == 0, res.output
    a, b = (ckpt.load_checkpoint(ckpt.latest_checkpoint(p / "checkpoints")) for p in (full, sliced))
    assert a.state["sampler"] == b.state["sampler"] and a.step == b.step == 6
    for part in ("model", "optim"):
        assert a.tensors[part].keys() == b.tensors[part].keys()
        assert all(torch.equal(a.tensors[part][k], b.tensors[part][k]) for k in a.tensors[part])
    # the labelled-only baseline is rebuilt from the run: the same answer from the loaded run
    again = CliRunner().invoke(cli, ["evaluate", str(full), "--with", "critic_classifier"])
    assert again.exit_code == 0, again.output
    assert json.loads((full / "eval.json").read_text())["critic_classifier"]["labelled_only_test_error"] == \
        cc["labelled_only_test_error"]


def test_the_labelled_only_baseline_follows_the_critic_s_learning_rate_schedule(tmp_path, monkeypatch):
    import advinf_plugins.semisup as semisup

    sets = [s for s in TINY if not s.startswith("evaluators.")]
    assert run(RECIPES / "ali_semisup_digits.toml", tmp_path / "run", sets, "--set",
               'optimizer.schedule={name = "linear", decay = 6}').exit_code == 0
    rates = []
    real = semisup._train

    def recorded(critic, game, source, optimizer, steps, z_of, schedule=None):
        out = real(critic, game, source, optimizer, steps, z_of, schedule)
        rates.append((optimizer.param_groups[0]["lr"], optimizer.param_groups[0]["initial_lr"]))
        return out

    monkeypatch.setattr(semisup, "_train", recorded)
    res = CliRunner().invoke(cli, ["evaluate", str(tmp_path / "run"), "--with", "critic_classifier"])
    assert res.exit_code == 0, res.output
    [(last, first)] = rates
    assert last == pytest.approx(0.0, abs=1e-12) and first > 0  # decayed linearly to 0 over the 6 steps, as the run


def test_a_critic_of_the_wrong_width_is_refused_before_training(tmp_path):
    res = run(RECIPES / "ali_semisup_digits.toml", tmp_path / "run", [*TINY, "critic.outputs=1"])
    assert res.exit_code == 2 and "set `outputs = 11` in [critic]" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("recipe,writer,extra", [
    ("ali_semisup_svhn", lambda root: write_svhn(root, {"train": 60, "test": 4}), []),
    ("ali_semisup_cifar10", lambda root: write_cifar10_bin(root, per_batch=12, test=4), []),
])
def test_the_paper_recipes_run_on_real_format_data(tmp_path, recipe, writer, extra):
    root = tmp_path / "data"
    writer(root)
    out = tmp_path / "run"
    sets = [f"dataset.root={root}", "dataset.verify=false", "train.epochs=1", "train.batch_size=25",
            "train.threads=1", "train.progress=none", "train.sample_every=0", "train.log_every=1",
            "train.device=cpu", "game.labels=10", "game.labelled_batch_size=5", *extra]
    res = run(RECIPES / f"{recipe}.toml", out, sets)
    assert res.exit_code == 0, res.output
    records = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]  # 50 unlabelled images at batch 25
    assert all(math.isfinite(r["loss_critic"]) and math.isfinite(r["loss_generator"]) for r in records)
    cc = json.loads((out / "eval.json").read_text())["critic_classifier"]
    assert cc["test_examples"] == 4 and cc["labelled_only"]["steps"] == 2


# -- the evaluator -----------------------------------------------------------------------------------------------

def test_the_critic_classifier_error_on_a_known_case(tmp_path):
    """The critic's logits are its input, so the prediction is argmax of the first K columns: 1 of 4 wrong."""
    game = SemisupAli(SemisupOptions(labels=1, labelled_batch_size=1), classes=2)
    nets = Networks(GaussianPrior((1,)), encoder=ZeroEncoder(), decoder=FixedDecoder([[0.0]]), critic=LogitsCritic(3))
    held = advinf.Split(torch.tensor([[1.0, 0.0, 9.0], [0.0, 1.0, 9.0], [2.0, 1.0, 0.0], [0.0, 3.0, 0.0]]),
                        torch.tensor([0, 1, 1, 1]))
    data = advinf.Dataset(held, held)
    model = advinf.TrainedModel(nets, game, torch.device("cpu"))
    result = CriticClassifier(CriticClassifierOptions(baseline=False)).evaluate(model, data, tmp_path)
    assert result["test_error"] == 0.25 and result["test_examples"] == 4 and "labelled_only_test_error" not in result
    ali = advinf.TrainedModel(nets, advinf.create("game", "ali"), torch.device("cpu"))
    with pytest.raises(UserError, match="needs game 'ali_semisup'"):
        CriticClassifier(CriticClassifierOptions()).evaluate(ali, data, tmp_path)
    with pytest.raises(UserError, match="none was found"):
        CriticClassifier(CriticClassifierOptions()).evaluate(model, data, tmp_path)


def test_a_registered_critic_without_outputs_is_told_to_use_one_that_has_them(tmp_path):
    """The toy critic has no `outputs` option: the advice was "set outputs = 26 in [critic]", which validate then
    refuses."""
    from click.testing import CliRunner
    from conftest import RECIPES

    from advinf.cli import cli

    res = CliRunner().invoke(cli, ["run", str(RECIPES / "ali_mixture25.toml"), "--set", "game.name=ali_semisup",
                                   "--set", "train.steps=2", "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "needs a critic with 26 outputs per example, and ToyCritic has no `outputs` " \
        "option" in " ".join(res.output.split()) and "set `outputs" not in res.output, res.output
