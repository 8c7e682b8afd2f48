"""A Trainer used from Python writes what load_run needs; trainer.model() and load_run agree about the moving
average."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from click.testing import CliRunner
from conftest import RECIPES, TINY, TINY_ENCODER

import advinf
from advinf import Networks, Trainer, TrainSpec
from advinf.cli import cli
from advinf.errors import UserError
from advinf.interfaces import ImplicitPosterior
from advinf_plugins.games import JointGameOptions


class OwnCritic(advinf.JointCritic):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))

    def forward(self, x, z, y=None):
        return self.net(torch.cat([x, z], 1)).squeeze(1)


def parts():
    data = advinf.create("dataset", "mixture25", None, samples=512, heldout=128)
    prior = advinf.create("prior", "gaussian", None, dim=2)
    return data, prior, advinf.BuildContext(dataset=data, prior=prior)


def networks(ctx, critic=None):
    return Networks(ctx.prior, encoder=advinf.create("encoder", "toy_encoder", ctx, hidden=16),
                    decoder=advinf.create("decoder", "toy_decoder", ctx, hidden=16),
                    critic=critic or advinf.create("critic", "toy_critic", ctx, hidden=8))


SPEC = TrainSpec(steps=12, batch_size=32, log_every=4, sample_every=5, ema=0.9, progress="none", threads=1)


def agree(a: advinf.TrainedModel, b: advinf.TrainedModel, x: torch.Tensor) -> None:
    """The same samples, codes and reconstructions (the toy encoder draws its noise: same seed for both)."""
    z = a.prior_sample(16, seed=3)
    assert torch.equal(a.sample(z=z), b.sample(z=z))
    for use in ("encode", "reconstruct"):
        outs = []
        for model in (a, b):
            torch.manual_seed(5)
            out = getattr(model, use)(x)
            outs.append(out if use == "reconstruct" else out.mean)
        assert torch.equal(*outs), use


def test_a_run_of_components_made_by_name_reloads_from_the_recipe_it_wrote(tmp_path):
    data, _, ctx = parts()
    out = tmp_path / "lib"
    evaluators = {"mode_coverage": advinf.create("evaluator", "mode_coverage", ctx, samples=200, plot=False)}
    trainer = Trainer(networks(ctx), advinf.create("game", "ali", None, divergence="minimax"), data, train=SPEC,
                      evaluators=evaluators, eval_every={"mode_coverage": 6}, run_dir=out, seed=7)
    trainer.fit()
    run = advinf.load_run(out)
    spec = run.recipe.spec
    assert (spec.name, spec.seed, spec.game.name, spec.train.ema, spec.train.steps) == ("lib", 7, "ali", 0.9, 12)
    assert run.recipe.options["game"].divergence == "minimax" and run.recipe.options["encoder"].hidden == 16
    assert run.recipe.eval_every == {"mode_coverage": 6} and run.dataset.train.x.shape[0] == 512
    x = data.heldout.x[:32]
    agree(trainer.model(), run, x)  # both the moving average ...
    live = advinf.TrainedModel(trainer.nets, trainer.game, trainer.device)
    z = run.prior_sample(16, seed=3)
    assert not torch.equal(live.sample(z=z), run.sample(z=z))  # ... which is not the live decoder
    assert torch.equal(run.sample(16, z=z), run.sample(z=z))
    with pytest.raises(ValueError, match="n = 3 but z holds 16 draws"):  # not silently the 16
        run.sample(3, z=z)
    # the commands work on it, and it resumes like a recipe's run
    res = CliRunner().invoke(cli, ["sample", str(out), "--count", "16", "--out", str(tmp_path / "s.png")])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(cli, ["run", "--resume", str(out), "--set", "train.steps=16", "--allow-changes",
                                   "--progress", "none"])
    assert res.exit_code == 0, res.output
    assert [json.loads(ln)["step"] for ln in (out / "metrics.jsonl").read_text().splitlines()] == [4, 8, 12, 16]


def test_a_run_with_a_module_of_ones_own_loads_into_modules_given_again(tmp_path):
    data, _, ctx = parts()
    out = tmp_path / "own"
    trainer = Trainer(networks(ctx, OwnCritic()), advinf.create("game", "ali"), data, train=SPEC, run_dir=out)
    trainer.fit()
    assert not (out / "recipe.toml").exists()
    with pytest.raises(UserError, match=r"cannot rebuild by name: critic \(test_library_runs.OwnCritic, not made by "
                                        r"advinf.create\)\. Load it into the same kind of modules"):
        advinf.load_run(out)
    run = advinf.load_run(out, nets=networks(ctx, OwnCritic()), game=advinf.create("game", "ali"), device="cpu")
    assert run.step == 12 and run.recipe is None and not run.critic.training
    agree(trainer.model(), run, data.heldout.x[:32])
    assert torch.equal(run.critic.net[0].weight, trainer.nets.critic.net[0].weight)  # the critic: not averaged
    renamed = Networks(ctx.prior, encoder=networks(ctx).encoder, decoder=networks(ctx).decoder, judge=OwnCritic())
    with pytest.raises(UserError, match=r"holds no network 'judge' \(it holds: critic, decoder, encoder\)"):
        advinf.load_run(out, nets=renamed, game=advinf.create("game", "ali"))
    with pytest.raises(UserError, match="needs both the networks and the game"):
        advinf.load_run(out, nets=networks(ctx, OwnCritic()))
    res = CliRunner().invoke(cli, ["run", "--resume", str(out)])  # not "recipe.toml cannot be read; give the recipe"
    assert res.exit_code == 2 and "cannot rebuild by name (its library.json names them), so `advinf run --resume` " \
        "cannot continue it: in Python, build the Trainer again" in " ".join(res.output.split()), res.output
    from advinf import checkpoint

    longer = SPEC.model_copy(update={"steps": 16})
    again = Trainer(networks(ctx, OwnCritic()), advinf.create("game", "ali"), data, train=longer, run_dir=out,
                    resume=True)  # what the message says to do
    with pytest.raises(UserError, match=r"holds checkpoints up to step_0000012, but none was restored: call "
                                        r"trainer.restore"):  # not a new run from step 0 into the old one's files
        again.fit()
    last = advinf.checkpoint.load_checkpoint(checkpoint.latest_checkpoint(out / "checkpoints"))
    with pytest.raises(UserError, match=r"trained with other settings: train.steps differs from this Trainer's"):
        again.restore(last)  # no recipe (library.json): the checkpoint's train and optimiser settings are compared
    for other, seed, key in ((advinf.create("game", "ali", None, divergence="hinge"), 0, "game.options.divergence"),
                             (advinf.create("game", "bigan"), 0, "game.name"), (None, 5, "seed")):
        unlike = Trainer(networks(ctx, OwnCritic()), other or advinf.create("game", "ali"), data, train=SPEC,
                         run_dir=out, resume=True, seed=seed)  # a game or seed of its own is no continuation
        with pytest.raises(UserError, match=rf"trained with other settings: {key} differ"):
            unlike.restore(last)
        del unlike
    again.restore(last, allow_changes=True)  # 16 steps instead of 12, as --resume --allow-changes would
    assert again.fit().steps == 4 and again.step == 16


def test_a_moving_average_enabled_on_resume_starts_from_the_restored_weights(tmp_path):
    """Before its first update the new average is the restored network, in trainer.model(), in the checkpoint and
    in load_run (not the weights the trainer was built with)."""
    out = tmp_path / "run"
    overrides = [*TINY, *TINY_ENCODER, "train.ema=0"]  # no average (the recipe keeps one)
    advinf.run_recipe(RECIPES / "ali_mixture25.toml", out=out, overrides=overrides, stop_after=20)
    before = advinf.load_run(out)
    outcome = advinf.run_recipe(None, out=out, resume=True, allow_changes=True, stop_after=20,
                                overrides=["train.ema=0.9", "train.progress=none"])
    assert outcome.result.steps == 0
    x = before.dataset.heldout.x[:64]
    agree(outcome.trainer.model(), before, x)
    agree(advinf.load_run(out), before, x)


def test_components_built_from_a_recipe_are_described_too(tmp_path):
    """advinf.build(recipe) marks what it builds as advinf.create does: a Trainer given them without the recipe
    writes an equivalent one."""
    rec = advinf.load_recipe(RECIPES / "gan_mixture25.toml", [*TINY, "decoder.hidden=24"])
    built = advinf.build(rec)
    out = tmp_path / "gan"
    trainer = Trainer(built.nets, built.game, built.dataset, train=SPEC, evaluators=built.evaluators,
                      run_dir=out, seed=rec.spec.seed)
    trainer.fit()
    run = advinf.load_run(out)
    assert run.recipe.spec.game.name == "gan" and run.recipe.options["decoder"].hidden == 24
    assert run.recipe.spec.evaluators.keys() == {"mode_coverage"}
    z = run.prior_sample(16, seed=3)
    assert torch.equal(run.sample(z=z), trainer.model().sample(z=z))


def test_a_loaded_run_evaluates_in_the_precision_it_trained_in(tmp_path, monkeypatch):
    """load_run applies the run's train.tf32 (on CUDA; the call is what can be checked without a GPU)."""
    from advinf.session import run_recipe

    out = tmp_path / "tf32"
    run_recipe(RECIPES / "ali_mixture25.toml", out=out,
               overrides=[*TINY, *TINY_ENCODER, "train.tf32=true", "train.device=cpu"])
    calls = []
    monkeypatch.setattr("advinf.runs.set_fp32_precision", lambda device, tf32: calls.append((device.type, tf32)))
    advinf.load_run(out)
    assert calls == [("cpu", True)]


