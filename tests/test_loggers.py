"""Where metrics go: the register_loggers hook, the built-in jsonl, csv and tensorboard loggers, and wandb cleanly
absent. TensorBoard's event files are read back with tensorboard's own reader."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import re
import shutil
import sys
import types
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import RECIPES, TINY, TINY_ENCODER

import advinf
from advinf import Logger, Trainer, TrainSpec
from advinf.cli import cli
from advinf.errors import RecipeError, UserError

RECIPE = RECIPES / "ali_mixture25.toml"
#: 30 steps, metrics every 10, pictures at 0 and 15 (and the final one at 30), an evaluation at step 20.
RUN = [*TINY, *TINY_ENCODER, "evaluators.mode_coverage.every=20", "train.checkpoint_every=10",
       "train.keep_checkpoints=5"]


def metrics(run: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]


def csv_rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of RUN/tensorboard, read by tensorboard's own EventAccumulator."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def images(run: Path) -> dict[str, list[int]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0})
    acc.Reload()
    return {tag: [e.step for e in acc.Images(tag)] for tag in acc.Tags()["images"]}


def test_tensorboard_event_files_hold_the_run_scalars_evaluations_and_pictures(tmp_path):
    pytest.importorskip("tensorboard")
    out = tmp_path / "run"
    advinf.run_recipe(RECIPE, out=out, overrides=[*RUN, 'train.loggers=["jsonl", "csv", "tensorboard"]'])
    records = metrics(out)
    tb = scalars(out)
    for key in ("loss_critic", "loss_generator", "critic_data", "samples_per_s", "epoch"):
        assert [s for s, _ in tb[key]] == [10, 20, 30], key
        assert [v for _, v in tb[key]] == pytest.approx([r[key] for r in records], rel=1e-6), key
    evals = [json.loads(ln) for ln in (out / "evals.jsonl").read_text().splitlines()]
    assert tb["eval/mode_coverage/modes_covered"] == [(20, evals[0]["mode_coverage"]["modes_covered"])]
    final = json.loads((out / "eval.json").read_text())["mode_coverage"]
    assert tb["final_eval/mode_coverage/high_quality_fraction"] == [(30, pytest.approx(final["high_quality_fraction"]))]
    assert images(out) == {"samples": [0, 15, 30]}
    # the same numbers in metrics.csv and evals.csv
    rows = csv_rows(out / "metrics.csv")
    assert [int(r["step"]) for r in rows] == [10, 20, 30]
    assert [float(r["loss_critic"]) for r in rows] == [r["loss_critic"] for r in records]
    (row,) = csv_rows(out / "evals.csv")
    assert int(row["step"]) == 20 and float(row["mode_coverage/modes_covered"]) == \
        evals[0]["mode_coverage"]["modes_covered"]


def test_a_resumed_run_drops_the_records_of_redone_steps_from_every_logger(tmp_path):
    """A crash after the checkpoint of step 20 (here: its later checkpoints removed) redoes steps 21-30: every
    logger keeps one record per step, the redone ones."""
    pytest.importorskip("tensorboard")
    out = tmp_path / "run"
    loggers = 'train.loggers=["jsonl", "csv", "tensorboard"]'
    advinf.run_recipe(RECIPE, out=out, overrides=[*RUN, loggers], stop_after=30)
    first = metrics(out)
    shutil.rmtree(out / "checkpoints" / "step_0000030")
    (out / "checkpoints" / "latest").unlink()
    advinf.run_recipe(None, out=out, resume=True, overrides=["train.progress=none"])
    again = metrics(out)
    assert [r["step"] for r in again] == [10, 20, 30] and again[:2] == first[:2]
    assert [int(r["step"]) for r in csv_rows(out / "metrics.csv")] == [10, 20, 30]
    assert [int(r["step"]) for r in csv_rows(out / "evals.csv")] == [20]
    tb = scalars(out)
    assert [s for s, _ in tb["loss_critic"]] == [10, 20, 30]
    assert tb["loss_critic"][2][1] == pytest.approx(again[2]["loss_critic"], rel=1e-6)


class Recorder(Logger):
    """Records every call, in order."""

    calls: list[tuple] = []

    def open(self, run_dir, start_step):
        self.calls.append(("open", Path(run_dir).name, start_step))

    def log_metrics(self, step, metrics):
        self.calls.append(("metrics", step, sorted(metrics)))

    def log_evaluation(self, step, results, final):
        self.calls.append(("evaluation", step, sorted(results), final))

    def log_image(self, step, name, path):
        assert Path(path).is_file()
        self.calls.append(("image", step, name))

    def close(self):
        self.calls.append(("close",))


def test_a_plugin_logger_receives_scalars_pictures_and_evaluations(tmp_path, advinf_host):
    """register_loggers: a third-party logger, chosen by name in the recipe, gets everything the run logs."""
    import advinf_plugins.games
    import advinf_plugins.loggers
    import advinf_plugins.mixture
    import advinf_plugins.mode_coverage
    import advinf_plugins.priors
    import advinf_plugins.toy_networks

    for module in (advinf_plugins.games, advinf_plugins.loggers, advinf_plugins.mixture,
                   advinf_plugins.mode_coverage, advinf_plugins.priors, advinf_plugins.toy_networks):
        advinf_host.add_plugin(module, name=module.__name__)
    plugin = types.SimpleNamespace(register_loggers=advinf.hookimpl(
        lambda register: register("recorder", lambda options, ctx: Recorder())))
    plugin.register_loggers.__name__ = "register_loggers"
    assert advinf_host.add_plugin(plugin, name="recording").components == {"logger": ["recorder"]}
    Recorder.calls = []
    out = tmp_path / "run"
    advinf.run_recipe(RECIPE, out=out, overrides=[*RUN, 'train.loggers=["recorder"]'], host=advinf_host)
    keys = ["critic_data", "critic_model", "epoch", "loss_critic", "loss_generator", "samples_per_s",
            "step", "steps_averaged", "time"]
    assert Recorder.calls == [
        ("open", "run", 0), ("image", 0, "samples"),
        ("metrics", 10, keys), ("image", 15, "samples"), ("metrics", 20, keys),
        ("evaluation", 20, ["mode_coverage"], False), ("metrics", 30, keys), ("image", 30, "samples"),
        ("evaluation", 30, ["mode_coverage"], True), ("close",)]
    assert not (out / "metrics.jsonl").exists()  # jsonl not chosen
    assert (out / "eval.json").is_file() and (out / "samples" / "step_0000030.png").is_file()  # the run's own


class FileLogger(Logger):
    """Writes each call as a line of ``path`` (for processes other than the test's)."""

    def __init__(self, path: Path):
        self.path = path

    def _write(self, text: str) -> None:
        with open(self.path, "a") as fh:
            fh.write(text + "\n")

    def open(self, run_dir, start_step):
        self._write(f"open {Path(run_dir).name}")

    def log_metrics(self, step, metrics):
        self._write(f"metrics {step}")

    def log_image(self, step, name, path):
        self._write(f"image {step}")


def _logging_rank(rank: int, port: int, root: str) -> None:
    """One of two data-parallel ranks (gloo), each given a run directory and a logger."""
    import torch.distributed as dist

    os.environ.update({"RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank), "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port)})
    dist.init_process_group("gloo")
    try:
        data = advinf.create("dataset", "mixture25", None, samples=256, heldout=64)
        ctx = advinf.BuildContext(dataset=data, prior=advinf.create("prior", "gaussian", None, dim=2))
        nets = advinf.Networks(ctx.prior, encoder=advinf.create("encoder", "toy_encoder", ctx, hidden=8),
                               decoder=advinf.create("decoder", "toy_decoder", ctx, hidden=8),
                               critic=advinf.create("critic", "toy_critic", ctx, hidden=8))
        spec = TrainSpec(steps=4, batch_size=16, log_every=2, sample_every=2, progress="none", device="cpu")
        Trainer(nets, advinf.create("game", "ali"), data, train=spec, run_dir=Path(root) / f"run{rank}", rank=rank,
                world_size=2, loggers=[FileLogger(Path(root) / f"calls{rank}.txt")]).fit()
    finally:
        dist.destroy_process_group()


