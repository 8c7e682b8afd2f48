"""The paper's SVHN, CIFAR-10, CelebA and Tiny ImageNet networks (plugins/paper_networks.py, ali-reference §1)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import advinf
from advinf import BuildContext, Dataset, DeterministicPosterior, GaussianPosterior, Split, UserError
from advinf_plugins.paper_networks import ARCHS, Block, Maxout, PaperCritic, PaperDecoder, PaperEncoder, create_networks
from advinf_plugins.priors import GaussianPrior

torch.set_num_threads(1)


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def make(arch: str, seed: int = 0, **options):
    torch.manual_seed(seed)
    return create_networks(arch, None, **options)


def blocks(seq: nn.Module) -> list[Block]:
    return [m for m in seq.modules() if isinstance(m, Block)]


@pytest.mark.parametrize("arch,nlat,size,feature_shapes", [
    ("svhn", 256, 32, [(256, 4, 4), (512, 1, 1), (512, 1, 1)]),
    ("cifar10", 64, 32, [(256, 4, 4), (512, 1, 1), (512, 1, 1)]),
    ("celeba", 256, 64, [(256, 13, 13), (256, 4, 4), (512, 1, 1)]),
    ("tiny_imagenet", 256, 64, [(256, 1, 1), (2048, 1, 1), (2048, 1, 1)]),
])
def test_output_shapes(arch, nlat, size, feature_shapes):
    enc, dec, critic = make(arch)
    x, z = torch.rand(2, 3, size, size), torch.randn(2, nlat, 1, 1)
    post = enc(x)
    assert isinstance(post, GaussianPosterior)
    assert post.mean.shape == post.log_sigma.shape == post.sample().shape == (2, nlat, 1, 1)
    assert [tuple(f.shape[1:]) for f in post.features] == feature_shapes
    x_tilde = dec(z)
    assert x_tilde.shape == (2, 3, size, size) and x_tilde.min() > 0 and x_tilde.max() < 1
    assert critic(torch.cat([x, x_tilde]), torch.cat([post.sample(), z])).shape == (4,)


def test_svhn_svm_features_are_the_code_s_5376_dimensions():
    """μ plus the BN outputs of encoder layers 4, 5 and 6 (ali-reference §5.1), before the LeakyReLU."""
    enc, _, _ = make("svhn")
    captured = {}
    enc.hidden[3].bn.register_forward_hook(lambda m, i, o: captured.setdefault("bn4", o))
    post = enc(torch.rand(2, 3, 32, 32))
    flat = torch.cat([post.mean.flatten(1), *(f.flatten(1) for f in post.features)], dim=1)
    assert flat.shape == (2, 5376)
    assert torch.equal(post.features[0], captured["bn4"]) and (post.features[0] < 0).any()


# -- parameter counts, written from the tables of ali-reference §1 (weights k*k*in*out, biases, BN 2*ch) ------

def bn(*channels: int) -> int:
    return 2 * sum(channels)


EXPECTED = {
    "svhn": (
        # Gz: 6 conv-BN layers without bias, then the 1x1 conv to 2*256 with bias
        25 * 3 * 32 + 16 * 32 * 64 + 16 * 64 * 128 + 16 * 128 * 256 + 16 * 256 * 512 + 512 * 512
        + bn(32, 64, 128, 256, 512, 512) + (512 * 512 + 512),
        # Gx: 6 convT-BN layers from 256, the 1x1 conv to 3 and the per-pixel bias 3x32x32
        16 * 256 * 256 + 16 * 256 * 128 + 16 * 128 * 64 + 16 * 64 * 32 + 25 * 32 * 32 + 32 * 32
        + bn(256, 128, 64, 32, 32, 32) + 32 * 3 + 3 * 32 * 32,
        # D(x) (first conv biased, no BN), D(z) (no biases), joint 1024 -> 1024 -> 1024 -> 1 (biases)
        (25 * 3 * 32 + 32) + 16 * 32 * 64 + 16 * 64 * 128 + 16 * 128 * 256 + 16 * 256 * 512 + bn(64, 128, 256, 512)
        + 256 * 512 + 512 * 512
        + (1024 * 1024 + 1024) + (1024 * 1024 + 1024) + (1024 + 1),
    ),
    "cifar10": (
        25 * 3 * 32 + 16 * 32 * 64 + 16 * 64 * 128 + 16 * 128 * 256 + 16 * 256 * 512 + 512 * 512
        + bn(32, 64, 128, 256, 512, 512) + (512 * 128 + 128),
        16 * 64 * 256 + 16 * 256 * 128 + 16 * 128 * 64 + 16 * 64 * 32 + 25 * 32 * 32 + 32 * 32
        + bn(256, 128, 64, 32, 32, 32) + 32 * 3 + 3 * 32 * 32,
        # maxout halves every layer's channels: the next layer reads half of the previous conv's output
        (25 * 3 * 32 + 32) + (16 * 16 * 64 + 64) + (16 * 32 * 128 + 128) + (16 * 64 * 256 + 256)
        + (16 * 128 * 512 + 512)
        + 64 * 512 + 256 * 512
        + ((256 + 256) * 1024 + 1024) + (512 * 1024 + 1024) + (512 + 1),
    ),
    "celeba": (
        4 * 3 * 64 + 49 * 64 * 128 + 25 * 128 * 256 + 49 * 256 * 256 + 16 * 256 * 512
        + bn(64, 128, 256, 256, 512) + (512 * 512 + 512),
        16 * 256 * 512 + 49 * 512 * 256 + 25 * 256 * 256 + 49 * 256 * 128 + 4 * 128 * 64
        + bn(512, 256, 256, 128, 64) + 64 * 3 + 3 * 64 * 64,
        (4 * 3 * 64 + 64) + 49 * 64 * 128 + 25 * 128 * 256 + 49 * 256 * 256 + 16 * 256 * 512 + bn(128, 256, 256, 512)
        + 256 * 1024 + 1024 * 1024
        + ((512 + 1024) * 2048 + 2048) + (2048 * 2048 + 2048) + (2048 + 1),
    ),
    "tiny_imagenet": (
        16 * 3 * 64 + 16 * 64 * 64 + 16 * 64 * 128 + 16 * 128 * 128 + 16 * 128 * 256 + 16 * 256 * 256
        + 256 * 2048 + 2048 * 2048 + bn(64, 64, 128, 128, 256, 256, 2048, 2048) + (2048 * 512 + 512),
        256 * 2048 + 2048 * 256 + 16 * 256 * 256 + 16 * 256 * 128 + 16 * 128 * 128 + 16 * 128 * 64 + 16 * 64 * 64
        + 16 * 64 * 64 + bn(2048, 256, 256, 128, 128, 64, 64, 64) + 64 * 3 + 3 * 64 * 64,
        (16 * 3 * 64 + 64) + 16 * 64 * 64 + 16 * 64 * 128 + 16 * 128 * 128 + 16 * 128 * 256 + 16 * 256 * 256
        + bn(64, 128, 128, 256, 256)
        + (256 * 2048 + 2048) + (2048 * 2048 + 2048)
        + ((256 + 2048) * 4096 + 4096) + (4096 * 4096 + 4096) + (4096 + 1),
    ),
}


@pytest.mark.parametrize("arch", list(EXPECTED))
def test_parameter_counts_match_the_tables(arch):
    enc, dec, critic = make(arch)
    assert (n_params(enc), n_params(dec), n_params(critic)) == EXPECTED[arch]


@pytest.mark.parametrize("arch,x_bias,z_bias", [
    ("svhn", [True, False, False, False, False], [False, False]),
    ("cifar10", [True] * 5, [False, False]),
    ("celeba", [True, False, False, False, False], [False, False]),
    ("tiny_imagenet", [True, False, False, False, False, False], [True, True]),
])
def test_biases_exactly_where_the_code_has_them(arch, x_bias, z_bias):
    enc, dec, critic = make(arch)
    assert all(b.conv.bias is None for b in enc.hidden) and enc.out.bias is not None
    assert all(b.conv.bias is None for b in dec.hidden) and dec.out.bias is None
    assert dec.output_bias.shape == (1, 3, ARCHS[arch].size, ARCHS[arch].size)
    assert [b.conv.bias is not None for b in critic.x_net] == x_bias
    assert [b.conv.bias is not None for b in critic.z_net] == z_bias
    assert all(b.conv.bias is not None for b in critic.joint_net)
    # BN wherever there is no bias in D(x); none in D(z) and the joint head; none at all with maxout
    assert [hasattr(b, "bn") for b in critic.x_net] == [not ARCHS[arch].maxout and not has for has in x_bias]
    assert not any(hasattr(b, "bn") for b in [*critic.z_net, *critic.joint_net])


def test_initialisation_padding_and_batchnorm_settings():
    enc, dec, critic = make("celeba")
    for net in (enc, dec, critic):
        for m in net.modules():
            if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
                assert m.padding == (0, 0) and (m.bias is None or not m.bias.any())
                if m.weight.numel() >= 100_000:
                    assert m.weight.mean().abs() < 1e-3 and abs(m.weight.std().item() - 0.01) < 5e-4
            if isinstance(m, nn.BatchNorm2d):
                assert (m.eps, m.momentum) == (1e-4, 0.05) and m.affine
                assert torch.equal(m.weight, torch.ones_like(m.weight)) and not m.bias.any()
            if isinstance(m, nn.LeakyReLU):
                assert m.negative_slope == 0.02
    enc2, _, _ = make("celeba", encoder={"init_std": 0.05, "slope": 0.3})
    w = enc2.hidden[2].conv.weight
    assert abs(w.std().item() - 0.05) < 2e-3 and enc2.hidden[2].act.negative_slope == 0.3


@pytest.mark.parametrize("arch,slope", [("svhn", 0.01), ("cifar10", 0.1), ("celeba", 0.02), ("tiny_imagenet", 0.01)])
def test_each_dataset_has_its_own_leaky_relu_slope(arch, slope):
    enc, dec, critic = make(arch)
    slopes = {m.negative_slope for net in (enc, dec, critic) for m in net.modules() if isinstance(m, nn.LeakyReLU)}
    assert slopes == {slope}
    assert advinf.default_host().get("encoder", f"ali_{arch}_encoder").options().slope == slope


def known_images(n: int, a: torch.Tensor) -> Dataset:
    """n images, the first 500 equal to ``a`` and the rest its negative (they must not count)."""
    x = a.expand(n, *a.shape).clone()
    x[500:] = 255 - a
    return Dataset(Split(x))


def test_decoder_output_bias_is_the_log_odds_of_the_first_500_images():
    torch.manual_seed(0)
    a = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    a[0, 0, :4] = torch.tensor([0, 255, 51, 128], dtype=torch.uint8)
    ctx = BuildContext(dataset=known_images(600, a), prior=GaussianPrior((256, 1, 1)))
    dec = advinf.create("decoder", "ali_svhn_decoder", ctx)
    m = (a.double() / 255).clamp(1e-7, 1 - 1e-7)
    expected = torch.log(m / (1 - m)).unsqueeze(0)
    assert dec.output_bias.shape == (1, 3, 32, 32)
    torch.testing.assert_close(dec.output_bias.double(), expected, rtol=1e-5, atol=1e-4)
    assert dec.output_bias[0, 0, 0, 0].item() == pytest.approx(math.log(1e-7 / (1 - 1e-7)), rel=1e-4)
    assert dec.output_bias[0, 0, 0, 2].item() == pytest.approx(math.log(0.2 / 0.8), abs=1e-5)
    # with a silent last conv, the decoder draws the (clipped) mean image
    with torch.no_grad():
        dec.out.weight.zero_()
    dec.eval()
    torch.testing.assert_close(dec(torch.randn(2, 256, 1, 1)), m.float().expand(2, 3, 32, 32), rtol=0, atol=1e-6)
    # no dataset: the bias stays 0; log_odds_examples = 0 switches the initialisation off
    assert not advinf.create("decoder", "ali_svhn_decoder", None).output_bias.any()
    assert not advinf.create("decoder", "ali_svhn_decoder", ctx, log_odds_examples=0).output_bias.any()


def test_encoder_outputs_log_sigma_not_log_variance():
    enc, _, _ = make("svhn")
    nlat = 256
    log_sigma = torch.linspace(math.log(0.5), math.log(3.0), nlat)
    with torch.no_grad():
        enc.out.weight.zero_()
        enc.out.bias[:nlat] = torch.linspace(-2, 2, nlat)
        enc.out.bias[nlat:] = log_sigma
    enc.eval()
    post = enc(torch.rand(1, 3, 32, 32))
    torch.testing.assert_close(post.log_sigma.flatten(), log_sigma)
    torch.manual_seed(1)
    draws = torch.stack([post.sample() for _ in range(4000)]).flatten(1)  # (4000, nlat)
    ratio = draws.std(dim=0) / log_sigma.exp()
    assert ratio.mean().item() == pytest.approx(1.0, abs=0.01) and (ratio - 1).abs().max() < 0.1
    torch.testing.assert_close(draws.mean(0), torch.linspace(-2, 2, nlat), atol=0.25, rtol=0)
    # fresh noise per latent dimension: standardised draws of two dimensions are uncorrelated
    eps = (draws - post.mean.flatten()) / log_sigma.exp()
    assert abs(torch.corrcoef(eps[:, :2].T)[0, 1].item()) < 0.1


def test_deterministic_encoder_for_bigan():
    enc = advinf.create("encoder", "ali_svhn_encoder", None, stochastic=False)
    post = enc(torch.rand(2, 3, 32, 32))
    assert isinstance(post, DeterministicPosterior) and post.sample().shape == (2, 256, 1, 1)
    assert enc.out.out_channels == 256


def dropout_plan(net: nn.Module) -> list[tuple[float, float]]:
    return [(b.dropout.p if hasattr(b, "dropout") else 0.0, b.dropout_act.p if hasattr(b, "dropout_act") else 0.0)
            for b in blocks(net)]


def test_dropout_sits_on_every_critic_conv_input():
    _, _, critic = make("svhn")
    assert dropout_plan(critic.x_net) == [(0.2, 0.0)] * 5
    assert dropout_plan(critic.z_net) == [(0.2, 0.0)] * 2
    assert dropout_plan(critic.joint_net) == [(0.2, 0.0)] * 3
    for b in blocks(critic):
        assert list(b._modules)[0] == "dropout" and isinstance(b.dropout, nn.Dropout)  # element-wise, first


def test_cifar10_dropout_follows_the_code_or_the_table():
    _, _, code = make("cifar10")
    assert dropout_plan(code.x_net) == [(0.2, 0), (0.5, 0), (0, 0.5), (0, 0), (0.5, 0)]
    assert dropout_plan(code.z_net) == [(0.2, 0), (0.5, 0)]
    assert dropout_plan(code.joint_net) == [(0.5, 0)] * 3
    assert list(code.x_net[2]._modules) == ["conv", "dropout_act", "act"]  # on conv 3's pre-maxout output
    _, _, paper = make("cifar10", critic={"variant": "paper"})
    assert dropout_plan(paper.x_net) == [(0.2, 0), (0.5, 0), (0.5, 0), (0.5, 0), (0.5, 0)]
    assert dropout_plan(paper.z_net) == [(0.2, 0), (0.5, 0)] and dropout_plan(paper.joint_net) == [(0.5, 0)] * 3


def test_celeba_paper_variant():
    _, _, code = make("celeba")
    _, _, paper = make("celeba", critic={"variant": "paper"})
    assert not hasattr(code.x_net[0], "bn") and code.x_net[0].conv.bias is not None
    assert hasattr(paper.x_net[0], "bn") and paper.x_net[0].conv.bias is None
    assert [p for p, _ in dropout_plan(code.x_net)] == [0.2] * 5
    assert [p for p, _ in dropout_plan(paper.x_net)] == [0, 0, 0.2, 0.2, 0.2]


@pytest.mark.parametrize("arch,off", [("svhn", {"dropout": 0.0}), ("cifar10", {"dropout": 0.0, "dropout_input": 0.0})])
def test_dropout_is_active_only_in_train_mode(arch, off):
    _, _, critic = make(arch)
    nlat, size = ARCHS[arch].nlat, ARCHS[arch].size
    x, z = torch.rand(6, 3, size, size), torch.randn(6, nlat, 1, 1)
    with torch.no_grad():
        critic.train()
        assert not torch.equal(critic(x, z), critic(x, z))
        critic.eval()
        assert torch.equal(critic(x, z), critic(x, z))
        _, _, quiet = make(arch, critic=off)
        quiet.train()  # BN still in training mode: only dropout could make two passes differ
        assert torch.equal(quiet(x, z), quiet(x, z))


def test_maxout_takes_the_maximum_of_consecutive_channel_pairs():
    x = torch.tensor([1.0, 5.0, -2.0, -3.0, 0.0, 0.5]).view(1, 6, 1, 1)
    assert Maxout(2)(x).flatten().tolist() == [5.0, -2.0, 0.5]


def test_cifar10_maxout_halves_the_channels():
    _, _, critic = make("cifar10")
    seen = []
    for b in blocks(critic)[:-1]:
        b.register_forward_hook(lambda m, i, o: seen.append((m.conv.out_channels, o.shape[1])))
    out = critic(torch.rand(2, 3, 32, 32), torch.randn(2, 64, 1, 1))
    assert out.shape == (2,)
    assert seen == [(c, c // 2) for c in (32, 64, 128, 256, 512, 512, 512, 1024, 1024)]
    assert not any(isinstance(m, nn.BatchNorm2d | nn.LeakyReLU) for m in critic.modules())
    assert critic.joint_net[0].conv.in_channels == 512  # the code's 512, not the table's 1024


def test_marginal_critic_for_gan():
    critic = advinf.create("critic", "ali_svhn_critic", None, joint=False)
    assert critic.uses_z is False and critic.z_net is None
    assert critic(torch.rand(3, 3, 32, 32), None).shape == (3,)


def test_factories_read_and_check_the_dataset_and_prior():
    data = Dataset(Split(torch.zeros(4, 1, 32, 32, dtype=torch.uint8)))
    enc = advinf.create("encoder", "ali_svhn_encoder", BuildContext(dataset=data, prior=GaussianPrior((32, 1, 1))))
    assert isinstance(enc, PaperEncoder) and enc.hidden[0].conv.in_channels == 1 and enc.out.out_channels == 64
    dec = advinf.create("decoder", "ali_svhn_decoder", BuildContext(dataset=data, prior=GaussianPrior((32, 1, 1))))
    assert isinstance(dec, PaperDecoder) and dec(torch.randn(2, 32, 1, 1)).shape == (2, 1, 32, 32)
    critic = advinf.create("critic", "ali_svhn_critic", BuildContext(dataset=data, prior=GaussianPrior((32, 1, 1))))
    assert isinstance(critic, PaperCritic) and critic.z_net[0].conv.in_channels == 32
    with pytest.raises(UserError, match="set `spatial = true`"):
        advinf.create("encoder", "ali_svhn_encoder", BuildContext(prior=GaussianPrior((256,))))
    with pytest.raises(UserError, match="works on 64x64 images"):
        advinf.create("critic", "ali_celeba_critic", BuildContext(dataset=data))
    with pytest.raises(UserError, match="channels = 3, but the dataset's images have 1") as err:
        advinf.create("critic", "ali_svhn_critic", BuildContext(dataset=data), channels=3)
    assert err.value.option == "channels"  # a recipe names critic.channels, the key to change
    with pytest.raises(UserError, match="z_dim = 16, but the prior has dim = 32"):
        advinf.create("decoder", "ali_svhn_decoder", BuildContext(prior=GaussianPrior((32, 1, 1))), z_dim=16)
