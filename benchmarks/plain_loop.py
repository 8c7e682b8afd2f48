"""The plain reference loop `advinf bench` compares against: how ALI is usually written in PyTorch.

It computes the same thing as advinf's simultaneous update (both gradients from one forward pass at the same
parameters) but in the everyday style: batches gathered on the host from a float tensor and copied to the
device each step, zero_grad/backward, and a `.item()` per step for logging.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def plain_ali_steps(encoder, decoder, critic, prior_sample, data_x: torch.Tensor, steps: int, batch_size: int,
                    device: torch.device, lr: float = 1e-4, betas=(0.5, 0.999)) -> list[float]:
    """Train ``steps`` ALI updates; returns the per-step critic losses (read with .item(), as usual)."""
    data = data_x.float() / 255 if data_x.dtype == torch.uint8 else data_x.float()  # whole set as floats
    gen_params = list(encoder.parameters()) + list(decoder.parameters())
    opt_g = torch.optim.Adam(gen_params, lr=lr, betas=betas)
    opt_d = torch.optim.Adam(critic.parameters(), lr=lr, betas=betas)
    losses = []
    for _ in range(steps):
        idx = torch.randint(len(data), (batch_size,))
        x = data[idx].to(device)
        z_hat = encoder(x).sample()
        z = prior_sample(batch_size, device)
        x_tilde = decoder(z)
        logits = critic(torch.cat([x, x_tilde]), torch.cat([z_hat, z]))
        d_data, d_model = logits[:batch_size], logits[batch_size:]
        loss_d = F.softplus(-d_data).mean() + F.softplus(d_model).mean()
        loss_g = F.softplus(d_data).mean() + F.softplus(-d_model).mean()
        opt_d.zero_grad()
        opt_g.zero_grad()
        grads_d = torch.autograd.grad(loss_d, list(critic.parameters()), retain_graph=True)
        loss_g.backward()
        for p, g in zip(critic.parameters(), grads_d, strict=True):
            p.grad = g
        opt_d.step()
        opt_g.step()
        losses.append(loss_d.item())
    return losses