def test_only_rank_0_logs(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_logging_rank, args=(port, str(tmp_path)), nprocs=2)
    assert (tmp_path / "calls0.txt").read_text().split("\n")[:-1] == \
        ["open run0", "image 0", "metrics 2", "image 2", "metrics 4", "image 4"]
    assert not (tmp_path / "calls1.txt").exists()  # rank 1 logs nothing, even with a run directory


def test_a_trainer_cannot_look_up_logger_names(tmp_path):
    data = advinf.create("dataset", "mixture25", None, samples=256, heldout=64)
    with pytest.raises(UserError, match=r"pass them built, Trainer\(\.\.\., loggers="):
        Trainer(None, None, data, train=TrainSpec(steps=2, loggers=["csv"]))  # type: ignore[arg-type]


def test_unknown_and_repeated_loggers_are_recipe_errors():
    unknown = r"train.loggers: unknown logger \(got 'tensorbord'\); did you mean 'tensorboard'"
    with pytest.raises(RecipeError, match=unknown):
        advinf.load_recipe(RECIPE, ['train.loggers=["tensorbord"]'])
    with pytest.raises(RecipeError, match=r"train.loggers.*names csv more than once"):
        advinf.load_recipe(RECIPE, ['train.loggers=["csv", "csv"]'])
    with pytest.raises(RecipeError, match=r"loggers.tensorboard: options of a logger that train.loggers does not"):
        advinf.load_recipe(RECIPE, ["loggers.tensorboard.flush_secs=5"])
    with pytest.raises(RecipeError, match=r"loggers.tensorboard.flush_secs"):
        advinf.load_recipe(RECIPE, ['train.loggers=["tensorboard"]', "loggers.tensorboard.flush_secs=0"])


