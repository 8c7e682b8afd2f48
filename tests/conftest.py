from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "recipes"

#: --set overrides that shrink the toy recipes to a couple of seconds on CPU.
TINY = [
    "train.steps=30", "train.log_every=10", "train.sample_every=15", "train.progress=none", "train.threads=1",
    "dataset.samples=2000", "dataset.heldout=500", "decoder.hidden=32", "critic.hidden=16",
    "evaluators.mode_coverage.samples=500", "evaluators.mode_coverage.plot_points=200",
]
TINY_ENCODER = ["encoder.hidden=32"]


@pytest.fixture(autouse=True)
def _clean_plugin_env(monkeypatch):
    for var in ("ADVINF_STRICT_PLUGINS", "ADVINF_DISABLE_PLUGINS", "ADVINF_DEBUG"):
        monkeypatch.delenv(var, raising=False)
    from advinf.plugins import reset_default_host

    reset_default_host()
    yield
    reset_default_host()


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADVINF_")}
    env.update(extra)
    return env
