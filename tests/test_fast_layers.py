"""advinf.layers: whole-window convolutions as matrix products, CPU dropout masks from integers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advinf.layers import Conv2d, ConvTranspose2d, Dropout, dropout_mask


def _pair(fast: nn.Module, slow: nn.Module, x: torch.Tensor) -> None:
    """Same weights; forward and every gradient agree to fp32 rounding."""
    slow.load_state_dict(fast.state_dict())
    xf, xs = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    yf, ys = fast(xf), slow(xs)
    assert yf.shape == ys.shape
    torch.testing.assert_close(yf, ys, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(ys)
    yf.backward(g)
    ys.backward(g)
    torch.testing.assert_close(xf.grad, xs.grad, rtol=1e-5, atol=1e-5)
    for (name, pf), ps in zip(fast.named_parameters(), slow.parameters(), strict=True):
        torch.testing.assert_close(pf.grad, ps.grad, rtol=1e-4, atol=1e-4, msg=name)


def _no_convolution(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("took the convolution path")

    monkeypatch.setattr(F, "conv2d", refuse)
    monkeypatch.setattr(F, "conv_transpose2d", refuse)


@pytest.mark.parametrize("cin, cout, k, stride, bias", [(256, 512, 4, 1, False), (1024, 1024, 1, 1, True),
                                                        (7, 5, 3, 2, True), (64, 1, 1, 1, True)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_a_whole_window_conv_is_a_matrix_product_with_the_conv_s_results(monkeypatch, cin, cout, k, stride, bias,
                                                                          channels_last):
    torch.manual_seed(0)
    fast, slow = Conv2d(cin, cout, k, stride, bias=bias), nn.Conv2d(cin, cout, k, stride, bias=bias)
    x = torch.randn(6, cin, k, k)
    if channels_last:  # as train.channels_last makes them: the weights too
        x = x.contiguous(memory_format=torch.channels_last)
        fast, slow = fast.to(memory_format=torch.channels_last), slow.to(memory_format=torch.channels_last)
    with monkeypatch.context() as m:
        _no_convolution(m)
        out = fast(x)
    assert out.shape == (6, cout, 1, 1)
    _pair(fast, slow, x)


@pytest.mark.parametrize("k, stride, bias", [(4, 1, False), (4, 2, True), (1, 1, True)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_a_transposed_conv_of_one_pixel_is_a_matrix_product_with_the_conv_s_results(monkeypatch, k, stride, bias,
                                                                                     channels_last):
    torch.manual_seed(0)
    fast, slow = ConvTranspose2d(9, 6, k, stride, bias=bias), nn.ConvTranspose2d(9, 6, k, stride, bias=bias)
    x = torch.randn(5, 9, 1, 1)
    if channels_last:
        fast, slow = fast.to(memory_format=torch.channels_last), slow.to(memory_format=torch.channels_last)
    with monkeypatch.context() as m:
        _no_convolution(m)
        out = fast(x)
    assert out.shape == (5, 6, k, k)
    assert out.is_contiguous(memory_format=torch.channels_last if channels_last and k > 1 else torch.contiguous_format)
    _pair(fast, slow, x)


@pytest.mark.parametrize("make, x", [
    (lambda: Conv2d(3, 4, 3, 1), torch.randn(2, 3, 5, 5)),                      # output larger than 1x1
    (lambda: Conv2d(3, 4, 3, 1, padding=1), torch.randn(2, 3, 3, 3)),           # padded
    (lambda: Conv2d(4, 4, 3, 1, groups=2), torch.randn(2, 4, 3, 3)),            # grouped
    (lambda: ConvTranspose2d(3, 4, 4, 2), torch.randn(2, 3, 2, 2)),             # input larger than 1x1
    (lambda: ConvTranspose2d(3, 4, 4, 2, padding=1), torch.randn(2, 3, 1, 1)),  # padded
])
def test_every_other_shape_is_torch_s_own_convolution_bit_for_bit(make, x):
    torch.manual_seed(0)
    fast = make()
    slow = (nn.ConvTranspose2d if isinstance(fast, nn.ConvTranspose2d) else nn.Conv2d)(
        fast.in_channels, fast.out_channels, fast.kernel_size, fast.stride, padding=fast.padding,
        groups=fast.groups)
    slow.load_state_dict(fast.state_dict())
    assert torch.equal(fast(x), slow(x))


def test_the_layers_keep_torch_s_parameter_names_so_checkpoints_and_spectral_norm_still_work():
    assert [n for n, _ in Conv2d(3, 4, 2).named_parameters()] == ["weight", "bias"]
    torch.manual_seed(0)
    sn = nn.utils.parametrizations.spectral_norm(Conv2d(8, 3, 2))
    sn(torch.randn(4, 8, 2, 2))  # a power iteration in training mode
    sn.eval()  # no more: the weight read below is the one the forward uses
    x = torch.randn(4, 8, 2, 2)
    w = sn.weight.detach()
    torch.testing.assert_close(sn(x), F.conv2d(x, w, sn.bias), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("p", [0.001, 0.2, 0.5, 0.9, 0.999])  # 0.001 and 0.999 take the 31-bit draws
def test_dropout_keeps_1_minus_p_of_the_elements_and_scales_them_by_1_over_1_minus_p(p):
    torch.manual_seed(0)
    x = torch.ones(1000, 1000)
    y = Dropout(p)(x)
    kept = y != 0
    n = x.numel()
    sigma = (n * p * (1 - p)) ** 0.5
    assert abs(kept.sum().item() - n * (1 - p)) < 5 * sigma
    assert torch.equal(y[kept], torch.full_like(y[kept], 1 / (1 - p)))
    # no structure: every row and every column keeps about 1 - p (a mask constant along rows, or one row's mask
    # repeated down the columns, puts the row or column means at 0 and 1)
    spread = 5 * ((1 - p) * p / 1000) ** 0.5
    assert kept.float().mean(dim=1).std() < spread and kept.float().mean(dim=0).std() < spread


@pytest.mark.parametrize(("p", "draw"), [
    (0.2, lambda n: torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(2**63), None)),  # a word per 4 lanes
    (0.001, lambda n: torch.empty(n, dtype=torch.int32).random_()),  # one 31-bit integer per element
])
def test_dropout_draws_a_64_bit_word_per_four_elements_unless_p_is_near_0_or_1(p, draw):
    x = torch.randn(3, 7, 5)  # 105 elements: the last word's spare lanes are drawn and unused
    torch.manual_seed(3)
    dropout_mask(x, p)
    after_mask = torch.random.get_rng_state()
    torch.manual_seed(3)
    draw(x.numel())
    assert torch.equal(after_mask, torch.random.get_rng_state())


def test_dropout_follows_the_seed_the_memory_format_and_the_mode():
    x = torch.randn(8, 6, 5, 5).contiguous(memory_format=torch.channels_last)
    torch.manual_seed(1)
    a = Dropout(0.3)(x)
    torch.manual_seed(1)
    b = Dropout(0.3)(x)
    assert torch.equal(a, b)
    assert not torch.equal(a, Dropout(0.3)(x))
    assert dropout_mask(x, 0.3).is_contiguous(memory_format=torch.channels_last)
    layer = Dropout(0.3).eval()
    assert torch.equal(layer(x), x)
    assert torch.equal(Dropout(0.0)(x), x)


def test_dropout_s_gradient_is_its_mask():
    torch.manual_seed(2)
    x = torch.randn(50, 40, requires_grad=True)
    y = Dropout(0.25)(x)
    y.sum().backward()
    mask = torch.where(y != 0, 1 / 0.75, 0.0)
    torch.testing.assert_close(x.grad, mask)



def test_dropout_traces_whole_under_torch_compile():
    """Compiled, Dropout is torch's (which inductor fuses with its neighbours): no graph break at the mask."""
    layer = Dropout(0.3)
    compiled = torch.compile(lambda x: layer(x) * 2, backend="eager", fullgraph=True)  # fullgraph: breaks raise
    torch.manual_seed(4)
    y = compiled(torch.ones(64, 32))
    kept = y != 0
    assert 0.5 < kept.float().mean().item() < 0.9 and torch.allclose(y[kept], torch.tensor(2 / 0.7))
