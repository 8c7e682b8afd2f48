"""Several seeds from one command: each seed bit-identical to its own single run, and a summary over them."""

from __future__ import annotations

import json
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import RECIPES, TINY, TINY_ENCODER, cli_env
from safetensors.torch import load_file

from advinf import UserError
from advinf.cli import cli
from advinf.seeds import parse_seeds, run_seeds
from advinf.session import run_recipe

TOY = RECIPES / "ali_mixture25.toml"
SETS = [*TINY, *TINY_ENCODER, "train.device=cpu"]
VOLATILE = {"time", "samples_per_s"}  # wall-clock values in metrics.jsonl


def _run_files(run: Path) -> tuple[dict, dict, list[dict]]:
    model = load_file(str(run / "checkpoints" / "step_0000030" / "model.safetensors"))
    metrics = [{k: v for k, v in json.loads(line).items() if k not in VOLATILE}
               for line in (run / "metrics.jsonl").read_text().splitlines()]
    return model, json.loads((run / "eval.json").read_text()), metrics


def _same(a: Path, b: Path) -> None:
    (ma, ea, la), (mb, eb, lb) = _run_files(a), _run_files(b)
    assert ma.keys() == mb.keys() and all(ma[k].equal(mb[k]) for k in ma), f"{a} and {b} hold different weights"
    assert ea == eb and la == lb


def test_a_seed_group_is_bit_identical_to_single_runs_and_summarised(tmp_path):
    for s in (0, 1, 2):
        run_recipe(TOY, out=tmp_path / f"single_{s}", overrides=[*SETS, f"seed={s}"])
    # in this process (through the CLI) ...
    res = CliRunner().invoke(cli, ["run", str(TOY), "--seeds", "0-2", "--out", str(tmp_path / "group"),
                                   *(a for s in SETS for a in ("--set", s))])
    assert res.exit_code == 0, res.output
    for s in (0, 1, 2):
        _same(tmp_path / f"single_{s}", tmp_path / "group" / f"seed_{s}")
    summary = json.loads((tmp_path / "group" / "summary.json").read_text())
    assert summary["seeds"] == [0, 1, 2] and summary["jobs"] == 1 and summary["seconds"] > 0
    evals = [json.loads((tmp_path / f"single_{s}" / "eval.json").read_text())["mode_coverage"] for s in (0, 1, 2)]
    for metric in ("modes_covered_strict", "high_quality_fraction", "reconstruction_accuracy"):
        got = summary["metrics"][f"mode_coverage.{metric}"]
        values = [e[metric] for e in evals]
        assert got["mean"] == pytest.approx(statistics.fmean(values))
        assert got["std"] == pytest.approx(statistics.stdev(values))
        assert got["n"] == 3 and got["values"] == {str(s): float(v) for s, v in zip((0, 1, 2), values, strict=True)}
        assert f"mode_coverage.{metric}" in res.output  # the printed table
    assert "3 seeds in" in res.output and "summary.json" in res.output

    # ... and in two worker processes: the same runs
    outcome = run_seeds(TOY, [2, 0], out=tmp_path / "workers", jobs=2, overrides=SETS)
    assert [r.seed for r in outcome.results] == [2, 0]
    for s in (0, 2):
        _same(tmp_path / f"single_{s}", tmp_path / "workers" / f"seed_{s}")


def test_seed_lists_and_refusals(tmp_path):
    assert parse_seeds("0-3") == [0, 1, 2, 3]
    assert parse_seeds("5,1, 2-3,1") == [5, 1, 2, 3]
    for bad in ("", "a", "3-1", "-1", "1-", "4294967296", "0-1000000000000", "0-9999,20000"):
        with pytest.raises(UserError, match="--seeds"):  # at once: huge ranges are refused, not listed
            parse_seeds(bad)
    assert parse_seeds("4294967295") == [2**32 - 1] and len(parse_seeds("0-9999")) == 10_000
    assert len(parse_seeds("0-9999,0-9999,5")) == 10_000  # the seeds counted, not the ranges
    runner = CliRunner()
    for args, message in ((["--seeds", "x"], "--seeds 'x'"), (["--jobs", "2"], "--jobs goes with --seeds"),
                          (["--seeds", "0-1", "--resume"], "resume a seed on its own"),
                          (["--seeds", "0-1", "--set", "seed=3"], "--set seed=3 with --seeds: each seed's run sets "
                                                                  "`seed` itself")):
        res = runner.invoke(cli, ["run", str(TOY), *args])
        assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output
    (tmp_path / "g" / "seed_1").mkdir(parents=True)
    (tmp_path / "g" / "seed_1" / "x").write_text("taken")
    with pytest.raises(UserError, match="seed_1"):  # checked before any seed trains
        run_seeds(TOY, [0, 1], out=tmp_path / "g", overrides=SETS)
    assert not (tmp_path / "g" / "seed_0").exists()
    (tmp_path / "h").mkdir()
    (tmp_path / "h" / "summary.json").write_text("{}")  # an earlier group's: never overwritten
    res = runner.invoke(cli, ["run", str(TOY), "--seeds", "5-6", "--out", str(tmp_path / "h")])
    assert res.exit_code == 2 and "summary.json exists (an earlier group of seeds wrote it)" in res.output
    assert (tmp_path / "h" / "summary.json").read_text() == "{}" and not (tmp_path / "h" / "seed_5").exists()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "recipe.toml").write_text("")  # a run directory is no folder for a group
    res = runner.invoke(cli, ["run", str(TOY), "--seeds", "0", "--out", str(tmp_path / "run")])
    assert res.exit_code == 2 and "is a run directory; give a new folder" in res.output
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["recipe.toml"]


