"""Reliability and safety: no code from data, every bad input a clear error before anything is written,
damaged run directories, resume that applies what changed, plugins that misbehave, signals at start-up."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import RECIPES, TINY, TINY_ENCODER, cli_env, write

import advinf
from advinf import checkpoint as ckpt
from advinf.cli import cli

ALI = RECIPES / "ali_mixture25.toml"


def sets(items):
    return [a for item in items for a in ("--set", item)]


def invoke(*args: str | Path):
    return CliRunner().invoke(cli, [str(a) for a in args])


def tiny_run(out: Path, *extra: str, recipe: Path = ALI):
    res = invoke("run", recipe, "--out", out, *sets(TINY + TINY_ENCODER), *extra)
    assert res.exit_code == 0, res.output
    return res


def snapshot(path: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


# -- no code from data ---------------------------------------------------------------------------------------

MARKING_PLUGIN = """
from pathlib import Path
Path(__file__).with_name("imported.log").open("a").write("imported\\n")
from advinf import hookimpl
from advinf_plugins.priors import gaussian, PriorOptions

@hookimpl
def register_priors(register):
    register("marked_prior", gaussian, PriorOptions)
"""


def test_commands_printed_for_a_run_name_only_plugins_this_process_loaded(tmp_path):
    """A run directory handed over may list a plugin file of its own that its components do not need: a resume
    that stops printed `--plugin RUN/evil.py` to copy, which would run that file."""
    run = tmp_path / "run"
    tiny_run(run, "--stop-after", "5")
    write(run / "evil.py", "raise SystemExit('ran')\n")
    text = (run / "recipe.toml").read_text().replace("plugins = []", 'plugins = ["evil.py"]')
    assert "evil.py" in text
    (run / "recipe.toml").write_text(text)
    res = invoke("run", "--resume", run, "--stop-after", "10", "--allow-changes")
    assert res.exit_code == 0 and "resume with:" in res.output, res.output
    assert "evil.py" not in res.output


def test_a_run_directory_never_imports_its_plugins(tmp_path):
    project = tmp_path / "project"
    write(project / "mark.py", MARKING_PLUGIN)
    recipe = write(project / "r.toml", ALI.read_text().replace('seed = 0', 'seed = 0\nplugins = ["mark.py"]')
                   .replace('name = "gaussian"', 'name = "marked_prior"'))
    res = invoke("validate", recipe)
    assert res.exit_code == 0 and f"imported local plugin: {project / 'mark.py'}" in res.output
    run = project / "runs" / "r"
    res = tiny_run(run, "--stop-after", "5", recipe=recipe)
    assert f"resume with: advinf run --resume {run} --plugin {project / 'mark.py'}" in res.output
    tiny_run(run, "--resume", recipe=recipe)
    log = project / "imported.log"
    log.unlink()
    from advinf.plugins import reset_default_host

    reset_default_host()  # as a fresh process: nothing imported yet
    assert '"../../mark.py"' in (run / "recipe.toml").read_text()  # stored relative to the run
    res = invoke("sample", run, "--out", tmp_path / "s.png")
    assert res.exit_code == 2 and "--plugin PATH" in res.output and not log.exists()
    assert f"uses components from local plugins ({project / 'mark.py'})" in res.output  # a path to pass, not ../..
    res = invoke("evaluate", run)
    assert res.exit_code == 2 and not log.exists()
    res = invoke("run", "--resume", run)
    assert res.exit_code == 2 and "does not import from a run directory" in res.output and not log.exists()
    res = invoke("sample", run, "--out", tmp_path / "s.png", "--plugin", project / "mark.py")
    assert res.exit_code == 0, res.output
    assert log.read_text() == "imported\n"
    reset_default_host()

    # moved with its plugin beside it, the run resumes with the moved plugin and sees no change of recipe
    moved = tmp_path / "moved"
    shutil.move(project, moved)
    res = invoke("run", "--resume", moved / "runs" / "r", "--plugin", moved / "mark.py",
                 "--set", "train.steps=40", "--allow-changes")
    assert res.exit_code == 0, res.output
    assert "resuming" in res.output


def test_an_edited_run_directory_cannot_make_advinf_import_a_file(tmp_path):
    run = tmp_path / "run"
    tiny_run(run)
    evil = write(tmp_path / "evil.py", "from pathlib import Path\nPath(__file__).with_name('pwned').touch()\n")
    state_path = ckpt.latest_checkpoint(run / "checkpoints") / "state.json"
    state = json.loads(state_path.read_text())
    state["recipe"]["plugins"] = [str(evil)]
    state["state_checksum"] = ckpt._state_checksum(state)  # the checksum is no secret: an attacker resigns
    state_path.write_text(json.dumps(state))
    (run / "recipe.toml").write_text((run / "recipe.toml").read_text().replace("plugins = []",
                                                                              f'plugins = ["{evil}"]'))
    for args in (["evaluate", run], ["sample", run, "--out", tmp_path / "s.png"],
                 ["reconstruct", run, "--out", tmp_path / "r.png"], ["run", "--resume", run, "--stop-after", "31"]):
        invoke(*args)
        assert not (tmp_path / "pwned").exists(), args
    advinf.load_run(run, device="cpu")
    assert not (tmp_path / "pwned").exists()


# -- bad values: clear errors before anything is written ------------------------------------------------

@pytest.mark.parametrize("override,expected", [
    ("train.batch_size=true", "train.batch_size: Input should be a valid integer"),
    ("optimizer.lr=false", "optimizer.lr: a boolean where a number is expected"),
    ("critic.hidden=true", "critic.hidden: a boolean where a number is expected"),
    ("critic.joint=1", "critic.joint: must be true or false"),
    ("optimizer.lr=inf", "optimizer.lr: must be a finite number"),
    ("dataset.std=nan", "dataset.std: must be a finite number"),
    ("seed=4294967296", "seed: Input should be less than 4294967296"),
    ("seed=18446744073709551616", "seed: beyond a 64-bit integer (TOML's range)"),
    ("train.threads=1099511627776", "train.threads: Input should be less than or equal to 4096"),
    ("optimizer.betas=[0.5]", "optimizer.betas: must be two numbers in [0, 1)"),
    ("optimizer.differentiable=true", "`fused` does not support `differentiable`"),
    ("train.device=\"cuda:99\"", "train.device: train.device = 'cuda:99' but"),
    ("name=\"../../escape\"", "name: must be a plain name"),
    ("name=\"a\\nb\"", "name: must be a plain name"),
    ("evaluators.mode_coverage.samples=100000000000", "evaluators.mode_coverage.samples: Input should be less"),
    ("dataset.grid=100000", "dataset.grid: Input should be less than or equal to 100"),  # was killed for memory
    ('seed=1\nname="x"', "is more than one TOML value (a line break in it?)"),  # name was dropped silently
    ("x=" + "[" * 1000 + "]" * 1000, "more characters): value '[[["),  # a RecursionError, and clipped
    (".".join(["a"] * 800) + "=1", "nests more than 100 tables deep"),
])
def test_values_validation_can_know_are_wrong(tmp_path, override, expected):
    res = invoke("validate", ALI, "--set", override)
    assert res.exit_code == 2 and expected in res.output, res.output
    assert "Traceback" not in res.output


@pytest.mark.parametrize("override,expected", [
    ("train.batch_size=1", "train.batch_size: batch norm needs at least 2 examples per batch"),
    ("encoder.x_dim=3", "encoder.x_dim: encoder 'toy_encoder': x_dim = 3, but the dataset's examples have 2"),
    ("decoder.hidden=10000000", "decoder.name: building decoder 'toy_decoder' (plugin 'toy_networks') failed"),
])
def test_what_fails_only_when_built_fails_before_training_and_writes_nothing(tmp_path, override, expected):
    out = tmp_path / "run"
    res = invoke("run", ALI, "--out", out, *sets(TINY + TINY_ENCODER), "--set", override)
    assert res.exit_code == 2 and expected in res.output, res.output
    assert "Traceback" not in res.output and not out.exists()


@pytest.mark.parametrize("override,expected", [
    ("train.batch_size=1", "train.batch_size: batch norm needs at least 2 examples per batch"),
    ("encoder.x_dim=3", "encoder.x_dim: encoder 'toy_encoder': x_dim = 3, but the dataset's examples have 2"),
    ("critic.joint=false", "the critic ignores z (uses_z = False): set critic.joint = true"),
    ("prior.spatial=true", "encoder.name: encoder 'toy_encoder' works on flat vectors, but the prior's z has shape "
                           "(2, 1, 1): use a prior of flat vectors (without `spatial = true` in [prior])"),
])
def test_validate_build_finds_what_only_building_can_and_writes_nothing(tmp_path, monkeypatch, override, expected):
    monkeypatch.chdir(tmp_path)  # a run would write runs/NAME-... here
    assert invoke("validate", ALI, "--set", override).exit_code == 0  # the options alone are valid
    res = invoke("validate", "--build", ALI, *sets(TINY + TINY_ENCODER), "--set", override)
    assert res.exit_code == 2 and expected in res.output and "Traceback" not in res.output, res.output
    good = invoke("validate", "--build", ALI, *sets(TINY + TINY_ENCODER))
    assert good.exit_code == 0, good.output
    assert "critic: ToyCritic" in good.output and "one trial step on cpu passed" in good.output
    assert "[train]" in good.output  # the resolved recipe, as plain validate prints it
    assert list(tmp_path.iterdir()) == []


# -- run directories ----------------------------------------------------------------------------------------

def test_bad_run_directories_are_clear_errors(tmp_path):
    file = write(tmp_path / "a_file", "x")
    cases = [(file, "is a file"), (file / "under", "cannot write the run directory"),
             (tmp_path / ("n" * 300), "File name too long")]
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    cases.append((dangling, "symbolic link to nothing"))
    for out, expected in cases:
        res = invoke("run", ALI, "--out", out, *sets(TINY + TINY_ENCODER))
        assert res.exit_code == 2 and expected in res.output, (out, res.output)
        assert "Traceback" not in res.output
    assert not (tmp_path / "nowhere").exists()


def test_file_system_errors_are_one_line_naming_the_path(tmp_path):
    run = tmp_path / "run"
    tiny_run(run, "--stop-after", "10")
    metrics = run / "metrics.jsonl"
    metrics.unlink()
    metrics.mkdir()  # a directory where the run's metrics file belongs
    res = invoke("run", "--resume", run)
    assert res.exit_code == 2 and f"error: {metrics} is not a regular file; move it away" in res.output, res.output
    assert "Traceback" not in res.output
    res = invoke("--debug", "run", "--resume", run)
    assert isinstance(res.exception, advinf.UserError)  # --debug: the traceback, as for every user error


def test_which_os_errors_are_the_users_to_fix():
    import errno
    import os

    from advinf.cli import file_system_message

    assert file_system_message(PermissionError(errno.EACCES, os.strerror(errno.EACCES), "/x/y")).startswith(
        "/x/y: Permission denied")
    assert file_system_message(OSError(errno.EXDEV, os.strerror(errno.EXDEV), "/a", None, "/b")) is None  # a bug
    assert file_system_message(OSError(errno.ENOENT, "No such file or directory", "/a", None, "/b")).startswith(
        "/a -> /b: No such file")
    assert file_system_message(OSError(errno.EEXIST, "File exists", "/a", None, "/b")) is None  # advinf's renames
    full = file_system_message(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    assert full.startswith("No space left on device: free some space") and "--resume" in full
    assert file_system_message(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/r/m.png")).startswith(
        "/r/m.png: No space left on device: free some space")
    assert file_system_message(OSError(errno.EACCES, "denied")) is None  # no path to name: not ours to explain
    assert file_system_message(OSError("no errno at all")) is None


def _damage_cases(run: Path):
    latest = ckpt.latest_checkpoint(run / "checkpoints")
    state = latest / "state.json"
    good = json.loads(state.read_text())

    def edit(**changes):
        def apply():
            data = json.loads(json.dumps(good))
            for dotted, value in changes.items():
                node = data
                *path, last = dotted.split("__")
                for part in path:
                    node = node[part]
                node[last] = value
            state.write_text(json.dumps(data))
        return apply

    return [
        ("step is text", edit(step="ten"), "state.json is damaged (step"),
        ("sampler not a table", edit(sampler=[1, 2]), "state.json is damaged (sampler"),
        ("param groups without names", edit(optimizers__critic__param_groups=[{"lr": 1}]), "state.json is damaged"),
        ("rng of the wrong shape", edit(rng={"python": [3]}), "state.json is damaged (rng.python"),
        ("negative position", edit(sampler__position=-4), "state.json is damaged (sampler.position"),
        ("not JSON", lambda: state.write_bytes(b"\xff\xfe{"), "state.json is corrupted"),
        ("optimiser value wrong", edit(optimizers__critic__param_groups=[{**good["optimizers"]["critic"]
                                                                          ["param_groups"][0], "betas": "x"}]),
         "state.json is damaged"),
        # well-formed edits: only the file's own checksum tells them (before: a negative learning rate trained,
        # one beta was a traceback, another step resumed from there)
        ("a negative learning rate", edit(optimizers__critic__param_groups=[{**good["optimizers"]["critic"]
                                                                             ["param_groups"][0], "lr": -5.0}]),
         "state.json was changed or damaged after it was written"),
        ("one beta", edit(optimizers__critic__param_groups=[{**good["optimizers"]["critic"]["param_groups"][0],
                                                             "betas": [0.5]}]),
         "state.json was changed or damaged after it was written"),
        ("another step", edit(step=3), "state.json was changed or damaged after it was written"),
        ("another step, resigned", lambda: state.write_text(json.dumps(
            {**good, "step": 3, "state_checksum": ckpt._state_checksum({**good, "step": 3})})),
         "says step 3, but its folder is step_0000010"),
    ]


def test_a_damaged_state_json_is_a_clear_error_and_changes_nothing(tmp_path):
    run = tmp_path / "run"
    tiny_run(run, "--stop-after", "10")
    for what, damage, expected in _damage_cases(run):
        latest = ckpt.latest_checkpoint(run / "checkpoints")
        original = (latest / "state.json").read_bytes()
        damage()
        before = snapshot(run)
        res = invoke("run", "--resume", run)
        assert res.exit_code == 2 and expected in res.output, (what, res.output)
        assert "Traceback" not in res.output
        assert snapshot(run) == before, what
        (latest / "state.json").write_bytes(original)


def test_a_damaged_latest_pointer_or_checkpoints_folder(tmp_path):
    run = tmp_path / "run"
    tiny_run(run, "--stop-after", "10", "--set", "train.checkpoint_every=5")
    pointer = run / "checkpoints" / "latest"
    outside = write(tmp_path / "outside", "step_0000005\n")
    for damage in (lambda: pointer.write_bytes(b"\xff\xfe\x00"), lambda: pointer.mkdir(),
                   lambda: pointer.symlink_to(outside)):
        if pointer.is_dir() and not pointer.is_symlink():
            pointer.rmdir()
        else:
            pointer.unlink(missing_ok=True)
        damage()
        with pytest.warns(UserWarning, match="using the newest complete checkpoint \\(step_0000010\\)"):
            assert ckpt.latest_checkpoint(run / "checkpoints").name == "step_0000010"
    proc = subprocess.run([sys.executable, "-m", "advinf", "run", "--resume", str(run), "--stop-after", "12"],
                          capture_output=True, text=True, env=cli_env())
    assert proc.returncode == 0, proc.stderr
    warning = [ln for ln in proc.stderr.splitlines() if "is not a readable pointer file" in ln]
    assert len(warning) == 1 and warning[0].startswith("warning: ")  # one clean line, no source echo
    assert "warnings.warn" not in proc.stderr

    other = tmp_path / "other"
    tiny_run(other, "--stop-after", "5")
    shutil.rmtree(other / "checkpoints")
    (other / "checkpoints").write_text("not a folder")
    res = invoke("run", "--resume", other)
    assert res.exit_code == 2 and "checkpoints is not a directory" in res.output


def test_a_broken_saved_recipe_without_checkpoints_is_a_clear_error(tmp_path):
    run = tmp_path / "run"
    tiny_run(run, "--stop-after", "5", "--set", "train.checkpoint_every=0")
    shutil.rmtree(run / "checkpoints")
    (run / "recipe.toml").write_text("name = [unclosed\n")
    before = snapshot(run)
    res = invoke("run", "--resume", run)
    assert res.exit_code == 2 and "recipe.toml cannot be read" in res.output and "Traceback" not in res.output
    assert snapshot(run) == before


def test_a_resume_without_checkpoints_drops_the_stale_lines_and_a_torn_line(tmp_path):
    run = tmp_path / "run"
    tiny_run(run, "--stop-after", "20", "--set", "train.checkpoint_every=0")
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 21, "loss_cri')  # a crash in the middle of a line
    shutil.rmtree(run / "checkpoints")
    res = invoke("run", "--resume", run, "--stop-after", "10")
    assert res.exit_code == 0, res.output
    steps = [json.loads(ln)["step"] for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [10]

    tiny_run(tmp_path / "b", "--stop-after", "15", "--set", "train.checkpoint_every=0")
    with open(tmp_path / "b" / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 16, "lo')
    assert invoke("run", "--resume", tmp_path / "b").exit_code == 0
    records = [json.loads(ln) for ln in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["steps_averaged"]) for r in records] == [(10, 10), (15, 5), (20, 5), (30, 10)]


# -- resume applies what changed -----------------------------------------------------------------------------

def test_resume_with_allowed_changes_applies_the_new_optimiser_settings(tmp_path):
    run = tmp_path / "run"
    tiny_run(run, "--stop-after", "10")
    res = invoke("run", "--resume", run, "--set", "optimizers.critic.lr=0.05", "--set", "optimizer.betas=[0.1, 0.9]",
                 "--set", "train.ema=0.5", "--allow-changes", "--stop-after", "12")
    assert res.exit_code == 0, res.output
    assert "applied the changed optimiser settings" in res.output
    state = ckpt.load_checkpoint(ckpt.latest_checkpoint(run / "checkpoints")).state
    assert state["optimizers"]["critic"]["param_groups"][0]["lr"] == 0.05
    assert state["optimizers"]["generator"]["param_groups"][0]["betas"] == [0.1, 0.9]
    res = invoke("run", "--resume", run, "--set", "optimizer.name=adamw", "--allow-changes")
    assert res.exit_code == 2 and "cannot change the kind of an optimiser" in res.output


# -- plugins that misbehave ----------------------------------------------------------------------------------

def _dist(root: Path, modules: dict[str, str]) -> Path:
    from test_plugins import make_dist

    return make_dist(root, "advinf-bad", {name: name for name in modules}, modules)


def test_plugins_that_exit_or_interrupt_at_import_are_reported_like_any_broken_plugin(tmp_path):
    marker = tmp_path / "imported"
    root = _dist(tmp_path / "site", {
        "exits": "import sys\nsys.exit(0)\n",
        "interrupts": "raise KeyboardInterrupt\n",
        "base": "raise BaseException('odd')\n",
        "slow": f"import time\nfrom pathlib import Path\nPath({str(marker)!r}).touch()\ntime.sleep(0.3)\n",
    })
    env = cli_env(PYTHONPATH=str(root))
    out = subprocess.run([sys.executable, "-m", "advinf", "list-plugins", "--json"], capture_output=True, text=True,
                         env=env)
    assert out.returncode == 2, out.stderr  # broken plugins: exit 2, and --json still prints the listing
    listing = {p["name"]: p for p in json.loads(out.stdout)}
    assert listing["exits"]["error"].endswith("called sys.exit(0)")
    assert "KeyboardInterrupt" in listing["interrupts"]["error"] and "odd" in listing["base"]["error"]
    assert listing["slow"]["load_seconds"] >= 0.3 and listing["games"]["error"] is None
    marker.unlink()
    helped = subprocess.run([sys.executable, "-m", "advinf", "--help"], capture_output=True, text=True, env=env)
    assert helped.returncode == 0 and "list-plugins" in helped.stdout
    assert not marker.exists()  # --help imports no plugin
    ran = subprocess.run([sys.executable, "-m", "advinf", "validate", str(ALI)], capture_output=True, text=True,
                         env=env)
    assert ran.returncode == 0, ran.stderr


def test_a_factory_that_raises_names_its_plugin(tmp_path):
    plugin = write(tmp_path / "p.py", """
