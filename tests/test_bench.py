"""advinf bench: the plain loop does the recipe's maths, and the report has every number the issue asks for."""

from __future__ import annotations

import copy
import json
import re
import statistics

import pytest
import torch
from click.testing import CliRunner
from conftest import RECIPES, TINY, TINY_ENCODER

from advinf.cli import cli
from advinf.plugins import default_host
from advinf.recipe import load_recipe
from advinf_benchmarks.bench import build_for_bench, count_flops, make_plain, make_trainer, peak_flops, untimed_steps
from advinf_benchmarks.plain_loop import DIVERGENCES

FIELDS = ("device", "recipe", "batch_size", "advinf_samples_per_s", "reference_samples_per_s", "speedup",
          "flops_per_sample", "achieved_flops", "peak_flops", "fraction_of_peak")


def _built(*overrides: str, recipe: str = "ali_mixture25.toml", data: str = "auto"):
    rec = load_recipe(RECIPES / recipe, [*TINY, *TINY_ENCODER, "train.batch_size=16", *overrides],
                      host=default_host())
    return build_for_bench(rec, default_host(), data)


def _one_step_each(built, divergence: str | None = None, steps: int = 1):
    """One advinf step and one plain step (or ``steps``) from the same networks, batches and seed."""
    trainer = make_trainer(built)
    plain = make_plain(built, trainer.device, fused=True)  # advinf uses fused Adam: the same arithmetic
    if divergence is not None:
        plain.divergence = DIVERGENCES[divergence]
    initial = copy.deepcopy(plain.critic.state_dict())
    batches = copy.deepcopy(trainer.batches)  # the same batches, in the same order
    torch.manual_seed(3)
    for _ in range(steps):
        plain.step(lambda: batches.next().x)
    torch.manual_seed(3)
    for _ in range(steps):
        trainer.train_step()
    assert any(not torch.equal(v, initial[k]) for k, v in plain.critic.state_dict().items()), "nothing trained"
    return trainer, plain


def _differences(trainer, plain) -> list[str]:
    return [f"{name}.{k}" for name in ("encoder", "decoder", "critic")
            for k, v in trainer.nets[name].state_dict().items()
            if not torch.equal(v, getattr(plain, name).state_dict()[k])]


@pytest.mark.parametrize("overrides", [
    (),
    ("game.divergence='hinge'", "game.joint_batch=false"),
    ("game.name='bigan'", "game.divergence='least_squares'"),
    ("train.update='alternating'", "train.critic_steps=2", "game.divergence='minimax'"),
    ("optimizers.critic.lr=0.01",),
    ("train.autocast='bf16'",),  # the plain loop's forward under the same autocast (it ignored it: fp32)
    # schedules act from the second step on: two steps (the plain loop kept the full rate)
    ("optimizer.schedule.name='linear'", "optimizer.schedule.decay=2", "optimizers.critic.schedule.name='step'",
     "optimizers.critic.schedule.every=1", "optimizers.critic.schedule.gamma=0.5"),
])
def test_one_plain_step_gives_advinf_s_parameters(overrides):
    built, _ = _built(*overrides)
    before = copy.deepcopy(built.nets["critic"].state_dict())
    assert _differences(*_one_step_each(built, steps=2 if any("schedule" in o for o in overrides) else 1)) == []
    # both trained copies: the built networks stay as built, for the next repeat
    assert all(torch.equal(v, before[k]) for k, v in built.nets["critic"].state_dict().items())


@pytest.mark.parametrize("joint,game", [("true", "ali"), ("false", "ali"), ("true", "bigan")])
def test_one_plain_step_gives_advinf_s_parameters_on_the_paper_networks(tmp_path, joint, game):
    """SVHN's networks (batch norm, dropout, spatial z) on random images: one joint critic batch or two, ALI and
    BiGAN (on the toy networks the two coincide: its encoder's draw is its mean)."""
    rec = load_recipe(RECIPES / "ali_svhn.toml", [f"dataset.root={tmp_path}", "train.batch_size=4",
                                                  f"game.joint_batch={joint}", "train.threads=1", f"game.name={game!r}",
                                                  # the recipe's NHWC layout changes the rounding, not the maths
                                                  "train.channels_last=false"], host=default_host())
    built, _ = build_for_bench(rec, default_host(), "random")
    assert _differences(*_one_step_each(built)) == []


