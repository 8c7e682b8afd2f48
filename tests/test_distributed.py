"""Data-parallel training on CPU with the gloo backend: two processes, as torchrun starts them."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from click.testing import CliRunner
from conftest import RECIPES, TINY, TINY_ENCODER, cli_env
from safetensors.torch import load_file, save_file

from advinf import UserError
from advinf.cli import cli
from advinf.distributed import GradientAverager
from advinf.session import run_recipe

TOY = RECIPES / "ali_mixture25.toml"
SETS = [*TINY, *TINY_ENCODER, "train.checkpoint_every=10", "train.device=cpu"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(rank: int, world: int, port: int) -> dict[str, str]:
    return {"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank), "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port)}


def _rank_main(rank: int, port: int, outs: list[str], results: str, resume: bool, stop_after: int | None) -> None:
    """One rank of a 2-process run (what torchrun starts): run_recipe, then this rank's weights for the test."""
    os.environ.update(_env(rank, 2, port))
    outcome = run_recipe(None if resume else TOY, out=outs[rank], resume=resume, overrides=SETS,
                         stop_after=stop_after)
    trainer = outcome.trainer
    tensors = {f"{name}.{k}": v.detach().clone() for name, m in trainer.nets.items()
               for k, v in m.named_parameters()}
    # the recipe keeps a moving average of the decoder: its weights (its batch-norm running statistics, like the
    # network's own, follow each rank's shard; rank 0's are the ones saved and evaluated, docs/distributed.md)
    tensors.update({f"ema_{name}.module.{k}": v.detach().clone() for name, avg in trainer.ema.items()
                    for k, v in avg.module.named_parameters()})
    tensors["first_batch"] = trainer.batches.first().x.clone()
    tensors["prior_draw"] = trainer.nets.prior.sample(8, "cpu")  # from this rank's generator, as the game draws
    save_file(tensors, str(Path(results) / f"rank{rank}.safetensors"))


def _run_two(tmp_path: Path, outs: list[Path], tag: str, resume: bool = False, stop_after: int | None = None
             ) -> list[dict[str, torch.Tensor]]:
    results = tmp_path / tag
    results.mkdir()
    mp.spawn(_rank_main, args=(_free_port(), [str(o) for o in outs], str(results), resume, stop_after), nprocs=2)
    return [load_file(str(results / f"rank{r}.safetensors")) for r in range(2)]


