"""advinf bench runs both loops on a recipe's networks and reports comparable numbers."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from conftest import RECIPES, TINY, TINY_ENCODER

from advinf.cli import cli


def test_bench_reports_both_loops():
    sets = [a for t in TINY + TINY_ENCODER for a in ("--set", t)]
    res = CliRunner().invoke(cli, ["bench", str(RECIPES / "ali_mixture25.toml"), "--steps", "5", "--warmup", "1",
                                   "--repeats", "2", "--json", *sets])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert len(out["advinf_ms_all"]) == len(out["plain_ms_all"]) == 2
    assert out["advinf_ms_per_step"] > 0 and out["plain_ms_per_step"] > 0
    assert out["speedup"] == pytest.approx(out["plain_ms_per_step"] / out["advinf_ms_per_step"])
