"""How much training several seeds as one stacked network could gain on this machine, before anyone builds it::

    python -m advinf_benchmarks.stacking [--seeds 10] [--threads 2] [--device cpu] [--json]
    python -m advinf_benchmarks.stacking --exactness [--seeds 10] [--threads 2] [--json]

ALI's toy step (the paper's 2-D networks and batch, ali-reference §4: a 2-layer encoder and 4-layer decoder of
400 units with batch norm, a critic of three maxout layers of 200 units x 5 pieces; the original divergence,
simultaneous Adam updates) written for S seeds stacked along a leading dimension: every linear layer one
``bmm``/``baddbmm`` over the seeds, batch norm per seed and channel in one call, the losses summed over seeds.
It is timed per seed-step at S = 1 and at S = ``--seeds``, in one process, alternating, medians of repeats.

This is not advinf's engine and it is not bit-exact to single runs (the batch-norm and maxout layouts differ):
it is the best case of stacking, the same maths for S independent seeds with as few kernel launches as the
step allows. If it gains little over S = 1, a stacked engine cannot gain more, and running seeds side by side
(``advinf run --seeds ... --jobs N``) is the better use of the machine's cores.

``--exactness`` asks the other question a stacked engine raises: for each of the toy's linear layers, is one
``baddbmm`` over S seed-major slices bit-identical to ``F.linear`` of each slice (what a single run computes),
in the forward pass and in the gradients of input, weight and bias? And one batch norm over the seeds'
channels side by side, to each seed's own (output, gradients, running statistics)?
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from advinf_benchmarks.bench import _sync

BATCH, X_DIM, Z_DIM, NOISE = 100, 2, 2, 2
HIDDEN, ENCODER_LAYERS, DECODER_LAYERS = 400, 2, 4
CRITIC_UNITS, CRITIC_LAYERS, PIECES = 200, 3, 5
BN_EPS, INIT_STD = 1e-4, 0.02


@dataclass
class StackedToy:
    """The toy's parameters for ``seeds`` seeds, each tensor with the seeds first; weights stored (in, out)."""

    encoder: list[Tensor]
    decoder: list[Tensor]
    critic: list[Tensor]

    @property
    def seeds(self) -> int:
        return self.critic[0].shape[0]

    def generator_parameters(self) -> list[Tensor]:
        return self.encoder + self.decoder


def _mlp_parameters(seeds: int, sizes: list[int], g: torch.Generator, device: torch.device) -> list[Tensor]:
    """Linear (no bias) -> [BN (scale, shift) -> ReLU -> Linear] per hidden layer; the last Linear has a bias."""
    out = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        if i:
            out += [torch.ones(seeds, a, device=device), torch.zeros(seeds, a, device=device)]
        out.append(torch.randn(seeds, a, b, generator=g).to(device) * INIT_STD)
    out.append(torch.zeros(seeds, 1, sizes[-1], device=device))
    return [t.requires_grad_() for t in out]


def make_toy(seeds: int, seed: int = 0, device: torch.device | str = "cpu") -> StackedToy:
    device = torch.device(device)
    g = torch.Generator().manual_seed(seed)
    encoder = _mlp_parameters(seeds, [X_DIM + NOISE, *[HIDDEN] * ENCODER_LAYERS, Z_DIM], g, device)
    decoder = _mlp_parameters(seeds, [Z_DIM, *[HIDDEN] * DECODER_LAYERS, X_DIM], g, device)
    critic: list[Tensor] = []
    widths = [X_DIM + Z_DIM, *[CRITIC_UNITS] * CRITIC_LAYERS]
    for a in widths:
        out = CRITIC_UNITS * PIECES if len(critic) < 2 * CRITIC_LAYERS else 1
        critic += [torch.randn(seeds, a, out, generator=g).to(device) * INIT_STD,
                   torch.zeros(seeds, 1, out, device=device)]
    return StackedToy(encoder, decoder, [t.requires_grad_() for t in critic])


