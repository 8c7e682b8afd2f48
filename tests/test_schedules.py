"""Learning-rate schedules: the factor against its formula, the rates the trainer uses step by step, recipe
validation, exact resume with the schedule's state in checkpoints, and a schedule changed on resume."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import RECIPES, TINY, TINY_ENCODER

import advinf
from advinf import checkpoint as ckpt
from advinf.cli import cli
from advinf.settings import OptimizerSpec, ScheduleSpec

ALI = str(RECIPES / "ali_mixture25.toml")
EXPONENTIAL = "{name = \"exponential\", hold = 6, decay = 12, final = 0.01}"


def sets(items):
    return [a for item in items for a in ("--set", item)]


def run_cli(*args: str, extra=()):
    return CliRunner().invoke(cli, ["run", ALI, *args, *sets(TINY + TINY_ENCODER + list(extra))])


@pytest.mark.parametrize(("spec", "formula"), [
    (dict(name="constant"), lambda t: 1.0),
    (dict(name="exponential", hold=5, decay=10, final=0.01),
     lambda t: 1.0 if t < 5 else 0.01 ** (min(t - 5, 10) / 10)),
    (dict(name="linear", hold=3, decay=8, final=0.25), lambda t: 1.0 - 0.75 * min(max(t - 3, 0), 8) / 8),
    (dict(name="linear", decay=4), lambda t: max(0.0, 1.0 - t / 4)),
    (dict(name="cosine", decay=10), lambda t: (1 + math.cos(math.pi * min(t, 10) / 10)) / 2),
    (dict(name="step", hold=2, every=3, gamma=0.5), lambda t: 1.0 if t < 2 else 0.5 ** ((t - 2) // 3)),
])
def test_factor_follows_the_formula(spec, formula):
    f = ScheduleSpec.model_validate(spec).factor()
    for t in range(30):
        assert f(t) == pytest.approx(formula(t), rel=1e-12, abs=1e-15), t


def test_epochs_count_in_steps_of_the_main_stream():
    f = ScheduleSpec(name="exponential", unit="epochs", hold=2, decay=2, final=0.01).factor(steps_per_epoch=10)
    assert [f(t) for t in (0, 19, 20, 30, 40, 100)] == pytest.approx([1, 1, 1, 0.1, 0.01, 0.01])


def test_the_trainer_uses_lr_times_the_factor_at_every_step():
    """The rate each optimiser step uses is lr · f(t) after t steps, for every player (here the critic decays
    and the generator holds): read from the optimisers' param groups during training."""
    from advinf.plugins import default_host

    host = default_host()
    rec = advinf.load_recipe(ALI, TINY + TINY_ENCODER + [
        "train.steps=12", f"optimizers.critic.schedule={EXPONENTIAL}"])
    built = advinf.build(rec, host=host)
    trainer = advinf.Trainer(built.nets, built.game, built.dataset, train=rec.spec.train,
                             optimizer=rec.spec.optimizer, optimizers=rec.optimizers, seed=0)
    seen = {"critic": [], "generator": []}
    for _ in range(12):
        for player, opt in trainer.optimizers.items():
            seen[player].append(opt.param_groups[0]["lr"])
        trainer.train_step()
    f = rec.optimizers["critic"].schedule.factor()
    assert seen["critic"] == [4e-4 * f(t) for t in range(12)]
    assert seen["critic"][6] == 4e-4 and seen["critic"][9] == pytest.approx(4e-4 * 0.01 ** 0.25)
    assert seen["generator"] == [1e-4] * 12 and "generator" not in trainer.schedulers


def test_recipe_errors_name_the_key():
    bad = {
        "optimizer.schedule={name = \"exponential\", decay = 10}": ("optimizer.schedule", "needs `final`"),
        "optimizer.schedule={name = \"cosine\", decay = 0}": ("optimizer.schedule.decay", "greater than or equal"),
        "optimizer.schedule={name = \"step\", every = 2, gamma = 1.5}": ("optimizer.schedule.gamma", "less than"),
        "optimizer.schedule={name = \"linear\", decay = 5, gamma = 0.5}": ("optimizer.schedule", "takes no `gamma`"),
        "optimizer.schedule={name = \"warmup\"}": ("optimizer.schedule.name", "constant"),
        "optimizer.schedule={name = \"linear\", decay = true}": ("optimizer.schedule.decay", "valid integer"),
        "optimizer.schedule={name = \"linear\", decy = 5}": ("optimizer.schedule.decy", "did you mean 'decay'"),
        "optimizers.critic.schedule={name = \"exponential\", decay = 5, final = 0.0}":
            ("optimizers.critic.schedule", "> 0"),
        "optimizer.schedule=3": ("optimizer.schedule", ""),
    }
    for override, (key, words) in bad.items():
        res = CliRunner().invoke(cli, ["validate", ALI, "--set", override])
        assert res.exit_code == 2, (override, res.output)
        assert key in res.output and words in res.output, (override, res.output)
        assert "Traceback" not in res.output


