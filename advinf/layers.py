"""Drop-in ``nn.Conv2d``, ``nn.ConvTranspose2d`` and ``nn.Dropout`` that are faster on the shapes and device where
torch's own are slow; the same parameters, results equal to rounding (the convolutions) or in distribution (dropout).

**Whole-window convolutions.**

A convolution whose kernel covers its whole (unpadded) input has a 1x1 output: it is a Linear layer on the
flattened input. Likewise a transposed convolution of a 1x1 input is a matrix product reshaped to the kernel's
size. Convolution libraries handle these shapes poorly: on a 2-core AVX-512 CPU, oneDNN's forward + backward of
the SVHN critic's 4x4 conv on a 4x4 input ran at 28 GFLOP/s against 205 GFLOP/s as a matrix product, a 1x1 conv
on a 1x1 map with 1,024 channels at 52 against 224, the decoder's first transposed conv at 42 against 175
(docs/performance.md). Every other shape goes to torch's own convolution unchanged.

The parameters, their names and shapes, initialisation, ``spectral_norm`` and checkpoints are those of the torch
modules (these are subclasses); only the order of the additions differs, so results agree to rounding.

**Dropout on the CPU.** torch draws a CPU dropout mask with ``bernoulli_``, one double-precision uniform per
element on one thread (about 7 ns an element here), then scales it and multiplies in two more passes. ``Dropout``
draws 64-bit random words instead and gives each element a 16-bit lane of one (four elements a word, about 0.7 ns
an element): an element is kept when its lane, read as an unsigned number, is below ``round((1 - p) * 2**16)``, so
p is exact to 2^-17 (0.2 becomes 0.19999695), and the kept ones are scaled by 1 / (1 - p), like torch. A p within
2^-8 of 0 or 1, which 16 bits would round too coarsely, takes a 31-bit integer per element (about 2 ns an element;
p exact to 2^-32). Forward and backward of a channels_last 200x32x28x28 map at p = 0.2, two threads, medians of
three rounds in one process: torch's 42.7 ms, 31-bit integers 22.6 ms, 16-bit lanes 16.0 ms. The draws come from
torch's default generator, so seeding, checkpointed RNG state and resume behave as before; the stream of masks
differs from ``nn.Dropout``'s. On other devices (CUDA's dropout is fused and fast), in place and under
``torch.compile`` (which fuses torch's dropout with its neighbours; the mask code would break the graph) it is
``nn.Dropout``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Conv2d", "ConvTranspose2d", "Dropout", "dropout_mask"]

_BITS = 2**31  # int32 ``random_()`` draws uniformly from [0, 2**31)
_LANE_BITS = 2**16  # a 16-bit lane of a 64-bit word: int16, uniform on [-2**15, 2**15)
_LANE_MIN_P = 2**-8  # below this distance of p from 0 or 1, 16 bits round p too coarsely: 31-bit draws


def _nhwc(w: Tensor) -> bool:
    """Whether a 4-d tensor is stored channels_last (and not also plain contiguous, as 1x1 kernels are)."""
    return w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()


class Conv2d(nn.Conv2d):
    """``nn.Conv2d``, computed as ``F.linear`` on the flattened input when the kernel covers the whole input."""

    def _whole_window(self, x: Tensor) -> bool:
        return (x.dim() == 4 and tuple(x.shape[-2:]) == self.kernel_size and self.groups == 1
                and self.dilation == (1, 1) and self.padding in ((0, 0), "valid"))

    def forward(self, x: Tensor) -> Tensor:
        if not self._whole_window(x):
            return super().forward(x)
        w = self.weight
        if _nhwc(w):  # flatten both in (H, W, C) order: views of channels_last tensors, no copies
            x, w = x.permute(0, 2, 3, 1), w.permute(0, 2, 3, 1)
        out = F.linear(x.reshape(x.shape[0], -1), w.reshape(self.out_channels, -1), self.bias)
        return out[:, :, None, None]


class ConvTranspose2d(nn.ConvTranspose2d):
    """``nn.ConvTranspose2d``, computed as one matrix product when the input is 1x1 (its output: the kernel)."""

    def _one_pixel(self, x: Tensor, output_size: list[int] | None) -> bool:
        return (x.dim() == 4 and tuple(x.shape[-2:]) == (1, 1) and output_size is None and self.groups == 1
                and self.dilation == (1, 1) and self.padding == (0, 0) and self.output_padding == (0, 0))

    def forward(self, x: Tensor, output_size: list[int] | None = None) -> Tensor:
        if not self._one_pixel(x, output_size):
            return super().forward(x, output_size)
        (kh, kw), w, flat = self.kernel_size, self.weight, x.reshape(x.shape[0], -1)
        if _nhwc(w):  # a (H, W, C)-ordered product of a channels_last weight: a channels_last output, no copies
            out = (flat @ w.permute(0, 2, 3, 1).reshape(self.in_channels, -1)).view(
                x.shape[0], kh, kw, self.out_channels).permute(0, 3, 1, 2)
        else:
            out = (flat @ w.reshape(self.in_channels, -1)).view(x.shape[0], self.out_channels, kh, kw)
        return out if self.bias is None else out + self.bias[:, None, None]


def dropout_mask(x: Tensor, p: float) -> Tensor:
    """A mask shaped like ``x`` (and in its memory format): 1 / (1 - p) with probability 1 - p, else 0."""
    keep_p = 1.0 - p
    if min(p, keep_p) < _LANE_MIN_P:
        keep = torch.empty_like(x, dtype=torch.int32).random_() < round(keep_p * _BITS)
    else:
        n = x.numel()
        words = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_(-(2**63), None)  # 64 bits
        layout = torch.empty_like(x, device="meta")  # x's shape in x's memory format (dense), allocating nothing
        lanes = words.view(torch.int16)[:n].as_strided(layout.shape, layout.stride())
        keep = lanes < round(keep_p * _LANE_BITS) - _LANE_BITS // 2
    return keep.to(x.dtype).mul_(1.0 / keep_p)


class Dropout(nn.Dropout):
    """``nn.Dropout`` (element-wise, inverted) with the mask drawn from 16-bit lanes of random words on the CPU."""

    def forward(self, x: Tensor) -> Tensor:
        if (not self.training or self.inplace or x.device.type != "cpu" or not 0.0 < self.p < 1.0
                or torch.compiler.is_compiling()):  # compiled, torch's dropout fuses with its neighbours
            return super().forward(x)
        return x * dropout_mask(x, self.p)