def _batch_norm(h: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    """Batch norm of (S, B, C) over each seed's batch, per channel: one call on a (B, S*C) view."""
    s, b, c = h.shape
    y = F.batch_norm(h.transpose(0, 1).reshape(b, s * c), None, None, scale.reshape(-1), shift.reshape(-1),
                     training=True, eps=BN_EPS)
    return y.view(b, s, c).transpose(0, 1)


def _mlp(x: Tensor, p: list[Tensor]) -> Tensor:
    """p: W0, then (scale, shift, W) per hidden layer, then the last layer's bias."""
    h = torch.bmm(x, p[0])
    for i in range(1, len(p) - 1, 3):
        a = torch.relu(_batch_norm(h, p[i], p[i + 1]))
        h = torch.baddbmm(p[-1], a, p[i + 2]) if i + 3 == len(p) - 1 else torch.bmm(a, p[i + 2])
    return h


def _critic(x: Tensor, z: Tensor, p: list[Tensor]) -> Tensor:
    h = torch.cat([x, z], dim=2)
    for j in range(CRITIC_LAYERS):
        h = torch.baddbmm(p[2 * j + 1], h, p[2 * j]).view(*h.shape[:2], CRITIC_UNITS, PIECES).max(dim=3).values
    return torch.baddbmm(p[-1], h, p[-2]).squeeze(2)


def losses(toy: StackedToy, x: Tensor, eps: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
    """Each seed's (critic loss, generator loss), shape (S,): ALI with the original divergence, one joint critic
    batch of data pairs (x, Gz(x, eps)) and model pairs (Gx(z), z). x, eps, z: (S, B, dims)."""
    z_hat = _mlp(torch.cat([x, eps], dim=2), toy.encoder)
    x_tilde = _mlp(z, toy.decoder)
    d = _critic(torch.cat([x, x_tilde], dim=1), torch.cat([z_hat, z], dim=1), toy.critic)
    d_data, d_model = d[:, : x.shape[1]], d[:, x.shape[1]:]
    critic_loss = (F.softplus(-d_data) + F.softplus(d_model)).mean(dim=1)
    generator_loss = (F.softplus(d_data) + F.softplus(-d_model)).mean(dim=1)
    return critic_loss, generator_loss


def make_step(toy: StackedToy) -> Callable[[], None]:
    """One simultaneous update of every seed: noise, both losses, both players' gradients, Adam (fused on CUDA)."""
    fused = toy.critic[0].device.type == "cuda"
    critic_opt = torch.optim.Adam(toy.critic, lr=4e-4, betas=(0.2, 0.999), fused=fused)
    generator_opt = torch.optim.Adam(toy.generator_parameters(), lr=1e-4, betas=(0.2, 0.999), fused=fused)
    s, device = toy.seeds, toy.critic[0].device

    def step() -> None:
        x = torch.randn(s, BATCH, X_DIM, device=device)  # the data's values do not change the timing
        eps = torch.randn(s, BATCH, NOISE, device=device)
        z = torch.randn(s, BATCH, Z_DIM, device=device)
        critic_loss, generator_loss = losses(toy, x, eps, z)
        critic_grads = torch.autograd.grad(critic_loss.sum(), toy.critic, retain_graph=True)
        generator_grads = torch.autograd.grad(generator_loss.sum(), toy.generator_parameters())
        for params, grads in ((toy.critic, critic_grads), (toy.generator_parameters(), generator_grads)):
            for p, g in zip(params, grads, strict=True):
                p.grad = g
        critic_opt.step()
        generator_opt.step()

    return step


def measure(seeds: int, steps: int = 50, warmup: int = 10, repeats: int = 5,
            device: torch.device | str = "cpu") -> dict[str, object]:
    """Milliseconds per seed-step at S = 1 and S = ``seeds`` (alternating, medians of ``repeats``) and their ratio."""
    device = torch.device(device)
    steppers = {n: make_step(make_toy(n, device=device)) for n in (1, seeds)}
    for step in steppers.values():
        for _ in range(warmup):
            step()
    times: dict[int, list[float]] = {1: [], seeds: []}
    for _ in range(repeats):
        for n, step in steppers.items():
            _sync(device)
            t = time.perf_counter()
            for _ in range(steps):
                step()
            _sync(device)
            times[n].append((time.perf_counter() - t) / steps / n * 1000)
    one, many = statistics.median(times[1]), statistics.median(times[seeds])
    return {"device": str(device), "threads": torch.get_num_threads(), "seeds": seeds, "batch_size": BATCH,
            "ms_per_seed_step_single": one, "ms_per_seed_step_stacked": many, "stacking_speedup": one / many,
            "single_ms_all": [round(v, 3) for v in times[1]], "stacked_ms_all": [round(v, 3) for v in times[seeds]]}


# (in, out, bias) of every linear layer of the toy's networks: encoder, decoder, critic (maxout layers, output)
TOY_LINEAR_LAYERS = (
    (X_DIM + NOISE, HIDDEN, False), (HIDDEN, HIDDEN, False), (HIDDEN, Z_DIM, True),
    (Z_DIM, HIDDEN, False), (HIDDEN, X_DIM, True),
    (X_DIM + Z_DIM, CRITIC_UNITS * PIECES, True), (CRITIC_UNITS, CRITIC_UNITS * PIECES, True), (CRITIC_UNITS, 1, True),
)


def linear_exactness(seeds: int, in_dim: int, out_dim: int, bias: bool, seed: int = 0) -> dict[str, bool]:
    """Whether one ``baddbmm`` (``bmm`` without bias) over ``seeds`` seed-major slices of a batch gives, for
    every slice, the bits ``F.linear`` of that slice gives: output and the gradients of input, weight, bias."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(seeds, out_dim, in_dim, generator=g) * INIT_STD
    b = torch.randn(seeds, out_dim, generator=g) if bias else None
    x = torch.randn(seeds * BATCH, in_dim, generator=g)
    grad = torch.randn(seeds * BATCH, out_dim, generator=g)
    ws, xs = w.clone().requires_grad_(), x.clone().requires_grad_()
    bs = b.clone().requires_grad_() if b is not None else None
    h, wt = xs.view(seeds, BATCH, in_dim), ws.transpose(1, 2)
    y = (torch.baddbmm(bs.unsqueeze(1), h, wt) if bs is not None else torch.bmm(h, wt)).reshape(seeds * BATCH, -1)
    stacked = torch.autograd.grad(y, [xs, ws] + ([bs] if bs is not None else []), grad)
    same = {"output": True, "grad_input": True, "grad_weight": True, "grad_bias": True}
    for k in range(seeds):
        rows = slice(k * BATCH, (k + 1) * BATCH)
        xk, wk = x[rows].clone().requires_grad_(), w[k].clone().requires_grad_()
        bk = b[k].clone().requires_grad_() if b is not None else None
        yk = F.linear(xk, wk, bk)
        one = torch.autograd.grad(yk, [xk, wk] + ([bk] if bk is not None else []), grad[rows])
        same["output"] &= torch.equal(yk, y[rows])
        same["grad_input"] &= torch.equal(one[0], stacked[0][rows])
        same["grad_weight"] &= torch.equal(one[1], stacked[1][k])
        if bk is not None:
            same["grad_bias"] &= torch.equal(one[2], stacked[2][k])
    return same


def batch_norm_exactness(seeds: int, channels: int = HIDDEN, seed: int = 0) -> dict[str, bool]:
    """Whether one training-mode ``F.batch_norm`` over ``[batch, seeds x channels]`` gives each seed what its
    own ``F.batch_norm`` over ``[batch, channels]`` gives: output, gradients of input, scale and shift, running
    mean and variance."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(BATCH, seeds, channels, generator=g) * 3 + 1
    grad = torch.randn(BATCH, seeds, channels, generator=g)
    scale, shift = torch.rand(seeds, channels, generator=g) + 0.5, torch.randn(seeds, channels, generator=g)
    mean, var = torch.zeros(seeds, channels), torch.ones(seeds, channels)
    xs, ss, hs = (t.clone().requires_grad_() for t in (x, scale, shift))
    y = F.batch_norm(xs.view(BATCH, -1), mean.view(-1), var.view(-1), ss.view(-1), hs.view(-1), True, 0.05, BN_EPS)
    stacked = torch.autograd.grad(y, [xs, ss, hs], grad.view(BATCH, -1))
    y = y.view(BATCH, seeds, channels)
    same = dict.fromkeys(("output", "grad_input", "grad_scale", "grad_shift", "running_mean", "running_var"), True)
    for k in range(seeds):
        xk, sk, hk = (t.clone().requires_grad_() for t in (x[:, k], scale[k], shift[k]))
        mk, vk = torch.zeros(channels), torch.ones(channels)
        yk = F.batch_norm(xk, mk, vk, sk, hk, True, 0.05, BN_EPS)
        one = torch.autograd.grad(yk, [xk, sk, hk], grad[:, k].contiguous())
        for key, a, b in (("output", yk, y[:, k]), ("grad_input", one[0], stacked[0][:, k]),
                          ("grad_scale", one[1], stacked[1][k]), ("grad_shift", one[2], stacked[2][k]),
                          ("running_mean", mk, mean[k]), ("running_var", vk, var[k])):
            same[key] &= torch.equal(a, b)
    return same


def exactness(seeds: int) -> dict[str, object]:
    """:func:`linear_exactness` for every layer in :data:`TOY_LINEAR_LAYERS`, and :func:`batch_norm_exactness`."""
    layers = [{"in": i, "out": o, "bias": b, **linear_exactness(seeds, i, o, b)} for i, o, b in TOY_LINEAR_LAYERS]
    return {"device": "cpu", "threads": torch.get_num_threads(), "seeds": seeds, "batch_size": BATCH,
            "linear": layers, "batch_norm": batch_norm_exactness(seeds)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--exactness", action="store_true", help="check bit-exactness of stacked layers (CPU)")
    args = parser.parse_args(argv)
    if args.seeds < 2 or args.steps < 1 or args.repeats < 1 or args.warmup < 0:
        parser.error("--seeds must be at least 2, --steps and --repeats at least 1, --warmup at least 0")
    try:
        device = torch.device(args.device)
    except RuntimeError as exc:
        parser.error(f"--device {args.device}: {exc}")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available on this machine")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.exactness:
        if device.type != "cpu":
            parser.error("--exactness checks the CPU's kernels; leave out --device")
        report = exactness(args.seeds)
        if args.json:
            print(json.dumps(report, indent=2))
            return
        print(f"{args.seeds} seeds stacked against one seed each, CPU, {report['threads']} threads "
              "(exact: bit-identical for every seed)")
        for layer in report["linear"]:  # type: ignore[union-attr]
            parts = [k for k in ("output", "grad_input", "grad_weight", "grad_bias") if not layer[k]]
            verdict = "exact" if not parts else "differs in " + ", ".join(parts)
            print(f"  linear {layer['in']}-{layer['out']}: {verdict}")
        parts = [k for k, v in report["batch_norm"].items() if not v]  # type: ignore[union-attr]
        print("  batch norm: " + ("exact" if not parts else "differs in " + ", ".join(parts)))
        return
    out = measure(args.seeds, args.steps, args.warmup, args.repeats, device)
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"toy ALI step on {out['device']} ({out['threads']} threads): {out['ms_per_seed_step_single']:.2f} ms "
              f"per seed-step alone, {out['ms_per_seed_step_stacked']:.2f} ms with {args.seeds} seeds stacked: "
              f"{out['stacking_speedup']:.2f}x")


if __name__ == "__main__":
    main()