def _params(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The weights and moving averages (what must agree across ranks), without the per-rank draws."""
    return {k: v for k, v in state.items() if k not in ("first_batch", "prior_draw")}


def test_two_ranks_stay_bit_identical_and_only_rank_0_writes(tmp_path):
    run, other = tmp_path / "run", tmp_path / "rank1-would-write-here"
    ranks = _run_two(tmp_path, [run, other], "fresh")
    # each rank drew its own shard and its own noise ...
    assert not torch.equal(ranks[0]["first_batch"], ranks[1]["first_batch"])
    assert not torch.equal(ranks[0]["prior_draw"], ranks[1]["prior_draw"])
    # ... and after 30 averaged updates both hold exactly the same weights and moving averages
    a, b = _params(ranks[0]), _params(ranks[1])
    assert a.keys() == b.keys() and a and any(k.startswith("ema_decoder.") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    # rank 0 wrote the run directory once; rank 1 wrote nothing
    assert not other.exists()
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [10, 20, 30]
    assert (run / "eval.json").exists() and (run / "recipe.toml").exists()
    state = json.loads((run / "checkpoints" / "step_0000030" / "state.json").read_text())
    assert state["world_size"] == 2
    # the checkpoint's weights are the ranks' weights
    model = load_file(str(run / "checkpoints" / "step_0000030" / "model.safetensors"))
    assert all(torch.equal(model[k], a[k]) for k in a)

    # resuming with the same world size continues exactly: stop at 20, resume to 30 == the uninterrupted run
    run2 = tmp_path / "run2"
    _run_two(tmp_path, [run2, tmp_path / "unused"], "stopped", stop_after=20)
    resumed = _run_two(tmp_path, [run2, run2], "resumed", resume=True)
    assert all(torch.equal(_params(resumed[r])[k], a[k]) for r in range(2) for k in a)
    assert [json.loads(x)["step"] for x in (run2 / "metrics.jsonl").read_text().splitlines()] == [10, 20, 30]

    # a different world size is refused with a clear message, exit status 2, nothing changed
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    with pytest.raises(UserError, match="written by a run of 2 process"):
        run_recipe(None, out=run, resume=True, overrides=SETS)
    res = CliRunner().invoke(cli, ["run", "--resume", str(run)])
    assert res.exit_code == 2 and "resume it with 2" in res.output and "Traceback" not in res.output
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before


def test_torchrun_launch_writes_one_run_directory(tmp_path):
    run = tmp_path / "run"
    # an evaluator every 10 steps: rank 0 evaluates (rank 1, which has no evaluators, refused the schedule)
    sets = [a for s in [*SETS, "evaluators.mode_coverage.every=10"] for a in ("--set", s)]
    env = {k: v for k, v in cli_env().items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}

    def torchrun(*args: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
               str(_free_port()), "-m", "advinf", "run", *args]
        return subprocess.run(cmd, capture_output=True, text=True, env={**env, "OMP_NUM_THREADS": "1"}, timeout=300)

    proc = torchrun(str(TOY), "--out", str(run), *sets, "--stop-after", "20")
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the resume command it prints is one that works: a checkpoint resumes with the world size that wrote it
    assert f"resume with: torchrun --nproc-per-node 2 -m advinf run --resume {run}" in proc.stderr
    proc = torchrun("--resume", "--out", str(run))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("trained 10 steps") == 1  # rank 0 reports, once
    assert proc.stdout.count("modes_covered_strict") == 1
    assert proc.stderr.count(f"resuming {run} from step 20") == 1
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 3
    assert [json.loads(line)["step"] for line in (run / "evals.jsonl").read_text().splitlines()] == [10, 20]
    assert json.loads((run / "eval.json").read_text())["mode_coverage"]["step"] == 30  # the last: eval.json
    metrics = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert metrics["samples_per_s"] > 0
    assert sorted(p.name for p in (run / "samples").iterdir()) == [
        "step_0000000.png", "step_0000015.png", "step_0000020.png", "step_0000030.png"]


def _average_rank(rank: int, port: int, results: str) -> None:
    os.environ.update(_env(rank, 2, port))
    dist.init_process_group("gloo")
    try:
        grads = [torch.full((3, 2), float(rank + 1)), None, torch.arange(5.0) * (rank + 1),
                 torch.ones(2, 3, 4, 5).to(memory_format=torch.channels_last) * rank]
        # a bucket of 40 bytes: the 24-byte and the 20-byte gradients fall into separate buckets
        GradientAverager(2, bucket_bytes=40)(grads)
        save_file({str(i): g.contiguous() for i, g in enumerate(grads) if g is not None},
                  str(Path(results) / f"rank{rank}.safetensors"))
        assert grads[3].is_contiguous(memory_format=torch.channels_last)  # averaged in place, layout kept
    finally:
        dist.destroy_process_group()


def test_gradient_averager_averages_every_bucket_in_place(tmp_path):
    mp.spawn(_average_rank, args=(_free_port(), str(tmp_path)), nprocs=2)
    for r in range(2):
        got = load_file(str(tmp_path / f"rank{r}.safetensors"))
        assert torch.equal(got["0"], torch.full((3, 2), 1.5))
        assert torch.equal(got["2"], torch.arange(5.0) * 1.5)
        assert torch.equal(got["3"], torch.full((2, 3, 4, 5), 0.5))
    assert [len(b) for b in GradientAverager(2, bucket_bytes=40).buckets(
        [torch.zeros(6), torch.zeros(5), torch.zeros(1), torch.zeros(20, dtype=torch.float64)])] == [1, 2, 1]


def _sync_bn_rank(rank: int, port: int, out: str) -> None:
    os.environ.update(_env(rank, 2, port))
    run_recipe(TOY, out=out, overrides=[*SETS, "train.sync_batch_norm=true"])


def test_misconfigured_runs_are_refused_with_clear_messages(tmp_path, monkeypatch):
    # mp.spawn leaves a failed rank's traceback in a temporary file it never removes: keep it in tmp_path
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(mp.ProcessRaisedException, match="sync_batch_norm needs CUDA"):
        mp.spawn(_sync_bn_rank, args=(_free_port(), str(tmp_path / "bn")), nprocs=2)
    assert not (tmp_path / "bn").exists()  # a failed start leaves nothing behind

    from test_train import tiny_data, tiny_nets

    from advinf import Trainer, TrainSpec
    from advinf_plugins.games import JointGame, JointGameOptions
    with pytest.raises(UserError, match="world_size = 2 needs an initialised process group"):
        Trainer(tiny_nets(), JointGame(JointGameOptions(), stochastic=True), tiny_data(), train=TrainSpec(steps=1),
                device="cpu", rank=0, world_size=2)

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(UserError, match="MASTER_ADDR.* not set: launch data-parallel runs with torchrun"):
        run_recipe(TOY, out=tmp_path / "x", overrides=SETS)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    with pytest.raises(UserError, match="nccl' needs CUDA"):
        run_recipe(TOY, out=tmp_path / "x", overrides=[*SETS, "train.dist_backend=nccl"])
    for var, value, message in (("RANK", "abc", "RANK='abc' is not a number"),
                                ("RANK", "5", "RANK=5 but WORLD_SIZE=2: ranks go from 0 to 1"),  # hung before
                                ("LOCAL_RANK", "x", "LOCAL_RANK='x' is not a number")):
        monkeypatch.setenv("RANK", "0")
        monkeypatch.setenv(var, value)
        with pytest.raises(UserError, match=message):
            run_recipe(TOY, out=tmp_path / "x", overrides=SETS)
    assert not (tmp_path / "x").exists()


def test_under_torchrun_each_rank_s_errors_say_which_rank(tmp_path, monkeypatch):
    """Every process prints its own errors under torchrun, interleaved: each line names its rank."""
    from click.testing import CliRunner

    from advinf.cli import cli

    missing = str(tmp_path / "nope.toml")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    res = CliRunner().invoke(cli, ["validate", missing])
    assert res.exit_code == 2 and res.output.startswith("[rank 3] error: ") and "recipe file not found" in res.output
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    res = CliRunner().invoke(cli, ["validate", missing])
    assert res.exit_code == 2 and res.output.startswith("error: ")  # one process: no rank to name