def test_create_checks_options_as_a_recipe_does_and_is_typed_by_kind():
    import typing
    from importlib.resources import files

    for kwargs, expected in [({"hiden": 3}, "hiden: unknown option of critic 'toy_critic' (got 3); did you mean "
                                           "'hidden'?"),
                             ({"hidden": -1}, "hidden: Input should be greater than 0 (got -1)"),
                             ({"hidden": True}, "hidden: a boolean where a number is expected (got True)")]:
        with pytest.raises(advinf.RecipeError) as err:
            advinf.create("critic", "toy_critic", **kwargs)
        assert str(err.value) == f"create('critic', 'toy_critic'): 1 problem\n  {expected}"
    with pytest.raises(advinf.UserError, match=r"unknown kind 'critc' in create\(kind, name, \.\.\.\) \(did you mean "
                                               r"'critic'\?\); the kinds are game, encoder"):
        advinf.create("critc", "toy_critic")
    returns = {typing.get_type_hints(f)["return"] for f in typing.get_overloads(advinf.create)}
    assert {advinf.Game, advinf.Encoder, advinf.Decoder, advinf.JointCritic, advinf.Prior} <= returns
    assert files("advinf").joinpath("py.typed").is_file()  # PEP 561: type checkers read advinf's hints


def test_a_component_changed_after_create_is_not_described_by_its_name(tmp_path):
    """A critic made by name and then spectrally normalised: a rebuild from its name and options would give other
    parameters, so the run is described in library.json (load it with its modules), not by a recipe.toml that
    load_run, advinf sample and --resume cannot use."""
    data, _, ctx = parts()
    nets = networks(ctx)
    advinf.spectral_normalise(nets.critic)
    out = tmp_path / "sn"
    Trainer(nets, advinf.create("game", "ali"), data, train=SPEC, run_dir=out).fit()
    assert not (out / "recipe.toml").exists()
    assert json.loads((out / "library.json").read_text())["not_by_name"] == [
        "critic (advinf_plugins.toy_networks.ToyCritic, changed since advinf.create made critic 'toy_critic': its "
        "parameters and buffers are not the ones it was made with)"]
    with pytest.raises(UserError, match=r"critic \(advinf_plugins.toy_networks.ToyCritic, changed since"):
        advinf.load_run(out)
    again = networks(ctx)
    advinf.spectral_normalise(again.critic)
    assert advinf.load_run(out, nets=again, game=advinf.create("game", "ali"), device="cpu").step == SPEC.steps


