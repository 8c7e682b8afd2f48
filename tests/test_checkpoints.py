"""Checkpoints: exact resume, kill safety, divergence guard, bad input, load_run, no unpickling."""

from __future__ import annotations

import ast
import json
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import RECIPES, ROOT, TINY, TINY_ENCODER, cli_env, write

import advinf
from advinf import checkpoint as ckpt
from advinf.cli import cli
from advinf.rundir import eval_entries

ALI = str(RECIPES / "ali_mixture25.toml")


def sets(items):
    return [a for item in items for a in ("--set", item)]


def run_cli(*args: str, extra=()):
    return CliRunner().invoke(cli, ["run", ALI, *args, *sets(TINY + TINY_ENCODER + list(extra))])


def final_tensors(run: Path) -> dict[str, dict[str, torch.Tensor]]:
    return ckpt.load_checkpoint(ckpt.latest_checkpoint(run / "checkpoints")).tensors


@pytest.mark.parametrize("ema", [0, 0.9])
def test_resumed_run_equals_uninterrupted_run_bit_for_bit(tmp_path, ema):
    common = ["train.steps=24", "train.checkpoint_every=8", "train.sample_every=0", "train.log_every=4"]
    common.append(f"train.ema={ema}")
    full = run_cli("--out", str(tmp_path / "full"), extra=common)
    assert full.exit_code == 0, full.output
    first = run_cli("--out", str(tmp_path / "sliced"), "--stop-after", "10", extra=common)
    assert first.exit_code == 0 and f"resume with: advinf run --resume {tmp_path / 'sliced'}" in first.output
    assert not (tmp_path / "sliced" / "eval.json").exists()
    second = run_cli("--out", str(tmp_path / "sliced"), "--resume", extra=common)
    assert second.exit_code == 0, second.output
    a, b = final_tensors(tmp_path / "full"), final_tensors(tmp_path / "sliced")
    for part in ("model", "optim"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part} {k} differs"
    assert any("exp_avg" in k for k in a["optim"]) and any("running_mean" in k for k in a["model"])
    assert any(k.startswith("ema_decoder.module.") for k in a["model"]) == bool(ema)
    steps = [json.loads(ln)["step"] for ln in (tmp_path / "sliced" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [4, 8, 10, 12, 16, 20, 24]
    assert json.loads((tmp_path / "full" / "eval.json").read_text()) == \
        json.loads((tmp_path / "sliced" / "eval.json").read_text())


def test_resume_refuses_a_changed_recipe_unless_allowed(tmp_path):
    out = str(tmp_path / "run")
    assert run_cli("--out", out, "--stop-after", "10").exit_code == 0
    res = run_cli("--out", out, "--resume", extra=["train.batch_size=50", "game.divergence=minimax"])
    assert res.exit_code == 2
    assert "differs from the one" in res.output and "game.divergence, train.batch_size" in res.output
    ok = run_cli("--out", out, "--resume", "--allow-changes", extra=["game.divergence=minimax"])
    assert ok.exit_code == 0, ok.output
    assert 'divergence = "minimax"' in (tmp_path / "run" / "recipe.toml").read_text()


def test_an_edited_recipe_toml_is_a_change_on_resume(tmp_path):
    run = tmp_path / "run"
    assert run_cli("--out", str(run), "--stop-after", "10").exit_code == 0
    recipe = run / "recipe.toml"
    text = recipe.read_text()

    def resume(*args: str):
        return CliRunner().invoke(cli, ["run", "--resume", str(run), "--stop-after", "10", *args])

    recipe.write_text("# a comment changes nothing\n" + text)
    assert resume().exit_code == 0  # the same recipe, however written
    recipe.write_text(text.replace("lr = 0.0001", "lr = 0.0003", 1))
    assert "lr = 0.0003" in recipe.read_text()
    res = resume()
    assert res.exit_code == 2 and "in: optimizer.lr" in res.output, res.output
    said = " ".join(res.output.split())
    assert f"{recipe} differs from the recipe of the checkpoint of step 10: it was edited" in said
    recipe.write_text(text.replace("[train]", "[train]\nbatch_sise = 3", 1))
    res = resume()
    assert res.exit_code == 2 and "train.batch_sise" in res.output and str(recipe) in res.output, res.output
    recipe.write_text("[train\n")
    res = resume()
    assert res.exit_code == 2 and f"{recipe} cannot be read" in res.output and "fix it to resume" in res.output
    edited = "# mine: a faster rate\n" + text.replace("lr = 0.0001", "lr = 0.0003  # was 1e-4", 1)
    recipe.write_text(edited)
    res = CliRunner().invoke(cli, ["run", "--resume", str(run), "--allow-changes"])
    assert res.exit_code == 0 and "applied the changed optimiser settings: optimizer.lr" in res.output, res.output
    assert recipe.read_text() == edited  # the recipe it ran with, as the user wrote it: comments kept
    assert ckpt.load_checkpoint(ckpt.latest_checkpoint(run / "checkpoints")).state["recipe"]["optimizer"]["lr"] == 3e-4


def test_keeps_the_last_k_and_latest_points_to_the_newest(tmp_path):
    out = tmp_path / "run"
    assert run_cli("--out", str(out), extra=["train.checkpoint_every=5", "train.keep_checkpoints=2"]).exit_code == 0
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest", "step_0000025", "step_0000030"]
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_0000030"


def test_bad_checkpoints_get_clear_errors_and_nothing_is_overwritten(tmp_path):
    out = tmp_path / "run"
    assert run_cli("--out", str(out), "--stop-after", "10", extra=["train.checkpoint_every=5"]).exit_code == 0
    latest = out / "checkpoints" / "step_0000010"
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    model = latest / "model.safetensors"
    original = model.read_bytes()
    model.write_bytes(original[: len(original) // 2])  # truncated
    res = run_cli("--out", str(out), "--resume")
    assert res.exit_code == 2 and "corrupted or truncated" in res.output and "Traceback" not in res.output
    model.write_bytes(original)

    res = run_cli("--out", str(out), "--resume", "--allow-changes", extra=["decoder.hidden=48"])
    assert res.exit_code == 2 and "does not fit the recipe's decoder" in res.output

    (out / "checkpoints" / "latest").write_text("step_0000099\n")
    with pytest.warns(UserWarning, match="missing or incomplete; using the newest complete checkpoint"):
        assert ckpt.latest_checkpoint(out / "checkpoints") == latest

    not_a_run = tmp_path / "empty"
    not_a_run.mkdir()
    res = run_cli("--out", str(not_a_run), "--resume")
    assert res.exit_code == 2 and "is not an advinf run directory" in res.output
    with pytest.raises(advinf.UserError, match="not an advinf run directory"):
        advinf.load_run(not_a_run)
    with pytest.raises(advinf.UserError, match="nowhere: no such run directory"):  # not "no recipe.toml"
        advinf.load_run(tmp_path / "nowhere")
    shutil.copytree(out, tmp_path / "group" / "seed_3")
    with pytest.raises(advinf.UserError, match=r"group holds a group of seeds \(seed_3\), not one run; give one of "
                                               r"them \(e.g. .*seed_3\)"):
        advinf.load_run(tmp_path / "group")
    (out / "checkpoints" / "latest").write_text("step_0000010\n")
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before


def test_load_run_gives_eval_mode_networks(tmp_path):
    out = tmp_path / "run"
    assert run_cli("--out", str(out)).exit_code == 0
    loaded = advinf.load_run(out, device="cpu")
    assert loaded.step == 30 and not loaded.decoder.training and not loaded.encoder.training
    z = loaded.prior.sample(5)
    with torch.no_grad():
        x = loaded.decoder(z)
        assert torch.equal(x, loaded.decoder(z))  # eval mode: deterministic
        assert loaded.encoder(x).sample().shape == (5, 2)
    res = CliRunner().invoke(cli, ["evaluate", str(out), "--device", "cpu", "--json"])
    assert res.exit_code == 0, res.output
    results, steps = eval_entries(json.loads((out / "eval.json").read_text()))
    assert json.loads(res.output) == results and steps == {"mode_coverage": 30}  # each entry says its step


NAN_GAME = '''
import torch
from advinf import hookimpl
from advinf_plugins.games import JointGame, JointGameOptions

class NanAfter(JointGame):
    calls = 0
    def losses(self, nets, batch):
        out = super().losses(nets, batch)
        NanAfter.calls += 1
        if NanAfter.calls >= 9:  # call 1 is the trainer's trial step; steps 1-7 are calls 2-8
            out.losses["critic"] = out.losses["critic"] * float("nan")
        return out

@hookimpl
def register_games(register):
    register("nan_after_7", lambda o, ctx: NanAfter(o, stochastic=True), JointGameOptions)
'''


@pytest.mark.parametrize("mode", ["stop", "skip"])
def test_divergence_guard(tmp_path, mode):
    write(tmp_path / "nan_plugin.py", NAN_GAME)
    recipe = write(tmp_path / "r.toml", (RECIPES / "ali_mixture25.toml").read_text()
                   .replace("seed = 0", 'seed = 0\nplugins = ["nan_plugin.py"]').replace('"ali"', '"nan_after_7"'))
    out = tmp_path / "run"
    args = ["--set", "train.checkpoint_every=5", "--set", "train.log_every=3", "--set", f"train.nonfinite={mode}"]
    env = cli_env(ADVINF_STRICT_PLUGINS="1")
    proc = subprocess.run([sys.executable, "-m", "advinf", "run", str(recipe), "--out", str(out),
                           *sets(TINY + TINY_ENCODER), *args], capture_output=True, text=True, env=env, cwd=tmp_path)
    if mode == "stop":
        assert proc.returncode == 3, proc.stderr
        assert "non-finite loss or weights at step 8 (loss_critic=nan" in proc.stderr
        assert "the last good checkpoint is" in proc.stderr and "step_0000005" in proc.stderr
        assert "Traceback" not in proc.stderr
        assert [p.name for p in (out / "checkpoints").glob("step_*")] == ["step_0000005"]
    else:
        assert proc.returncode == 0, proc.stderr
        records = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
        assert records[-1]["step"] == 30 and records[-1]["skipped_steps"] == 30 - 7
        assert [(r["step"], r["skipped_steps"]) for r in records[:3]] == [(3, 0), (6, 0), (9, 2)]


@pytest.mark.parametrize("mode", ["stop", "skip"])
def test_a_network_with_an_empty_parameter_trains_and_checkpoints(tmp_path, mode):
    """torch's inf-norm refuses empty tensors: the finiteness check of weights and gradients leaves them out."""
    from advinf.trainer import _all_finite

    assert bool(_all_finite([torch.empty(0), torch.ones(3)])) and bool(_all_finite([torch.empty(0, 4)]))
    assert not bool(_all_finite([torch.empty(0), torch.tensor([1.0, float("inf")])]))
    built = advinf.build(advinf.load_recipe(ALI, [*TINY, *TINY_ENCODER, f"train.nonfinite={mode}",
                                                  "train.checkpoint_every=10"]))
    built.nets["decoder"].unused = torch.nn.Parameter(torch.empty(0))
    trainer = advinf.Trainer(built.nets, built.game, built.dataset, train=built.recipe.spec.train,
                             run_dir=tmp_path / "run", seed=0)
    assert trainer.fit().steps == 30
    assert ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path / "run" / "checkpoints")).step == 30


def _start(out: Path, resume: bool) -> subprocess.Popen:
    args = [sys.executable, "-m", "advinf", "run", ALI, "--out", str(out),
            *sets(TINY + TINY_ENCODER + ["train.steps=100000", "train.checkpoint_every=1",
                                         "train.keep_checkpoints=2", "train.sample_every=0", "train.log_every=50"])]
    if resume:
        args.append("--resume")
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=cli_env())


def test_sigkill_at_random_moments_always_leaves_a_loadable_checkpoint(tmp_path):
    out, rng = tmp_path / "run", random.Random(1234)
    kills = during_write = 0
    steps_seen = []
    for i in range(12):
        proc = _start(out, resume=i > 0)
        proc.stderr.readline()  # "run directory ..." / "resuming ...": training is about to start
        time.sleep(rng.uniform(0.05, 0.8))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        root = out / "checkpoints"
        during_write += any(p.name.startswith(".tmp-") for p in root.iterdir()) if root.exists() else 0
        latest = ckpt.latest_checkpoint(root)
        if latest is None:
            continue
        loaded = ckpt.load_checkpoint(latest)  # verifies every checksum
        steps_seen.append(loaded.step)
    assert kills == 12 and len(steps_seen) >= 8
    assert steps_seen == sorted(steps_seen)  # every restart resumed and made progress, never lost it
    print(f"{kills} kills, {during_write} while a checkpoint was being written, steps {steps_seen}")


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigterm_and_sigint_write_a_checkpoint_and_say_how_to_resume(tmp_path, sig, code):
    out = tmp_path / "run"
    proc = _start(out, resume=False)
    proc.stderr.readline()
    time.sleep(1.0)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert f"stopped ({sig.name}); checkpoint written:" in err and "--resume" in err
    latest = ckpt.latest_checkpoint(out / "checkpoints")
    step = int(re.search(r"at step (\d+)", err).group(1))
    assert ckpt.load_checkpoint(latest).step == step
    if step:  # the steps since the last log line (every 50) are logged, not lost with the stop
        lines = (out / "metrics.jsonl").read_text().splitlines()
        assert json.loads(lines[-1])["step"] == step, lines[-2:]


UNPICKLERS = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}