def test_a_group_stopped_after_n_steps_and_its_folder_say_what_to_do_next(tmp_path):
    group = tmp_path / "g"
    res = CliRunner().invoke(cli, ["run", str(TOY), "--seeds", "0,2", "--out", str(group), "--stop-after", "10",
                                   *(a for s in SETS for a in ("--set", s))])
    assert res.exit_code == 0, res.output
    assert (f"stopped at step 10 (--stop-after), with a checkpoint: seed 0, seed 2; continue each on its own "
            f"(advinf run --resume {group / 'seed_0'}, ...), then summarise them all with advinf compare "
            f"{group}/seed_*") in " ".join(res.output.split())
    for args, message in (
            (["run", str(TOY), "--seeds", "0-1", "--out", str(group)],  # --seeds cannot --resume: no loop of hints
             f"{group / 'seed_0'} already holds a run (of an earlier group of seeds); give the group a new --out, "
             f"or continue that seed on its own: advinf run --resume {group / 'seed_0'}"),
            (["run", "--resume", str(group)],
             f"{group} holds a group of seeds (seed_0, seed_2), not one run; continue each seed on its own: advinf "
             f"run --resume {group / 'seed_0'}"),
            (["run", str(TOY), "--out", str(group)], f"{group} holds a group of seeds (seed_0, ...); choose another")):
        res = CliRunner().invoke(cli, args)
        assert res.exit_code == 2 and message in " ".join(res.output.split()), res.output
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "n.txt").write_text("mine")
    res = CliRunner().invoke(cli, ["run", str(TOY), "--out", str(tmp_path / "notes")])
    assert res.exit_code == 2 and "is not empty (and holds no run); choose another --out" in res.output
    res = CliRunner().invoke(cli, ["run", "--resume", str(tmp_path / "notes")])  # no hint back to the first one
    assert res.exit_code == 2 and res.output.strip().endswith("(no recipe.toml); check --out")


def test_a_signal_stops_every_worker_with_a_checkpoint_and_starts_no_further_seed(tmp_path):
    out = tmp_path / "group"
    sets = [a for s in [*SETS, "train.steps=100000", "train.log_every=5", "train.checkpoint_every=0"]
            for a in ("--set", s)]
    proc = subprocess.Popen([sys.executable, "-m", "advinf", "run", str(TOY), "--seeds", "0-3", "--jobs", "2",
                             "--out", str(out), *sets], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=cli_env())
    deadline = time.monotonic() + 240
    while not all((out / f"seed_{s}" / "metrics.jsonl").exists() for s in (0, 1)):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)  # to the parent alone: it forwards the signal to its workers
    stdout, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 143, stderr
    assert "stopped (SIGTERM)" in stderr and "Traceback" not in stderr
    for s in (2, 3):  # the way to train the seeds it never started (--seeds again is refused: the folder is taken)
        assert f"seed {s}: never started: advinf run {TOY} --set seed={s} --out {out / f'seed_{s}'}" in stderr
    for s in (0, 1):
        assert list((out / f"seed_{s}" / "checkpoints").glob("step_*"))  # each stopped with a checkpoint
    assert not (out / "seed_2").exists() and not (out / "seed_3").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seeds"] == [0, 1] and summary["stopped"] == {"0": "SIGTERM", "1": "SIGTERM"}


DOOMED_GAME = '''
import os, signal
from advinf import hookimpl
from advinf_plugins.games import JointGame, JointGameOptions

def doomed(options, ctx):
    if ctx.seed == 1:  # as the system does to a process it takes the memory back from
        os.kill(os.getpid(), signal.SIGKILL)
    return JointGame(options, stochastic=True)

@hookimpl
def register_games(register):
    register("doomed_on_seed_1", doomed, JointGameOptions)
'''