def test_create_checks_named_components_and_what_the_factory_does_as_a_recipe_does(advinf_host):
    """A registered name in the options gets the recipe's "did you mean"; a factory that raises or returns the
    wrong kind is named with its plugin; the factory's ctx.host is the host that builds it."""
    with pytest.raises(advinf.RecipeError) as err:
        advinf.create("game", "ali", None, divergence="hinje")
    assert str(err.value).startswith("create('game', 'ali'): 1 problem\n  divergence: unknown divergence (got "
                                     "'hinje'); did you mean 'hinge'? available: hinge, least_squares")

    class Plugin:
        seen = []

        @advinf.hookimpl
        def register_critics(self, register):
            register("nothing", lambda o, ctx: None)
            register("exploding", lambda o, ctx: 1 / 0)

        @advinf.hookimpl
        def register_priors(self, register):
            register("host_seen", lambda o, ctx: Plugin.seen.append(ctx.host) or
                     advinf.create("prior", "gaussian", None, dim=2))

    advinf_host.add_plugin(Plugin(), name="odd")
    with pytest.raises(advinf.PluginError, match=r"the factory of critic 'nothing' \(plugin 'odd'\) returned "
                                                 r"NoneType, not a JointCritic"):
        advinf_host.create("critic", "nothing")
    with pytest.raises(advinf.PluginError, match=r"building critic 'exploding' \(plugin 'odd'\) failed: "
                                                 r"ZeroDivisionError: division by zero"):
        advinf_host.create("critic", "exploding")
    assert isinstance(advinf_host.create("prior", "host_seen"), advinf.Prior)
    assert Plugin.seen == [advinf_host]


