"""GPU checks (marked ``gpu``; skipped cleanly without CUDA): the paper recipe and the toy recipe on CUDA with
the speed options, a checkpoint written on the GPU and resumed."""

from __future__ import annotations

import json
import math

import pytest
import torch
from click.testing import CliRunner
from conftest import RECIPES, TINY, TINY_ENCODER
from image_formats import write_svhn

import advinf
from advinf.cli import cli

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def sets(items):
    return [a for item in items for a in ("--set", item)]


@pytest.mark.parametrize("speed", [[], ["train.autocast=bf16", "train.channels_last=true"], ["train.compile=true"]])
def test_svhn_recipe_on_cuda(tmp_path, speed):
    write_svhn(tmp_path / "svhn", {"extra": 64, "test": 16})
    out = tmp_path / "run"
    args = ["run", str(RECIPES / "ali_svhn.toml"), "--out", str(out), "--stop-after", "6",
            *sets([f"dataset.root={tmp_path / 'svhn'}", "dataset.verify=false", "train.steps=12", "train.batch_size=16",
                   "train.device=cuda", "train.log_every=3", "train.progress=none", *speed])]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(cli, args[:4] + ["--resume"] + args[6:])
    assert res.exit_code == 0, res.output
    records = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [3, 6, 9, 12]
    assert all(math.isfinite(r["loss_critic"]) for r in records)
    loaded = advinf.load_run(out)
    assert loaded.device.type == "cuda" and next(loaded.decoder.parameters()).is_cuda


def test_toy_recipe_on_cuda(tmp_path):
    res = CliRunner().invoke(cli, ["run", str(RECIPES / "ali_mixture25.toml"), "--out", str(tmp_path / "run"),
                                   *sets(TINY + TINY_ENCODER + ["train.device=cuda"])])
    assert res.exit_code == 0, res.output
    assert "modes_covered" in json.loads(res.output)["mode_coverage"]