def test_a_worker_killed_outright_fails_the_group_naming_its_seed(tmp_path):
    (tmp_path / "doomed.py").write_text(DOOMED_GAME)
    recipe = tmp_path / "r.toml"
    recipe.write_text(TOY.read_text().replace("seed = 0", 'seed = 0\nplugins = ["doomed.py"]')
                      .replace('"ali"', '"doomed_on_seed_1"'))
    out = tmp_path / "group"
    proc = subprocess.run([sys.executable, "-m", "advinf", "run", str(recipe), "--seeds", "0-2", "--jobs", "2",
                           "--out", str(out), *(a for s in SETS for a in ("--set", s))], capture_output=True,
                          text=True, env=cli_env(), timeout=600)
    assert proc.returncode == 2, proc.stderr
    assert "1 of 3 seeds have no result, as a worker process ended (SIGKILL): SIGKILL is often the system taking " \
           "memory back" in proc.stderr
    assert "seed 1: no checkpoint yet: " in proc.stderr and f"--set seed=1 --out {out / 'seed_1'}" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "2 seeds: mean ± std" in proc.stdout  # the table of the seeds that finished, then the error
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seeds"] == [0, 2] and summary["lost"] == [1]  # the other worker ran seed 2 as well
    assert "not_started" not in summary
    for s in (0, 2):
        assert (out / f"seed_{s}" / "eval.json").exists()


def test_the_lost_seeds_message_says_how_to_get_each_seed_back(tmp_path):
    from advinf.seeds import SeedResult, SeedsOutcome, lost_message

    (tmp_path / "seed_1" / "checkpoints" / "step_0000010").mkdir(parents=True)
    (tmp_path / "seed_1" / "checkpoints" / "step_0000010" / "state.json").write_text("{}")  # complete, as listed
    done = [SeedResult(0, tmp_path / "seed_0", 30, 1.0)]
    # every worker died: one seed in hand with a checkpoint, one never started; a signal without a name
    outcome = SeedsOutcome(tmp_path, done, {}, None, lost=[1], not_started=[2], killed=[-40, -9])
    assert outcome.failed
    text = lost_message(outcome, "r.toml")
    assert text.startswith("2 of 3 seeds have no result, as worker processes ended (signal 40, SIGKILL): SIGKILL")
    assert f"seed 1: continue it: advinf run --resume {tmp_path / 'seed_1'}" in text
    assert f"seed 2: never started: advinf run r.toml --set seed=2 --out {tmp_path / 'seed_2'}" in text
    # a signal ended the group: the unstarted seeds are as asked, not a failure
    assert not SeedsOutcome(tmp_path, done, {}, "SIGTERM", not_started=[2]).failed
    assert SeedsOutcome(tmp_path, done, {}, "SIGTERM", lost=[1], killed=[-9]).failed


def test_the_summary_says_which_seeds_a_metric_is_missing_for(tmp_path):
    """A non-finite result (or none: a seed stopped before its evaluation) is not averaged, and is named."""
    from advinf.seeds import SeedResult, summarise

    nan = float("nan")
    results = [SeedResult(0, tmp_path, 10, 1.0, {"m": {"x": 1.0, "y": 2.0, "z": nan}}),
               SeedResult(1, tmp_path, 10, 1.0, {"m": {"x": nan, "y": 4.0, "z": float("inf")}}),
               SeedResult(2, tmp_path, 10, 1.0, {"m": {"x": 3.0, "y": 6.0}}),
               SeedResult(3, tmp_path, 5, 1.0, {}, stopped="SIGTERM")]
    metrics = summarise(results, 4.0, 1)["metrics"]
    assert metrics["m.z"] == {"mean": None, "std": None, "n": 0, "values": {}, "missing": ["0", "1", "2", "3"]}
    assert metrics["m.x"]["n"] == 2 and metrics["m.x"]["mean"] == 2.0 and metrics["m.x"]["missing"] == ["1", "3"]
    assert metrics["m.y"]["n"] == 3 and metrics["m.y"]["mean"] == 4.0 and metrics["m.y"]["missing"] == ["3"]


def test_the_seeds_benchmark_times_both_ways_and_compares_every_seed(tmp_path, capsys):
    """python -m advinf_benchmarks.seeds: one-by-one runs against the group, as separate processes."""
    from advinf_benchmarks.seeds import main

    main([str(TOY), "--seeds", "0-1", "--jobs", "2", "--out", str(tmp_path / "b"), "--json",
          *(a for s in SETS for a in ("--set", s))])
    out = json.loads(capsys.readouterr().out)
    assert out["seeds"] == [0, 1] and out["jobs"] == 2
    assert out["sequential_seconds"] > 0 and out["group_seconds"] > 0
    assert out["speedup"] == pytest.approx(out["sequential_seconds"] / out["group_seconds"], rel=1e-3)
    assert out["identical"] == {"0": True, "1": True}  # train.threads=1 both ways (TINY)
    for s in (0, 1):
        assert (tmp_path / "b" / "one_by_one" / f"seed_{s}" / "eval.json").exists()
        assert (tmp_path / "b" / "group" / f"seed_{s}" / "eval.json").exists()
    with pytest.raises(SystemExit) as refused:  # a used folder is refused before anything runs
        main([str(TOY), "--seeds", "0", "--out", str(tmp_path / "b")])
    assert refused.value.code == 2 and "not empty" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit) as refused:
        main([str(TOY), "--seeds", "0", "--out", str(tmp_path / "file")])
    assert refused.value.code == 2 and "not a folder" in capsys.readouterr().err