from advinf import hookimpl
from advinf_plugins.toy_networks import CriticOptions

def broken(options, ctx):
    raise ZeroDivisionError("oops")

@hookimpl
def register_critics(register):
    register("broken_critic", broken, CriticOptions)
""")
    recipe = write(tmp_path / "r.toml", ALI.read_text().replace("seed = 0", f'seed = 0\nplugins = ["{plugin}"]')
                   .replace('name = "toy_critic"', 'name = "broken_critic"'))
    res = invoke("run", recipe, "--out", tmp_path / "run", *sets(TINY + TINY_ENCODER))
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert f"critic.name: building critic 'broken_critic' (plugin '{plugin}') failed: ZeroDivisionError: oops" \
        in res.output


# -- signals -----------------------------------------------------------------------------------------------

def _terminal_signals() -> None:
    """SIGINT as a terminal leaves it: a test suite started in the background (``pytest &``) has it ignored, and
    its children would inherit that and sleep through the signal."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_during_start_up_exits_cleanly(tmp_path, sig, code):
    slow = write(tmp_path / "slow.py", """
import time
from advinf import hookimpl
from advinf_plugins.mixture import MixtureOptions, mixture25

def slow_mixture(options, ctx):
    print("loading", flush=True)
    time.sleep(30)
    return mixture25(options, ctx)

@hookimpl
def register_datasets(register):
    register("slow_mixture", slow_mixture, MixtureOptions)
""")
    recipe = write(tmp_path / "r.toml", ALI.read_text().replace("seed = 0", f'seed = 0\nplugins = ["{slow}"]')
                   .replace('name = "mixture25"', 'name = "slow_mixture"'))
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "advinf", "run", str(recipe), "--out", str(out),
                             *sets(TINY + TINY_ENCODER)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=cli_env(), preexec_fn=_terminal_signals)
    assert proc.stdout.readline().strip() == "loading"
    time.sleep(0.2)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert "Traceback" not in err and ("interrupted" in err or "terminated" in err)
    assert not out.exists()  # the run directory it had created is gone again: it held nothing