def test_a_used_run_directory_is_refused_in_the_librarys_words_too(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "recipe.toml").write_text("")
    with pytest.raises(UserError, match=r"already holds a run; pass --resume to continue it \(resume=True in Python\)"):
        advinf.run_recipe(RECIPES / "ali_mixture25.toml", out=tmp_path / "run")


def test_a_trainer_built_otherwise_than_its_run_is_refused_by_restore(tmp_path):
    """A library run made by name: the checkpoint's recipe against the new Trainer's (a dropped schedule was
    accepted silently, the checkpoint then holding none and recipe.toml still naming it)."""
    from advinf import OptimizerSpec, ScheduleSpec, checkpoint

    data, _, ctx = parts()
    out = tmp_path / "lib"
    game = advinf.create("game", "ali")
    scheduled = OptimizerSpec(lr=1e-3, schedule=ScheduleSpec(name="exponential", decay=10, final=0.1))
    Trainer(networks(ctx), game, data, train=SPEC, optimizer=scheduled, run_dir=out).fit(stop_after=5)
    last = checkpoint.load_checkpoint(checkpoint.latest_checkpoint(out / "checkpoints"))
    plain = Trainer(networks(ctx), game, data, train=SPEC, optimizer=OptimizerSpec(lr=1e-3), run_dir=out,
                    resume=True)
    with pytest.raises(UserError, match=r"trained with other settings: optimizer.schedule differs from this "
                                        r"Trainer's.* restore\(checkpoint, allow_changes=True\)"):
        plain.restore(last)
    import shutil

    moved = tmp_path / "moved"  # the recipe's name is the folder's: a copied run is the same run
    shutil.copytree(out, moved)
    same = Trainer(networks(ctx), game, data, train=SPEC, optimizer=scheduled, run_dir=moved, resume=True)
    same.restore(checkpoint.load_checkpoint(checkpoint.latest_checkpoint(moved / "checkpoints")))  # accepted
    assert same.step == 5 and same.fit().steps == 7
    assert "schedule" in (out / "recipe.toml").read_text()
    plain.restore(last, allow_changes=True)  # goes on without the schedule, and says so in recipe.toml,
    assert "schedule" not in (out / "recipe.toml").read_text()  # as --resume --allow-changes rewrites it
    plain.fit()
    res = CliRunner().invoke(cli, ["run", "--resume", str(out), "--progress", "none"])  # the file agrees
    assert res.exit_code == 0 and "already finished" in res.output, res.output