def _unpickles(node: object) -> bool:
    if isinstance(node, ast.Import):
        return any(a.name.split(".")[0] in UNPICKLERS for a in node.names)
    if isinstance(node, ast.ImportFrom):
        return (node.module or "").split(".")[0] in UNPICKLERS
    if isinstance(node, ast.Attribute):  # torch.load
        return node.attr == "load" and isinstance(node.value, ast.Name) and node.value.id == "torch"
    return isinstance(node, ast.keyword) and node.arg == "allow_pickle"


def test_nothing_in_the_project_unpickles():
    """No pickle-family import, no torch.load, no numpy allow_pickle anywhere in the shipped code."""
    offenders = [f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}"
                 for folder in ("advinf", "plugins", "benchmarks") for path in (ROOT / folder).rglob("*.py")
                 for node in ast.walk(ast.parse(path.read_text())) if _unpickles(node)]
    assert offenders == []


def test_a_checkpoint_never_holds_non_finite_weights(tmp_path):
    from test_train import tiny_data, tiny_nets

    from advinf import Trainer, TrainingDiverged, TrainSpec
    from advinf_plugins.games import JointGame, JointGameOptions

    nets = tiny_nets()
    trainer = Trainer(nets, JointGame(JointGameOptions(), stochastic=True), tiny_data(),
                      train=TrainSpec(steps=4, batch_size=32, progress="none"), run_dir=tmp_path / "run", device="cpu")
    trainer.train_step()
    assert trainer.save_checkpoint().name == "step_0000001"
    with torch.no_grad():
        next(nets.decoder.parameters())[0] = float("inf")  # e.g. an overflowing gradient step
    with pytest.raises(TrainingDiverged, match="the last good checkpoint is .*step_0000001"):
        trainer.save_checkpoint()
    assert [p.name for p in (tmp_path / "run" / "checkpoints").glob("step_*")] == ["step_0000001"]