def test_the_loggers_example_of_the_recipes_reference_validates():
    import tomllib

    from conftest import ROOT

    block = next(b for b in re.findall(r"```toml\n(.*?)```", (ROOT / "docs" / "recipes.md").read_text(), flags=re.S)
                 if "[loggers.tensorboard]" in b)
    data = advinf.recipe.deep_merge(tomllib.loads(RECIPE.read_text()), tomllib.loads(block))
    rec = advinf.recipe.validate_recipe(data, source="docs/recipes.md")
    assert rec.spec.train.loggers == ["jsonl", "tensorboard"] and rec.options["loggers.tensorboard"].flush_secs == 10
    assert rec.resolved()["loggers"] == {"tensorboard": {"flush_secs": 10}}


def test_choosing_tensorboard_without_it_installed_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if not installed: find_spec gives None
    assert importlib.util.find_spec("tensorboard") is None
    with pytest.raises(RecipeError, match=r"train.loggers: logger 'tensorboard': .*pip install advinf\[tensorboard\]"):
        advinf.load_recipe(RECIPE, ['train.loggers=["jsonl", "tensorboard"]'])
    assert advinf.load_recipe(RECIPE).spec.train.loggers == ["jsonl"]  # the default needs nothing


def test_a_run_trained_with_tensorboard_loads_and_evaluates_where_it_is_not_installed(tmp_path, monkeypatch):
    """Loggers are a training need: sampling and evaluating a run need not have them; resuming it does."""
    pytest.importorskip("tensorboard")
    out = tmp_path / "run"
    advinf.run_recipe(RECIPE, out=out, overrides=[*RUN, 'train.loggers=["jsonl", "tensorboard"]'])
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if not installed: find_spec gives None
    assert advinf.load_run(out, device="cpu").sample(n=3).shape == (3, 2)
    evaluated = CliRunner().invoke(cli, ["evaluate", str(out)])
    assert evaluated.exit_code == 0 and "mode_coverage" in json.loads((out / "eval.json").read_text()), evaluated.output
    resumed = CliRunner().invoke(cli, ["run", "--resume", str(out), "--set", "train.steps=40"])
    assert resumed.exit_code == 2 and "pip install advinf[tensorboard]" in resumed.output, resumed.output