def test_a_trainer_from_python_holds_its_run_directory_while_it_exists(tmp_path):
    """A Trainer is alone in writing its run directory, as `advinf run` is: a resume started in another process
    meanwhile is refused, writing nothing; once the Trainer is gone, it goes ahead. In this process, holding is
    counted: a second Trainer resuming the run (a notebook cell run again) is not refused."""
    import gc
    import subprocess
    import sys

    from conftest import cli_env

    data, _, ctx = parts()
    out = tmp_path / "lib"
    trainer = Trainer(networks(ctx), advinf.create("game", "ali"), data, train=SPEC, run_dir=out)
    trainer.fit(stop_after=5)
    again = Trainer(networks(ctx), advinf.create("game", "ali"), data, train=SPEC, run_dir=out, resume=True)
    before = (out / "metrics.jsonl").read_text()
    script = ("import sys, advinf\ntry:\n    advinf.run_recipe(None, out=sys.argv[1], resume=True)\n"
              "except advinf.UserError as e:\n    print(e); sys.exit(2)\n")
    res = subprocess.run([sys.executable, "-c", script, str(out)], capture_output=True, text=True, env=cli_env(),
                         timeout=120)
    assert res.returncode == 2 and f"{out} is in use" in res.stdout, res.stdout + res.stderr
    assert (out / "metrics.jsonl").read_text() == before
    del trainer
    gc.collect()
    res = subprocess.run([sys.executable, "-c", script, str(out)], capture_output=True, text=True, env=cli_env(),
                         timeout=120)
    assert res.returncode == 2 and "is in use" in res.stdout, "the second Trainer still holds it"
    del again
    gc.collect()
    res = subprocess.run([sys.executable, "-c", script, str(out)], capture_output=True, text=True, env=cli_env(),
                         timeout=120)
    assert res.returncode == 0 and "is in use" not in res.stdout + res.stderr, res.stdout + res.stderr


_STOPPED_BY = """
import os, signal, sys
import advinf
from advinf import Networks, Trainer, TrainSpec

sig, on_signal, out = signal.Signals[sys.argv[1]], sys.argv[2], sys.argv[3]


class StoppedAtStep3(Trainer):
    def train_step(self):
        result = super().train_step()
        if self.step == 3:
            os.kill(os.getpid(), sig)  # as Ctrl-C or a job scheduler would, between two steps
        return result


data = advinf.create("dataset", "mixture25", None, samples=512, heldout=128)
prior = advinf.create("prior", "gaussian", None, dim=2)
ctx = advinf.BuildContext(dataset=data, prior=prior)
nets = Networks(prior, encoder=advinf.create("encoder", "toy_encoder", ctx, hidden=16),
                decoder=advinf.create("decoder", "toy_decoder", ctx, hidden=16),
                critic=advinf.create("critic", "toy_critic", ctx, hidden=8))
trainer = StoppedAtStep3(nets, advinf.create("game", "ali"), data, run_dir=out,
                         train=TrainSpec(steps=500, batch_size=32, progress="none", threads=1))
try:
    result = trainer.fit(**({} if on_signal == "default" else {"on_signal": on_signal}))
except KeyboardInterrupt:
    print("KeyboardInterrupt at step", trainer.step)
    sys.exit(7)
print("returned", result.stopped, trainer.step)
"""


@pytest.mark.parametrize("sig,on_signal,code,said", [
    ("SIGINT", "default", 7, "KeyboardInterrupt at step 3"),  # a script's Ctrl-C stops the script
    ("SIGTERM", "default", -15, ""),  # a scheduler's SIGTERM ends the process, as without advinf
    ("SIGTERM", "return", 0, "returned SIGTERM 3"),  # what `advinf run` asks for, to say it and exit 143
])
def test_a_signal_in_fit_writes_a_checkpoint_then_goes_on_to_the_callers_handler(tmp_path, sig, on_signal, code,
                                                                                said):
    import subprocess
    import sys

    from conftest import cli_env

    out = tmp_path / "run"
    res = subprocess.run([sys.executable, "-c", _STOPPED_BY, sig, on_signal, str(out)], capture_output=True,
                         text=True, env=cli_env(), timeout=300)
    assert res.returncode == code and said in res.stdout, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr and [p.name for p in (out / "checkpoints").glob("step_*")] == \
        ["step_0000003"]


def _one_sgd_step(nets, data, **kwargs):
    trainer = Trainer(nets, advinf.create("game", "ali"), data, train=SPEC,
                      optimizer=advinf.OptimizerSpec(name="sgd", lr=0.1), **kwargs)
    return trainer