def test_ema_averages_the_generator_and_load_run_returns_it(tmp_path):
    from test_train import tiny_data, tiny_nets

    from advinf import Trainer, TrainSpec
    from advinf_plugins.games import JointGame, JointGameOptions

    nets = tiny_nets()
    trainer = Trainer(nets, JointGame(JointGameOptions(), stochastic=True), tiny_data(),
                      train=TrainSpec(steps=2, batch_size=32, ema=0.25), device="cpu")
    w = nets.decoder.net[0].weight
    trainer.train_step()
    first = w.detach().clone()
    trainer.train_step()
    averaged = trainer.model().decoder.net[0].weight
    assert torch.allclose(averaged, 0.25 * first + 0.75 * w.detach())  # ema = d * ema + (1 - d) * new
    assert trainer.model().decoder is not nets.decoder and trainer.model().critic is nets.critic

    out = tmp_path / "run"
    assert run_cli("--out", str(out), extra=["train.ema=0.5"]).exit_code == 0
    saved = final_tensors(out)["model"]
    loaded = advinf.load_run(out, device="cpu")
    assert torch.equal(loaded.decoder.net[0].weight, saved["ema_decoder.module.net.0.weight"])
    assert not torch.equal(saved["ema_decoder.module.net.0.weight"], saved["decoder.net.0.weight"])