def test_frozen_and_trainable_must_be_booleans_and_evaluators_every_an_integer(tmp_path):
    res = invoke("validate", ALI, "--set", "evaluators.mode_coverage.every=true")
    assert res.exit_code == 2 and "evaluators.mode_coverage.every: Input should be a valid integer" in res.output
    res = invoke("validate", ALI, "--set", "evaluators.mode_coverage.every=-1")
    assert res.exit_code == 2 and "greater than or equal to 0" in res.output


def test_the_loaded_model_is_the_same_after_all_this(tmp_path):
    run = tmp_path / "run"
    tiny_run(run)
    a = advinf.load_run(run, device="cpu")
    b = advinf.load_run(run, device="cpu")
    z = a.prior_sample(8)
    with torch.no_grad():
        assert torch.equal(a.sample(z=z), b.sample(z=z))


def test_a_library_trainer_that_cannot_train_touches_no_run_directory(tmp_path):
    from test_train import tiny_data, tiny_nets

    from advinf_plugins.games import JointGame, JointGameOptions

    with pytest.raises(advinf.UserError, match="batch norm needs at least 2 examples"):
        advinf.Trainer(tiny_nets(), JointGame(JointGameOptions(), stochastic=True), tiny_data(),
                       train=advinf.TrainSpec(steps=2, batch_size=1), run_dir=tmp_path / "run", device="cpu")
    assert not (tmp_path / "run").exists()