def test_a_parameter_two_networks_of_one_player_share_is_stepped_once_and_the_run_resumes(tmp_path):
    """Shared weights (the encoder's first batch-norm bias is the decoder's) are one parameter: SGD moves it by
    lr * its gradient (the sum over both uses), not twice that; the checkpoint restores."""
    data, _, ctx = parts()
    nets = networks(ctx)
    nets.decoder.net[1].bias = nets.encoder.net[1].bias
    shared = nets.encoder.net[1].bias
    out = tmp_path / "tied"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns of a parameter group with duplicate parameters
        trainer = _one_sgd_step(nets, data, run_dir=out)
    group = trainer.optimizers["generator"].param_groups[0]["params"]
    assert len(group) == len({id(p) for p in group}) and sum(p is shared for p in group) == 1
    before = shared.detach().clone()
    batch = trainer.batches.first()
    torch.manual_seed(11)
    out_losses = trainer.game.losses(trainer.nets, batch)
    grad, = torch.autograd.grad(out_losses.losses["generator"], [shared])
    torch.manual_seed(11)
    trainer._update(trainer.game.losses(trainer.nets, batch), tuple(trainer.players))
    assert torch.allclose(shared.detach(), before - 0.1 * grad, atol=1e-6)
    trainer.fit(stop_after=5)
    again = networks(ctx)
    again.decoder.net[1].bias = again.encoder.net[1].bias
    resumed = Trainer(again, advinf.create("game", "ali"), data, train=SPEC, run_dir=out, resume=True,
                      optimizer=advinf.OptimizerSpec(name="sgd", lr=0.1))
    resumed.restore(advinf.checkpoint.load_checkpoint(advinf.checkpoint.latest_checkpoint(out / "checkpoints")))
    assert resumed.fit().steps == 7


def test_networks_that_would_silently_not_train_are_refused_before_training():
    """A misspelt network in a player, a network no player trains, a parameter two players would step, and an
    encoder whose output is detached each trained nothing (or twice) without a word: refused by name."""
    data, _, ctx = parts()

    def ali(*players):
        game = advinf.create("game", "ali")
        if players:
            game.players = players
        return game

    with pytest.raises(UserError, match=r"player 'generator' trains 'decodr', which is not one of the game's "
                                        r"networks \(encoder, decoder, critic\)"):
        Trainer(networks(ctx), ali(advinf.CRITIC, advinf.Player("generator", ("encoder", "decodr"))), data,
                train=SPEC)
    with pytest.raises(UserError, match=r"no player trains the decoder, and it is not frozen"):
        Trainer(networks(ctx), ali(advinf.CRITIC, advinf.Player("generator", ("encoder",))), data, train=SPEC)
    frozen = networks(ctx)
    frozen.freeze("decoder")  # meant: accepted
    Trainer(frozen, ali(advinf.CRITIC, advinf.Player("generator", ("encoder",))), data, train=SPEC)

    crossing = networks(ctx)
    crossing.critic.register_parameter("extra", crossing.decoder.net[1].bias)
    with pytest.raises(UserError, match=r"the parameter decoder.net.1.bias is also critic.extra: players 'critic' "
                                        r"and 'generator' would both step it"):
        Trainer(crossing, ali(), data, train=SPEC)

    class DetachedEncoder(advinf.Encoder):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x, y=None):
            return ImplicitPosterior(self.inner(x, y).mean.detach())

    detached = networks(ctx)
    detached.encoder = DetachedEncoder(detached.encoder)
    with pytest.raises(UserError, match=r"the loss of player 'generator' does not reach the encoder "
                                        r"\(DetachedEncoder\): none of its parameters gets a gradient"):
        Trainer(detached, ali(), data, train=SPEC)

    # connected through one joint critic batch, yet reading only the model pairs: the encoder's gradient is
    # exactly 0 (not None) while the decoder's is not; it trained the decoder alone, without a word
    def model_pairs_only(d_data, d_model):
        return advinf.divergences.losses("original", d_data, d_model)[0], -d_model.mean()

    blind = advinf.create("game", "ali", divergence="original")
    blind.divergence_fn = model_pairs_only
    with pytest.raises(UserError, match=r"game 'ali': the loss of player 'generator' gives the encoder \(ToyEncoder\) "
                                        r"a gradient of exactly 0 in every parameter on the first batch, where the "
                                        r"decoder gets one"):
        Trainer(networks(ctx), blind, data, train=SPEC)

    class Misspelt(type(blind)):  # the game's own bug: named as the game's, not blamed on the networks' options
        def losses(self, nets, batch):
            return batch.streams["labeled"]

    class Checking(type(blind)):
        def check(self, nets):
            raise RuntimeError("no critic of mine")

    with pytest.raises(UserError, match=r"game Checking: its check of the networks raised RuntimeError: no critic "
                                        r"of mine \(a bug in the game"):
        Trainer(networks(ctx), Checking(JointGameOptions(), stochastic=True), data, train=SPEC)

    class Odd(advinf.Evaluator):
        def skip_reason(self, data):
            raise KeyError("labels")

        def evaluate(self, model, data, out_dir):
            return {}

    from advinf.session import skip_warnings

    with pytest.raises(UserError, match=r"evaluator 'odd': skip_reason raised KeyError: 'labels' \(a bug in the "
                                        r"evaluator\)"):
        skip_warnings({"odd": Odd()}, data)
    with pytest.raises(UserError, match=r"game Misspelt fails on a first batch, before training: KeyError: "
                                        r"'labeled' \(in .*test_library_runs.py:\d+, the game's code\): a bug in "
                                        r"the game"):
        Trainer(networks(ctx), Misspelt(JointGameOptions(), stochastic=True), data, train=SPEC)


