"""examples/advinf-spectral, the third-party package of docs/writing-plugins.md: installed (a wheel built offline
into a temporary target, so the test environment is left alone), found through its entry point, its own tests
pass, and a recipe trains with its critic and divergence through the CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

from conftest import ROOT, TINY, TINY_ENCODER, cli_env

EXAMPLE = ROOT / "examples" / "advinf-spectral"


def test_the_example_package_installs_and_trains_through_the_cli(tmp_path):
    source, target = tmp_path / "src", tmp_path / "site"
    shutil.copytree(EXAMPLE, source)  # building writes build/ and *.egg-info beside the sources
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-build-isolation", "--no-deps",
                    "--no-index", "--disable-pip-version-check", "--target", str(target), str(source)], check=True)
    assert (target / "advinf_spectral" / "__init__.py").is_file()
    env = cli_env(PYTHONPATH=str(target))
    listing = subprocess.run([sys.executable, "-m", "advinf", "list-plugins", "--json"], capture_output=True,
                             text=True, env=env)
    assert listing.returncode == 0, listing.stderr
    plugins = {p["name"]: p for p in json.loads(listing.stdout)}
    assert plugins["spectral"]["version"] == "0.1.0"
    assert plugins["spectral"]["components"] == {"critic": ["spectral_critic"], "divergence": ["relativistic_hinge"]}
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], cwd=source,
                           capture_output=True, text=True, env=env)
    assert tests.returncode == 0 and "3 passed" in tests.stdout, tests.stdout + tests.stderr
    sets = [a for o in [*TINY, *TINY_ENCODER] for a in ("--set", o)]
    out = tmp_path / "run"
    run = subprocess.run([sys.executable, "-m", "advinf", "run", str(source / "spectral_mixture25.toml"),
                          "--out", str(out), *sets], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["step"] == 30 and record["loss_critic"] >= 0  # a hinge loss
    assert "modes_covered" in json.loads((out / "eval.json").read_text())["mode_coverage"]
    state = (out / "recipe.toml").read_text()
    assert 'name = "spectral_critic"' in state and 'divergence = "relativistic_hinge"' in state
    ours = subprocess.run([sys.executable, "-c", "import advinf_spectral"], capture_output=True, env=cli_env())
    assert ours.returncode != 0  # installed into the temporary target only
