"""The training engine: update schemes, CLI runs of each game, library use without a recipe."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from click.testing import CliRunner
from conftest import RECIPES, TINY, TINY_ENCODER

import advinf
from advinf import Batch, Networks, OptimizerSpec, Trainer, TrainSpec
from advinf.checkpoint import load_checkpoint
from advinf.cli import cli
from advinf_plugins.games import JointGame, JointGameOptions
from advinf_plugins.mixture import MixtureOptions, mixture25
from advinf_plugins.priors import GaussianPrior
from advinf_plugins.toy_networks import CriticOptions, DecoderOptions, EncoderOptions, ToyCritic, ToyDecoder, ToyEncoder


def tiny_nets(seed: int = 0) -> Networks:
    torch.manual_seed(seed)
    std = 0.3  # larger than the paper's 0.02 so that one step visibly moves every parameter
    return Networks(prior=GaussianPrior((2,)), encoder=ToyEncoder(2, 2, EncoderOptions(hidden=8, init_std=std)),
                    decoder=ToyDecoder(2, 2, DecoderOptions(hidden=8, init_std=std)),
                    critic=ToyCritic(2, 2, CriticOptions(hidden=4, init_std=std)))


def tiny_data():
    return mixture25(MixtureOptions(samples=256, heldout=64), None)


SGD = OptimizerSpec(name="sgd", lr=0.5)


def test_simultaneous_update_takes_both_gradients_at_the_same_parameters():
    nets, data, game = tiny_nets(), tiny_data(), JointGame(JointGameOptions(), stochastic=True)
    reference = copy.deepcopy(nets)
    trainer = Trainer(nets, game, data, train=TrainSpec(steps=1, batch_size=32), optimizer=SGD, device="cpu")
    batch_source = Trainer(copy.deepcopy(nets), game, data, train=TrainSpec(steps=1, batch_size=32),
                           optimizer=SGD, device="cpu")
    batch = batch_source.batches.next()  # same data seed: the batch the trainer will draw
    critic_params = lambda n: n.parameters(["critic"])  # noqa: E731
    generator_params = lambda n: n.parameters(["encoder", "decoder"])  # noqa: E731

    def expected(sequential: bool) -> Networks:
        nets2 = copy.deepcopy(reference)
        torch.manual_seed(7)
        out = game.losses(nets2, batch).losses
        g_c = torch.autograd.grad(out["critic"], critic_params(nets2), retain_graph=True)
        if not sequential:  # both gradients at the same parameter values
            g_g = torch.autograd.grad(out["generator"], generator_params(nets2))
        with torch.no_grad():
            for p, g in zip(critic_params(nets2), g_c, strict=True):
                p -= 0.5 * g
        if sequential:  # the common bug: step the critic, then take the generator's gradient
            torch.manual_seed(7)
            out = game.losses(nets2, batch).losses
            g_g = torch.autograd.grad(out["generator"], generator_params(nets2))
        with torch.no_grad():
            for p, g in zip(generator_params(nets2), g_g, strict=True):
                p -= 0.5 * g
        return nets2

    torch.manual_seed(7)
    trainer.train_step()

    def same(a: Networks, b: Networks) -> bool:
        return all(torch.allclose(p, q, rtol=1e-5, atol=1e-7) for p, q in zip(
            generator_params(a) + critic_params(a), generator_params(b) + critic_params(b), strict=True))

    assert same(nets, expected(sequential=False))
    assert not same(nets, expected(sequential=True))  # the test can tell the two schemes apart
    assert not same(nets, reference)


def test_alternating_update_steps_the_critic_n_times_per_generator_step():
    nets, data = tiny_nets(), tiny_data()
    spec = TrainSpec(steps=3, batch_size=32, update="alternating", critic_steps=2, progress="none")
    trainer = Trainer(nets, JointGame(JointGameOptions(), stochastic=True), data, train=spec, device="cpu")
    trainer.fit()
    c_state = trainer.optimizers["critic"].state[nets.parameters(["critic"])[0]]["step"]
    g_state = trainer.optimizers["generator"].state[nets.parameters(["encoder"])[0]]["step"]
    assert (int(c_state), int(g_state)) == (6, 3)
    assert trainer.batches.state() == {"epoch": 1, "position": 32, "streams": {}}  # 9 fresh batches, 8 an epoch


def test_library_use_with_a_custom_critic(tmp_path):
    """Subclass JointCritic and train it with built-in pieces, no recipe involved."""

    class DotCritic(advinf.JointCritic):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))

        def forward(self, x, z, y=None):
            return self.net(torch.cat([x, z], 1)).squeeze(1)

    nets = tiny_nets()
    nets["critic"] = DotCritic()  # a network is replaced by name (nets.critic = ... works too)
    game = advinf.create("game", "ali")
    data = advinf.create("dataset", "mixture25", None, samples=512, heldout=128)
    evaluator = advinf.create("evaluator", "mode_coverage", None, samples=300, plot=False)
    result = Trainer(nets, game, data, train=TrainSpec(steps=12, batch_size=64, log_every=4, progress="none"),
                     evaluators={"mode_coverage": evaluator}, run_dir=tmp_path / "run", device="cpu").fit()
    assert result.steps == 12 and math.isfinite(result.last_metrics["loss_critic"])
    assert 1 <= result.eval["mode_coverage"]["modes_covered"] <= 25
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(ln)["step"] for ln in lines] == [4, 8, 12]


@pytest.mark.parametrize("recipe,extra", [
    ("ali_mixture25", TINY_ENCODER),
    ("gan_mixture25", []),
    ("ali_mixture25", TINY_ENCODER + ["game.name=bigan", "train.update=alternating", "train.critic_steps=2"]),
    ("ali_mixture25", TINY_ENCODER + ["game.divergence=minimax", "game.joint_batch=false"]),
])
def test_cli_run_writes_a_complete_run_directory(tmp_path, recipe, extra):
    out = tmp_path / "run"
    args = ["run", str(RECIPES / f"{recipe}.toml"), "--out", str(out)]
    for item in TINY + extra:
        args += ["--set", item]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    records = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [10, 20, 30]
    for r in records:
        assert math.isfinite(r["loss_critic"]) and math.isfinite(r["loss_generator"]) and r["samples_per_s"] > 0
    assert sorted(p.name for p in (out / "samples").glob("*.png")) == \
        ["step_0000000.png", "step_0000015.png", "step_0000030.png"]
    assert (out / "recipe.toml").is_file() and (out / "mode_coverage.png").stat().st_size > 1000
    cov = json.loads((out / "eval.json").read_text())["mode_coverage"]
    assert set(cov) >= {"modes_covered", "modes_covered_strict", "high_quality_fraction"}
    assert ("reconstruction_accuracy" in cov) == (recipe == "ali_mixture25")
    assert advinf.load_recipe(out / "recipe.toml").spec.train.steps == 30  # the saved recipe is a valid recipe


def test_run_refuses_to_overwrite_a_run(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "precious.txt").write_text("mine")
    args = ["run", str(RECIPES / "gan_mixture25.toml"), "--out", str(out), *sum((["--set", t] for t in TINY), [])]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 2 and "is not empty" in res.output
    assert (out / "precious.txt").read_text() == "mine"


def test_batch_larger_than_the_data_is_a_clear_error(tmp_path):
    args = ["run", str(RECIPES / "gan_mixture25.toml"), "--out", str(tmp_path / "r")]
    res = CliRunner().invoke(cli, args + sum((["--set", t] for t in TINY + ["train.batch_size=5000"]), []))
    assert res.exit_code == 2 and "train.batch_size = 5000 is larger than the training split (2000" in res.output


def test_game_and_critic_must_fit(tmp_path):
    args = ["run", str(RECIPES / "gan_mixture25.toml"), "--out", str(tmp_path / "r"), "--set", "critic.joint=true"]
    res = CliRunner().invoke(cli, args + sum((["--set", t] for t in TINY), []))
    assert res.exit_code == 2 and "marginal critic" in res.output
    args = ["run", str(RECIPES / "ali_mixture25.toml"), "--out", str(tmp_path / "r"), "--set", "game.name=gan"]
    res = CliRunner().invoke(cli, args + sum((["--set", t] for t in TINY), []))
    expected = "encoder: game 'gan' does not use a network 'encoder'; remove the [encoder] section"
    assert res.exit_code == 2 and expected in res.output


def test_batch_draw_is_on_device_and_covers_an_epoch():
    data = tiny_data()
    trainer = Trainer(tiny_nets(), JointGame(JointGameOptions(), stochastic=True), data,
                      train=TrainSpec(steps=1, batch_size=64), device="cpu")
    sampler = trainer.batches.main.sampler
    seen = torch.cat([sampler.next() for _ in range(4)])
    assert sorted(seen.tolist()) == list(range(256)) and sampler.epoch == 0
    sampler.next()
    assert sampler.epoch == 1
    assert isinstance(trainer.batches.next(), Batch)


@pytest.mark.parametrize("mode", ["stop", "skip"])
def test_large_finite_weights_are_not_taken_for_divergence(mode):
    """Finiteness is judged element by element: a 2-norm of weights near 1e20 overflows to inf although each is
    finite. Before, such a run stopped as diverged (in skip mode too, whose message then advised skip mode)."""
    trainer = Trainer(tiny_nets(), JointGame(JointGameOptions(), stochastic=True), tiny_data(),
                      train=TrainSpec(steps=1, batch_size=32, nonfinite=mode), optimizer=SGD, device="cpu")
    weight = next(p for p in trainer.nets["critic"].parameters() if p.dim() == 2)
    with torch.no_grad():
        weight.fill_(3e19)  # finite; the sum of squares is not
    assert math.isinf(torch.nn.utils.get_total_norm([weight]).item())
    trainer._check_diverged(parameters=True)  # finite weights: no error
    grads = [torch.full((4,), 3e19), torch.ones(2)]
    out = trainer._forward(trainer.batches.next())
    assert trainer._guard(out, trainer.players, grads)  # finite gradients are applied
    assert trainer.skipped == 0
    with torch.no_grad():
        weight[0, 0] = float("inf")
    with pytest.raises(advinf.TrainingDiverged) as err:
        trainer._check_diverged(parameters=True)
    assert ("or set train.nonfinite" in str(err.value)) == (mode == "stop")
    assert "no checkpoint was written before it; lower the learning rate" in str(err.value)  # not "resume"
    assert "--resume" not in str(err.value)


def test_an_optimizer_implementation_the_recipe_chooses_is_kept():
    """advinf fuses Adam unless the recipe chose an implementation: `foreach = true` was refused ("`fused` and
    `foreach` cannot be True together", though the user never set `fused`)."""
    rec = advinf.load_recipe(RECIPES / "ali_mixture25.toml", [*TINY, "optimizer.foreach=true"])
    trainer = Trainer(tiny_nets(), JointGame(JointGameOptions(), stochastic=True), tiny_data(),
                      train=TrainSpec(steps=1, batch_size=32), optimizer=rec.spec.optimizer, device="cpu")
    groups = [g for opt in trainer.optimizers.values() for g in opt.param_groups]
    assert groups and all(g["foreach"] and not g["fused"] for g in groups)
    default = Trainer(tiny_nets(), JointGame(JointGameOptions(), stochastic=True), tiny_data(),
                      train=TrainSpec(steps=1, batch_size=32), optimizer=OptimizerSpec(), device="cpu")
    assert all(g["fused"] for opt in default.optimizers.values() for g in opt.param_groups)


def test_gradients_and_optimiser_state_keep_their_parameters_layout(tmp_path):
    """``autograd.grad`` hands back whatever strides the backward produced: a channels_last weight's gradient can
    come back contiguous. CUDA's fused Adam refuses that ("params, grads, exp_avgs, and exp_avg_sqs must have same
    dtype, device, and layout"; every channels_last recipe failed its first GPU step), so the trainer stores each
    gradient with its parameter's strides, as ``backward()`` does, with the same values. A checkpoint stores
    Adam's moments contiguous: restored, they take their parameter's strides again (resuming failed the same way).
    """

    class LaidOutCritic(advinf.JointCritic):
        def __init__(self):
            super().__init__()
            self.w3 = torch.nn.Parameter(torch.randn(2, 3, 3, 3).to(memory_format=torch.channels_last))
            self.w1 = torch.nn.Parameter(torch.randn(2, 3, 1, 1).to(memory_format=torch.channels_last))
            self.head = torch.nn.Linear(10, 1)

        def forward(self, x, z, y=None):
            pair = torch.cat([x, z], 1)
            image = pair.repeat(1, 12).view(-1, 3, 4, 4)  # a 3-channel picture of the pair
            h = torch.nn.functional.conv2d(image, self.w3.contiguous())  # its gradient comes back contiguous
            h1 = torch.nn.functional.linear(pair[:, :3], self.w1.view(2, 3))  # (3, 1, 1, 1): unlike (3, 1, 3, 3)
            return self.head(torch.cat([h.flatten(1), h1], 1)).squeeze(1)

    nets = tiny_nets()
    nets["critic"] = LaidOutCritic()
    layouts = {n: p.stride() for n, p in nets["critic"].named_parameters()}
    assert layouts["w3"] != torch.empty(2, 3, 3, 3).stride() and layouts["w1"] != torch.empty(2, 3, 1, 1).stride()
    trainer = Trainer(nets, JointGame(JointGameOptions(), stochastic=True), tiny_data(),
                      train=TrainSpec(steps=1, batch_size=32), optimizer=SGD, device="cpu")
    start = {n: p.detach().clone() for n, p in nets["critic"].named_parameters()}
    batch = copy.deepcopy(trainer).batches.next()  # the batch the trainer will draw
    torch.manual_seed(3)
    reference = copy.deepcopy(nets)
    out = JointGame(JointGameOptions(), stochastic=True).losses(reference, batch).losses
    expected = torch.autograd.grad(out["critic"], list(reference["critic"].parameters()))
    torch.manual_seed(3)
    trainer.train_step()
    for (name, p), g in zip(nets["critic"].named_parameters(), expected, strict=True):
        assert p.grad.stride() == p.stride() == layouts[name], name
        torch.testing.assert_close(p.grad, g)
        torch.testing.assert_close(p.detach(), start[name] - 0.5 * g)

    def adam_trainer(run_dir=None):
        nets = tiny_nets()
        nets["critic"] = LaidOutCritic()
        return Trainer(nets, JointGame(JointGameOptions(), stochastic=True), tiny_data(), run_dir=run_dir,
                       train=TrainSpec(steps=2, batch_size=32), optimizer=OptimizerSpec(), device="cpu")

    first = adam_trainer(tmp_path / "run")
    first.train_step()
    saved = first.save_checkpoint()
    resumed = adam_trainer()
    resumed.restore(load_checkpoint(saved))
    for name, p in resumed.nets["critic"].named_parameters():
        state = resumed.optimizers["critic"].state[p]
        assert state["exp_avg"].stride() == state["exp_avg_sq"].stride() == p.stride() == layouts[name], name
        torch.testing.assert_close(state["exp_avg"], first.optimizers["critic"].state[
            dict(first.nets["critic"].named_parameters())[name]]["exp_avg"])


def test_an_evaluator_metric_named_like_advinfs_stamps_is_refused(tmp_path):
    """eval.json entries carry advinf's `step` and `options`: an evaluator's own metric of either name would be
    overwritten without a word, so it is refused, naming the evaluator."""

    class Stepper(advinf.Evaluator):
        def evaluate(self, model, data, out_dir):
            return {"step": 3, "loss": 0.5}

    trainer = Trainer(tiny_nets(), JointGame(JointGameOptions(), stochastic=True), tiny_data(),
                      train=TrainSpec(steps=2, batch_size=32, progress="none"), evaluators={"stepper": Stepper()},
                      run_dir=tmp_path / "run", device="cpu")
    with pytest.raises(advinf.UserError, match=r"evaluator 'stepper' returned metric\(s\) named step: .* rename"):
        trainer.fit()
    assert (tmp_path / "run" / "checkpoints").is_dir()  # the training is kept: `advinf evaluate` once it is fixed


class _Fixed(advinf.Evaluator):
    """Returns what it is given (or raises it)."""

    def __init__(self, value):
        self.value = value

    def evaluate(self, model, data, out_dir):
        if isinstance(self.value, BaseException):
            raise self.value
        return self.value


def test_a_failing_evaluator_costs_neither_the_training_nor_the_others_results(tmp_path):
    run = tmp_path / "run"
    trainer = Trainer(tiny_nets(), JointGame(JointGameOptions(), stochastic=True), tiny_data(),
                      train=TrainSpec(steps=2, batch_size=32, progress="none"), device="cpu", run_dir=run,
                      evaluators={"good": _Fixed({"a": 1.5}), "broken": _Fixed(ValueError("a bug")),
                                  "keyed": _Fixed(advinf.UserError("needs labels", option="mode"))})
    with pytest.raises(advinf.UserError) as info:
        trainer.fit()
    message = str(info.value)
    assert "evaluator 'broken' (test_train._Fixed) failed: ValueError: a bug" in message
    assert "evaluator 'keyed': evaluators.keyed.mode: needs labels" in message
    # modules of one's own: the command line cannot rebuild this run, so the advice is Python's
    assert "The training is kept (the checkpoint of step 2). The other evaluators' results are in eval.json. " \
           "Once the evaluator is fixed: trainer.evaluate() (or advinf.load_run(RUN, nets=..., game=...)" in message
    assert isinstance(info.value.__cause__, ValueError)  # what --debug shows
    assert json.loads((run / "eval.json").read_text())["good"]["a"] == 1.5


def test_a_periodic_evaluation_that_fails_stops_training_with_a_checkpoint(tmp_path):
    run = tmp_path / "run"
    trainer = Trainer(tiny_nets(), JointGame(JointGameOptions(), stochastic=True), tiny_data(),
                      train=TrainSpec(steps=6, batch_size=32, progress="none", checkpoint_every=0), device="cpu",
                      run_dir=run, evaluators={"broken": _Fixed(RuntimeError("boom"))}, eval_every={"broken": 3})
    with pytest.raises(advinf.UserError, match=r"failed: RuntimeError: boom. Training stopped at step 3 with a "
                                               r"checkpoint. Once the evaluator is fixed: trainer.restore\(the "
                                               r"latest checkpoint\) and trainer.fit\(\)"):
        trainer.fit()
    assert (run / "checkpoints" / "step_0000003").is_dir()


def test_evaluator_results_are_kept_as_json_or_refused_naming_the_evaluator():
    import numpy as np

    from advinf.evaluation import checked_metrics

    assert checked_metrics("e", {"t": torch.tensor(1.5), "n": np.float32(2.0), "i": np.int64(3),
                                 "nested": {"l": (1, torch.tensor(True))}}) == \
        {"t": 1.5, "n": 2.0, "i": 3, "nested": {"l": [1, True]}}
    with pytest.warns(UserWarning, match=r"kept as null") as caught:
        assert checked_metrics("e", {"x": float("nan"), "y": [float("inf")]}) == {"x": None, "y": [None]}
    assert [str(w.message) for w in caught] == ["evaluator 'e' returned nan for 'x': kept as null (JSON has no nan)",
                                                "evaluator 'e' returned inf for 'y[0]': kept as null (JSON has no inf)"]
    for bad, message in (([1, 2], r"returned list, not a dict of metrics"),
                         ({"v": torch.zeros(3)}, r"returned a tensor of shape \(3,\) for 'v': metrics are numbers"),
                         ({"v": {"w": object()}}, r"returned object for 'v.w'"),
                         ({1: 2.0}, r"returned a metric named 1: metric names are strings"),
                         ({"step": 1}, r"returned metric\(s\) named step: advinf stamps")):
        with pytest.raises(advinf.UserError, match=rf"evaluator 'e' {message}"):
            checked_metrics("e", bad)


def test_a_sparse_gradient_is_stored_as_it_comes():
    """An ``nn.Embedding(sparse=True)`` gives a sparse gradient, which has no strides to match to its parameter's:
    it is stored as ``autograd.grad`` gave it, and SGD (which takes sparse gradients) trains the embedding."""

    class EmbeddingCritic(advinf.JointCritic):
        def __init__(self):
            super().__init__()
            self.table = torch.nn.Embedding(4, 4, sparse=True)
            self.head = torch.nn.Linear(12, 1)

        def forward(self, x, z, y=None):
            pair = torch.cat([x, z], 1)
            rows = (pair[:, 0] > 0).long() + 2 * (pair[:, 1] > 0).long()  # a row of the table per quadrant
            return self.head(torch.cat([self.table(rows), pair, pair], 1)).squeeze(1)

    nets = tiny_nets()
    nets["critic"] = EmbeddingCritic()
    before = nets["critic"].table.weight.detach().clone()
    trainer = Trainer(nets, JointGame(JointGameOptions(), stochastic=True), tiny_data(),
                      train=TrainSpec(steps=1, batch_size=32), optimizer=SGD, device="cpu")
    trainer.train_step()
    assert nets["critic"].table.weight.grad.layout == torch.sparse_coo
    assert not torch.equal(nets["critic"].table.weight.detach(), before)



class _BrokenContract(JointGame):
    """ALI whose losses() breaks the contract in one of three ways (``how``)."""

    def __init__(self, how: str):
        super().__init__(JointGameOptions(), stochastic=True)
        self.how, self.calls = how, 0

    def losses(self, nets, batch):
        out = super().losses(nets, batch)
        self.calls += 1
        if self.how == "per_example":  # (B,) losses: no scalar to take a gradient of
            out.losses["critic"] = out.losses["critic"] * torch.ones(batch.x.shape[0])
        elif self.how == "shaped_scalar":
            out.scalars["extra"] = out.losses["critic"].detach()[None]
        elif self.how == "scalar_on_odd_calls" and self.calls % 2:
            out.scalars["extra"] = out.losses["critic"].detach()
        elif self.how == "no_generator_loss":
            del out.losses["generator"]
        elif self.how == "loss_of_no_player":
            out.losses["bogus"] = out.losses["critic"] * 2
        return out


@pytest.mark.parametrize(("how", "message"), [
    ("per_example", r"game _BrokenContract: losses\(\) returned loss 'critic' as shape \(32,\); each loss and "
                    r"scalar must be a 0-dim tensor"),
    ("shaped_scalar", r"returned scalar 'extra' as shape \(1,\)"),
    ("scalar_on_odd_calls", r"returned the scalars \[.*'extra'\] in a step after \[.*\]; return the same "
                            r"scalars"),
    ("no_generator_loss", r"game _BrokenContract: losses\(\) returned no loss for player\(s\) generator"),
    ("loss_of_no_player", r"game _BrokenContract: losses\(\) returned a loss for bogus, which is no player of "
                          r"the game \(its players: .*critic"),
])
def test_a_game_that_breaks_the_losses_contract_is_named_before_anything_is_written(tmp_path, how, message):
    """Not torch's 'grad can be implicitly created only for scalar outputs' or a size mismatch in the trainer's
    sums, after the run directory was made: the first two fail in the trial step, before it."""
    run = tmp_path / "run"
    with pytest.raises(advinf.UserError, match=message):
        Trainer(tiny_nets(), _BrokenContract(how), tiny_data(), train=TrainSpec(steps=4, batch_size=32,
                progress="none"), device="cpu", run_dir=run).fit()
    if how != "scalar_on_odd_calls":  # seen in the trial; a scalar that comes and goes shows on a later step
        assert not run.exists()


class _WideCritic(advinf.JointCritic):
    """Three logits per pair: ALI's divergence would take them for 3B pairs."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(4, 3)

    def forward(self, x, z, y=None):
        return self.net(torch.cat([x, z], 1))


class _TensorEncoder(advinf.Encoder):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(2, 2)

    def forward(self, x, y=None):
        return self.net(x)  # a tensor, not a Posterior


class _WrongDecoder(advinf.Decoder):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(2, 3)

    def forward(self, z, y=None):
        return self.net(z)  # 3 numbers per example of 2


@pytest.mark.parametrize(("name", "network", "message"), [
    ("critic", _WideCritic, r"the critic returned logits of shape \(32, 3\), but this game's divergence takes one "
                            r"logit per pair, shape \(B,\) or \(B, 1\)"),
    ("encoder", _TensorEncoder, r"the encoder \(.*_TensorEncoder\) returned a tensor of shape "
                                r"\(32, 2\): Encoder.forward returns a Posterior"),
    ("decoder", _WrongDecoder, r"the decoder \(.*_WrongDecoder\) returned a tensor of shape \(32, 3\): "
                               r"Decoder.forward returns examples of the data's shape, \(32, 2\)"),
])
def test_a_network_that_breaks_its_interface_is_named_before_anything_is_written(tmp_path, name, network, message):
    """Not a size mismatch deep inside a game, nor (the wide critic) a run that trains on 3B 'pairs'."""
    nets = tiny_nets()
    nets[name] = network()
    run = tmp_path / "run"
    with pytest.raises(advinf.UserError, match=message):
        Trainer(nets, JointGame(JointGameOptions(), stochastic=True), tiny_data(),
                train=TrainSpec(steps=2, batch_size=32, progress="none"), device="cpu", run_dir=run).fit()
    assert not run.exists()


def test_fit_in_slices_trains_as_one_fit_whatever_the_process_draws_between():
    """A second fit() of one trainer goes on with the noise where the first stopped (it re-seeded torch, so
    steps 4-6 drew the noise of steps 1-3 again), as a run resumed from its checkpoint does."""
    def trainer():
        return Trainer(tiny_nets(), JointGame(JointGameOptions(), stochastic=True), tiny_data(),
                       train=TrainSpec(steps=6, batch_size=32, progress="none"), optimizer=SGD, device="cpu")

    whole, sliced = trainer(), trainer()
    whole.fit()
    sliced.fit(stop_after=3)
    torch.rand(7)  # other code in the process draws from torch's generator
    sliced.fit()
    assert sliced.step == 6
    for name in whole.nets:
        for a, b in zip(whole.nets[name].parameters(), sliced.nets[name].parameters(), strict=True):
            assert torch.equal(a, b), name


def test_train_step_counts_so_that_fit_trains_up_to_train_steps_in_all(tmp_path):
    """Steps taken by hand count: fit() does the rest, the checkpoint's step is the number of updates made, and
    the learning-rate schedule agrees with it."""
    schedule = advinf.ScheduleSpec(name="exponential", hold=0, decay=4, final=0.5)
    trainer = Trainer(tiny_nets(), JointGame(JointGameOptions(), stochastic=True), tiny_data(),
                      train=TrainSpec(steps=8, batch_size=32, progress="none", sample_every=0),
                      optimizer=OptimizerSpec(name="adam", lr=1e-3, schedule=schedule), device="cpu",
                      run_dir=tmp_path / "run")
    for _ in range(3):
        trainer.train_step()
    assert trainer.step == 3
    result = trainer.fit()
    assert result.steps == 5 and trainer.step == 8
    assert trainer.schedulers["critic"].last_epoch == 8
    adam = trainer.optimizers["critic"]
    assert int(adam.state[adam.param_groups[0]["params"][0]]["step"]) == 8  # updates made: 3 by hand, 5 by fit
    game = JointGame(JointGameOptions(), stochastic=True)
    assert advinf.load_run(tmp_path / "run", nets=tiny_nets(), game=game, device="cpu").step == 8


def test_train_and_optimizer_specs_refuse_in_python_what_a_recipe_refuses():
    """Booleans posing as numbers (pydantic's lax mode read True as 1) and infinities; torch's flags stay flags."""
    from pydantic import ValidationError

    for make, message in ((lambda: TrainSpec(steps=10, batch_size=True), "batch_size: a boolean where a number"),
                          (lambda: TrainSpec(steps=True), "steps: a boolean where a number"),
                          (lambda: TrainSpec(steps=5, ema=float("inf")), "ema: must be a finite number"),
                          (lambda: OptimizerSpec(lr=True), "lr: a boolean where a number"),
                          (lambda: OptimizerSpec(lr=float("inf")), "lr: must be a finite number"),
                          (lambda: OptimizerSpec(betas=[True, 0.9]), "betas: must be two numbers in \\[0, 1\\)")):
        with pytest.raises(ValidationError, match=message):
            make()
    assert TrainSpec(steps=5, compile=True).compile
    assert OptimizerSpec(lr=1e-3, amsgrad=True, fused=True, foreach=None).options["amsgrad"] is True


@pytest.mark.parametrize("recipe,overrides,expected", [
    ("ali_mixture25", ["critic.init_std=1e30"], "the first batch gives non-finite losses (critic nan, generator nan) "
                                                "before any update"),  # it stopped at step 1: "lower the lr"
    ("ali_mixture25", ["evaluators={fid={samples=100}}"], "evaluators.fid.network: 'label_classifier' reads square "
                                                          "images"),  # after training, before
    ("ali_mixture25", ["evaluators={critic_classifier={}}"], "evaluators.critic_classifier: evaluator "
                                                             "'critic_classifier' reads a K-class critic: it needs "
                                                             "game 'ali_semisup'"),
    ("ali_semisup_digits", ["dataset.heldout=0", "evaluators={critic_classifier={}}"],
     "'critic_classifier' tests on the held-out split, but the dataset has none"),
    ("ali_digits", ["evaluators.svm_probe.max_iter=9223372036854775808"],  # an OverflowError after training
     "evaluators.svm_probe.max_iter: beyond a 64-bit integer"),
    ("ali_digits", ["evaluators.svm_probe.labels=5"],  # ran, never predicting the classes it had no label of
     "evaluators.svm_probe.labels: evaluator 'svm_probe': labels = 5 is fewer than the dataset's 10 classes"),
])
def test_what_would_fail_after_training_or_at_its_first_step_fails_before_it(tmp_path, recipe, overrides, expected):
    out = tmp_path / "run"
    args = ["run", str(RECIPES / f"{recipe}.toml"), "--out", str(out), "--set", "train.steps=2"]
    res = CliRunner().invoke(cli, args + [a for o in overrides for a in ("--set", o)])
    assert res.exit_code == 2 and expected in " ".join(res.output.split()), res.output
    assert not out.exists()  # refused before the run directory was written


class _NanCriticAtStep(JointGame):
    """The critic's loss NaN on the critic's passes from step 2."""

    def losses(self, nets, batch):
        out = super().losses(nets, batch)
        if batch.step >= 2 and batch.players == frozenset({"critic"}):
            out.losses["critic"] = out.losses["critic"] * float("nan")
        return out


def test_divergence_under_alternating_names_only_the_losses_that_pass_computed():
    """A critic pass computes no generator loss: the message said loss_generator=0, a value never computed."""
    trainer = Trainer(tiny_nets(), _NanCriticAtStep(JointGameOptions(), stochastic=True), tiny_data(),
                      train=TrainSpec(steps=6, batch_size=32, update="alternating", critic_steps=2, log_every=6,
                                      progress="none"), optimizer=SGD, device="cpu")
    with pytest.raises(advinf.TrainingDiverged, match=r"at step 3 \(loss_critic=nan; not computed on that pass: "
                                                      r"loss_generator\)"):
        trainer.fit()


class _NoCriticLossOnCriticPasses(JointGame):
    def losses(self, nets, batch):
        out = super().losses(nets, batch)
        if batch.players == frozenset({"critic"}):
            del out.losses["critic"]
        return out


def test_a_game_breaking_the_contract_on_one_side_s_passes_is_refused_before_anything_is_written(tmp_path):
    """The trial step ran only a pass of every player: a game that left out the critic's loss on the critic's
    own passes failed at step 1, after the run directory was made."""
    run = tmp_path / "run"
    with pytest.raises(advinf.UserError, match=r"losses\(\) returned no loss for player\(s\) critic"):
        Trainer(tiny_nets(), _NoCriticLossOnCriticPasses(JointGameOptions(), stochastic=True), tiny_data(),
                train=TrainSpec(steps=2, batch_size=32, update="alternating", progress="none"), optimizer=SGD,
                device="cpu", run_dir=run)
    assert not run.exists()


class _ScalarNamedStep(JointGame):
    def losses(self, nets, batch):
        out = super().losses(nets, batch)
        out.scalars["step"] = torch.tensor(-1.0)
        return out


class _CriticUnderGradFor(JointGame):
    """The docs' grad_for advice read as "around the critic's forward": the generator's loss loses its graph on
    the generator's own passes."""

    def losses(self, nets, batch):
        x = batch.x
        with batch.grad_for("generator"):
            z_hat = nets["encoder"](x).sample()
            z = nets.prior.sample(x.shape[0], x.device)
            x_tilde = nets["decoder"](z)
        with batch.grad_for("critic"):
            d_data, d_model = advinf.critic_pairs(nets["critic"], (x, z_hat), (x_tilde, z))
        critic = torch.nn.functional.softplus(-d_data).mean() + torch.nn.functional.softplus(d_model).mean()
        generator = torch.nn.functional.softplus(d_data).mean() + torch.nn.functional.softplus(-d_model).mean()
        return advinf.GameLosses({"critic": critic, "generator": generator})


def test_games_that_break_the_alternating_contract_are_named_before_anything_is_written(tmp_path):
    """A scalar named like a metric the trainer writes hid every metrics line ("step": -1); grad_for around a
    network the updated player's loss differentiates through failed at step 1 with torch's "element 0 of tensors
    does not require grad"; a misspelt player name in batch.updates was taken for a player not updated."""
    alternating = TrainSpec(steps=2, batch_size=32, update="alternating", progress="none")
    cases = [(_ScalarNamedStep(JointGameOptions(), stochastic=True), TrainSpec(steps=2, batch_size=32),
              r"returned scalar\(s\) named step, which metrics.jsonl uses itself"),
             (_CriticUnderGradFor(JointGameOptions(), stochastic=True), alternating,
              r"the loss of player 'generator' on a pass that updates generator alone \(update = \"alternating\"\) "
              r"does not depend on its networks .*under batch.grad_for of a network it differentiates through")]
    for game, spec, message in cases:
        run = tmp_path / type(game).__name__
        with pytest.raises(advinf.UserError, match=message):
            Trainer(tiny_nets(), game, tiny_data(), train=spec, optimizer=SGD, device="cpu", run_dir=run)
        assert not run.exists()
    batch = Batch(torch.zeros(1), players=frozenset({"critic"}), all_players=frozenset({"critic", "generator"}))
    assert batch.updates("critic") and not batch.updates("generator")
    with pytest.raises(ValueError, match=r"batch.updates\('critc'\): the game has no player 'critc'"):
        batch.updates("critc")
    with pytest.raises(TypeError, match="a set of player names, not the string"):
        Batch(torch.zeros(1), players="critic").updates("c")


def test_alternating_needs_a_generator_side_player_and_players_take_lists(tmp_path):
    """A game of critic-side players alone ran "alternating" as critic steps only (no generator pass, no moving
    average), while steps count the other side's updates."""
    from advinf import Player

    class AllCritics(JointGame):
        players = (Player("critic", ["critic"], "critic"), Player("generator", ("encoder", "decoder"), "critic"))

    assert AllCritics.players[0].networks == ("critic",)  # a list is taken as the tuple
    with pytest.raises(advinf.UserError, match="has only critic-side players: update = \"alternating\" would take"):
        Trainer(tiny_nets(), AllCritics(JointGameOptions(), stochastic=True), tiny_data(),
                train=TrainSpec(steps=2, batch_size=32, update="alternating"), optimizer=SGD, device="cpu",
                run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_non_finite_metric_is_written_as_null(tmp_path):
    """metrics.jsonl held a bare NaN under nonfinite = "skip": no JSON for strict readers (jq, other languages)."""
    import json

    from advinf.rundir import append_jsonl

    append_jsonl(tmp_path / "m.jsonl", {"step": 1, "loss_generator": float("nan"), "x": {"y": float("inf")}})
    text = (tmp_path / "m.jsonl").read_text()
    assert "NaN" not in text and json.loads(text, parse_constant=lambda c: 1 / 0) == \
        {"step": 1, "loss_generator": None, "x": {"y": None}}


def test_samples_per_second_counts_training_not_periodic_evaluations(tmp_path):
    """The log line after a periodic evaluation divided its samples by the evaluation's time too (281 against
    ~1,400 samples/s on digits)."""
    import json
    import time

    class Slow(advinf.Evaluator):
        def evaluate(self, model, data, out_dir):
            time.sleep(0.6)
            return {"value": 1.0}

    trainer = Trainer(tiny_nets(), JointGame(JointGameOptions(), stochastic=True), tiny_data(),
                      train=TrainSpec(steps=6, batch_size=32, log_every=2, sample_every=0, progress="none"),
                      evaluators={"slow": Slow()}, eval_every={"slow": 2}, run_dir=tmp_path / "run", device="cpu")
    trainer.fit()
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    rates = [json.loads(line)["samples_per_s"] for line in lines]
    assert len(rates) == 3 and min(rates[1:]) > 64 / 0.3, rates  # 2 steps of 32 in well under the 0.6 s sleep
