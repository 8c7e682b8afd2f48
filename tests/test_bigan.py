"""BiGAN's MNIST networks (plugins/bigan_networks.py) and recipes/bigan_{mnist,digits}.toml end to end."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from conftest import RECIPES
from image_formats import write_mnist
from PIL import Image
from torch import nn

import advinf
from advinf import BuildContext, Dataset, DeterministicPosterior, Split, UserError
from advinf import checkpoint as ckpt
from advinf.cli import cli
from advinf_plugins.priors import UniformPrior

torch.set_num_threads(1)


def nets(hidden: int = 1024, **options):
    ctx = BuildContext(prior=UniformPrior((50,)))
    common = {"hidden": hidden, "x_shape": [1, 28, 28], **options}
    return tuple(advinf.create(kind, f"bigan_mnist_{kind}", ctx, **common) for kind in ("encoder", "decoder", "critic"))


def test_shapes_widths_and_no_biases_or_affine_bn():
    torch.manual_seed(0)
    encoder, decoder, critic = nets()
    x, z = torch.rand(6, 1, 28, 28), torch.rand(6, 50) * 2 - 1
    post = encoder(x)
    assert isinstance(post, DeterministicPosterior) and post.mean.shape == (6, 50)
    assert torch.equal(post.sample(), post.mean)  # deterministic: the sample is the mean
    assert [tuple(f.shape) for f in post.features] == [(6, 1024)]
    assert decoder(z).shape == (6, 1, 28, 28) and critic(x, z).shape == (6,)
    shapes = {name: {k: tuple(v.shape) for k, v in m.named_parameters()} for name, m in
              zip(("encoder", "decoder", "critic"), (encoder, decoder, critic), strict=True)}
    assert shapes == {
        "encoder": {"fc1.weight": (1024, 784), "fc2.weight": (1024, 1024), "out.weight": (50, 1024)},
        "decoder": {"fc1.weight": (1024, 50), "fc2.weight": (1024, 1024), "z2.weight": (1024, 50),
                    "out.weight": (784, 1024)},
        "critic": {"fc1.weight": (1024, 784), "fc2.weight": (1024, 1024), "z2.weight": (1024, 50),
                   "out.weight": (1, 1024)},
    }  # no biases anywhere, and batch norm without scale or shift (--nogain --nobias)
    for m in (encoder, decoder, critic):
        bns = [b for b in m.modules() if isinstance(b, nn.BatchNorm1d)]
        assert bns and all(not b.affine and b.eps == 1e-8 for b in bns)
    assert torch.count_nonzero(critic.out.weight) == 0 and torch.all(critic(x, z) == 0)  # zero-initialised
    for w in (encoder.fc1.weight, decoder.fc2.weight, critic.fc2.weight, critic.z2.weight, decoder.z2.weight):
        w = w.detach()
        assert abs(float(w.std()) - 0.02) < 0.002 and abs(float(w.mean())) < 0.002


def test_z_enters_critic_and_decoder_as_a_learned_bias_of_the_second_layer():
    torch.manual_seed(1)
    _, decoder, critic = nets(hidden=64)
    nn.init.normal_(critic.out.weight)  # give the critic a non-zero head, to see z's effect
    x, z = torch.rand(8, 1, 28, 28), torch.rand(8, 50) * 2 - 1
    lrelu = nn.LeakyReLU(0.2)
    for m in (decoder, critic):
        m.train(True)
    # the critic by hand: z is projected by z2 and added before the batch norm of the second layer, nowhere else
    h1 = lrelu(x.flatten(1) @ critic.fc1.weight.T)
    pre = h1 @ critic.fc2.weight.T + z @ critic.z2.weight.T
    h2 = lrelu((pre - pre.mean(0)) / torch.sqrt(pre.var(0, unbiased=False) + 1e-8))
    assert torch.allclose(critic(x, z), (h2 @ critic.out.weight.T).squeeze(1), atol=1e-5)
    g1 = torch.relu(torch.nn.functional.batch_norm(z @ decoder.fc1.weight.T, None, None, training=True, eps=1e-8))
    pre = g1 @ decoder.fc2.weight.T + z @ decoder.z2.weight.T
    g2 = torch.relu(torch.nn.functional.batch_norm(pre, None, None, training=True, eps=1e-8))
    assert torch.allclose(decoder(z), torch.sigmoid(g2 @ decoder.out.weight.T).view(8, 1, 28, 28), atol=1e-5)
    # learned: the projection gets gradients from the critic's loss
    critic(x, z).sum().backward()
    assert critic.z2.weight.grad is not None and critic.z2.weight.grad.abs().sum() > 0
    # and it is the only way z reaches the critic: without it, z changes nothing
    with torch.no_grad():
        critic.z2.weight.zero_()
    assert torch.equal(critic(x, z), critic(x, torch.rand(8, 50)))
    with pytest.raises(ValueError, match="needs z"):
        critic(x, None)


def test_encoder_is_bounded_as_bigans_uniform_latent():
    torch.manual_seed(2)
    encoder, _, _ = nets(hidden=32)
    encoder.train(False)
    for scale in (1.0, 100.0, 1e4):
        x = (torch.rand(64, 1, 28, 28) - 0.5) * scale
        post = encoder(x)
        logits = encoder.out(post.features[0])
        assert torch.equal(post.mean, 2 * torch.sigmoid(logits) - 1)
        assert float(post.mean.detach().abs().max()) <= 1.0
    assert float(encoder(torch.rand(64, 1, 28, 28) * 1e4).mean.detach().abs().max()) > 0.99  # saturates


def test_shape_errors_name_the_network():
    ctx = BuildContext(prior=UniformPrior((50,)))
    with pytest.raises(UserError, match="encoder 'bigan_mnist_encoder': give x_shape"):
        advinf.create("encoder", "bigan_mnist_encoder", ctx)
    data = BuildContext(dataset=Dataset(Split(torch.zeros(4, 1, 28, 28, dtype=torch.uint8))), prior=ctx.prior)
    with pytest.raises(UserError, match=r"x_shape = \[784\], but the dataset's examples have shape") as err:
        advinf.create("encoder", "bigan_mnist_encoder", data, x_shape=[784])
    assert err.value.option == "x_shape"
    with pytest.raises(UserError, match="z_dim = 20, but the prior has dim = 50"):
        advinf.create("critic", "bigan_mnist_critic", ctx, x_shape=[784], z_dim=20)


def _run(tmp_path, recipe: str, extra: list[str]):
    out = tmp_path / "run"
    args = ["run", str(RECIPES / recipe), "--out", str(out)]
    for item in ["train.threads=1", "train.progress=none", "train.device=cpu", "train.log_every=1",
                 "train.sample_every=2", "train.num_samples=4", "encoder.hidden=64", "decoder.hidden=64",
                 "critic.hidden=64", *extra]:
        args += ["--set", item]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    return out


def test_bigan_digits_recipe_end_to_end(tmp_path):
    """A few steps of the offline variant: the schedule runs (the lr in the checkpoint follows it), and the probe
    reports BiGAN's 1-NN on E(x) next to raw pixels and the untrained encoder."""
    schedule = "optimizer.schedule={name = \"exponential\", hold = 1, decay = 2, final = 0.01}"
    out = _run(tmp_path, "bigan_digits.toml", ["train.steps=3", "train.batch_size=32", schedule,
                                               "evaluators.knn_probe.repeats=2"])
    state = ckpt.load_checkpoint(ckpt.latest_checkpoint(out / "checkpoints")).state
    assert {p: m["param_groups"][0]["lr"] for p, m in state["optimizers"].items()} == \
        {"critic": 2e-4 * 0.01, "generator": 2e-4 * 0.01}
    assert state["optimizers"]["critic"]["param_groups"][0]["weight_decay"] == 5e-5
    probe = json.loads((out / "eval.json").read_text())["knn_probe"]
    assert probe["features"] == "mean" and probe["metric"] == "euclidean" and probe["feature_dim"] == 50
    assert probe["raw_pixels"]["feature_dim"] == 784 and "rebuilt by advinf.build" in probe["untrained"]["init"]
    for result in (probe, probe["raw_pixels"], probe["untrained"]):
        assert 0.1 < result["test_accuracy_mean"] <= 1.0  # 10 classes: far above chance on digits
    with Image.open(out / "samples" / "step_0000002.png") as img:
        assert img.size == (2 * 30 + 2, 2 * 30 + 2)  # 4 samples of 28x28, 2 per row, 2-pixel gaps


def test_bigan_mnist_recipe_on_real_format_idx_files(tmp_path):
    write_mnist(tmp_path / "data", train=40, test=12)
    out = _run(tmp_path, "bigan_mnist.toml", [
        f"dataset.root={tmp_path / 'data'}", "dataset.verify=false", "train.steps=2", "train.batch_size=8",
        "evaluators.knn_probe.labels=10", "evaluators.knn_probe.validation=4"])
    model = advinf.load_run(out, device="cpu")
    assert type(model.encoder).__name__ == "BiganEncoder" and model.prior.latent_shape == (50,)
    assert model.sample(3).shape == (3, 1, 28, 28)
    z = model.encode(torch.rand(5, 1, 28, 28)).mean
    assert z.shape == (5, 50) and float(z.abs().max()) <= 1
    probe = json.loads((out / "eval.json").read_text())["knn_probe"]
    assert probe["labels"] == 10 and probe["test_examples"] == 12
    resolved = (out / "recipe.toml").read_text()
    assert 'name = "exponential"' in resolved and 'unit = "epochs"' in resolved