@pytest.mark.parametrize("overrides", [(), ("train.update='alternating'", "train.critic_steps=2")])
def test_the_plain_step_does_the_matrix_work_advinf_s_does(overrides):
    """The same parameters could come from more work: the plain loop's generator backward also computed the
    critic's weight gradients and threw them away (16 % more FLOPs on the toy), which flattered the speedup."""
    from torch.utils.flop_counter import FlopCounterMode

    built, _ = _built(*overrides)
    plain = make_plain(built, torch.device("cpu"))
    with FlopCounterMode(display=False) as counter:
        plain.run(built.dataset.train.x, 1, batch_size=16, device=torch.device("cpu"))
    assert counter.get_total_flops() == count_flops(built)


def test_the_plain_step_would_see_a_different_divergence():
    """The equality above is not vacuous: another divergence in the plain loop gives other parameters."""
    built, _ = _built()
    assert _differences(*_one_step_each(built, divergence="hinge"))


def test_flops_are_counted_from_the_networks():
    """Doubling the critic's width roughly doubles and more its share of the count; the count scales with the
    batch (per sample it stays put)."""
    small, _ = _built("critic.hidden=16")
    wide, _ = _built("critic.hidden=64")
    big_batch, _ = _built("critic.hidden=16", "train.batch_size=32")
    f_small, f_wide, f_big = count_flops(small), count_flops(wide), count_flops(big_batch)
    assert 0 < f_small < f_wide
    assert f_big == pytest.approx(2 * f_small, rel=0.01)


def test_a_recorded_step_is_timed_only_once_it_replays():
    """With train.cuda_graph the first WARMUP steps run eagerly and the next one records: none of them is timed."""
    from advinf.capture import WARMUP
    from advinf.settings import TrainSpec

    graph, eager = TrainSpec(steps=1, cuda_graph=True), TrainSpec(steps=1)
    assert untimed_steps(graph, 0) == untimed_steps(graph, 1) == WARMUP + 2
    assert untimed_steps(graph, 20) == 20
    assert untimed_steps(eager, 0) == 0 and untimed_steps(eager, 3) == 3


def test_peak_flops_is_measured():
    peak = peak_flops(torch.device("cpu"), torch.float32, size=128, repeats=2)
    assert 1e6 < peak < 1e14


def test_bench_reports_both_loops_and_the_fraction_of_peak():
    sets = [a for t in TINY + TINY_ENCODER for a in ("--set", t)]
    res = CliRunner().invoke(cli, ["bench", str(RECIPES / "ali_mixture25.toml"), "--steps", "3", "--warmup", "1",
                                   "--repeats", "2", "--json", *sets])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)  # the JSON alone on stdout; a line per repeat on stderr
    assert all(k in out for k in FIELDS), sorted(set(FIELDS) - set(out))
    assert len(out["advinf_ms_all"]) == len(out["reference_ms_all"]) == len(out["peak_flops_all"]) == 2
    progress = [ln for ln in res.stderr.splitlines() if ln.startswith("repeat ")]
    assert [ln.split(":")[0] for ln in progress] == ["repeat 1/2", "repeat 2/2"]
    assert re.fullmatch(r"repeat 2/2: advinf [0-9.]+ ms/step, plain loop [0-9.]+ ms/step, peak [0-9.]+ GFLOP/s",
                        progress[1])
    assert out["peak_flops"] == pytest.approx(statistics.median(out["peak_flops_all"]))
    assert out["speedup"] == pytest.approx(out["reference_ms_per_step"] / out["advinf_ms_per_step"])
    assert out["achieved_flops"] == pytest.approx(out["flops_per_sample"] * out["advinf_samples_per_s"])
    assert out["fraction_of_peak"] == pytest.approx(out["achieved_flops"] / out["peak_flops"])
    assert out["device"] == "cpu" and out["data"] == "recipe" and out["batch_size"] == 100