def test_a_double_ctrl_c_leaves_only_complete_files(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "advinf", "run", str(ALI), "--out", str(out),
                             *sets(TINY + TINY_ENCODER + ["train.steps=100000", "train.checkpoint_every=1",
                                                          "train.log_every=1", "train.sample_every=7"])],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=cli_env())
    proc.stderr.readline()  # "run directory: ...": training starts
    deadline = time.monotonic() + 60
    while not (out / "metrics.jsonl").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.01)
    proc.send_signal(signal.SIGINT)  # the second one aborts at once, whatever is being written
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    root = out / "checkpoints"
    assert not [p for p in root.iterdir() if p.name.startswith((".tmp-", ".trash-"))]
    ckpt.load_checkpoint(ckpt.latest_checkpoint(root))  # complete, checksums verified
    for line in (out / "metrics.jsonl").read_text().splitlines():
        json.loads(line)
    assert not [p for p in out.rglob(".*.tmp")]  # no half-written picture or recipe


def test_extends_never_echoes_another_file(tmp_path):
    secret = write(tmp_path / "secret.txt", "root:x:0:0:" + "S3CRET" * 50 + "\n")
    recipe = write(tmp_path / "r.toml", f'extends = "{secret}"\nname = "x"\n')
    res = invoke("validate", recipe)
    assert res.exit_code == 2 and "S3CRET" not in res.output and len(res.output) < 400, res.output