def test_wandb_is_cleanly_absent_without_its_package(tmp_path, monkeypatch):
    if importlib.util.find_spec("wandb") is not None:
        monkeypatch.setitem(sys.modules, "wandb", None)
    res = CliRunner().invoke(cli, ["validate", str(RECIPE), "--set", 'train.loggers=["wandb"]'])
    assert res.exit_code == 2 and "pip install wandb" in res.output and "Traceback" not in res.output
    listed = CliRunner().invoke(cli, ["list-plugins", "--json"])
    plugins = {p["name"]: p for p in json.loads(listed.output)}
    assert plugins["wandb"]["error"] is None and plugins["wandb"]["components"] == {"logger": ["wandb"]}


def test_cli_logger_option_chooses_the_loggers(tmp_path):
    out = tmp_path / "run"
    args = ["run", str(RECIPE), "--out", str(out), "--logger", "csv", "--stop-after", "20"]
    for item in TINY + TINY_ENCODER:
        args += ["--set", item]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert not (out / "metrics.jsonl").exists()
    assert advinf.load_recipe(out / "recipe.toml").spec.train.loggers == ["csv"]
    # a resumed run may send its metrics elsewhere without --allow-changes
    res = CliRunner().invoke(cli, ["run", "--resume", str(out), "--logger", "csv", "--logger", "jsonl"])
    assert res.exit_code == 0, res.output
    assert [int(r["step"]) for r in csv_rows(out / "metrics.csv")] == [10, 20, 30]
    assert [r["step"] for r in metrics(out)] == [30]


def test_resuming_with_other_loggers_drops_the_options_of_those_left_out(tmp_path):
    pytest.importorskip("tensorboard")
    out = tmp_path / "run"
    overrides = [*TINY, *TINY_ENCODER, 'train.loggers=["tensorboard"]', "loggers.tensorboard.flush_secs=5"]
    advinf.run_recipe(RECIPE, out=out, overrides=overrides, stop_after=20)
    assert "[loggers.tensorboard]" in (out / "recipe.toml").read_text()
    res = CliRunner().invoke(cli, ["run", "--resume", str(out), "--logger", "jsonl"])
    assert res.exit_code == 0, res.output
    assert [r["step"] for r in metrics(out)] == [30]


def test_wandb_logs_offline_when_installed(tmp_path, monkeypatch):
    """With wandb installed (not in .[dev]; skipped without it): an offline wandb run inside the run directory,
    with the sample pictures as images and the same run id when resumed."""
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    overrides = [*RUN, 'train.loggers=["jsonl", "wandb"]', 'loggers.wandb.mode="offline"']
    advinf.run_recipe(RECIPE, out=out, overrides=overrides, stop_after=20)
    advinf.run_recipe(None, out=out, resume=True, overrides=["train.progress=none"])
    runs = sorted((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and len({r.name.rsplit("-", 1)[1] for r in runs}) == 1  # one wandb run, continued
    pictures = [p for r in runs for p in (r / "files" / "media" / "images").glob("samples_*.png")]
    assert len(pictures) == 4  # steps 0 and 15, then where the first part stopped (20) and the end (30)


def test_csv_logger_takes_a_new_column_and_drops_redone_rows(tmp_path):
    from advinf_plugins.loggers import CsvLogger

    logger = CsvLogger()
    logger.open(tmp_path, 0)
    logger.log_metrics(1, {"step": 1, "loss": 0.5})
    logger.log_metrics(2, {"step": 2, "loss": 0.25, "skipped_steps": 3})  # a column that appears later
    logger.log_metrics(3, {"step": 3, "loss": 0.125, "skipped_steps": 4})
    logger.close()
    assert (tmp_path / "metrics.csv").read_text().splitlines() == \
        ["step,loss,skipped_steps", "1,0.5,", "2,0.25,3", "3,0.125,4"]
    (tmp_path / "metrics.csv").write_text((tmp_path / "metrics.csv").read_text() + "4,0.0")  # a torn last row
    again = CsvLogger()
    again.open(tmp_path, 2)  # resumed from step 2: rows of steps 3 and later go
    again.log_metrics(3, {"step": 3, "loss": 0.0625, "skipped_steps": 4})
    assert [(r["step"], r["loss"]) for r in csv_rows(tmp_path / "metrics.csv")] == \
        [("1", "0.5"), ("2", "0.25"), ("3", "0.0625")]
