"""The step's speed properties that hold on any device: the moving average lives on the device and matches
torch's AveragedModel, and the loop reads nothing back to the host between log intervals."""

from __future__ import annotations

import contextlib

import pytest
import torch
from test_train import tiny_data, tiny_nets
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from advinf import OptimizerSpec, Trainer, TrainSpec, UserError
from advinf.capture import CapturedStep, eager_record
from advinf.ema import MovingAverage
from advinf_plugins.games import JointGame, JointGameOptions


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 2))


def _train(net: nn.Module) -> None:
    """Move the parameters and the BN statistics (and its integer step count)."""
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p))
    net.train()
    net(torch.randn(8, 3))


@pytest.mark.parametrize("decay", [0.0, 0.5, 0.999])
def test_moving_average_equals_torch_averaged_model(decay):
    net = _net()
    ours = MovingAverage(net, decay)
    theirs = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    assert list(ours.state_dict()) == list(theirs.state_dict())  # the checkpoint names ema_*.module.*, n_averaged
    for _ in range(5):
        _train(net)
        ours.update(net)
        theirs.update_parameters(net)
        for (k, a), (_, b) in zip(ours.state_dict().items(), theirs.state_dict().items(), strict=True):
            assert torch.equal(a, b), k
    assert int(ours.n_averaged) == 5


