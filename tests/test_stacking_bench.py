"""advinf_benchmarks.stacking: the stacked toy step is S independent copies of the toy's networks and maths."""

from __future__ import annotations

import json

import pytest
import torch

import advinf
from advinf import BuildContext
from advinf_benchmarks import stacking


def _slice(toy: stacking.StackedToy, s: int) -> stacking.StackedToy:
    def cut(ps):
        return [p.detach()[s:s + 1].clone() for p in ps]

    return stacking.StackedToy(cut(toy.encoder), cut(toy.decoder), cut(toy.critic))


def test_each_seed_of_the_stack_computes_its_own_single_seed_losses():
    torch.manual_seed(0)
    toy = stacking.make_toy(3, seed=1)
    for p in toy.encoder + toy.decoder + toy.critic:  # away from the initial zeros and ones
        p.data.add_(0.05 * torch.randn_like(p))
    x, eps, z = (torch.randn(3, stacking.BATCH, 2) for _ in range(3))
    critic_loss, generator_loss = stacking.losses(toy, x, eps, z)
    assert critic_loss.shape == generator_loss.shape == (3,)
    for s in range(3):  # batch norm, maxout and the losses never mix seeds
        one_c, one_g = stacking.losses(_slice(toy, s), x[s:s + 1], eps[s:s + 1], z[s:s + 1])
        torch.testing.assert_close(critic_loss[s:s + 1], one_c, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(generator_loss[s:s + 1], one_g, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(critic_loss[0], critic_loss[1])  # the seeds differ


def test_the_stack_has_the_toy_plugin_s_networks_per_seed():
    ctx = BuildContext()
    nets = {"encoder": advinf.create("encoder", "toy_encoder", ctx, x_dim=2, z_dim=2),
            "decoder": advinf.create("decoder", "toy_decoder", ctx, x_dim=2, z_dim=2),
            "critic": advinf.create("critic", "toy_critic", ctx, x_dim=2, z_dim=2)}
    toy = stacking.make_toy(2)
    for name, net in nets.items():
        plugin = sorted(p.numel() for p in net.parameters())
        stacked = sorted(p[0].numel() for p in getattr(toy, name))
        assert plugin == stacked, name


def test_one_stacked_step_updates_every_seed_and_the_command_reports_json(capsys):
    toy = stacking.make_toy(2)
    before = [p.detach().clone() for p in toy.encoder + toy.decoder + toy.critic]
    stacking.make_step(toy)()
    after = toy.encoder + toy.decoder + toy.critic
    for s in range(2):
        assert all(not torch.equal(a[s], b[s]) for a, b in zip(after, before, strict=True))
    stacking.main(["--seeds", "2", "--steps", "1", "--warmup", "0", "--repeats", "1", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert out["seeds"] == 2 and out["ms_per_seed_step_single"] > 0 and out["ms_per_seed_step_stacked"] > 0
    assert out["stacking_speedup"] == out["ms_per_seed_step_single"] / out["ms_per_seed_step_stacked"]


@pytest.mark.parametrize(("args", "message"), [
    (["--seeds", "1"], "--seeds must be at least 2"),
    (["--device", "nonsense"], "--device nonsense"),
    pytest.param(["--device", "cuda"], "CUDA is not available", marks=pytest.mark.skipif(
        torch.cuda.is_available(), reason="CUDA is there")),
])
def test_bad_arguments_are_one_line_errors(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        stacking.main(args)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_exactness_covers_every_toy_layer_and_sees_a_one_ulp_difference(monkeypatch, capsys):
    report = stacking.exactness(2)
    assert [(layer["in"], layer["out"]) for layer in report["linear"]] == \
        [(i, o) for i, o, _ in stacking.TOY_LINEAR_LAYERS]
    assert set(report["batch_norm"]) == {"output", "grad_input", "grad_scale", "grad_shift", "running_mean",
                                         "running_var"}
    one_layer = stacking.linear_exactness(2, 2, 400, False)
    real_linear = torch.nn.functional.linear
    # one ulp more in each seed's own product: the check must call it a difference, and only where it is
    monkeypatch.setattr(stacking.F, "linear", lambda x, w, b=None: torch.nextafter(
        real_linear(x, w, b), torch.tensor(float("inf"))))
    nudged = stacking.linear_exactness(2, 2, 400, False)
    assert one_layer["output"] and not nudged["output"] and nudged["grad_weight"] == one_layer["grad_weight"]
    monkeypatch.undo()
    stacking.main(["--exactness", "--seeds", "2"])
    out = capsys.readouterr().out
    assert "linear 200-1000:" in out and "batch norm:" in out


def test_exactness_refuses_another_device(capsys):
    with pytest.raises(SystemExit) as exit_info:
        stacking.main(["--exactness", "--device", "meta"])
    assert exit_info.value.code == 2 and "--exactness checks the CPU" in capsys.readouterr().err