def test_a_run_trained_on_a_gpu_loads_on_a_machine_without_one(tmp_path):
    """The run's own train.device is the machine's concern, not the run's: --device cpu loads it (before, the
    recipe check refused the run outright), without --device the message says to pass it, and a device string
    that is no device is refused, not a traceback."""
    run = tmp_path / "run"
    tiny_run(run)
    text = (run / "recipe.toml").read_text()
    (run / "recipe.toml").write_text(text.replace('device = "cpu"', 'device = "cuda"').replace(
        'device = "auto"', 'device = "cuda"'))
    for state in run.glob("checkpoints/step_*/state.json"):  # as a GPU machine would have written them
        data = json.loads(state.read_text())
        data["recipe"]["train"]["device"] = "cuda"
        data["state_checksum"] = ckpt._state_checksum(data)
        state.write_text(json.dumps(data))
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the run is loadable as it is")
    ok = invoke("sample", run, "--device", "cpu", "--out", tmp_path / "s.png")
    assert ok.exit_code == 0, ok.output
    assert advinf.load_run(run, device="cpu").device.type == "cpu"
    bare = invoke("sample", run, "--out", tmp_path / "t.png")
    assert bare.exit_code == 2 and "was trained with train.device = 'cuda'" in bare.output
    assert "--device cpu" in bare.output and "Traceback" not in bare.output
    for bad in ("gpu", "CPU", "", "meta"):
        res = invoke("sample", run, "--device", bad, "--out", tmp_path / "u.png")
        assert res.exit_code == 2 and "give 'auto', 'cpu', 'cuda' or 'cuda:N'" in res.output, (bad, res.output)


def test_what_a_user_added_to_a_run_is_never_replaced(tmp_path):
    """eval.json entries that `advinf evaluate` added survive a resume of the finished run; an eval.json that is
    not a JSON object is refused, not replaced; checkpoints without state.json are not written over by a resume
    that would start again from step 0."""
    run = tmp_path / "run"
    tiny_run(run, "--set", "train.checkpoint_every=10")
    evaluated = json.loads((run / "eval.json").read_text())
    mine = {**evaluated, "mine": {"kept": 1.0}}
    (run / "eval.json").write_text(json.dumps(mine))
    again = invoke("run", "--resume", run)  # the run is finished: its evaluation runs again, merged
    assert again.exit_code == 0, again.output
    assert json.loads((run / "eval.json").read_text())["mine"] == {"kept": 1.0}
    for damaged in ('{"mine": {"x": 1},}', "[1, 2]"):
        (run / "eval.json").write_text(damaged)
        for args in (("evaluate", run), ("run", "--resume", run)):
            res = invoke(*args)
            assert res.exit_code == 2 and f"{run / 'eval.json'}" in res.output, res.output
            assert "move it away" in res.output and (run / "eval.json").read_text() == damaged
    (run / "eval.json").write_text(json.dumps(mine))
    for state in run.glob("checkpoints/step_*/state.json"):
        state.unlink()
    before = snapshot(run / "checkpoints")
    with pytest.warns(UserWarning, match="missing or incomplete"):  # the latest pointer names step_0000030
        res = invoke("run", "--resume", run, "--stop-after", "12")
    assert res.exit_code == 2 and "none is a complete checkpoint" in res.output, res.output
    assert "step_0000010" in res.output and snapshot(run / "checkpoints") == before
    assert "step_0000010, step_0000020, step_0000030: state.json missing" in " ".join(res.output.split())

    # complete checkpoints linked in from elsewhere are not the run's (never followed): the message says so
    linked, elsewhere = tmp_path / "linked", tmp_path / "elsewhere"
    tiny_run(linked, "--set", "train.checkpoint_every=10")
    elsewhere.mkdir()
    for folder in sorted((linked / "checkpoints").glob("step_*")):
        folder.rename(elsewhere / folder.name)
        folder.symlink_to(elsewhere / folder.name, target_is_directory=True)
    with pytest.warns(UserWarning, match="missing or incomplete"):
        res = invoke("run", "--resume", linked, "--stop-after", "12")
    assert res.exit_code == 2 and "step_0000010, step_0000020, step_0000030 are links (a checkpoint must be a " \
        "folder of the run: copy the folder in instead of linking it)" in " ".join(res.output.split()), res.output
    with pytest.warns(UserWarning, match="missing or incomplete"):
        res = invoke("sample", linked, "--out", tmp_path / "s.png")  # not "nothing under checkpoints"
    assert res.exit_code == 2 and "has no complete checkpoint under" in res.output, res.output
    assert "are links" in res.output and not (tmp_path / "s.png").exists()
    (linked / "checkpoints" / "step_0000010").unlink()
    (linked / "checkpoints" / "step_notes.txt").write_text("mine")
    (linked / "checkpoints" / "step_0000040").write_text("a file")
    (linked / "checkpoints" / "step_0000050").mkdir()
    with pytest.warns(UserWarning, match="missing or incomplete"):
        res = invoke("sample", linked, "--out", tmp_path / "s.png")
    said = " ".join(res.output.split())
    assert res.exit_code == 2 and "step_0000020, step_0000030 are links" in said, res.output
    assert "step_notes.txt: not named step_N (N: the step); step_0000040: not a folder; step_0000050: state.json " \
        "missing" in said, res.output


def test_incomplete_checkpoints_after_the_newest_complete_one_are_not_written_over(tmp_path):
    """A complete step 10 and an incomplete step 30 (state.json lost, or a link): resuming from step 10 would train
    to 30 and replace it. Refused, naming it; and the checkpoint writer itself never replaces such a folder."""
    run = tmp_path / "run"
    tiny_run(run, "--set", "train.checkpoint_every=10")
    shutil.rmtree(run / "checkpoints" / "step_0000020")
    (run / "checkpoints" / "step_0000030" / "state.json").unlink()
    before = snapshot(run / "checkpoints")
    with pytest.warns(UserWarning, match="missing or incomplete"):  # latest names step_0000030
        res = invoke("run", "--resume", run, "--set", "optimizer.lr=3e-4", "--allow-changes")
    said = " ".join(res.output.split())
    assert res.exit_code == 2 and "holds later checkpoints than its newest complete one (step 10) that are not " \
        "complete (step_0000030: state.json missing); resuming from step 10 would write over them" in said, said
    assert snapshot(run / "checkpoints") == before
    with pytest.raises(advinf.UserError, match=r"step_0000030 is in the way of step 30's checkpoint and is no "
                                               r"complete checkpoint"):
        ckpt.save_checkpoint(run / "checkpoints", 30, {}, {}, keep=3)
    assert snapshot(run / "checkpoints") == before