def test_moving_average_resumes_from_an_averaged_model_state():
    """A checkpoint written with AveragedModel (before this class) loads, and the average continues the same."""
    net = _net()
    theirs = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    for _ in range(3):
        _train(net)
        theirs.update_parameters(net)
    ours = MovingAverage(_net(), 0.9)
    ours.load_state_dict(theirs.state_dict())
    _train(net)
    ours.update(net)  # not a copy: the loaded count says the average has started
    theirs.update_parameters(net)
    for (k, a), (_, b) in zip(ours.state_dict().items(), theirs.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    fresh = MovingAverage(_net(), 0.9)
    fresh.update(net)
    assert not torch.equal(fresh.module[0].weight, ours.module[0].weight)


_SYNCS = ("item", "tolist", "__bool__", "__int__", "__float__", "numpy", "cpu")


@contextlib.contextmanager
def _record_host_reads(trainer: Trainer, reads: list[tuple[int, str]]):
    """Every read of a tensor's value on the host, with the trainer's step at that moment."""
    patches = contextlib.ExitStack()
    with patches:
        for name in _SYNCS:
            original = getattr(torch.Tensor, name)

            def spy(self, *args, _original=original, _name=name, **kwargs):
                reads.append((trainer.step, _name))
                return _original(self, *args, **kwargs)

            patches.enter_context(_patched(torch.Tensor, name, spy))
        yield


@contextlib.contextmanager
def _patched(obj, name, value):
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


@pytest.mark.parametrize(("update", "regularisers"), [
    ("simultaneous", {}), ("alternating", {}),
    ("simultaneous", {"r1": 1.0, "r1_every": 3, "label_smoothing": 0.1, "instance_noise": 0.1,
                      "instance_noise_steps": 8}),  # critic regularisers decide from host integers only
])
def test_the_loop_reads_values_back_only_at_log_intervals(update, regularisers):
    spec = TrainSpec(steps=12, batch_size=32, log_every=4, update=update, ema=0.9, progress="none",
                     critic_steps=2 if update == "alternating" else 1, sample_every=0, threads=1)
    game = JointGame(JointGameOptions(**regularisers), stochastic=True)
    trainer = Trainer(tiny_nets(), game, tiny_data(), train=spec, optimizer=OptimizerSpec(lr=1e-3), device="cpu")
    reads: list[tuple[int, str]] = []
    with _record_host_reads(trainer, reads):
        result = trainer.fit()
    assert result.steps == 12
    assert reads, "the spy saw nothing: the log lines must read the losses"
    assert {step for step, _ in reads} <= {4, 8, 12}, sorted(set(reads))


def _trainer(update: str = "simultaneous", game: dict | None = None, optimizer: dict | None = None,
             **spec) -> Trainer:
    train = TrainSpec(steps=12, batch_size=32, update=update, critic_steps=2 if update == "alternating" else 1,
                      ema=0.9, progress="none", sample_every=0, threads=1, **spec)
    return Trainer(tiny_nets(), JointGame(JointGameOptions(**(game or {})), stochastic=True), tiny_data(),
                   train=train, optimizer=OptimizerSpec(lr=1e-3, **(optimizer or {})), device="cpu")


@pytest.mark.parametrize("update", ["simultaneous", "alternating"])
def test_a_replayed_step_reads_each_step_s_own_batches(update):
    """The plumbing around the CUDA graph, on CPU: warm-up steps, then the step "recorded" once and replayed on
    static batch buffers refilled each step. eager_record replays by running the step again on those buffers,
    so any batch copied wrongly, drawn out of order or missing shows as different parameters."""
    plain, replayed = _trainer(update), _trainer(update)
    forwards = 3 if update == "alternating" else 1
    replayed._captured = CapturedStep(replayed._step_on, replayed.batches.next, forwards, replayed.device,
                                      warmup=2, record=eager_record)
    torch.manual_seed(0)
    plain.fit()
    torch.manual_seed(0)
    replayed.fit()
    assert replayed._captured.calls == 12 and len(replayed._captured.static) == forwards
    for name in ("encoder", "decoder", "critic"):
        a, b = plain.nets[name].state_dict(), replayed.nets[name].state_dict()
        assert all(torch.equal(v, b[k]) for k, v in a.items()), name
    assert all(torch.equal(v, replayed.ema["decoder"].state_dict()[k])
               for k, v in plain.ema["decoder"].state_dict().items())


def test_a_step_that_draws_more_batches_than_recorded_fails_loudly():
    trainer = _trainer()
    trainer._captured = CapturedStep(trainer._step_on, trainer.batches.next, 0, trainer.device, warmup=0,
                                     record=eager_record)
    with pytest.raises(StopIteration):
        trainer.train_step()


@pytest.mark.parametrize(("spec", "why"), [
    ({}, "needs a CUDA device"),
    ({"nonfinite": "skip"}, "decides on the host"),
    ({"optimizer": {"schedule": {"name": "linear", "decay": 10}}}, "schedule changes the rate"),
    ({"game": {"r1": 1.0, "r1_every": 4}}, "game.r1_every = 4 applies R1 on some steps only"),
    ({"game": {"instance_noise": 0.1, "instance_noise_steps": 100}}, "game.instance_noise_steps anneals"),
])
def test_cuda_graph_refuses_what_it_cannot_record(spec, why):
    """Each refusal names what the step would decide on the host (on CPU the recipe's conflicts come before the
    missing device, so each is seen here)."""
    with pytest.raises(UserError, match=why):
        _trainer(cuda_graph=True, **spec)


@pytest.mark.parametrize("spec", [{"optimizer": {"schedule": {"name": "constant"}}},
                                  {"game": {"r1": 1.0}}, {"game": {"instance_noise": 0.1}}])
def test_cuda_graph_takes_what_the_recorded_step_keeps_the_same(spec):
    """A constant schedule, R1 every step and a fixed noise level decide nothing per step: only the device."""
    with pytest.raises(UserError, match="needs a CUDA device"):
        _trainer(cuda_graph=True, **spec)


def test_tf32_puts_cuda_convolutions_and_products_in_one_precision():
    """train.tf32 sets both of CUDA's fp32 precisions (torch's default mixes TF32 convolutions with IEEE products),
    in a way torch can still read back both ways; on the CPU it changes nothing. (The flags need no GPU.)"""
    from advinf.settings import set_fp32_precision

    b = torch.backends
    saved = b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32

    def state():
        return (b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32, b.cudnn.conv.fp32_precision,
                b.cuda.matmul.fp32_precision)

    try:
        set_fp32_precision(torch.device("cuda"), True)
        assert state() == (True, True, "tf32", "tf32")
        set_fp32_precision(torch.device("cuda"), False)
        assert state() == (False, False, "none", "ieee")  # "none" for cuDNN: no TF32, i.e. IEEE
        set_fp32_precision(torch.device("cpu"), True)
        assert state() == (False, False, "none", "ieee")
    finally:
        b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32 = saved


def test_a_recipe_s_tf32_is_a_boolean():
    from click.testing import CliRunner
    from conftest import RECIPES

    from advinf.cli import cli

    res = CliRunner().invoke(cli, ["validate", str(RECIPES / "ali_mixture25.toml"), "--set", 'train.tf32="yes"'])
    assert res.exit_code == 2 and "train.tf32: Input should be a valid boolean (got 'yes')" in res.output
    res = CliRunner().invoke(cli, ["validate", str(RECIPES / "ali_mixture25.toml"), "--set", "train.tf32=true"])
    assert res.exit_code == 0, res.output


def test_a_cuda_run_that_could_record_its_step_is_told_so():
    """On CUDA, a run without train.cuda_graph whose step could be recorded gets a one-line hint (recording is
    the largest gain measured on a GPU); none on the CPU, none with cuda_graph on, none where it is refused."""
    trainer = _trainer()
    assert trainer.speed_hint() is None  # the CPU
    trainer.device = torch.device("cuda")  # what the hint reads; nothing runs on it here
    assert trainer.cuda_graph_refusal() is None
    assert "--set train.cuda_graph=true records the whole step" in trainer.speed_hint()
    trainer.spec = trainer.spec.model_copy(update={"nonfinite": "skip"})
    assert "decides on the host" in trainer.cuda_graph_refusal() and trainer.speed_hint() is None
    trainer.spec = trainer.spec.model_copy(update={"nonfinite": "stop", "cuda_graph": True})
    assert trainer.speed_hint() is None



def test_a_recipe_whose_step_cannot_be_recorded_is_refused_at_its_cuda_graph_key():
    """``train.cuda_graph = true`` that cannot work is a recipe problem at that key (``advinf validate`` finds
    it, a run stops before it writes anything): the recipe's own conflicts anywhere, the device only where the
    machine is asked about (not when a trained run's recipe is read back)."""
    from click.testing import CliRunner
    from conftest import RECIPES

    from advinf.cli import cli
    from advinf.recipe import read_toml, validate_recipe

    toy = RECIPES / "ali_mixture25.toml"
    for sets, why in ((["train.device=cpu"], "it needs a CUDA device (train.device)"),
                      (["train.nonfinite=skip"], 'train.nonfinite = "skip" decides on the host'),
                      (['optimizers.critic.schedule={name = "exponential", decay = 10, final = 0.1}'],
                       "a learning-rate schedule changes the rate on the host each step")):
        res = CliRunner().invoke(cli, ["validate", str(toy), "--set", "train.cuda_graph=true",
                                       *(a for s in sets for a in ("--set", s))])
        assert res.exit_code == 2, res.output
        assert f"train.cuda_graph: cannot be true here: {why}" in res.output
    data = {**read_toml(toy)}
    data["train"] = {**data["train"], "cuda_graph": True, "device": "cuda"}
    assert validate_recipe(data, environment=False).spec.train.cuda_graph  # a GPU run, read on this machine