def test_resolved_recipe_keeps_the_schedule_and_players_inherit_it():
    rec = advinf.load_recipe(ALI, [f"optimizer.schedule={EXPONENTIAL}"])
    resolved = rec.resolved()
    assert resolved["optimizer"]["schedule"] == {"name": "exponential", "unit": "steps", "hold": 6, "decay": 12,
                                                 "final": 0.01}
    assert resolved["optimizers"]["critic"]["schedule"] == resolved["optimizer"]["schedule"]  # merged over it
    assert rec.optimizers["critic"].options == {"lr": 4e-4, "betas": [0.2, 0.999]}
    again = advinf.recipe.validate_recipe(resolved)
    assert again.resolved() == resolved
    # a player's own schedule replaces the inherited one as a whole
    own = advinf.load_recipe(ALI, [f"optimizer.schedule={EXPONENTIAL}",
                                   "optimizers.critic.schedule={name = \"step\", every = 4, gamma = 0.5}"])
    assert own.optimizers["critic"].schedule == ScheduleSpec(name="step", every=4, gamma=0.5)
    assert OptimizerSpec(lr=1.0).merged({"inherit": False}).schedule is None


def _lr(run: Path) -> dict[str, float]:
    state = ckpt.load_checkpoint(ckpt.latest_checkpoint(run / "checkpoints")).state
    return {p: m["param_groups"][0]["lr"] for p, m in state["optimizers"].items()}


def test_resume_in_two_slices_equals_straight_through_with_a_decaying_schedule(tmp_path):
    common = ["train.steps=24", "train.checkpoint_every=8", "train.sample_every=0", "train.log_every=4",
              f"optimizer.schedule={EXPONENTIAL}", "optimizers.critic.schedule={name = \"step\", every = 5, "
              "gamma = 0.5}"]
    full = run_cli("--out", str(tmp_path / "full"), extra=common)
    assert full.exit_code == 0, full.output
    first = run_cli("--out", str(tmp_path / "sliced"), "--stop-after", "10", extra=common)
    assert first.exit_code == 0, first.output
    state = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path / "sliced" / "checkpoints")).state
    assert state["components"]["lr_schedule.generator"]["last_epoch"] == 10
    assert _lr(tmp_path / "sliced") == {"generator": 1e-4 * 0.01 ** (4 / 12), "critic": 4e-4 * 0.5 ** 2}
    second = run_cli("--out", str(tmp_path / "sliced"), "--resume", extra=common)
    assert second.exit_code == 0, second.output
    a = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path / "full" / "checkpoints"))
    b = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path / "sliced" / "checkpoints"))
    for part in ("model", "optim"):
        assert a.tensors[part].keys() == b.tensors[part].keys()
        for k in a.tensors[part]:
            assert torch.equal(a.tensors[part][k], b.tensors[part][k]), f"{part} {k} differs"
    assert a.state["optimizers"] == b.state["optimizers"] and a.state["components"] == b.state["components"]
    assert _lr(tmp_path / "full") == {"generator": 1e-4 * 0.01, "critic": 4e-4 * 0.5 ** 4}
    assert json.loads((tmp_path / "full" / "eval.json").read_text()) == \
        json.loads((tmp_path / "sliced" / "eval.json").read_text())