def test_a_conditional_library_run_takes_the_condition_its_game_builds_and_reloads(tmp_path):
    """Condition.for_game gives the Condition a recipe would build; one that disagrees with the game (another
    embedding width) was accepted, trained, and wrote a run load_run could not rebuild: refused by key."""
    import dataclasses

    data, prior, _ = parts()
    game = advinf.create("game", "conditional_ali", None, embedding_dim=16)

    def conditional_networks(condition):
        ctx = advinf.BuildContext(dataset=data, prior=prior, condition=condition)
        return Networks(prior, encoder=advinf.create("encoder", "toy_encoder", ctx, hidden=16),
                        decoder=advinf.create("decoder", "toy_decoder", ctx, hidden=16),
                        critic=advinf.create("critic", "toy_critic", ctx, hidden=8))

    condition = advinf.Condition.for_game(game, data, seed=0)
    assert (condition.kind, condition.dim, condition.embedding_dim) == ("classes", 25, 16)
    wide = dataclasses.replace(condition, embedding_dim=256)
    with pytest.raises(UserError, match=r"condition=: embedding_dim = 256 \(the game and data give 16\)"):
        Trainer(conditional_networks(condition), game, data, train=SPEC, condition=wide)
    with pytest.raises(UserError, match=r"the encoder embeds y with another Condition than the game's: "
                                        r"embedding_dim = 256"):
        Trainer(conditional_networks(wide), game, data, train=SPEC, condition=condition)
    out = tmp_path / "cond"
    Trainer(conditional_networks(condition), game, data, train=SPEC, condition=condition, run_dir=out).fit()
    run = advinf.load_run(out, device="cpu")
    assert run.condition.embedding_dim == 16 and run.sample(z=run.prior_sample(4, seed=1),
                                                            y=torch.tensor([0, 1, 2, 3])).shape == (4, 2)


def test_one_override_given_as_text_is_one_override_and_eval_every_names_evaluators(tmp_path, monkeypatch):
    """run_recipe(overrides="train.steps=5") gave 13 errors, one per character; eval_every={"mm": 5} was ignored;
    a Trainer without a run directory wrote mode_coverage.png into the current directory."""
    recipe = advinf.load_recipe(RECIPES / "ali_mixture25.toml", "train.steps=5")
    assert recipe.spec.train.steps == 5
    data, _, ctx = parts()
    coverage = advinf.create("evaluator", "mode_coverage", ctx, samples=200)
    with pytest.raises(UserError, match=r"eval_every names 'mm', which is no evaluator of this Trainer "
                                        r"\(evaluators: mode_coverage\)"):
        Trainer(networks(ctx), advinf.create("game", "ali"), data, train=SPEC, evaluators={"mode_coverage": coverage},
                eval_every={"mm": 5})
    monkeypatch.chdir(tmp_path)
    result = Trainer(networks(ctx), advinf.create("game", "ali"), data, train=SPEC,
                     evaluators={"mode_coverage": coverage}).fit()
    assert result.eval["mode_coverage"]["modes_total"] == 25 and list(tmp_path.iterdir()) == []