@pytest.mark.parametrize("same_step", [False, True])  # pruning an old checkpoint, or replacing this step's
@pytest.mark.parametrize("where", ["delete", "rename"])  # inside the delete, or just after the move aside
def test_an_interrupt_while_a_checkpoint_is_deleted_still_deletes_it(tmp_path, monkeypatch, same_step, where):
    """A second Ctrl-C aborts at once, also while a pruned or replaced checkpoint is moved aside and deleted:
    no .trash- is left, and a checkpoint of the step is in place."""
    root = tmp_path / "checkpoints"
    tensors = {name: {"x": torch.zeros(3)} for name in ckpt.FILES}
    ckpt.save_checkpoint(root, 1, tensors, {}, keep=1)
    real_rmtree, real_replace, interrupted = ckpt.shutil.rmtree, ckpt.os.replace, []

    def rmtree(path, *args, **kwargs):
        if where == "delete" and Path(path).name.startswith(".trash-") and not interrupted:
            interrupted.append(path)
            (Path(path) / "model.safetensors").unlink()  # part-way through
            raise KeyboardInterrupt
        return real_rmtree(path, *args, **kwargs)

    def replace(src, dst):
        real_replace(src, dst)
        if where == "rename" and Path(dst).name.startswith(".trash-") and not interrupted:
            interrupted.append(dst)
            raise KeyboardInterrupt  # the handler runs at the next call, before any delete starts

    monkeypatch.setattr(ckpt.shutil, "rmtree", rmtree)
    monkeypatch.setattr(ckpt.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(root, 1 if same_step else 2, tensors, {}, keep=1)
    assert interrupted and not [p.name for p in root.iterdir() if p.name.startswith((".tmp-", ".trash-"))]
    expected = ckpt.checkpoint_name(1 if same_step else 2)  # the new one in place (or the old one put back)
    assert [p.name for p in ckpt.list_checkpoints(root)] == [expected] == [ckpt.latest_checkpoint(root).name]
    assert all((root / expected / f"{name}.safetensors").is_file() for name in ckpt.FILES)


def test_the_state_checksum_is_that_of_the_file_as_read_back():
    """JSON turns keys into text and so reorders them (5, 10 sorts as "10", "5"): a component state with number
    keys (a MultiStepLR's milestones) must not make its own checkpoint look edited."""
    state = {"step": 3, "components": {"lr_schedule.critic": {"milestones": {5: 1, 10: 1}}}, "x": [1.5, None]}
    assert ckpt._state_checksum(state) == ckpt._state_checksum(json.loads(json.dumps(state)))


def test_a_checkpoint_the_disk_refuses_is_a_user_error_and_the_previous_one_stays(tmp_path, monkeypatch):
    from safetensors import SafetensorError

    tensors = {name: {"w": torch.ones(3)} for name in ckpt.FILES}
    first = ckpt.save_checkpoint(tmp_path, 1, tensors, {}, keep=3)

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: No space left on device (os error 28)")

    monkeypatch.setattr(ckpt, "save_file", full)
    with pytest.raises(advinf.UserError, match=r"cannot write the checkpoint of step 2 into .*: Error while "
                                               r"serializing: No space left on device \(os error 28\); free some "
                                               r"space .* the previous checkpoint is intact"):
        ckpt.save_checkpoint(tmp_path, 2, tensors, {}, keep=3)
    assert ckpt.latest_checkpoint(tmp_path) == first and [p.name for p in tmp_path.iterdir()
                                                          if p.name.startswith(".tmp")] == []


def test_a_run_directory_in_use_is_refused_to_a_second_process(tmp_path):
    """Two resumes of one run at once interleaved their checkpoints and metrics (one deleted the other's
    temporary checkpoint); the second is refused, writing nothing."""
    out = tmp_path / "run"
    first = _start(out, resume=False)
    first.stderr.readline()  # "run directory ...": it holds the directory now
    try:
        before = (out / "metrics.jsonl").read_text() if (out / "metrics.jsonl").exists() else ""
        second = subprocess.run([sys.executable, "-m", "advinf", "run", "--resume", str(out)], capture_output=True,
                                text=True, env=cli_env(), timeout=120)
        assert second.returncode == 2, second.stderr
        assert f"{out} is in use: another advinf process is training into it" in second.stderr
        assert "Traceback" not in second.stderr
        after = (out / "metrics.jsonl").read_text() if (out / "metrics.jsonl").exists() else ""
        assert after.startswith(before)  # only the first process wrote
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=60)
    res = subprocess.run([sys.executable, "-m", "advinf", "run", "--resume", str(out), "--stop-after",
                          str(ckpt.load_checkpoint(ckpt.latest_checkpoint(out / "checkpoints")).step + 1)],
                         capture_output=True, text=True, env=cli_env(), timeout=120)
    assert res.returncode == 0, res.stderr  # released when the first process ended