def test_a_schedule_changed_on_resume_applies_from_the_current_step(tmp_path):
    """--allow-changes: the new schedule (and learning rate) as if they had been used from step 0; removing the
    schedule returns to the recipe's constant rate."""
    out = tmp_path / "run"
    assert run_cli("--out", str(out), "--stop-after", "10", extra=["train.steps=40"]).exit_code == 0
    assert _lr(out) == {"generator": 1e-4, "critic": 4e-4}
    changed = ["train.steps=40", "optimizer.schedule={name = \"linear\", decay = 20}", "optimizers.critic.lr=2e-4"]
    res = run_cli("--out", str(out), "--resume", "--allow-changes", "--stop-after", "15", extra=changed)
    assert res.exit_code == 0, res.output
    assert "applied the changed optimiser settings" in res.output and "optimizer.schedule" in res.output
    assert "optimizer.schedule.decay" not in res.output  # a schedule added whole is named once
    assert _lr(out) == {"generator": 1e-4 * (1 - 15 / 20), "critic": 2e-4 * (1 - 15 / 20)}
    res = run_cli("--out", str(out), "--resume", "--allow-changes", "--stop-after", "20",
                  extra=["train.steps=40", "optimizer.schedule={name = \"step\", every = 4, gamma = 0.5}"])
    assert res.exit_code == 0, res.output  # a changed schedule kind is fine (an optimiser kind is not)
    assert _lr(out) == {"generator": 1e-4 * 0.5 ** 5, "critic": 4e-4 * 0.5 ** 5}
    res = run_cli("--out", str(out), "--resume", "--allow-changes", "--stop-after", "22", extra=["train.steps=40"])
    assert res.exit_code == 0, res.output
    assert _lr(out) == {"generator": 1e-4, "critic": 4e-4}


def test_an_explicit_constant_schedule_runs_and_reads_back(tmp_path):
    """`schedule = {name = "constant"}` (the default, spelled out) for one player or all: the run trains, and
    its recipe.toml, which writes every spec out in full, validates again (it held `hold = 0`, which constant
    refuses)."""
    for key in ("optimizers.critic.schedule", "optimizer.schedule"):
        out = tmp_path / key
        res = CliRunner().invoke(cli, ["run", str(RECIPES / "ali_mixture25.toml"), "--out", str(out),
                                       *[a for s in [*TINY, *TINY_ENCODER, f'{key}={{name = "constant"}}']
                                         for a in ("--set", s)]])
        assert res.exit_code == 0, res.output
        assert advinf.load_recipe(out / "recipe.toml").spec is not None
        assert CliRunner().invoke(cli, ["sample", str(out), "--out", str(tmp_path / "s.png")]).exit_code == 0
    assert ScheduleSpec(name="constant").as_table() == {"name": "constant"}


def test_a_player_that_does_not_inherit_trains_with_torch_defaults_as_its_recipe_says(tmp_path):
    out = tmp_path / "run"
    res = CliRunner().invoke(cli, ["run", str(RECIPES / "ali_mixture25.toml"), "--out", str(out),
                                   *[a for s in [*TINY, *TINY_ENCODER, "optimizers.critic.inherit=false"]
                                     for a in ("--set", s)]])
    assert res.exit_code == 0, res.output
    groups = {p: m["param_groups"][0] for p, m in
              json.loads((out / "checkpoints" / "step_0000030" / "state.json").read_text())["optimizers"].items()}
    assert groups["critic"]["betas"] == [0.9, 0.999] and groups["critic"]["lr"] == 4e-4  # torch's betas
    assert groups["generator"]["betas"] == [0.2, 0.999]  # the recipe's [optimizer]
    saved = advinf.load_recipe(out / "recipe.toml")
    assert saved.optimizers["critic"].options.get("betas") is None and saved.optimizers["critic"].complete
    # a partial spec given to a Trainer in Python is still merged over its optimizer
    assert not OptimizerSpec(lr=1e-3).complete


def test_a_schedule_that_would_never_act_in_the_run_is_warned_of():
    import warnings

    from click.testing import CliRunner
    from conftest import RECIPES

    from advinf.cli import cli

    with pytest.warns(UserWarning, match=r"schedule of player 'critic' holds the full rate for 100000 steps, the "
                                         r"whole run of 2 steps: it never decays"):
        CliRunner().invoke(cli, ["validate", "--build", str(RECIPES / "ali_mixture25.toml"), "--set",
                                 'optimizer.schedule={name="exponential", hold=100000, decay=10, final=0.01}',
                                 "--set", "train.steps=2"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = CliRunner().invoke(cli, ["validate", "--build", str(RECIPES / "ali_mixture25.toml"), "--set",
                                       'optimizer.schedule={name="exponential", hold=1, decay=10, final=0.01}',
                                       "--set", "train.steps=2"])
    assert res.exit_code == 0, res.output
