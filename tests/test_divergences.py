from __future__ import annotations

import math

import pytest
import torch

import advinf
from advinf.divergences import hinge, losses


def test_original_is_non_saturating_with_swapped_labels():
    d_data, d_model = torch.tensor([2.0, -1.0]), torch.tensor([0.5, 3.0])
    c, g = losses("original", d_data, d_model)
    s = torch.sigmoid
    expect_c = -(torch.log(s(d_data)).mean() + torch.log(1 - s(d_model)).mean())
    expect_g = -(torch.log(1 - s(d_data)).mean() + torch.log(s(d_model)).mean())
    assert c.item() == pytest.approx(expect_c.item(), rel=1e-5)
    assert g.item() == pytest.approx(expect_g.item(), rel=1e-5)


def test_at_zero_logits_both_losses_are_2_ln_2():
    z = torch.zeros(8)
    for name in ("original", "minimax"):
        c, g = losses(name, z, z)
        assert c.item() == pytest.approx(2 * math.log(2))
        assert abs(g.item()) == pytest.approx(2 * math.log(2))


def test_minimax_is_the_negated_critic_loss_and_others_run():
    d = torch.randn(5), torch.randn(5, 1)
    c, g = losses("minimax", *d)
    assert g.item() == pytest.approx(-c.item())
    for name in ("hinge", "least_squares"):
        c, g = losses(name, *d)
        assert c.shape == () and g.shape == ()


# -- divergences as registered components ----------------------------------------------------------------

CONSTANT = """
import torch

import advinf
from advinf import hookimpl

def constant(d_data, d_model):
    \"\"\"Losses that show which function the game called: 7 and 11 (plus zero times the logits).\"\"\"
    zero = 0 * (d_data.sum() + d_model.sum())
    return zero + 7.0, zero + 11.0

@hookimpl
def register_divergences(register):
    register("constant", constant)
"""


@pytest.fixture
def constant_plugin(tmp_path):
    from conftest import write

    return write(tmp_path / "constant.py", CONSTANT)


def test_a_registered_divergence_is_what_the_builtin_games_use(constant_plugin, advinf_host):
    import advinf_plugins.games

    advinf_host.add_plugin(advinf_plugins.games, name="games")
    advinf_host.load_local(str(constant_plugin))
    assert advinf_host.names("divergence") == ["constant", "hinge", "least_squares", "minimax", "original"]
    assert advinf_host.get("divergence", "constant").summary.startswith("Losses that show which function")
    assert advinf_host.create("divergence", "hinge") is hinge
    ctx = advinf.BuildContext(dataset=advinf.create("dataset", "mixture25", None, samples=64, heldout=0),
                              prior=advinf.create("prior", "gaussian", None, dim=2))
    nets = advinf.Networks(ctx.prior, {k: advinf.create(k, f"toy_{k}", ctx) for k in ("encoder", "decoder", "critic")})
    batch = advinf.Batch(ctx.dataset.train.x[:16])
    for name in ("ali", "bigan"):
        out = advinf_host.create("game", name, ctx, divergence="constant").losses(nets, batch)
        assert (out.losses["critic"].item(), out.losses["generator"].item()) == (7.0, 11.0)
    ali = advinf_host.create("game", "ali", ctx, divergence="least_squares")
    torch.manual_seed(0)
    out = ali.losses(nets, batch)
    torch.manual_seed(0)
    posterior = nets.encoder(batch.x)
    z_hat, z = posterior.sample(), nets.prior.sample(16, batch.x.device)
    d_data, d_model = advinf.critic_pairs(nets.critic, (batch.x, z_hat), (nets.decoder(z), z))
    assert out.losses["critic"].item() == pytest.approx(((d_data - 1) ** 2 + d_model ** 2).mean().item(), rel=1e-6)


def test_divergence_names_are_checked_at_validate(constant_plugin, tmp_path):
    from conftest import RECIPES, write

    plugins = f"seed = 0\nplugins = [\"{constant_plugin}\"]"
    text = (RECIPES / "ali_mixture25.toml").read_text().replace("seed = 0", plugins)
    rec = advinf.load_recipe(write(tmp_path / "r.toml", text), ["game.divergence=constant"])
    assert rec.options["game"].divergence == "constant"
    with pytest.raises(advinf.RecipeError) as err:
        advinf.load_recipe(tmp_path / "r.toml", ["game.divergence=constnat"])
    assert "game.divergence: unknown divergence (got 'constnat'); did you mean 'constant'? available: constant, " \
           "hinge, least_squares, minimax, original" in str(err.value)


def test_a_divergence_takes_no_options(advinf_host):
    import types

    from pydantic import BaseModel

    plugin = types.SimpleNamespace(register_divergences=advinf.hookimpl(
        lambda register: register("x", lambda d_data, d_model: (d_data.mean(), d_model.mean()), BaseModel)))
    plugin.register_divergences.__name__ = "register_divergences"
    info = advinf_host.add_plugin(plugin, name="with_options")
    assert "divergences take no options" in info.error
