from __future__ import annotations

import math

import pytest
import torch

from advinf.divergences import losses


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
