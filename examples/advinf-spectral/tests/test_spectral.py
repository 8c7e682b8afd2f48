import advinf_spectral
import torch

import advinf


def test_the_plugin_registers_a_critic_and_a_divergence(advinf_host):
    info = advinf_host.add_plugin(advinf_spectral, name="spectral")
    assert info.error is None
    assert info.components == {"critic": ["spectral_critic"], "divergence": ["relativistic_hinge"]}


def test_every_weight_has_spectral_norm_one(advinf_host):
    torch.manual_seed(0)  # power iteration from a random start: 20 steps reach 1 +- 1% for most starts, not all
    advinf_host.add_plugin(advinf_spectral, name="spectral")
    ctx = advinf.BuildContext(dataset=advinf.create("dataset", "mixture25", None, samples=64, heldout=0),
                              prior=advinf.create("prior", "gaussian", None, dim=2))
    critic = advinf_host.create("critic", "spectral_critic", ctx, hidden=32)
    for _ in range(20):  # each training-mode forward takes one power-iteration step
        logits = critic(torch.randn(8, 2), torch.randn(8, 2))
    assert logits.shape == (8,)
    for layer in critic.net:
        if isinstance(layer, torch.nn.Linear):
            assert torch.linalg.matrix_norm(layer.weight, ord=2) < 1.01


def test_relativistic_hinge_by_hand():
    d_data, d_model = torch.tensor([2.0, 0.0]), torch.tensor([1.0, -1.0])
    critic, generator = advinf_spectral.relativistic_hinge(d_data, d_model)
    # real = d_data - mean(d_model) = [2, 0]; fake = d_model - mean(d_data) = [0, -2]
    assert critic.item() == (0 + 1) / 2 + (1 + 0) / 2
    assert generator.item() == (3 + 1) / 2 + (1 + 3) / 2
