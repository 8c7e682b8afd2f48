"""Pictures of a trained run: samples, reconstruction grids, interpolations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import RECIPES, TINY, TINY_ENCODER
from PIL import Image

from advinf import Decoder, DeterministicPosterior, Encoder, Networks, TrainedModel, UserError
from advinf.cli import cli
from advinf.visualize import interpolations, reconstructions, samples
from advinf_plugins.games import GanGame, GanOptions, JointGame, JointGameOptions
from advinf_plugins.priors import GaussianPrior


class Flatten(Encoder):
    def forward(self, x, y=None):
        return DeterministicPosterior(x.flatten(1))


class Invert(Decoder):  # decodes z back to the image, inverted, so data and reconstruction differ visibly
    def forward(self, z, y=None):
        return 1 - z.view(len(z), 1, 4, 4).clamp(0, 1)


def trained(encoder: Encoder | None) -> TrainedModel:
    game = JointGame(JointGameOptions(), stochastic=True) if encoder else GanGame(GanOptions())
    return TrainedModel(Networks(GaussianPrior((16,)), encoder=encoder, decoder=Invert()), game, torch.device("cpu"))


def cells(path, rows, cols, size=4, pad=2):
    img = np.asarray(Image.open(path).convert("L"), dtype=np.float32) / 255
    assert img.shape == (rows * (size + pad) + pad, cols * (size + pad) + pad)
    return [[img[pad + r * (size + pad):pad + r * (size + pad) + size, pad + c * (size + pad):
                 pad + c * (size + pad) + size] for c in range(cols)] for r in range(rows)]


def test_reconstruction_grid_alternates_data_and_reconstruction(tmp_path):
    model = trained(Flatten())
    x = torch.rand(10, 1, 4, 4).mul(255).round().div(255)
    reconstructions(model, x, tmp_path / "r.png", pairs_per_row=5)
    grid = cells(tmp_path / "r.png", rows=2, cols=10)
    for i in range(10):
        r, c = divmod(2 * i, 10)
        assert np.allclose(grid[r][c], x[i, 0].numpy(), atol=1 / 255)  # odd columns (1st, 3rd, ...): data
        assert np.allclose(grid[r][c + 1], 1 - x[i, 0].numpy(), atol=1 / 255)  # even columns: reconstructions


def test_interpolation_rows_run_from_one_example_to_the_other(tmp_path):
    model = trained(Flatten())
    x = torch.zeros(4, 1, 4, 4)
    x[1] = 1.0
    x[3] = 0.5
    decoded = interpolations(model, x, tmp_path / "i.png", steps=5)
    assert decoded.shape == (2, 5, 1, 4, 4)
    grid = cells(tmp_path / "i.png", rows=2, cols=7)
    means = [round(float(cell.mean()), 2) for cell in grid[0]]
    assert means == [0.0, 1.0, 0.75, 0.5, 0.25, 0.0, 1.0]  # data, inverted line from z1=0 to z2=1, data


def test_gan_run_cannot_reconstruct(tmp_path):
    model = trained(None)
    with pytest.raises(UserError, match="no encoder"):
        reconstructions(model, torch.zeros(2, 1, 4, 4), tmp_path / "r.png")
    samples(model, tmp_path / "s.png", count=9)
    assert Image.open(tmp_path / "s.png").size == (3 * 6 + 2, 3 * 6 + 2)


def test_picture_commands_on_a_trained_toy_run(tmp_path):
    run = tmp_path / "run"
    args = ["run", str(RECIPES / "ali_mixture25.toml"), "--out", str(run)]
    assert CliRunner().invoke(cli, args + [a for t in TINY + TINY_ENCODER for a in ("--set", t)]).exit_code == 0
    for cmd, extra in (("sample", ["--count", "50"]), ("reconstruct", ["--count", "20"]),
                       ("interpolate", ["--pairs", "3", "--steps", "4"])):
        out = tmp_path / f"{cmd}.png"
        res = CliRunner().invoke(cli, [cmd, str(run), "--out", str(out), "--device", "cpu", *extra])
        assert res.exit_code == 0, res.output
        assert out.stat().st_size > 1000
    res = CliRunner().invoke(cli, ["reconstruct", str(run), "--count", "5000"])
    assert res.exit_code == 2 and "--count 5000 asks for more examples than the heldout split holds (500)" in res.output
    res = CliRunner().invoke(cli, ["interpolate", str(run), "--pairs", "251"])
    assert res.exit_code == 2 and "--pairs 251 needs 502 examples, but the heldout split holds 500; ask for at " \
        "most 250 pairs" in res.output
    res = CliRunner().invoke(cli, ["sample", str(run), "--columns", "4"])  # it would be ignored
    assert res.exit_code == 2 and "--columns lays out --grid conditions" in res.output


class Negate(Decoder):  # 2-D: the reconstruction of x is -x
    def forward(self, z, y=None):
        return -z


def test_two_dimensional_pictures_tell_their_points_apart(monkeypatch):
    """On 2-D data the reconstructions were drawn in the data's colour with nothing pairing them, the
    interpolations without the data at their ends, and conditional samples in one colour."""
    from types import SimpleNamespace

    import advinf.visualize as visualize

    drawn = []
    monkeypatch.setattr(visualize, "save_scatter", lambda points, path, title="", groups=(), lines=None:
                        drawn.append((groups, lines)))
    model = TrainedModel(Networks(GaussianPrior((2,)), encoder=Flatten(), decoder=Negate()),
                         JointGame(JointGameOptions(), stochastic=True), torch.device("cpu"))
    x = torch.randn(6, 2)
    reconstructions(model, x, None)
    groups, lines = drawn.pop()
    assert [label for _, label in groups] == ["data x", "reconstruction Gx(Gz(x))"]
    assert torch.equal(lines[:, 0], x) and torch.equal(lines[:, 1], -x)  # each example joined to its own
    interpolations(model, x, None, steps=4)
    groups, lines = drawn.pop()
    assert [label for _, label in groups] == ["data (both ends)", "decoded along the line in z"]
    assert lines.shape == (3, 6, 2) and torch.equal(lines[:, 0], x[0::2]) and torch.equal(lines[:, -1], x[1::2])
    fake = SimpleNamespace(sample=lambda count, y=None, seed=0: torch.randn(count, 2))
    samples(fake, None, count=6, y=torch.tensor([3, 3, 4, 4, 4, 7]))
    groups, _ = drawn.pop()
    assert [(label, len(points)) for points, label in groups] == [("y = 3", 2), ("y = 4", 3), ("y = 7", 1)]
