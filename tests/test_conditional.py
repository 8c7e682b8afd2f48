"""Conditional ALI: the recipes on real-format data, conditions through every use of a model, the checks."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from conftest import RECIPES, ROOT, write
from image_formats import CELEBA_ATTRS, write_celeba, write_image_folder, write_mnist, write_svhn
from PIL import Image
from test_image_datasets import FID_TINY

import advinf
from advinf import Condition, ConditionEmbedding, UserError
from advinf import checkpoint as ckpt
from advinf.cli import cli

torch.set_num_threads(1)


def _mnist(root):
    write_mnist(root, train=8, test=4)
    return root, 32


def _svhn(root):
    write_svhn(root, {"extra": 8, "test": 4, "train": 3})  # train: the SVM probe's labels (ali_svhn.toml)
    return root, 32


def _celeba(root):
    write_celeba(root, [0] * 8 + [2] * 4)
    return root, 64


TINY = ["dataset.verify=false", "train.epochs=1", "train.batch_size=4", "train.threads=1", "train.progress=none",
        "train.sample_every=1", "train.num_samples=4", "train.log_every=1", "train.device=cpu",
        "game.embedding_dim=16"]


def train(tmp_path, recipe: str, writer, extra=()):
    root, size = writer(tmp_path / "data")
    out = tmp_path / "run"
    args = ["run", str(RECIPES / f"{recipe}.toml"), "--out", str(out)]
    for item in [f"dataset.root={root}", *TINY, *extra]:
        args += ["--set", item]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    return out, size


def png_size(path):
    with Image.open(path) as img:
        return img.size


@pytest.mark.parametrize("recipe,writer,condition", [
    ("ali_mnist_conditional", _mnist, "7"),
    ("ali_svhn_conditional", _svhn, "3"),
    ("ali_celeba_conditional", _celeba, "Attr_01,Attr_05"),
])
def test_conditional_recipes_train_and_draw_conditional_grids(tmp_path, recipe, writer, condition):
    from test_image_datasets import check_recipe_evaluators

    out, size = train(tmp_path, recipe, writer, FID_TINY if recipe != "ali_celeba_conditional" else ())
    check_recipe_evaluators(out, recipe)
    records = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    assert [p.name for p in sorted((out / "samples").glob("*.png"))] == \
        ["step_0000000.png", "step_0000001.png", "step_0000002.png"]
    cell = size + 2
    res = CliRunner().invoke(cli, ["sample", str(out), "--grid", "conditions", "--columns", "3", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    rows = 10 if recipe != "ali_celeba_conditional" else 8  # every class, or 8 held-out attribute sets
    assert png_size(out / "condition_grid.png") == (3 * cell + 2, rows * cell + 2)
    res = CliRunner().invoke(cli, ["sample", str(out), "--condition", condition, "--count", "4", "--out",
                                   str(tmp_path / "one.png"), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert png_size(tmp_path / "one.png") == (2 * cell + 2, 2 * cell + 2)
    if recipe == "ali_celeba_conditional":
        assert list(advinf.load_run(out, device="cpu").condition.names) == CELEBA_ATTRS
    for cmd in ("reconstruct", "interpolate"):
        res = CliRunner().invoke(cli, [cmd, str(out), "--count" if cmd == "reconstruct" else "--pairs", "2",
                                       "--out", str(tmp_path / f"{cmd}.png"), "--device", "cpu"])
        assert res.exit_code == 0, res.output


def test_the_condition_and_z_each_change_the_samples(tmp_path):
    # BN momentum 1: after two steps the running statistics are the last batch's, so that eval-mode outputs carry
    # the signal (with the paper's 0.05 and N(0, 0.01) weights they are still all output bias after two steps)
    out, _ = train(tmp_path, "ali_mnist_conditional", _mnist, ["decoder.bn_momentum=1.0", *FID_TINY])
    model = advinf.load_run(out, device="cpu")
    assert model.conditional and model.condition.kind == "classes" and model.condition.dim == 10
    z = model.prior_sample(6, seed=1)
    y = torch.full((6,), 3)
    with torch.no_grad():
        base = model.sample(z=z, y=y)
        assert torch.equal(base, model.sample(z=z, y=y))  # eval mode: deterministic
        other_y = model.sample(z=z, y=torch.full((6,), 8))
        other_z = model.sample(z=model.prior_sample(6, seed=2), y=y)
    assert (base - other_y).abs().amax() > 1e-4  # only the condition changed
    assert (base - other_z).abs().amax() > 1e-4  # only z changed
    with pytest.raises(UserError, match="conditional"):
        model.sample(z=z)  # a conditional model needs its conditions
    with torch.no_grad():
        x, labels = advinf.Dataset.decode(model.dataset.heldout.x[:4]), model.dataset.heldout.y[:4]
        assert model.reconstruct(x, labels).shape == x.shape


def test_the_original_fixed_embedding_is_shared_and_never_trained(tmp_path):
    out, _ = train(tmp_path, "ali_svhn_conditional", _svhn, ["game.train_embedding=false", *FID_TINY])
    model = ckpt.load_checkpoint(ckpt.latest_checkpoint(out / "checkpoints")).tensors["model"]
    weights = [model[f"{net}.embed.linear.weight"] for net in ("encoder", "decoder", "critic")]
    assert weights[0].shape == (16, 10)
    assert torch.equal(weights[0], weights[1]) and torch.equal(weights[0], weights[2])
    fresh = ConditionEmbedding(Condition("classes", 10, embedding_dim=16, seed=0))
    assert torch.equal(weights[0], fresh.linear.weight)  # never trained
    assert 0.005 < float(weights[0].std()) < 0.02  # N(0, 0.01^2), as the original's initialisation
    optim = ckpt.load_checkpoint(ckpt.latest_checkpoint(out / "checkpoints")).tensors["optim"]
    assert not any(".embed." in k for k in optim)

    trained_run, _ = train(tmp_path / "trained", "ali_svhn_conditional", _svhn, FID_TINY)
    trained = ckpt.load_checkpoint(ckpt.latest_checkpoint(trained_run / "checkpoints")).tensors["model"]
    assert not torch.equal(trained["decoder.embed.linear.weight"], fresh.linear.weight)


def test_conditions_parse_and_describe():
    attrs = Condition("attributes", 3, ("Male", "Smiling", "Young"))
    assert attrs.parse("Male,Young").tolist() == [1, 0, 1] and attrs.parse("none").tolist() == [0, 0, 0]
    assert attrs.describe(attrs.parse("Smiling")) == "Smiling"
    with pytest.raises(UserError, match="unknown attribute 'Smilling'; did you mean 'Smiling'"):
        attrs.parse("Smilling")
    classes = Condition("classes", 3, ("cat", "dog", "fox"))
    assert int(classes.parse("2")) == 2 and int(classes.parse("dog")) == 1
    with pytest.raises(UserError, match="class index from 0 to 2"):
        classes.parse("7")
    assert classes.as_input(torch.tensor([2, 0])).tolist() == [[0, 0, 1], [1, 0, 0]]


CONDITIONAL = """
name = "c"
plugins = ["{plugin}"]
[dataset]
name = "image_folder"
root = "{root}"
size = 32
labels = "{labels}"
[prior]
name = "gaussian"
dim = 8
spatial = true
[encoder]
name = "ali_svhn_encoder"
[decoder]
name = "ali_svhn_decoder"
[critic]
name = "{critic}"
[game]
name = "conditional_ali"
[train]
steps = 2
"""


def test_validate_refuses_labels_that_cannot_be_had_or_taken(tmp_path):
    root = tmp_path / "pics"
    write_image_folder(root, {"a": 2, "b": 2})
    plugin = ROOT / "tests" / "plugins" / "custom_games.py"

    def problems(**kw):
        path = write(tmp_path / "r.toml", CONDITIONAL.format(plugin=plugin, root=root, **kw))
        res = CliRunner().invoke(cli, ["validate", str(path)])
        assert "Traceback" not in res.output
        return res.exit_code, res.output

    code, text = problems(labels="none", critic="ali_svhn_critic")
    assert code == 2 and "dataset.name: game 'conditional_ali' needs labelled data, but dataset 'image_folder' " \
                        "has no labels with these options" in text
    code, text = problems(labels="folders", critic="plain_critic")
    assert code == 2 and "critic.name: game 'conditional_ali' feeds labels to the critic, but critic 'plain_critic' " \
                         "cannot take them; conditional critics:" in text
    assert problems(labels="folders", critic="ali_svhn_critic")[0] == 0


def test_sampling_conditions_of_an_unconditional_run_is_a_clear_error(tmp_path):
    from conftest import TINY, TINY_ENCODER

    out = tmp_path / "run"
    args = ["run", str(RECIPES / "ali_mixture25.toml"), "--out", str(out)]
    assert CliRunner().invoke(cli, args + [a for t in TINY + TINY_ENCODER for a in ("--set", t)]).exit_code == 0
    res = CliRunner().invoke(cli, ["sample", str(out), "--condition", "3"])
    assert res.exit_code == 2 and "is not a conditional run" in res.output