def test_bench_falls_back_to_random_data_shaped_like_the_recipe_s(tmp_path):
    """ali_svhn without its data on the machine: random uint8 images of the decoder's output shape."""
    rec = load_recipe(RECIPES / "ali_svhn.toml", [f"dataset.root={tmp_path / 'absent'}"], host=default_host())
    built, why = build_for_bench(rec, default_host(), "auto")
    assert why is not None and "dataset" in why
    x = built.dataset.train.x
    assert x.dtype == torch.uint8 and tuple(x.shape[1:]) == (3, 32, 32)
    with pytest.raises(Exception, match="dataset"):
        build_for_bench(rec, default_host(), "recipe")


def test_bench_refuses_critic_regularisers_the_plain_loop_lacks():
    from advinf import UserError
    from advinf_benchmarks.bench import check_game

    with pytest.raises(UserError, match="no critic regularisers; this recipe sets game.label_smoothing, game.r1"):
        check_game(_built("game.label_smoothing=0.1", "game.r1=1.0")[0])
    with pytest.raises(UserError, match="this recipe's game, 'gan', is another kind"):  # named, not "another kind"
        check_game(build_for_bench(load_recipe(RECIPES / "gan_mixture25.toml", list(TINY), host=default_host()),
                                   default_host())[0])
    for weight in ("1.0", "0"):  # ALICE: the generator's loss has a term more (computed even at weight 0)
        with pytest.raises(UserError, match="no cycle term"):
            check_game(_built(f"game.weight={weight}", recipe="alice_mixture25.toml")[0])
    built, _ = _built("critic.spectral_norm=true")  # the same networks in both loops: allowed
    check_game(built)
    assert _differences(*_one_step_each(built)) == []


def test_options_compares_configurations_in_one_process(capsys):
    """Each configuration's numbers are its own: its FLOPs and batch (a batch of 32 against 16 did the first's
    work at twice the batch), and the peak of its own precision (a bf16 step against the fp32 peak)."""
    from advinf_benchmarks.options import compare, main

    sets = [a for t in TINY + TINY_ENCODER for a in ("--set", t)]
    main([str(RECIPES / "ali_mixture25.toml"), "--config", "base=", "--config",
          "foreach=optimizer.fused=false,train.channels_last=true", "--steps", "2", "--warmup", "1", "--repeats", "2",
          *sets])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("threads=1; each configuration's % of peak is of the matrix-product peak in its own")
    assert [ln.split()[0] for ln in lines[1:]] == ["base", "foreach"] and "x1.000 per sample" in lines[1]
    out = compare(str(RECIPES / "ali_mixture25.toml"), {"a": [], "b32": ["train.batch_size=32"],
                                                         "bf16": ["train.autocast='bf16'"]},
                  [*TINY, *TINY_ENCODER, "train.batch_size=16"], steps=1, warmup=1, repeats=1)
    a, b32, bf16 = (out["configs"][k] for k in ("a", "b32", "bf16"))
    assert (a["batch_size"], b32["batch_size"]) == (16, 32)
    assert b32["flops_per_step"] == pytest.approx(2 * a["flops_per_step"], rel=0.01)
    assert (a["precision"], bf16["precision"]) == ("float32", "bfloat16") and bf16["peaks"] != a["peaks"]


def test_the_projection_reads_bench_reports(tmp_path, capsys):
    """benchmarks/gpu_check.sh's last step: a report's step time times the schedule's steps."""
    from advinf_benchmarks.project import main, projection

    report = {"recipe": "ali_svhn", "device": "cuda", "device_name": "GPU", "advinf_samples_per_s": 10_000.0,
              "speedup": 2.0, "fraction_of_peak": 0.25, "advinf_ms_per_step": 10.0,
              "options": {"cuda_graph": True, "autocast": "bf16", "compile": False}}
    p = projection(report, 531_000)
    assert p["projected_seconds"] == pytest.approx(5310.0)
    assert p["options"] == {"cuda_graph": True, "autocast": "bf16"}
    (tmp_path / "r.json").write_text(json.dumps(report))
    main([str(tmp_path / "r.json"), str(tmp_path / "missing.json")])
    out = capsys.readouterr().out
    assert "ali_svhn on GPU [cuda_graph=True,autocast=bf16]" in out and "88.5 min" in out
    assert "missing.json: no report" in out