def test_a_sample_picture_that_cannot_be_written_does_not_lose_the_training_since_the_last_checkpoint(tmp_path):
    """A folder where the last step's picture goes (or a full disk): the error is reported, but a checkpoint of
    that step is written first, so that a resume does not train those steps again."""
    run = tmp_path / "run"
    tiny_run(run, "--set", "train.checkpoint_every=10", "--stop-after", "10")
    (run / "samples" / "step_0000030.png").mkdir()  # TINY: 30 steps, a picture every 15
    res = invoke("run", "--resume", run)
    assert res.exit_code == 2 and "step_0000030.png" in res.output, res.output
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_0000030"
    assert ckpt.load_checkpoint(run / "checkpoints" / "step_0000030").step == 30


def test_a_reader_that_goes_away_does_not_end_the_training(tmp_path):
    """``advinf run ... 2>&1 | head -n 1``: the log lines stop, the run trains to its end and keeps its checkpoint
    (it ended with exit status 1 and nothing saved)."""
    run = tmp_path / "run"
    args = [sys.executable, "-m", "advinf", "run", str(ALI), "--out", str(run), *sets(TINY + TINY_ENCODER),
            "--set", "train.log_every=1", "--progress", "lines"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=cli_env())
    proc.stdout.readline()
    proc.stdout.close()  # as head does after its line
    assert proc.wait(timeout=240) == 0  # a complete run: status 0, though its last messages found no reader
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_0000030"
    assert (run / "eval.json").is_file()


def test_picture_and_folder_outputs_refuse_paths_that_would_destroy_or_cannot_be(tmp_path):
    run = tmp_path / "run"
    tiny_run(run)
    (tmp_path / "afile.txt").write_text("mine")
    (tmp_path / "adir.png").mkdir()
    recipe = (run / "recipe.toml").read_bytes()
    cases = [(("sample", run, "--out", run / "recipe.toml"), "give a file name ending in .png"),
             (("reconstruct", run, "--out", tmp_path / "afile.txt"), "give a file name ending in .png"),
             (("plot", run, "--out", tmp_path / "adir.png"), "is a directory"),
             (("interpolate", run, "--out", tmp_path / "afile.txt" / "x.png"), "afile.txt is a file, not a folder"),
             (("compare", run, "--out", tmp_path / "afile.txt"), "afile.txt is a file, not a folder"),
             (("sample", run, "--seed", str(2**70)), "not in the range"),
             (("sample", run, "--count", str(10**8)), "not in the range 1<=x<=10000")]  # memory ran out
    for args, message in cases:
        res = invoke(*args)
        assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output, (args, res.output)
    assert (run / "recipe.toml").read_bytes() == recipe and (tmp_path / "afile.txt").read_text() == "mine"
    ok = invoke("sample", run, "--out", tmp_path / "new" / "S.PNG")  # a new folder is fine, and any case of .png
    assert ok.exit_code == 0 and (tmp_path / "new" / "S.PNG").is_file(), ok.output


def test_options_that_would_do_nothing_or_the_wrong_thing_are_refused(tmp_path):
    run = tmp_path / "run"
    tiny_run(run)
    cases = [(("run", ALI, "--allow-changes", "--out", tmp_path / "new"), "--allow-changes goes with --resume"),
             (("run", ALI, "--allow-changes", "--seeds", "0", "--out", tmp_path / "new"), "goes with --resume"),
             (("evaluate", run, "--with", ""), "--with names no evaluator"),
             (("run", run), "is a directory, not a recipe file; to continue the run there: advinf run --resume"),
             (("validate", tmp_path), "is a directory, not a recipe file"),
             (("run", "--resume", tmp_path / "nope"), "no such run directory"),
             (("run", ALI, "--resume"), "needs the run to continue"),
             (("validate", RECIPES / "ali_svhn.toml", "--set", "dataset.root=''"), "dataset.root")]
    for args, message in cases:
        res = invoke(*args)
        assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output, (args, res.output)
    assert not (tmp_path / "new").exists()
    tiny_run(tmp_path / "half", "--stop-after", "10")
    before = snapshot(tmp_path / "half")
    res = invoke("run", "--resume", tmp_path / "half", "--stop-after", "5")  # "trained 0 steps", exit 0, before
    assert res.exit_code == 2 and "is already at step 10; give a later step" in res.output
    assert snapshot(tmp_path / "half") == before


def test_files_and_folders_of_a_run_get_the_usual_permissions(tmp_path):
    """Atomic writes go through private temporary files (0600) and folders (0700): what they become must have
    the mode the umask gives (0644 and 0755 with umask 022), or a shared run is unreadable to the group; an
    existing file keeps its own mode when rewritten."""
    import os
    import stat

    old = os.umask(0o027)  # not the usual 022: the modes must come from the umask, not be written in
    try:
        run = tmp_path / "run"
        tiny_run(run, "--set", "train.checkpoint_every=10")
        files = [run / "recipe.toml", run / "eval.json", *run.glob("samples/*.png"),
                 *run.glob("checkpoints/step_*/*"), run / "checkpoints" / "latest"]
        assert len(files) > 6
        modes = {str(p.relative_to(run)): oct(stat.S_IMODE(p.stat().st_mode)) for p in files}
        assert set(modes.values()) == {"0o640"}, modes
        folders = {str(p.relative_to(run)): oct(stat.S_IMODE(p.stat().st_mode)) for p in run.glob("checkpoints/*/")}
        assert set(folders.values()) == {"0o750"}, folders
        for mode in (0o604, 0o444):  # a rewritten file keeps its mode, a read-only one too
            (run / "eval.json").chmod(mode)
            assert invoke("evaluate", run).exit_code == 0
            assert stat.S_IMODE((run / "eval.json").stat().st_mode) == mode
    finally:
        os.umask(old)


