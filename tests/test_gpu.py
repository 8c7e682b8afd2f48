"""GPU checks (marked ``gpu``; skipped cleanly without CUDA): the paper recipe and the toy recipe on CUDA with
the speed options, a checkpoint written on the GPU and resumed, the recorded step (train.cuda_graph) against the
eager one, and no host synchronisation in the loop."""

from __future__ import annotations

import json
import math

import pytest
import torch
from click.testing import CliRunner
from conftest import RECIPES, TINY, TINY_ENCODER
from image_formats import write_svhn

import advinf
from advinf.cli import cli

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def sets(items):
    return [a for item in items for a in ("--set", item)]


@pytest.mark.parametrize("speed", [[], ["train.autocast=bf16", "train.channels_last=true"], ["train.compile=true"],
                                   ["train.cuda_graph=true", "train.autocast=bf16", "train.channels_last=true"]])
def test_svhn_recipe_on_cuda(tmp_path, speed):
    write_svhn(tmp_path / "svhn", {"extra": 64, "test": 16})
    out = tmp_path / "run"
    args = ["run", str(RECIPES / "ali_svhn.toml"), "--out", str(out), "--stop-after", "6",
            *sets([f"dataset.root={tmp_path / 'svhn'}", "dataset.verify=false", "train.steps=12", "train.batch_size=16",
                   "train.device=cuda", "train.log_every=3", "train.progress=none", *speed])]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(cli, args[:4] + ["--resume"] + args[6:])
    assert res.exit_code == 0, res.output
    records = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [3, 6, 9, 12]
    assert all(math.isfinite(r["loss_critic"]) for r in records)
    loaded = advinf.load_run(out)
    assert loaded.device.type == "cuda" and next(loaded.decoder.parameters()).is_cuda


def test_toy_recipe_on_cuda(tmp_path):
    res = CliRunner().invoke(cli, ["run", str(RECIPES / "ali_mixture25.toml"), "--out", str(tmp_path / "run"),
                                   *sets(TINY + TINY_ENCODER + ["train.device=cuda"])])
    assert res.exit_code == 0, res.output
    assert "modes_covered" in json.loads(res.stdout)["mode_coverage"]


def _toy_trainer(game_options: dict | None = None, **spec):
    from test_train import tiny_data, tiny_nets

    from advinf_plugins.games import JointGame, JointGameOptions

    train = advinf.TrainSpec(steps=20, batch_size=32, ema=0.9, progress="none", sample_every=0, log_every=10,
                             device="cuda", **spec)
    game = JointGame(JointGameOptions(**(game_options or {})), stochastic=True)
    return advinf.Trainer(tiny_nets(), game, tiny_data(), train=train, optimizer=advinf.OptimizerSpec(lr=1e-3))


def test_critic_regularisers_add_no_host_synchronisation():
    """R1 every 3 steps, label smoothing and annealed instance noise: the step still never waits for the GPU."""
    trainer = _toy_trainer({"r1": 1.0, "r1_every": 3, "label_smoothing": 0.1, "instance_noise": 0.1,
                            "instance_noise_steps": 8})
    for _ in range(3):
        trainer.train_step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(10):  # batch.step advances: both R1 branches and the annealing run
            trainer.train_step()
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("update", ["simultaneous", "alternating"])
def test_the_recorded_step_trains_as_the_eager_one(update):
    """train.cuda_graph: the step recorded once and replayed gives the eager step's parameters (CUDA graphs
    draw the same Philox random numbers as eager kernels), and the replays really come from one graph."""
    eager, graph = _toy_trainer(update=update), _toy_trainer(update=update, cuda_graph=True)
    for t in (eager, graph):
        torch.manual_seed(0)
        t.fit()
    assert graph._captured is not None and graph._captured.calls == 20 and graph._captured._replay is not None
    for name in ("encoder", "decoder", "critic"):
        a, b = eager.nets[name].state_dict(), graph.nets[name].state_dict()
        for k, v in a.items():
            torch.testing.assert_close(b[k], v, rtol=1e-4, atol=1e-5, msg=f"{name}.{k}")


def test_the_recorded_compiled_step_trains_as_the_eager_compiled_one():
    """train.compile with train.cuda_graph: the compiled losses (compiled during the eager warm-up steps) are
    recorded with the rest of the step, and replaying them trains as the compiled step run eagerly does (the same
    generated kernels, the same random numbers)."""
    eager, graph = _toy_trainer(compile=True), _toy_trainer(compile=True, cuda_graph=True)
    for t in (eager, graph):
        torch.manual_seed(0)
        t.fit()
    assert graph._captured is not None and graph._captured.calls == 20 and graph._captured._replay is not None
    for name in ("encoder", "decoder", "critic"):
        a, b = eager.nets[name].state_dict(), graph.nets[name].state_dict()
        for k, v in a.items():
            torch.testing.assert_close(b[k], v, rtol=1e-4, atol=1e-5, msg=f"{name}.{k}")


@pytest.mark.parametrize("cuda_graph", [False, True])
def test_no_host_synchronisation_inside_the_loop(cuda_graph):
    """Between log intervals the step never waits for the GPU: any synchronising call raises."""
    trainer = _toy_trainer(cuda_graph=cuda_graph)
    for _ in range(5):  # warm-up and recording (the recorded step allocates, which may synchronise)
        trainer.train_step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(10):
            trainer.train_step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(trainer._losses_vector(trainer.train_step())).all()