def test_a_checkpoint_that_cannot_be_read_is_not_called_corrupted(tmp_path, monkeypatch):
    """Permissions are no damage: the advice to delete the checkpoint would destroy a good one."""
    folder = tmp_path / "step_0000003"
    folder.mkdir()
    (folder / "state.json").mkdir()  # a folder where the file belongs
    with pytest.raises(advinf.UserError, match=r"state.json is not a regular file; move it away") as err:
        ckpt.load_checkpoint(folder)
    assert "delete" not in str(err.value)

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    (folder / "state.json").rmdir()
    (folder / "state.json").write_text("{}")
    monkeypatch.setattr(ckpt, "read_text", refuse)
    with pytest.raises(advinf.UserError, match=r"state.json cannot be read \(Permission denied\): fix its "):
        ckpt.load_checkpoint(folder)


def test_an_optimiser_state_of_another_shape_than_its_parameter_is_refused(tmp_path):
    """Fused Adam read past a (1,) state (and called it divergence); a (7, 7) state for a (1,) bias trained on."""
    p = torch.nn.Parameter(torch.randn(3, 2))
    opt = torch.optim.Adam([p], lr=0.1)
    p.grad = torch.randn(3, 2)
    opt.step()
    tensors, meta = ckpt.optimizer_state(opt, ["w"], "critic")
    fresh = torch.optim.Adam([torch.nn.Parameter(torch.zeros(3, 2))], lr=0.1)
    ckpt.load_optimizer_state(fresh, ["w"], "critic", tensors, meta, tmp_path)  # as saved: fine
    tensors["critic/w/exp_avg_sq"] = torch.zeros(1)
    with pytest.raises(advinf.UserError, match=r"the critic optimiser state 'critic/w/exp_avg_sq' has shape \(1,\), "
                                               r"its parameter \(3, 2\): the checkpoint is damaged"):
        ckpt.load_optimizer_state(fresh, ["w"], "critic", tensors, meta, tmp_path)
    tensors["critic/w/exp_avg_sq"] = torch.zeros(3, 2)
    # a step count of 100 values failed mid-training (a traceback); one of 0 divides Adam's bias correction by 0
    for step in (torch.ones(100), torch.tensor(0.0), torch.tensor(float("nan"))):
        tensors["critic/w/step"] = step
        with pytest.raises(advinf.UserError, match=r"the critic optimiser state 'critic/w/step' is not a count of "
                                                   r"steps taken"):
            ckpt.load_optimizer_state(fresh, ["w"], "critic", tensors, meta, tmp_path)


