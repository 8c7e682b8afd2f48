"""Games as data: players, extra networks, frozen and pre-initialised networks, streams, the run session."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import RECIPES, ROOT, write

import advinf
from advinf import Batch, BatchSource, Networks, Stream, UserError
from advinf import checkpoint as ckpt
from advinf.batches import IndexSampler
from advinf.cli import cli
from advinf_plugins.games import JointGame, JointGameOptions

PLUGIN = ROOT / "tests" / "plugins" / "custom_games.py"

BASE = f"""
name = "custom"
seed = 0
plugins = ["{PLUGIN}"]
[dataset]
name = "mixture25"
samples = 2000
heldout = 500
[prior]
name = "gaussian"
dim = 2
[encoder]
name = "toy_encoder"
hidden = 32
[decoder]
name = "toy_decoder"
hidden = 32
[optimizer]
name = "adam"
lr = 1e-3
betas = [0.5, 0.999]
[train]
steps = 20
batch_size = 50
log_every = 10
sample_every = 10
progress = "none"
threads = 1
[evaluators.mode_coverage]
samples = 500
plot_points = 100
"""
CRITIC = '\n[critic]\nname = "toy_critic"\nhidden = 16\n'
CYCLE = '\n[networks.cycle_critic]\nkind = "critic"\nname = "toy_critic"\nhidden = 8\n'


def recipe(tmp_path: Path, game: str, *parts: str, name: str = "r.toml") -> Path:
    return write(tmp_path / name, BASE + "".join(parts) + f'\n[game]\nname = "{game}"\n')


def run(*args: str):
    return CliRunner().invoke(cli, ["run", *map(str, args)])


def metrics(out: Path) -> list[dict]:
    return [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]


def test_a_one_player_game_without_a_critic_trains_through_the_cli(tmp_path):
    out = tmp_path / "vae"
    res = run(recipe(tmp_path, "vae_style"), "--out", out)
    assert res.exit_code == 0, res.output
    records = metrics(out)
    assert [r["step"] for r in records] == [10, 20]
    assert set(records[-1]) >= {"loss_autoencoder", "reconstruction"} and "loss_critic" not in records[-1]
    assert records[-1]["reconstruction"] < records[0]["reconstruction"] * 1.5
    tensors = ckpt.load_checkpoint(ckpt.latest_checkpoint(out / "checkpoints")).tensors
    assert {k.split("/")[0] for k in tensors["optim"]} == {"autoencoder"}
    assert {k.split(".")[0] for k in tensors["model"]} == {"encoder", "decoder"}
    assert json.loads((out / "eval.json").read_text())["mode_coverage"]["modes_total"] == 25
    loaded = advinf.load_run(out, device="cpu")
    assert loaded.critic is None and loaded.sample(4).shape == (4, 2)


def test_a_game_with_a_network_of_its_own_trains_and_resumes_exactly(tmp_path):
    path = recipe(tmp_path, "ali_cycle", CRITIC, CYCLE, "\n[optimizers.cycle_critic]\nlr = 2e-3\n")
    full, sliced = tmp_path / "full", tmp_path / "sliced"
    assert run(path, "--out", full).exit_code == 0
    assert run(path, "--out", sliced, "--stop-after", "7").exit_code == 0
    res = run("--resume", sliced)  # the run's own saved recipe
    assert res.exit_code == 0, res.output
    assert set(metrics(full)[-1]) >= {"loss_critic", "loss_cycle_critic", "loss_generator"}
    a, b = (ckpt.load_checkpoint(ckpt.latest_checkpoint(p / "checkpoints")).tensors for p in (full, sliced))
    assert {k.split("/")[0] for k in a["optim"]} == {"critic", "cycle_critic", "generator"}
    assert any(k.startswith("cycle_critic.") for k in a["model"])
    for part in ("model", "optim"):
        assert a[part].keys() == b[part].keys()
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part])
    state = ckpt.load_checkpoint(ckpt.latest_checkpoint(full / "checkpoints")).state
    assert state["optimizers"]["cycle_critic"]["param_groups"][0]["lr"] == 2e-3
    assert state["optimizers"]["critic"]["param_groups"][0]["lr"] == 1e-3  # the shared default


def test_alternating_steps_every_critic_side_player_n_times():
    from test_train import tiny_data, tiny_nets

    from advinf_plugins.toy_networks import CriticOptions, ToyCritic

    sys.path.insert(0, str(PLUGIN.parent))
    try:
        from custom_games import AliCycle, CycleOptions
    finally:
        sys.path.pop(0)
    nets = tiny_nets()
    nets["cycle_critic"] = ToyCritic(2, 2, CriticOptions(hidden=4))
    spec = advinf.TrainSpec(steps=2, batch_size=32, update="alternating", critic_steps=3, progress="none")
    trainer = advinf.Trainer(nets, AliCycle(CycleOptions()), tiny_data(), train=spec, device="cpu")
    trainer.fit()
    steps = {name: int(opt.state[opt.param_groups[0]["params"][0]]["step"])
             for name, opt in trainer.optimizers.items()}
    assert steps == {"critic": 6, "cycle_critic": 6, "generator": 2}


def test_the_recipe_must_fit_the_game(tmp_path):
    cases = [
        (recipe(tmp_path, "vae_style", CRITIC, name="a.toml"),
         "critic: game 'vae_style' does not use a network 'critic'; remove the [critic] section"),
        (recipe(tmp_path, "ali_cycle", CRITIC, name="b.toml"),
         "networks.cycle_critic: missing: game 'ali_cycle' needs a critic network 'cycle_critic'; add a "
         '[networks.cycle_critic] section with kind = "critic"'),
        (recipe(tmp_path, "ali", CRITIC, "\n[optimizers.critc]\nlr = 1e-3\n", name="c.toml"),
         "optimizers.critc: game 'ali' has no player 'critc'; did you mean 'critic'?"),
        (recipe(tmp_path, "ali_cycle", CRITIC, CYCLE.replace('"critic"', '"bogus"', 1), name="d.toml"),
         "networks.cycle_critic.kind: missing or unknown network kind (got 'bogus'); give one of"),
        (recipe(tmp_path, "ali", CRITIC.replace("hidden = 16", "trainable = 1"), name="e.toml"),
         "critic.trainable: Input should be a valid boolean"),
        (recipe(tmp_path, "ali", CRITIC.replace("hidden = 16", "trainabel = false"), name="f.toml"),
         "critic.trainabel: unknown option of critic 'toy_critic' (got False); did you mean 'trainable'?"),
    ]
    for path, expected in cases:
        res = CliRunner().invoke(cli, ["validate", str(path)])
        assert res.exit_code == 2 and expected in res.output, (expected, res.output)
        assert "Traceback" not in res.output


def test_a_critic_of_x_alone_in_a_joint_game_names_the_key_to_set(tmp_path):
    res = CliRunner().invoke(cli, ["run", str(RECIPES / "ali_mixture25.toml"), "--out", str(tmp_path / "r"),
                                   "--set", "critic.joint=false", "--set", "train.steps=2"])
    assert res.exit_code == 2, res.output
    assert "the critic ignores z (uses_z = False): set critic.joint = true" in res.output, res.output
    assert not (tmp_path / "r").exists()


def test_a_frozen_decoder_initialised_from_a_trained_run(tmp_path):
    gan_run, ali_run = tmp_path / "gan", tmp_path / "ali"
    gan = recipe(tmp_path, "gan", CRITIC.replace("hidden = 16", "hidden = 16\njoint = false"), name="gan.toml")
    gan.write_text(gan.read_text().replace('[encoder]\nname = "toy_encoder"\nhidden = 32\n', "")
                   .replace("threads = 1", "threads = 1\nema = 0.9"))
    assert run(gan, "--out", gan_run).exit_code == 0
    post_hoc = recipe(tmp_path, "ali", CRITIC, name="posthoc.toml")
    post_hoc.write_text(post_hoc.read_text().replace(
        '[decoder]\nname = "toy_decoder"\nhidden = 32\n',
        f'[decoder]\nname = "toy_decoder"\nhidden = 32\ntrainable = false\ninit_from = "{gan_run}"\n'))
    res = run(post_hoc, "--out", ali_run)
    assert res.exit_code == 0, res.output
    source = ckpt.load_checkpoint(ckpt.latest_checkpoint(gan_run / "checkpoints")).tensors["model"]
    after = ckpt.load_checkpoint(ckpt.latest_checkpoint(ali_run / "checkpoints")).tensors
    for key, value in after["model"].items():
        if key.startswith("decoder."):  # the GAN's moving-average decoder, untouched by training
            assert torch.equal(value, source["ema_decoder.module." + key.removeprefix("decoder.")]), key
    assert not any(k.startswith("generator/decoder.") for k in after["optim"])  # no optimiser state: frozen
    assert any(k.startswith("generator/encoder.") for k in after["optim"])
    assert not any(k.startswith("ema_decoder") for k in after["model"])
    assert not advinf.load_run(ali_run, device="cpu").decoder.training

    wider = post_hoc.read_text().replace("hidden = 32\ntrainable", "hidden = 48\ntrainable")
    res = run(write(tmp_path / "wider.toml", wider), "--out", tmp_path / "x")
    assert res.exit_code == 2 and "decoder.init_from: " in res.output and "does not fit" in res.output
    assert "net.0.weight" in res.output and "Traceback" not in res.output
    res = run(write(tmp_path / "nowhere.toml", post_hoc.read_text().replace(str(gan_run), str(tmp_path))),
              "--out", tmp_path / "y")
    assert res.exit_code == 2 and "decoder.init_from: not an advinf run directory" in res.output


def test_labels_never_reach_an_unconditional_game_s_networks():
    from test_train import tiny_data, tiny_nets

    seen = []

    def spy(module):
        original = module.forward

        def forward(*args, **kwargs):
            seen.append(args[1] if len(args) > 1 else kwargs.get("y"))
            return original(*args, **kwargs)
        module.forward = forward

    nets = tiny_nets()
    for name in ("encoder", "decoder"):
        spy(nets[name])
    game = JointGame(JointGameOptions(), stochastic=True)
    data = tiny_data()
    assert data.train.y is not None  # the mixture has labels (its components)
    game.losses(nets, Batch(data.train.x[:16], data.train.y[:16]))
    assert seen == [None, None]


def test_a_game_reads_a_second_labelled_stream_and_it_resumes_exactly():
    from test_train import tiny_data, tiny_nets

    sys.path.insert(0, str(PLUGIN.parent))
    try:
        from custom_games import LabelledStream
    finally:
        sys.path.pop(0)
    data = tiny_data()
    LabelledStream.seen.clear()
    trainer = advinf.Trainer(tiny_nets(), LabelledStream(), data, train=advinf.TrainSpec(steps=3, batch_size=32),
                             device="cpu")
    trainer.train_step()
    assert LabelledStream.seen[-1].shape == (8,) and bool((LabelledStream.seen[-1] == 0).all())

    source = BatchSource(data, 32, torch.device("cpu"), 5, LabelledStream.streams)
    for _ in range(5):
        source.next()
    state = json.loads(json.dumps(source.state()))  # what a checkpoint stores
    ahead = [source.next() for _ in range(4)]
    again = BatchSource(data, 32, torch.device("cpu"), 5, LabelledStream.streams)
    again.load_state(state)
    for a, b in zip(ahead, [again.next() for _ in range(4)], strict=True):
        assert torch.equal(a.x, b.x) and torch.equal(a.streams["labelled"].x, b.streams["labelled"].x)
    unlabelled = advinf.Dataset(advinf.Split(data.train.x))
    with pytest.raises(UserError, match="labelled stream 'labelled', but the dataset's training split has no labels"):
        BatchSource(unlabelled, 32, torch.device("cpu"), 0, LabelledStream.streams)


def test_each_rank_draws_its_own_shard_of_every_global_batch():
    samplers = [IndexSampler(100, 10, torch.device("cpu"), 3, rank=r, world_size=4) for r in range(4)]
    single = IndexSampler(100, 40, torch.device("cpu"), 3)
    for _ in range(5):  # crosses an epoch boundary (2 global batches of 40 per epoch)
        shards = [s.next() for s in samplers]
        assert torch.equal(torch.cat(shards), single.next())
    assert samplers[0].epoch == 2 and samplers[0].steps_per_epoch == 2
    with pytest.raises(UserError, match="10 x 11 ranks is larger than the training split"):
        IndexSampler(100, 10, torch.device("cpu"), 0, rank=0, world_size=11)


def test_evaluators_every_n_steps_and_a_resume_rewinds_them(tmp_path):
    path = recipe(tmp_path, "ali", CRITIC)
    path.write_text(path.read_text().replace("[evaluators.mode_coverage]\n", "[evaluators.mode_coverage]\nevery = 5\n"))
    out = tmp_path / "run"
    assert run(path, "--out", out, "--stop-after", "12").exit_code == 0
    lines = [json.loads(ln) for ln in (out / "evals.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [5, 10] and "modes_covered" in lines[0]["mode_coverage"]
    assert run("--resume", out).exit_code == 0
    lines = [json.loads(ln) for ln in (out / "evals.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [5, 10, 15]  # step 20 is the final evaluation: eval.json
    assert "modes_covered" in json.loads((out / "eval.json").read_text())["mode_coverage"]


def test_evaluating_during_training_does_not_change_the_training(tmp_path):
    path = recipe(tmp_path, "ali", CRITIC)
    every = write(tmp_path / "every.toml", path.read_text().replace("[evaluators.mode_coverage]\n",
                                                                    "[evaluators.mode_coverage]\nevery = 3\n"))
    assert run(path, "--out", tmp_path / "a").exit_code == 0
    assert run(every, "--out", tmp_path / "b").exit_code == 0
    a, b = (ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path / p / "checkpoints")).tensors["model"]
            for p in ("a", "b"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_by_run_directory_alone(tmp_path):
    out = tmp_path / "run"
    assert run(recipe(tmp_path, "ali", CRITIC), "--out", out, "--stop-after", "5").exit_code == 0
    res = run("--resume", out, "--set", "train.steps=30")
    assert res.exit_code == 2 and "differs from the one" in res.output and "train.steps" in res.output
    res = run("--resume", out, "--set", "train.steps=30", "--allow-changes")
    assert res.exit_code == 0, res.output
    assert metrics(out)[-1]["step"] == 30 and "steps = 30" in (out / "recipe.toml").read_text()
    res = run("--resume")
    assert res.exit_code == 2 and "--resume needs the run directory" in res.output
    res = run()
    assert res.exit_code == 2 and "give a RECIPE" in res.output


def test_the_run_session_is_the_library_s_entry_point(tmp_path):
    outcome = advinf.run_recipe(recipe(tmp_path, "ali", CRITIC), out=tmp_path / "run", log=lambda m: None)
    assert outcome.result.steps == 20 and outcome.result.stopped is None
    assert outcome.run_dir == tmp_path / "run" and (tmp_path / "run" / "eval.json").is_file()
    again = advinf.run_recipe(None, out=tmp_path / "run", resume=True, overrides=["train.steps=25"],
                              allow_changes=True, log=lambda m: None)
    assert again.resumed_from == 20 and again.trainer.step == 25


def test_networks_are_a_mapping_with_well_known_names():
    from test_train import tiny_nets

    nets = tiny_nets()
    assert list(nets) == ["encoder", "decoder", "critic"] and nets.critic is nets["critic"]
    extra = torch.nn.Linear(2, 2)
    nets["head"] = extra
    nets.freeze("head")
    assert nets.parameters(["head"]) == [] and not extra.training
    nets.train(True)
    assert not extra.training and nets.encoder.training
    with pytest.raises(TypeError, match="must be a torch.nn.Module"):
        nets["bad"] = "not a module"
    assert Networks(nets.prior, decoder=nets.decoder).encoder is None


def test_bench_ships_with_the_package(tmp_path):
    """advinf bench imports advinf_benchmarks, which a (non-editable) wheel of advinf contains."""
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    wheel = next(tmp_path.glob("advinf-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert {"advinf_benchmarks/bench.py", "advinf_benchmarks/plain_loop.py", "advinf/session.py"} <= set(names)
    assert not any(name.startswith("benchmarks/") for name in names)


def test_stream_spec_validation():
    data = advinf.Dataset(advinf.Split(torch.zeros(10, 2), torch.zeros(10, dtype=torch.long)))
    with pytest.raises(ValueError, match="used twice"):
        BatchSource(data, 2, torch.device("cpu"), 0, (Stream("x"), Stream("x")))
    with pytest.raises(UserError, match="selected no training examples"):
        BatchSource(data, 2, torch.device("cpu"), 0, (Stream("x", select=lambda split, seed: torch.arange(0)),))
    # what select returns is checked: a mask was read as indices 0 and 1, floats were truncated
    for returned, expected in ((torch.ones(10, dtype=torch.bool), "returned a bool tensor: return the indices"),
                               (torch.tensor([1.5, 2.0]), r"returned float32 of shape \(2,\): give one integer"),
                               ([1, 2], "returned list, not a tensor of example indices"),
                               (torch.tensor([3, 10]), "returned index 10, outside the training split's 10"),
                               (torch.tensor([3, 3]), "returned some indices twice")):
        with pytest.raises(UserError, match=f"stream 'x': select {expected}"):
            BatchSource(data, 2, torch.device("cpu"), 0, (Stream("x", select=lambda split, seed, r=returned: r),))

    def fails(split, seed):
        raise ValueError("too many labels")

    with pytest.raises(UserError, match=r"stream 'x': select raised ValueError: too many labels \(the game's code\)"):
        BatchSource(data, 2, torch.device("cpu"), 0, (Stream("x", select=fails),))
    masked = Stream("x", select=lambda split, seed: torch.ones(10, dtype=torch.bool))
    with pytest.raises(UserError, match="^game 'mine': stream 'x': select returned a bool tensor"):  # the trainer's
        BatchSource(data, 2, torch.device("cpu"), 0, (masked,), owner="game 'mine'")
    pick = Stream("x", select=lambda split, seed: torch.tensor([1, 4], dtype=torch.int32))
    selected = BatchSource(data, 2, torch.device("cpu"), 0, (pick,))
    assert selected.extra["x"].subset.tolist() == [1, 4] and selected.extra["x"].subset.dtype == torch.int64


def test_a_data_stream_restricts_the_main_stream_and_select_gets_the_run_seed():
    """Stream("data", select=...) makes batch.x draw from a subset; every select gets the run's seed, so two
    streams can split the training examples between them (a labelled subset and the rest)."""
    y = torch.arange(40) % 4
    data = advinf.Dataset(advinf.Split(torch.arange(40, dtype=torch.float32)[:, None], y))
    seeds = []

    def first_ten(split, seed):
        seeds.append(seed)
        return torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:10]

    def the_rest(split, seed):
        seeds.append(seed)
        mask = torch.ones(len(split), dtype=torch.bool)
        mask[first_ten(split, seed)] = False
        return mask.nonzero().flatten()

    streams = (Stream("data", select=the_rest), Stream("labelled", batch_size=5, labelled=True, select=first_ten))
    source = BatchSource(data, 6, torch.device("cpu"), 11, streams)
    assert set(seeds) == {11} and list(source.extra) == ["labelled"] and source.steps_per_epoch == 5
    main, labelled = set(), set()
    for _ in range(10):
        batch = source.next()
        assert batch.x.shape == (6, 1) and batch.streams["labelled"].x.shape == (5, 1)
        main |= set(batch.x.flatten().long().tolist())
        labelled |= set(batch.streams["labelled"].x.flatten().long().tolist())
    assert len(labelled) == 10 and len(main) == 30 and not main & labelled
    first = source.first()
    assert not set(first.x.flatten().long().tolist()) & labelled


def test_recipes_validate_with_their_game():
    for path in sorted(RECIPES.glob("*.toml")):
        advinf.load_recipe(path)


def test_each_forward_pass_says_which_players_it_updates():
    """batch.players: every player in the trial step and under "simultaneous"; under "alternating" the critic
    side on each critic pass and the rest on the last pass of the step (and the trial step tries each side's)."""
    from test_train import tiny_data, tiny_nets

    seen: list[frozenset[str] | None] = []

    class Recording(JointGame):
        def losses(self, nets, batch):
            seen.append(batch.players)
            return super().losses(nets, batch)

    both, critic, generator = frozenset({"critic", "generator"}), frozenset({"critic"}), frozenset({"generator"})
    trial = [both, critic, generator]  # under alternating the trial step also tries each side's pass
    for update, steps, passes in (("simultaneous", 2, [both] * 3), ("alternating", 2, trial + [critic] * 2
                                                                  + [generator] + [critic] * 2 + [generator])):
        seen.clear()
        spec = advinf.TrainSpec(steps=steps, batch_size=32, update=update, critic_steps=2 if update == "alternating"
                                else 1, progress="none", sample_every=0)
        advinf.Trainer(tiny_nets(), Recording(JointGameOptions(), stochastic=True), tiny_data(), train=spec,
                       device="cpu").fit()
        assert seen == passes, update
    assert Batch(torch.zeros(1)).updates("anyone")  # a batch made outside the trainer: every player


ALTERNATING = ["train.update='alternating'", "train.critic_steps=2", "train.steps=3", "train.ema=0"]


@pytest.mark.parametrize("name,sets", [
    ("ali_mixture25", ["game.r1=1.0", "game.instance_noise=0.1", "encoder.hidden=16", "decoder.hidden=16",
                       "critic.hidden=8"]),
    ("gan_mixture25", []),
    ("alice_mixture25", ["encoder.hidden=16", "decoder.hidden=16", "critic.hidden=8"]),
    ("alice_mixture25", ["game.cycle='adversarial'", "networks.cycle_critic.kind='critic'",
                         "networks.cycle_critic.name='toy_pair_critic'", "critic.hidden=8"]),
    ("ali_semisup_digits", ["train.batch_size=20", "game.labels=20", "game.labelled_batch_size=10"]),
])
def test_what_a_pass_skips_for_players_it_does_not_update_changes_no_result(monkeypatch, name, sets):
    """The built-in games build no graph through the generator on a critic pass and skip R1 (and ALICE's l2
    cycle) where no updated player reads them; the weights after alternating steps are those of the same run
    with every pass computing everything (Batch.updates always true), bit for bit. The generator's networks run
    without a graph on the critic's passes. (Bit for bit because these critics draw no random numbers in R1's
    pass: with dropout, the skipped pass shifts the random stream, as docs/recipes.md says.)"""
    from advinf.recipe import load_recipe

    def weights(everything: bool) -> dict[str, torch.Tensor]:
        with monkeypatch.context() as m:
            if everything:
                m.setattr(Batch, "updates", lambda self, player: True)
            rec = load_recipe(RECIPES / f"{name}.toml", [*ALTERNATING, *sets])
            built = advinf.build(rec, evaluators=False, loggers=False)
            graphs: list[tuple[frozenset[str] | None, bool]] = []
            built.nets["decoder"].register_forward_hook(
                lambda module, args, out: graphs.append((passes[-1], out.requires_grad)))
            passes: list[frozenset[str] | None] = []
            real = built.game.losses
            m.setattr(built.game, "losses", lambda nets, batch: (passes.append(batch.players), real(nets, batch))[1])
            advinf.Trainer(built.nets, built.game, built.dataset, train=rec.spec.train, optimizer=rec.spec.optimizer,
                           optimizers=rec.optimizers, seed=rec.spec.seed, condition=built.condition,
                           device="cpu").fit()
            if not everything:  # the decoder's output carries a graph exactly where the generator is updated
                assert [g for _, g in graphs] == ["generator" in p for p, _ in graphs]
                critics = {"critic", "cycle_critic"} & set(built.nets)  # the trial's pass, critics', generator's
                assert {p for p, _ in graphs} == {frozenset(critics | {"generator"}), frozenset(critics),
                                                   frozenset({"generator"})}
            return {f"{n}.{k}": v.clone() for n, module in built.nets.items() for k, v in module.state_dict().items()}

    lean, full = weights(False), weights(True)
    assert lean.keys() == full.keys()
    assert all(torch.equal(lean[k], full[k]) for k in lean), [k for k in lean if not torch.equal(lean[k], full[k])]
