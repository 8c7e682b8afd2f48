"""Critic regularisers: spectral normalisation of the built-in critics, R1 (with its interval), one-sided label
smoothing and instance noise in the joint games; each checked against a hand computation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import RECIPES, TINY, TINY_ENCODER

import advinf
from advinf import Batch, BuildContext, JointCritic, Networks
from advinf.regularisers import r1, spectral_normalise

DX, DZ = 3, 2


class LinearCritic(JointCritic):
    """D(x, z) = a . x + b . z + c: its gradient is (a, b) everywhere; records what it is called with."""

    def __init__(self, a: float, b: float):
        super().__init__()
        self.a = torch.nn.Parameter(torch.full((DX,), a))
        self.b = torch.nn.Parameter(torch.full((DZ,), b))
        self.calls: list[tuple[torch.Tensor, torch.Tensor | None]] = []

    def forward(self, x, z, y=None):
        self.calls.append((x.detach().clone(), None if z is None else z.detach().clone()))
        return x @ self.a + (0 if z is None else z @ self.b)


class Fixed(torch.nn.Module):
    """A decoder/encoder stand-in: a fixed linear map (so the game's draws are reproducible)."""

    def __init__(self, din: int, dout: int, posterior: bool):
        super().__init__()
        self.lin, self.posterior = torch.nn.Linear(din, dout), posterior

    def forward(self, v, y=None):
        out = self.lin(v)
        return advinf.DeterministicPosterior(out) if self.posterior else out


def _setup(a=0.5, b=-2.0, **options):
    torch.manual_seed(0)
    prior = advinf.create("prior", "gaussian", None, dim=DZ)
    nets = Networks(prior, encoder=Fixed(DX, DZ, True), decoder=Fixed(DZ, DX, False), critic=LinearCritic(a, b))
    game = advinf.create("game", "bigan", BuildContext(), **options)
    return nets, game, torch.randn(8, DX)


def _losses(nets, game, x, step=0, seed=1):
    torch.manual_seed(seed)
    return game.losses(nets, Batch(x, index=1000 + step, step=step))  # the step decides, not the batch count


@pytest.mark.parametrize("inputs", ["joint", "x"])
def test_r1_penalty_is_gamma_half_the_squared_gradient_norm(inputs):
    a, b, gamma = 0.5, -2.0, 3.0
    nets, plain, x = _setup(a, b)
    _, game, _ = _setup(a, b, r1=gamma, r1_inputs=inputs)
    base = _losses(nets, plain, x)
    out = _losses(nets, game, x)
    norm = DX * a * a + (DZ * b * b if inputs == "joint" else 0)  # ||(a, b)||^2, the same for every example
    assert out.scalars["r1_penalty"].item() == pytest.approx(gamma / 2 * norm)
    assert (out.losses["critic"] - base.losses["critic"]).item() == pytest.approx(gamma / 2 * norm)
    assert out.losses["generator"].item() == base.losses["generator"].item()  # the penalty trains the critic only
    grads = torch.autograd.grad(out.scalars["r1_penalty"].new_zeros(()) + out.losses["critic"], [nets.critic.a])
    plain_grad = torch.autograd.grad(_losses(nets, plain, x).losses["critic"], [nets.critic.a])
    assert torch.allclose(grads[0] - plain_grad[0], torch.full((DX,), gamma * a))  # d/da of gamma/2 * DX a^2


def test_lazy_r1_applies_every_k_steps_scaled_by_k():
    nets, game, x = _setup(r1=2.0, r1_every=4)
    on = [_losses(nets, game, x, step=i).scalars["r1_penalty"].item() for i in range(8)]
    full = 2.0 / 2 * (DX * 0.25 + DZ * 4.0)
    assert on == pytest.approx([4 * full, 0, 0, 0, 4 * full, 0, 0, 0])


def test_r1_of_a_nonlinear_critic_against_autograd_by_hand():
    critic = torch.nn.Module()
    w = torch.randn(DX)
    critic_fn = lambda x, z, y=None: (x * w).pow(2).sum(1) + z.sum(1) * 0.5  # noqa: E731
    x, z = torch.randn(5, DX), torch.randn(5, DZ)
    expected = (2 * x * w * w).pow(2).sum(1) + DZ * 0.25  # d/dx = 2 w^2 x, d/dz = 0.5
    assert torch.allclose(r1(critic_fn, x, z), expected)
    assert torch.allclose(r1(critic_fn, x, z, inputs="x"), expected - DZ * 0.25)
    del critic


@pytest.mark.parametrize("divergence", ["original", "minimax", "hinge", "least_squares"])
def test_label_smoothing_changes_the_critic_loss_by_the_right_amount(divergence):
    alpha = 0.1
    nets, plain, x = _setup(divergence=divergence)
    _, smooth, _ = _setup(divergence=divergence, label_smoothing=alpha)
    base, out = _losses(nets, plain, x), _losses(nets, smooth, x)
    d_data = nets.critic.calls[-1][0] @ nets.critic.a + nets.critic.calls[-1][1] @ nets.critic.b
    d_data = d_data[: x.shape[0]].detach()  # one joint batch: data pairs first
    expected = {  # smoothed minus plain critic loss, per divergence
        "original": alpha * d_data.mean(),  # softplus(d) - softplus(-d) = d
        "minimax": alpha * d_data.mean(),
        "hinge": alpha * (F.relu(1 + d_data) - F.relu(1 - d_data)).mean(),
        "least_squares": ((d_data - 1 + alpha) ** 2 - (d_data - 1) ** 2).mean(),
    }[divergence]
    assert (out.losses["critic"] - base.losses["critic"]).item() == pytest.approx(expected.item(), rel=1e-5)
    assert out.losses["generator"].item() == pytest.approx(base.losses["generator"].item())


def test_label_smoothing_is_the_cross_entropy_with_target_one_minus_alpha():
    d_data, d_model = torch.randn(6), torch.randn(6)
    critic, _ = advinf.divergences.losses("original", d_data, d_model, smoothing=0.2)
    bce = F.binary_cross_entropy_with_logits
    expected = bce(d_data, torch.full_like(d_data, 0.8)) + bce(d_model, torch.zeros_like(d_model))
    assert critic.item() == pytest.approx(expected.item(), rel=1e-6)


def test_label_smoothing_needs_a_divergence_that_takes_it(tmp_path):
    from conftest import write

    plugin = write(tmp_path / "plain.py", "from advinf import hookimpl\n\n"
                   "def plain(d_data, d_model):\n    return d_model.mean() - d_data.mean(), d_data.mean()\n\n"
                   "@hookimpl\ndef register_divergences(register):\n    register('plain', plain)\n")
    with pytest.raises(advinf.RecipeError, match="label_smoothing needs a divergence that takes `smoothing`; "
                                                 "divergence 'plain' does not"):
        advinf.load_recipe(RECIPES / "ali_mixture25.toml", [f'plugins=["{plugin}"]', "game.divergence=plain",
                                                            "game.label_smoothing=0.1"])


def test_instance_noise_reaches_the_critic_and_anneals():
    nets, game, x = _setup(instance_noise=0.5, instance_noise_steps=100)
    nets_plain, plain, _ = _setup()
    _losses(nets_plain, plain, x)
    clean_x, clean_z = nets_plain.critic.calls[-1]
    _losses(nets, game, x, step=0)
    noisy_x, noisy_z = nets.critic.calls[-1]
    assert torch.equal(noisy_z, clean_z)  # z is left alone
    noise = noisy_x - clean_x
    assert 0.3 < noise.std().item() < 0.7 and noise.abs().min() > 0
    _losses(nets, game, x, step=75)  # a quarter of the noise left
    assert 0.05 < (nets.critic.calls[-1][0] - clean_x).std().item() < 0.2
    _losses(nets, game, x, step=100)
    assert torch.equal(nets.critic.calls[-1][0], clean_x)


def _weights(module: torch.nn.Module) -> list[torch.Tensor]:
    return [m.weight.detach().flatten(1) for m in module.modules()
            if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]


@pytest.mark.parametrize(("critic", "ctx_args"), [
    ("toy_critic", {"dataset": ("mixture25", {"samples": 64, "heldout": 0}), "dim": 2}),
    ("digits_critic", {"dataset": ("digits", {}), "dim": 16}),
    ("ali_svhn_critic", {"dataset": None, "dim": 64}),
])
def test_spectral_norm_option_bounds_every_weight_after_forwards(critic, ctx_args):
    torch.manual_seed(0)
    dataset = ctx_args["dataset"]
    prior = advinf.create("prior", "gaussian", None, dim=ctx_args["dim"], spatial=critic == "ali_svhn_critic")
    if dataset is None:
        ctx = BuildContext(prior=prior)
        options = {"channels": 3}
        x = torch.rand(4, 3, 32, 32)
    else:
        ctx = BuildContext(dataset=advinf.create("dataset", dataset[0], None, **dataset[1]), prior=prior)
        options = {}
        x = ctx.dataset.decode(ctx.dataset.train.take(torch.arange(4))[0])
    z = prior.sample(4)
    plain = advinf.create("critic", critic, ctx, **options)
    normalised = advinf.create("critic", critic, ctx, spectral_norm=True, **options)
    with torch.no_grad():  # weights far from norm 1, in both
        for m in plain.modules():
            if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
                m.weight.mul_(100)
        for m in normalised.modules():
            if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
                m.parametrizations.weight.original.mul_(100)
    assert min(torch.linalg.matrix_norm(w, ord=2).item() for w in _weights(plain)) > 1.2  # the test can fail
    for _ in range(30):  # each training-mode forward refines the estimate by one power iteration
        normalised(x, z)
    norms = [torch.linalg.matrix_norm(w, ord=2).item() for w in _weights(normalised)]
    assert norms and max(norms) < 1.05


def test_spectral_normalise_leaves_parametrised_layers_alone_and_handles_transposed_convs():
    module = torch.nn.Sequential(torch.nn.ConvTranspose2d(3, 5, 4), torch.nn.Linear(4, 4))
    spectral_normalise(spectral_normalise(module))
    assert len(module[0].parametrizations.weight) == 1
    for _ in range(30):
        module[0](torch.randn(1, 3, 4, 4))
    w = module[0].weight.detach().transpose(0, 1).flatten(1)  # (out, in * k * k) for a transposed conv
    assert torch.linalg.matrix_norm(w, ord=2).item() < 1.05


def test_a_regularised_recipe_trains_and_resumes_exactly(tmp_path):
    overrides = [*TINY, *TINY_ENCODER, "critic.spectral_norm=true", "game.r1=1.0", "game.r1_every=4",
                 "game.label_smoothing=0.1", "game.instance_noise=0.1", "game.instance_noise_steps=20"]
    whole = advinf.run_recipe(RECIPES / "ali_mixture25.toml", out=tmp_path / "whole", overrides=overrides)
    advinf.run_recipe(RECIPES / "ali_mixture25.toml", out=tmp_path / "sliced", overrides=overrides, stop_after=13)
    sliced = advinf.run_recipe(RECIPES / "ali_mixture25.toml", out=tmp_path / "sliced", overrides=overrides,
                               resume=True)
    a, b = whole.trainer.nets.critic.state_dict(), sliced.trainer.nets.critic.state_dict()
    assert any("parametrizations" in k for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)
    import json

    record = json.loads((tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["r1_penalty"] > 0 and math.isfinite(record["loss_critic"])


@pytest.mark.parametrize("critic_steps,every", [(1, 2), (1, 4), (2, 3)])
def test_lazy_r1_and_annealing_count_training_steps_under_the_alternating_update(monkeypatch, critic_steps, every):
    """Under update = "alternating" a step draws critic_steps + 1 batches; R1 and the noise level go by the step
    (batch.step), as documented: R1 on every k-th step's critic updates, so gamma on average. Counted by batches
    drawn (batch.index), (1, 2) put R1 on every critic update (2 gamma) and the noise ran out twice as early."""
    from test_train import tiny_data, tiny_nets

    from advinf_plugins import games

    game = games.JointGame(games.JointGameOptions(r1=1.0, r1_every=every, instance_noise=0.5,
                                                  instance_noise_steps=4), stochastic=True)
    train = advinf.TrainSpec(steps=6, batch_size=32, update="alternating", critic_steps=critic_steps,
                             progress="none", sample_every=0, log_every=3, threads=1)
    passes = []  # per forward pass: [step, noise std, R1 taken]
    real_losses, real_std, real_r1 = game.losses, game._noise_std, games.regularisers.r1
    monkeypatch.setattr(game, "losses", lambda nets, batch: (passes.append([batch.step]), real_losses(nets, batch))[1])
    monkeypatch.setattr(game, "_noise_std", lambda step: (passes[-1].append(real_std(step)), real_std(step))[1])
    monkeypatch.setattr(games.regularisers, "r1", lambda *a, **k: (passes[-1].append("r1"), real_r1(*a, **k))[1])
    trainer = advinf.Trainer(tiny_nets(), game, tiny_data(), train=train, optimizer=advinf.OptimizerSpec(lr=1e-3))
    trainer.fit()
    steps = [s for s in range(6) for _ in range(critic_steps + 1)]
    critic_pass = [i < critic_steps for _ in range(6) for i in range(critic_steps + 1)]
    passes = passes[-len(steps):]  # after the trial step's
    assert [p[0] for p in passes] == steps
    assert [p[1] for p in passes] == [0.5 * max(0.0, 1 - s / 4) for s in steps]
    # on the critic's passes only: the generator's pass does not read the penalty (it was computed there too)
    assert ["r1" in p for p in passes] == [s % every == 0 and c for s, c in zip(steps, critic_pass, strict=True)]


def test_r1_leaves_the_critic_s_buffers_as_they_were():
    """R1's own forward pass on the data pairs must not count as a second training batch of a batch-norm critic
    (its running statistics moved twice a step, towards the data pairs' alone)."""
    critic = torch.nn.Sequential(torch.nn.Linear(DX + DZ, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(),
                                 spectral_normalise(torch.nn.Linear(8, 1)))
    fn = _BufferedCritic(critic)
    before = {k: v.clone() for k, v in fn.state_dict().items()}
    penalty = r1(fn, torch.randn(16, DX), torch.randn(16, DZ))
    after = fn.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # running stats, batches tracked, u vectors
    penalty.sum().backward()  # the graph is whole: nothing it saved was overwritten
    assert fn.net[0].weight.grad is not None
    with pytest.raises(ValueError, match=r"gives \(3,\) outputs per example; give reduce"):
        r1(lambda x, z, y=None: torch.cat([x, z], 1)[:, :3], torch.randn(4, DX), torch.randn(4, DZ))
    out = r1(lambda x, z, y=None: torch.cat([x, z], 1)[:, :3], torch.randn(4, DX), torch.randn(4, DZ),
             reduce=lambda logits: logits[:, 0] - logits[:, 1])
    assert torch.allclose(out, torch.full((4,), 2.0))  # d/dx0 = 1, d/dx1 = -1


class _BufferedCritic(JointCritic):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x, z, y=None):
        return self.net(torch.cat([x, z], 1)).squeeze(1)


@pytest.mark.parametrize("divergence", ["original", "minimax", "hinge", "least_squares"])
def test_the_logged_critic_outputs_are_probabilities_only_where_the_logits_are_log_odds(divergence):
    nets, game, x = _setup(divergence=divergence)
    out = _losses(nets, game, x)
    d_data = nets.critic.calls[-1][0] @ nets.critic.a + nets.critic.calls[-1][1] @ nets.critic.b
    d_data = d_data[: x.shape[0]].detach()  # one joint batch: data pairs first
    read = torch.sigmoid(d_data) if divergence in ("original", "minimax") else d_data  # LS targets 1 and 0
    assert out.scalars["critic_data"].item() == pytest.approx(read.mean().item(), rel=1e-6)



@pytest.mark.parametrize("r1", [0.0, 10.0])
def test_a_compiled_step_trains_as_the_eager_one_on_the_cpu(r1):
    """`train.compile = true` failed on its first step, after the run directory was made: with R1, AOTAutograd
    takes no double backward; without, its donated buffers refused the simultaneous step's retain_graph. R1 now
    runs eagerly inside the compiled losses, donated buffers are off, and with inductor drawing its random numbers
    as eager torch does (fallback_random), the weights are the eager run's."""
    import torch._inductor.config as inductor_config
    from test_train import tiny_data, tiny_nets

    from advinf_plugins import games

    weights = []
    for compile_, eager_random in ((False, True), (True, True), (True, False)):  # the last: inductor's own RNG
        game = games.JointGame(games.JointGameOptions(r1=r1), stochastic=True)
        train = advinf.TrainSpec(steps=2, batch_size=32, compile=compile_, progress="none", sample_every=0,
                                 threads=1, ema=0)
        trainer = advinf.Trainer(tiny_nets(), game, tiny_data(), train=train,
                                 optimizer=advinf.OptimizerSpec(name="sgd", lr=0.1))
        torch._dynamo.reset()  # a fresh compilation under each setting
        with inductor_config.patch(fallback_random=eager_random):
            trainer.fit()
        weights.append({f"{n}.{k}": v.clone() for n, m in trainer.nets.items() for k, v in m.state_dict().items()})
    eager, compiled, own_random = weights
    assert all(torch.allclose(eager[k], compiled[k], atol=1e-6, rtol=1e-5) for k in eager), \
        max((eager[k] - compiled[k]).abs().max().item() for k in eager if eager[k].is_floating_point())
    assert all(bool(torch.isfinite(v).all()) for v in own_random.values() if v.is_floating_point())