def test_a_run_whose_stored_recipe_fails_todays_checks_opens_with_its_fixed_recipe_toml(tmp_path):
    """A run written by an older advinf may hold a recipe this one refuses (an option since renamed). Its
    checkpoint is checksummed and cannot be fixed, so sample and evaluate use RUN/recipe.toml once it passes,
    with a warning; while it does not, the message names both sources and what to do."""
    from advinf import checkpoint as ckpt

    run = tmp_path / "run"
    tiny_run(run)
    state_path = next(run.glob("checkpoints/step_*/state.json"))
    state = json.loads(state_path.read_text())
    state["recipe"]["encoder"]["hiden"] = 400  # as if an older advinf had spelled the option so
    state["state_checksum"] = ckpt._state_checksum(state)  # noqa: SLF001 (what that advinf would have written)
    state_path.write_text(json.dumps(state))
    recipe = run / "recipe.toml"
    good = recipe.read_text()
    recipe.write_text(good.replace("[encoder]\n", "[encoder]\nhiden = 400\n", 1))
    res = invoke("sample", run, "--out", tmp_path / "s.png")
    said = " ".join(res.output.split())
    assert res.exit_code == 2 and f"{state_path}: 1 problem" in said and "encoder.hiden" in said, res.output
    assert f"Fix those keys in {recipe}, which is used instead once it passes them; now it does not" in said
    assert "Traceback" not in res.output and not (tmp_path / "s.png").exists()
    recipe.write_text(good)  # fixed
    with pytest.warns(UserWarning, match=r"fails this advinf's checks \(encoder.hiden: .*\); using .*recipe.toml"):
        res = invoke("sample", run, "--out", tmp_path / "s.png")
    assert res.exit_code == 0 and (tmp_path / "s.png").is_file(), res.output
    # a recipe.toml that differs elsewhere would put the weights into another model: refused
    recipe.write_text(good.replace('[prior]\nname = "gaussian"', '[prior]\nname = "uniform"', 1))
    assert 'name = "uniform"' in recipe.read_text()
    res = invoke("sample", run, "--out", tmp_path / "t.png")
    said = " ".join(res.output.split())
    assert res.exit_code == 2 and "differs from it in more than those sections: prior.name" in said, res.output
    assert "make" in said and not (tmp_path / "t.png").exists()
    # a component this machine lacks: no recipe.toml stands in for it
    recipe.write_text(good)
    state["recipe"]["prior"]["name"] = "fancy_prior"
    state["state_checksum"] = ckpt._state_checksum(state)  # noqa: SLF001
    state_path.write_text(json.dumps(state))
    res = invoke("sample", run, "--out", tmp_path / "t.png")
    said = " ".join(res.output.split())
    assert res.exit_code == 2 and "prior.name" in said and "fancy_prior" in said, res.output
    assert "used instead" not in said and not (tmp_path / "t.png").exists()


def test_a_folder_in_place_of_the_metrics_file_is_named_not_taken_for_no_metrics(tmp_path):
    run = tmp_path / "run"
    tiny_run(run)
    (run / "metrics.jsonl").unlink()
    (run / "metrics.jsonl").mkdir()
    res = invoke("plot", run)
    assert res.exit_code == 2 and f"{run / 'metrics.jsonl'} is not a regular file" in res.output, res.output
    (run / "metrics.jsonl").rmdir()
    (run / "metrics.jsonl").symlink_to(tmp_path / "nowhere")
    res = invoke("plot", run)
    assert res.exit_code == 2 and "metrics.jsonl is a symbolic link: advinf never follows links" in res.output
    (run / "metrics.jsonl").unlink()
    write(tmp_path / "elsewhere.jsonl", '{"step": 1, "loss_critic": 1.0}\n')
    (run / "metrics.jsonl").symlink_to(tmp_path / "elsewhere.jsonl")  # read through it, before
    res = invoke("plot", run)
    assert res.exit_code == 2 and "metrics.jsonl is a symbolic link" in res.output, res.output


DEEP = "[" * 100_000 + "]" * 100_000  # parseable by nothing recursive


@pytest.mark.parametrize("place,command,expected", [
    ("eval.json", ("compare",), "eval.json cannot be read as JSON (nested too deeply"),
    ("eval.json", ("evaluate",), "eval.json cannot be read as JSON (nested too deeply"),
    ("checkpoints/step_0000030/state.json", ("sample",), "state.json"),
    ("metrics.jsonl", ("plot",), "has no metrics to plot yet"),  # the line is skipped as a torn one
])
def test_run_files_nested_too_deeply_are_malformed_not_a_recursion_error(tmp_path, place, command, expected):
    run = tmp_path / "run"
    tiny_run(run)
    (run / place).write_text(DEEP)
    out = {"compare": ["--out", tmp_path / "out"], "sample": ["--out", tmp_path / "s.png"]}.get(command[0], [])
    res = invoke(*command, run, *out)
    assert res.exit_code == 2 and expected in res.output and "Traceback" not in res.output, res.output


def test_a_recipe_nested_too_deeply_is_malformed_not_a_recursion_error(tmp_path):
    for body in ("x = " + DEEP, "[" + ".".join(["a"] * 800) + "]\nb = 1"):
        recipe = write(tmp_path / "deep.toml", body + "\n" + ALI.read_text())
        res = invoke("validate", recipe)
        assert res.exit_code == 2 and "(TOML syntax): " in res.output and "nested" in res.output, res.output


def test_validate_and_bench_take_plugins_as_run_does(tmp_path):
    """A recipe naming a component of a local plugin it does not list: --plugin PATH (was 'No such option')."""
    from advinf.plugins import reset_default_host

    write(tmp_path / "mark.py", MARKING_PLUGIN)
    recipe = write(tmp_path / "r.toml", ALI.read_text().replace('name = "gaussian"', 'name = "marked_prior"'))
    try:
        res = invoke("validate", recipe)
        assert res.exit_code == 2 and "prior.name: unknown prior (got 'marked_prior')" in res.output
        res = invoke("validate", recipe, "--plugin", tmp_path / "mark.py")
        assert res.exit_code == 0, res.output
        assert 'name = "marked_prior"' in res.output
        reset_default_host()
        res = invoke("bench", recipe, "--plugin", tmp_path / "mark.py", "--steps", "1", "--warmup", "1",
                     "--repeats", "1", "--set", "train.batch_size=8", "--json")
        assert res.exit_code == 0, res.output
    finally:
        reset_default_host()


@pytest.mark.parametrize("planted", ["checkpoints", "metrics.jsonl", "metrics.csv.tmp", "tensorboard",
                                     ".advinf-write-test-{pid}"])