def test_a_sampler_position_that_cannot_seed_a_permutation_is_refused():
    """An epoch of 10**30 in state.json failed mid-training with an overflow."""
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="epoch"):
        ckpt.SamplerState.model_validate({"epoch": 10**30, "position": 0})
    assert ckpt.SamplerState.model_validate({"epoch": 10**6, "position": 500}).epoch == 10**6


def test_a_samples_folder_that_is_a_link_is_refused_and_what_it_points_to_untouched(tmp_path):
    from advinf.rundir import RunDir

    elsewhere = tmp_path / "mine"
    elsewhere.mkdir()
    (elsewhere / "step_0000041.png").write_bytes(b"the user's")
    run = tmp_path / "run"
    run.mkdir()
    (run / "recipe.toml").write_text('name = "r"\n')
    (run / "samples").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(advinf.UserError, match=r"holds symbolic links \(samples\): advinf never follows links in a "
                                               "run directory"):
        RunDir(run, resume=True)
    assert (elsewhere / "step_0000041.png").read_bytes() == b"the user's"


def test_python_s_and_numpy_s_random_are_seeded_by_the_run_and_restored_by_a_checkpoint():
    """A plugin drawing from `random` or numpy's global generator: the same draws in two runs of one seed, and
    after a resume (Python's was never seeded; numpy's was neither seeded nor saved)."""
    import numpy as np
    from test_train import tiny_data, tiny_nets

    states = []
    for _ in range(2):
        random.seed(12345 + len(states))  # whatever came before the run
        np.random.seed(len(states))
        trainer = advinf.Trainer(tiny_nets(), advinf.create("game", "ali"), tiny_data(),
                                 train=advinf.TrainSpec(steps=1, batch_size=32, progress="none"), seed=3)
        trainer.fit()
        states.append((random.random(), float(np.random.rand())))
    assert states[0] == states[1]
    tensors, meta = ckpt.rng_state()
    drawn = (random.random(), float(np.random.rand()), float(np.random.randn()))
    ckpt.load_rng_state(tensors, json.loads(json.dumps(meta)))  # as state.json holds it
    assert (random.random(), float(np.random.rand()), float(np.random.randn())) == drawn


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork")
def test_a_forked_child_does_not_keep_the_run_directory_held(tmp_path):
    """A DataLoader worker (forked) outlived a kill -9 of its run for seconds and kept the directory refused: a
    forked child closes its copies of the locks."""
    import os

    from advinf.rundir import hold

    release = hold(tmp_path)
    child = os.fork()
    if child == 0:  # the worker: lives on after its parent lets go
        time.sleep(3)
        os._exit(0)
    try:
        release()
        probe = subprocess.run([sys.executable, "-c", "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDONLY);"
                                "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)", str(tmp_path)],
                               capture_output=True, text=True, timeout=60)
        assert probe.returncode == 0, probe.stderr  # free while the child still lives
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)


def test_a_numpy_random_state_that_cannot_be_restored_is_a_clear_error():
    tensors, meta = ckpt.rng_state()
    tensors["numpy_keys"] = tensors["numpy_keys"][:10]  # a checkpoint consistent with its checksums, made wrong
    with pytest.raises(advinf.UserError, match="numpy random state cannot be restored .* the checkpoint is damaged"):
        ckpt.load_rng_state(tensors, meta)