def test_field_defaults_of_the_public_specs_are_keywords_type_checkers_see():
    """pyright and mypy (without pydantic's plugin) see a pydantic field's default only as Field(default=...):
    with Field(100, ...) every documented TrainSpec(...) call was an error ("missing argument") to them."""
    import ast
    import inspect

    for module in (advinf.settings, advinf.recipe):
        tree = ast.parse(inspect.getsource(module))
        positional = [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Call)
                      and isinstance(node.func, ast.Name) and node.func.id == "Field" and node.args]
        assert positional == [], f"{module.__name__}: Field(...) with a positional default on lines {positional}"


def test_what_a_library_user_gets_wrong_is_told_in_advinfs_words(tmp_path):
    """A plain nn.Module critic in a GAN (an AttributeError 'uses_z'), networks in float64 (advice about sizes),
    and data holding NaN (advice to lower the learning rate after the first step)."""
    data, _, ctx = parts()

    class PlainCritic(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(2, 1)

        def forward(self, x, z=None, y=None):
            return self.net(x).squeeze(1)

    gan_nets = Networks(ctx.prior, decoder=advinf.create("decoder", "toy_decoder", ctx, hidden=16),
                        critic=PlainCritic())
    with pytest.raises(UserError, match=r"game 'gan' needs a marginal critic D\(x\) that ignores z: .* a critic of "
                                        r"your own \(an advinf.JointCritic\) sets uses_z = False"):
        Trainer(gan_nets, advinf.create("game", "gan"), data, train=SPEC)
    wide = networks(ctx)
    for name in wide:
        wide[name].double()
    with pytest.raises(UserError, match=r"the networks' parameters are float64 and the examples float32: give them "
                                        r"one dtype"):
        Trainer(wide, advinf.create("game", "ali"), data, train=SPEC)
    x = data.train.x.clone()
    x[5, 1] = float("nan")
    damaged = advinf.Dataset(advinf.Split(x, data.train.y), data.heldout, meta=data.meta)
    with pytest.raises(UserError, match=r"the first training batch holds NaN or infinite values"):
        Trainer(networks(ctx), advinf.create("game", "ali"), damaged, train=SPEC.model_copy(update={"batch_size": 512}))


def test_a_failed_evaluation_of_a_run_made_by_name_points_to_the_command_line(tmp_path):
    """A run the command line can rebuild (every component made by name) is evaluated again with advinf evaluate;
    one of modules of one's own is told the Python way (tests/test_train.py)."""
    data, _, ctx = parts()
    coverage = advinf.create("evaluator", "mode_coverage", ctx, samples=200, plot=False)

    def broken(model, data, out_dir):
        raise RuntimeError("a bug")

    coverage.evaluate = broken
    out = tmp_path / "by_name"
    trainer = Trainer(networks(ctx), advinf.create("game", "ali"), data, train=SPEC, run_dir=out,
                      evaluators={"mode_coverage": coverage})
    with pytest.raises(UserError, match=rf"Once the evaluator is fixed: advinf evaluate {out} --with mode_coverage"):
        trainer.fit()


def test_networks_frozen_after_the_trainer_or_that_cannot_be_copied_are_told_so():
    import threading

    data, _, ctx = parts()
    nets = networks(ctx)
    trainer = Trainer(nets, advinf.create("game", "ali"), data, train=SPEC)
    nets.freeze("decoder")  # torch's "One of the differentiated Tensors does not require grad" before
    with pytest.raises(UserError, match=r"the decoder was frozen \(nets.freeze, requires_grad_\(False\)\) after this "
                                        r"Trainer was built"):
        trainer.fit()
    locked = networks(ctx)
    locked.critic.lock = threading.Lock()
    with pytest.raises(UserError, match=r"the networks cannot be copied \(TypeError: cannot pickle '_thread.lock' "
                                        r"object\)"):
        Trainer(locked, advinf.create("game", "ali"), data, train=SPEC)