def test_a_run_directory_handed_over_with_links_in_it_writes_nothing_through_them(tmp_path, planted):
    """A crafted run directory must not make `advinf run --resume` write, empty or delete files elsewhere: a
    linked checkpoints/ (old checkpoints pruned there), a dangling metrics.jsonl (created where it points), a link
    under a fixed temporary name (the csv logger's), the write test's name. Every link in it is refused."""
    import os

    run = tmp_path / "run"
    tiny_run(run, "--set", "train.checkpoint_every=10", "--stop-after", "20")
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("mine")
    before = snapshot(victim)
    if planted == "checkpoints":
        (run / "checkpoints").rename(victim / "checkpoints")
        (run / "checkpoints").symlink_to(victim / "checkpoints", target_is_directory=True)
        before = snapshot(victim)
    elif planted == "metrics.jsonl":
        (run / planted).unlink()
        (run / planted).symlink_to(victim / "created.txt")
    elif planted == "tensorboard":
        (run / planted).symlink_to(victim, target_is_directory=True)
    else:
        for pid in {os.getpid(), os.getpid() + 1} if "pid" in planted else {0}:
            (run / planted.format(pid=pid)).symlink_to(victim / "precious.txt")
    res = invoke("run", "--resume", run, "--set", "train.keep_checkpoints=1", "--allow-changes")
    assert res.exit_code == 2 and "symbolic link" in res.output and "never follows links" in res.output, res.output
    assert "Traceback" not in res.output
    assert snapshot(victim) == before


def test_run_files_are_read_and_appended_only_as_regular_files(tmp_path):
    """A FIFO in place of eval.json made `advinf evaluate` and `plot` wait forever; a link in place of a logger's
    file was appended to wherever it pointed."""
    import os

    from advinf.atomic import open_append, read_text, regular_file
    from advinf.rundir import read_eval

    fifo = tmp_path / "eval.json"
    os.mkfifo(fifo)
    with pytest.raises(advinf.UserError, match="eval.json is not a regular file"):
        read_eval(fifo)
    with pytest.raises(advinf.UserError, match="is not a regular file"):
        read_text(fifo)
    with pytest.raises(advinf.UserError, match="is not a regular file"), open_append(fifo):
        pass
    target, link = tmp_path / "target.txt", tmp_path / "link.txt"
    target.write_text("x")
    link.symlink_to(target)
    for call in (lambda: regular_file(link), lambda: read_text(link), lambda: open_append(link).__enter__()):
        with pytest.raises(advinf.UserError, match="link.txt is a symbolic link"):
            call()
    assert target.read_text() == "x" and not regular_file(tmp_path / "absent") and regular_file(target)
    with open_append(tmp_path / "new.txt") as fh:
        fh.write("a\n")
    assert read_text(tmp_path / "new.txt") == "a\n"


def test_the_csv_logger_writes_through_no_planted_link(tmp_path):
    from advinf_plugins.loggers import CsvLogger, _write_csv

    victim = tmp_path / "victim.txt"
    victim.write_text("mine")
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.csv.tmp").symlink_to(victim)  # the fixed temporary name it used
    _write_csv(run / "metrics.csv", ["step", "loss"], [{"step": "1", "loss": "0.5"}])
    assert victim.read_text() == "mine" and (run / "metrics.csv").read_text().splitlines() == ["step,loss", "1,0.5"]
    (run / "metrics.csv").unlink()
    (run / "metrics.csv").symlink_to(victim)
    logger = CsvLogger()
    with pytest.raises(advinf.UserError, match="metrics.csv is a symbolic link"):
        logger.open(run, 0)
    assert victim.read_text() == "mine"


@pytest.mark.parametrize("sig,code,said", [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")])
def test_a_signal_while_torch_is_imported_at_start_up_ends_cleanly(tmp_path, sig, code, said):
    """In the first second of `advinf run` torch is being imported: a signal then unwound the half-done import and
    ended in tracebacks ("partially initialized module 'torch'") or a segmentation fault. It is held until the
    import is over, then ends the command as anywhere else, and no run directory is left."""
    tested = 0
    for delay in (0.15, 0.4, 0.7, 1.0, 1.5):
        out = tmp_path / f"run_{delay}"
        proc = subprocess.Popen([sys.executable, "-m", "advinf", "run", str(ALI), "--out", str(out),
                                 *sets(TINY + TINY_ENCODER)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=cli_env())
        time.sleep(delay)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
        # nothing to learn from this delay: a fast machine finished first, or on a loaded one the signal came
        # before advinf's handlers were installed (Python still starting: its own default ends the process)
        if proc.returncode in (0, -sig):
            continue
        tested += 1
        assert proc.returncode == code and said in err and "Traceback" not in err, (delay, proc.returncode, err)
        assert not out.exists() or any(out.iterdir()) and (out / "checkpoints").exists(), delay
    assert tested, "every signal came before advinf's handlers or after the run: no delay tested"


def test_a_signal_still_stops_a_command_stuck_importing_a_plugin(tmp_path):
    """Only torch's own import holds a signal back: one arriving while a plugin's import hangs ends the command
    (held for every import, it was never raised, and the process had to be killed)."""
    hang = write(tmp_path / "hang.py", "import time\nwhile True:\n    time.sleep(0.05)\n")
    proc = subprocess.Popen([sys.executable, "-m", "advinf", "list-plugins", "--plugin", str(hang)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env())
    time.sleep(3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 143 and "terminated" in err and "Traceback" not in err, err


FAILS_AT_THE_FIRST_STEP = """
from advinf import hookimpl
from advinf_plugins.games import JointGame, JointGameOptions

class FailsAtTheFirstStep(JointGame):
    calls = 0

    def losses(self, nets, batch):
        FailsAtTheFirstStep.calls += 1
        if FailsAtTheFirstStep.calls == 2:  # the trial step's pass is the first
            raise RuntimeError("boom at the first step")
        return super().losses(nets, batch)

@hookimpl
def register_games(register):
    register("fails_first_step", lambda options, ctx: FailsAtTheFirstStep(options, stochastic=True), JointGameOptions)
"""


def test_a_run_that_fails_before_its_first_update_leaves_no_run_directory(tmp_path):
    """A compile error (say) at the first step left recipe.toml and the step-0 pictures, a 'run' that `advinf run`
    then refused to write into and that `--resume` would start again from nothing."""
    plugin = write(tmp_path / "fails.py", FAILS_AT_THE_FIRST_STEP)
    out = tmp_path / "run"
    res = invoke("run", ALI, "--out", out, "--plugin", plugin, "--set", "game.name='fails_first_step'",
                 *sets(TINY + TINY_ENCODER))
    assert res.exit_code != 0 and "boom at the first step" in str(res.exception), res.output
    assert not out.exists()


def test_stop_after_past_the_last_step_says_it_stops_nothing(tmp_path):
    res = tiny_run(tmp_path / "run", "--stop-after", "500")  # the tiny run has 30 steps
    assert "note: --stop-after 500 is at or past the run's last step (30): it trains to its end" in res.output
    assert "trained 30 steps" in res.output
