"""Random search over seeds (``--seeds ... --draw KEY=VALUE``): what each seed draws, and the group it runs."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
from click.testing import CliRunner
from conftest import RECIPES, TINY, TINY_ENCODER, cli_env
from safetensors.torch import load_file

from advinf import UserError
from advinf.cli import _short_value, cli
from advinf.recipe import parse_override, read_toml
from advinf.search import check_draws, drawn_values, parse_draw
from advinf.seeds import SeedResult, SeedsOutcome, lost_message, run_seeds, seed_command
from advinf.session import run_recipe
from advinf.values import toml_value

TOY = RECIPES / "ali_mixture25.toml"
SETS = [*TINY, *TINY_ENCODER, "train.device=cpu"]


def test_each_seed_draws_its_own_values_in_range_the_same_every_time():
    lr = parse_draw("optimizer.lr,optimizers.critic.lr=loguniform(1e-5, 1e-3)")
    betas = parse_draw("optimizer.betas=[uniform(0.1, 0.9), 0.999]")
    pick = parse_draw('train.update=choice("simultaneous", "alternating")')
    steps = parse_draw("train.critic_steps = randint(1, 3)")
    values = [drawn_values([lr, betas, pick, steps], s) for s in range(200)]
    assert values[7] == drawn_values([lr, betas, pick, steps], 7) == drawn_values([steps, lr, betas, pick], 7)
    assert drawn_values([lr], 7) == {k: values[7][k] for k in ("optimizer.lr", "optimizers.critic.lr")}
    assert all(v["optimizer.lr"] == v["optimizers.critic.lr"] for v in values)  # two keys, one draw
    logs = [math.log10(v["optimizer.lr"]) for v in values]
    assert -5 <= min(logs) < -4.8 and -3.2 < max(logs) <= -3  # log-uniform: both decades reached
    assert all(0.1 <= v["optimizer.betas"][0] <= 0.9 and v["optimizer.betas"][1] == 0.999 for v in values)
    assert {v["train.update"] for v in values} == {"simultaneous", "alternating"}
    assert {v["train.critic_steps"] for v in values} == {1, 2, 3}
    assert len({v["optimizer.lr"] for v in values}) == 200


@pytest.mark.parametrize(("text", "message"), [
    ("optimizer.lr", "give KEY=VALUE with distributions"),
    (",optimizer.lr=uniform(0, 1)", "give KEY=VALUE"),
    ("optimizer.lr=1e-4", "draws nothing: its value holds none of uniform"),
    ("optimizer.lr=loguniform(0, 1e-3)", "loguniform(a, b) needs 0 < a < b"),
    ("optimizer.lr=uniform(1, 1)", "uniform(a, b) needs a < b"),
    ("optimizer.lr=uniform(0, inf)", "takes two finite numbers"),
    ("optimizer.lr=uniform(true, 2)", "takes two finite numbers"),
    ("train.critic_steps=randint(1.5, 3)", "randint(a, b) needs integers a <= b"),
    ("train.update=choice()", "choice() needs at least one value"),
    ("train.update=choice(alternating, x)", "are not TOML values"),
    ("seed=randint(0, 9)", "each seed's run sets `seed` itself"),
    ("optimizer.lr,optimizer.lr=uniform(0, 1)", "names a key twice"),
    ("optimizer..lr=uniform(0, 1)", "bad key"),
    ("optimizer.lr=uniform(-1.7e308, 1.7e308)", "uniform(a, b) needs a < b (and b - a finite)"),
    ("train.update=choice(07:32:00, 1)", "choice() takes numbers, booleans, strings, lists and tables"),
    ("train.update=choice(choice(1, 2), 3)", "choice() holds another distribution; they do not nest"),
    ('train.update="uniform(1, 2)"', "draws nothing"),
    ('train.update=choice("a, "b")', "is not closed"),
    ("optimizer.lr=uniform(1, 2", "is not closed by its )"),
])
def test_a_draw_that_cannot_work_is_refused_naming_it(text, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        parse_draw(text)
    assert str(err.value).startswith(f"--draw {text.strip()!r}")


def test_a_key_drawn_twice_or_also_set_is_refused():
    lr = parse_draw("optimizer.lr=loguniform(1e-5, 1e-3)")
    with pytest.raises(UserError, match="draws optimizer.lr, and --draw .* draws optimizer.lr: one holds the other"):
        check_draws([lr, parse_draw("optimizer.betas,optimizer.lr=uniform(0.1, 0.2)")], [])
    with pytest.raises(UserError, match=r"--set optimizer.lr=0.1 and --draw .* both give optimizer.lr; keep one"):
        check_draws([lr], ["train.steps=5", "optimizer.lr=0.1"])
    table = parse_draw('optimizer={name = "adam", lr = loguniform(1e-3, 1e-2)}')  # holds optimizer.lr
    with pytest.raises(UserError, match="draws optimizer, and --draw .* draws optimizer.lr: one holds the other"):
        check_draws([lr, table], [])
    with pytest.raises(UserError, match=r"--set optimizer.betas=\[0.5, 0.999\] and --draw .* both give optimizer;"):
        check_draws([table], ["optimizer.betas=[0.5, 0.999]"])
    check_draws([lr], ["optimizers.critic.lr=0.1", "optimizer.betas=[0.5, 0.999]"])  # other keys


def test_a_random_search_group_trains_each_seed_as_its_drawn_single_run(tmp_path):
    draws = ["optimizer.lr,optimizers.critic.lr=loguniform(1e-5, 1e-3)", "critic.init_std=uniform(0.01, 0.05)"]
    outcome = run_seeds(TOY, [0, 1], out=tmp_path / "g", overrides=SETS, draws=draws, log=lambda m: None)
    summary = json.loads((tmp_path / "g" / "summary.json").read_text())
    assert summary["draws"] == draws and summary == outcome.summary
    drawn = summary["drawn"]["1"]
    assert drawn["optimizer.lr"] != summary["drawn"]["0"]["optimizer.lr"]
    saved = read_toml(tmp_path / "g" / "seed_1" / "recipe.toml")  # the run's own recipe holds what it drew
    assert saved["optimizer"]["lr"] == saved["optimizers"]["critic"]["lr"] == drawn["optimizer.lr"]
    assert saved["critic"]["init_std"] == drawn["critic.init_std"]
    single = run_recipe(TOY, out=tmp_path / "single", log=lambda m: None, overrides=[
        *SETS, "seed=1", *(f"{k}={v!r}" for k, v in drawn.items())])
    a = load_file(str(tmp_path / "g" / "seed_1" / "checkpoints" / "step_0000030" / "model.safetensors"))
    b = load_file(str(single.run_dir / "checkpoints" / "step_0000030" / "model.safetensors"))
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)


def test_the_command_line_refuses_a_draw_without_seeds_and_a_range_the_recipe_refuses(tmp_path):
    sets = [a for s in SETS for a in ("--set", s)]
    res = CliRunner().invoke(cli, ["run", str(TOY), "--draw", "optimizer.lr=uniform(0.1, 0.2)", *sets])
    assert res.exit_code == 2 and "--draw goes with --seeds" in res.output
    res = CliRunner().invoke(cli, ["run", str(TOY), "--seeds", "0-9", "--out", str(tmp_path / "g"), *sets,
                                   "--draw", "optimizer.lr=uniform(-1e-3, 1e-3)"])
    assert res.exit_code == 2 and "which the recipe refuses (check the --draw keys, types and ranges)" in res.output
    assert "optimizer.lr" in res.output and not (tmp_path / "g").exists()  # refused before any seed started
    proc = subprocess.run([sys.executable, "-m", "advinf", "run", str(TOY), "--seeds", "0-1", "--out",
                           str(tmp_path / "h"), *sets, "--stop-after", "1", "--draw",
                           'train.loggers=choice(["csv"], ["jsonl", "csv"])'], capture_output=True, text=True,
                          env=cli_env(), timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "drawn: train.loggers" in proc.stdout and '["csv"]' in proc.stdout  # not read as rich markup


def test_the_table_shows_drawn_values_as_toml_with_short_floats():
    assert _short_value([0.123456789, True, "adam", 3]) == '[0.1235, true, "adam", 3]'
    assert _short_value({"name": "step", "gamma": 1e-05}) == '{ name = "step", gamma = 1e-05 }'


def test_drawn_values_are_written_back_as_one_line_of_toml():
    for value in (1e-05, 3, True, "adam", 'a "quoted" \\ word', "😀 \x7f\n", [0.3, 0.999],
                  {"name": "exponential", "x": [1], "é😀": "b"}):
        assert parse_override(f"k={toml_value(value)}")[1] == value


def test_quotes_brackets_and_commas_inside_a_choice_are_its_values():
    draw = parse_draw('train.update=choice("a,b", "c)", "(", [1, 2], {x = "choice(1)"})')
    assert {str(parse_override(draw.overrides(s)[0])[1]) for s in range(100)} == \
        {"a,b", "c)", "(", "[1, 2]", "{'x': 'choice(1)'}"}


def test_the_lost_seeds_message_gives_a_seed_its_drawn_values(tmp_path):
    drawn = {"1": {"optimizer.lr": 0.00025, "optimizer.betas": [0.3, 0.999]}}
    outcome = SeedsOutcome(tmp_path, [SeedResult(0, tmp_path / "seed_0", 30, 1.0)], {"drawn": drawn}, None,
                           lost=[1], killed=[-9])
    assert (f"advinf run r.toml --set seed=1 --set optimizer.lr=0.00025 --set 'optimizer.betas=[0.3, 0.999]' "
            f"--out {tmp_path / 'seed_1'}") in lost_message(outcome, "r.toml")
    spaced = SeedsOutcome(tmp_path / "a b", [], {"drawn": {"2": {"train.update": "alternating"}}}, "SIGINT",
                          not_started=[2])
    assert seed_command(spaced, "my recipes/t.toml", 2) == (
        f"advinf run 'my recipes/t.toml' --set seed=2 --set 'train.update=\"alternating\"' --out "
        f"'{tmp_path / 'a b' / 'seed_2'}'")
