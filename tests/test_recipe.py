"""Recipe parsing, validation and error rendering."""

from __future__ import annotations

import string
import tomllib

import pytest
import tomli_w
from click.testing import CliRunner
from conftest import RECIPES, write
from hypothesis import given
from hypothesis import strategies as st

from advinf.cli import cli
from advinf.errors import RecipeError, UserError
from advinf.recipe import apply_override, load_recipe, parse_override, validate_recipe

ALI = (RECIPES / "ali_mixture25.toml").read_text()


def problems_of(tmp_path, text: str, overrides=()) -> str:
    path = write(tmp_path / "r.toml", text)
    with pytest.raises(RecipeError) as info:
        load_recipe(path, overrides)
    return str(info.value)


def test_the_shipped_recipes_validate():
    for path in RECIPES.glob("*.toml"):
        rec = load_recipe(path)
        assert rec.spec.name == path.stem
        again = validate_recipe(tomllib.loads(rec.to_toml()))  # the resolved recipe is a fixed point
        assert again.resolved() == rec.resolved()


def test_unknown_component_option_suggests_the_near_miss(tmp_path):
    text = problems_of(tmp_path, ALI.replace('name = "toy_critic"', 'name = "toy_critic"\npeices = 3'))
    assert "r.toml: 1 problem" in text
    assert "critic.peices: unknown option of critic 'toy_critic' (got 3); did you mean 'pieces'?" in text


def test_unknown_skeleton_key_suggests_the_near_miss(tmp_path):
    text = problems_of(tmp_path, ALI.replace("batch_size = 100", "bacth_size = 100"))
    assert "train.bacth_size: unknown key (got 100); did you mean 'batch_size'?" in text


def test_wrong_type_names_key_and_value(tmp_path):
    text = problems_of(tmp_path, ALI.replace("batch_size = 100", 'batch_size = "big"'))
    assert "train.batch_size: Input should be a valid integer" in text and "'big'" in text


def test_unknown_component_lists_available_names(tmp_path):
    text = problems_of(tmp_path, ALI.replace('name = "ali"', 'name = "alli"'))
    expected = ("game.name: unknown game (got 'alli'); did you mean 'ali'? available: ali, ali_semisup, "
                "alice, bigan, conditional_ali, gan, inverse_mapping, vae")
    assert expected in text


def test_several_problems_are_reported_together(tmp_path):
    text = problems_of(tmp_path, ALI.replace('name = "ali"', 'name = "nope"').replace("dim = 2", "dim = -1"))
    assert "2 problems" in text and "game.name" in text and "prior.dim" in text


def test_bad_toml_reports_line_and_column(tmp_path):
    text = problems_of(tmp_path, ALI.replace("seed = 0", "seed = = 0"))
    line = ALI.splitlines().index("seed = 0") + 1
    assert f"(TOML syntax): Invalid value (at line {line}, column 8)" in text


def test_missing_section_and_bad_optimizer_option(tmp_path):
    text = problems_of(tmp_path, ALI.replace('[prior]\nname = "gaussian"\ndim = 2\n', ""))
    assert "prior: missing required key" in text
    text = problems_of(tmp_path, ALI.replace("lr = 1e-4", "lr = 1e-4\nbetass = [0.5, 0.9]"))
    assert "optimizer.betass: unknown option of optimizer 'adam'" in text and "did you mean 'betas'?" in text
    assert "1 problem" in text and "optimizers.critic" not in text  # inherited by [optimizers.critic]: said once


def test_optimizer_values_are_checked_by_building_it(tmp_path):
    text = problems_of(tmp_path, ALI.replace("lr = 1e-4", "lr = 1e-4\nweight_decay = -1.0"))
    assert "optimizer: optimizer 'adam' rejects these options: Invalid weight_decay value" in text


def test_steps_xor_epochs(tmp_path):
    text = problems_of(tmp_path, ALI.replace("steps = 12000", "steps = 5\nepochs = 2"))
    assert "give exactly one of `steps` and `epochs`" in text


def test_a_value_where_a_table_belongs_says_so_in_recipe_words(tmp_path):
    path = write(tmp_path / "r.toml", ALI)
    for override, key in (("dataset=5", "dataset"), ("train=3", "train"), ("optimizers.critic=1",
                                                                         "optimizers.critic")):
        with pytest.raises(RecipeError) as err:
            load_recipe(path, [override])
        assert f"{key}: must be a table (a [{key}] section" in str(err.value)
        assert "ComponentSpec" not in str(err.value) and "instance of" not in str(err.value)


def test_a_network_section_without_a_name_says_what_to_do():
    with pytest.raises(RecipeError) as err:  # a GAN has no encoder: the override made a nameless [encoder]
        load_recipe(RECIPES / "gan_mixture25.toml", ["encoder.hidden=32"])
    assert "encoder.name: missing required key; name the encoder network" in str(err.value)
    assert "if the game has no encoder, leave out [encoder] and --set encoder.*" in str(err.value)


def test_critic_steps_only_with_the_alternating_update(tmp_path):
    path = write(tmp_path / "r.toml", ALI)
    with pytest.raises(RecipeError, match='train.critic_steps: counts only with update = "alternating"'):
        load_recipe(path, ["train.critic_steps=3"])  # the simultaneous update would ignore it
    assert load_recipe(path, ["train.critic_steps=3", "train.update='alternating'"]).spec.train.critic_steps == 3


def test_booleans_and_strings_inside_number_lists_are_refused():
    """pydantic's lax mode read [true, "0.5"] as [1.0, 0.5] and a shape [true, 28, 28] as [1, 28, 28]."""
    with pytest.raises(RecipeError) as err:
        load_recipe(RECIPES / "ali_digits.toml", ['evaluators.reconstruction.c_grid=[true, "0.5", 0.1]'])
    text = str(err.value)
    assert "evaluators.reconstruction.c_grid.0: a boolean where a number is expected" in text
    assert "evaluators.reconstruction.c_grid.1: a string where a number is expected" in text and ".2" not in text
    for shape, message in (("[true,28,28]", "encoder.x_shape.0: a boolean"), ("[0,28,28]", "encoder.x_shape.0")):
        with pytest.raises(RecipeError, match=message):
            load_recipe(RECIPES / "bigan_mnist.toml", [f"encoder.x_shape={shape}"])
    assert load_recipe(RECIPES / "bigan_mnist.toml", ["encoder.x_shape=[1,28,28]"]).options["encoder"].x_shape \
        == [1, 28, 28]


def test_overrides_apply_and_are_validated(tmp_path):
    path = write(tmp_path / "r.toml", ALI)
    rec = load_recipe(path, ["train.batch_size=64", "game.divergence=minimax", "critic.hidden=8"])
    assert rec.spec.train.batch_size == 64
    assert rec.options["game"].divergence == "minimax" and rec.options["critic"].hidden == 8
    with pytest.raises(RecipeError, match="--set train.batch_size: expected KEY=VALUE"):
        load_recipe(path, ["train.batch_size"])
    with pytest.raises(RecipeError, match="--set seed.x=1: seed is not a table"):
        load_recipe(path, ["seed.x=1"])


def test_overriding_steps_replaces_epochs_and_back(tmp_path):
    path = write(tmp_path / "r.toml", ALI.replace("steps = 12000", "epochs = 3"))
    assert load_recipe(path, ["train.steps=5"]).spec.train.epochs is None
    assert load_recipe(path, ["train.steps=5"]).spec.train.steps == 5
    assert load_recipe(write(tmp_path / "s.toml", ALI), ["train.epochs=2"]).spec.train.steps is None
    with pytest.raises(RecipeError, match="exactly one of"):
        load_recipe(path, ["train.steps=5", "train.epochs=2"])


def test_extends_merges_tables(tmp_path):
    write(tmp_path / "base.toml", ALI)
    child = write(tmp_path / "child.toml", 'extends = "base.toml"\nname = "child"\n[train]\nsteps = 7\n')
    rec = load_recipe(child)
    assert rec.spec.name == "child" and rec.spec.train.steps == 7 and rec.spec.train.batch_size == 100
    # a base trained for epochs, extended by steps (and the other way round): the recipe's own choice wins
    write(tmp_path / "epochs.toml", ALI.replace("steps = 12000", "epochs = 3"))
    short = write(tmp_path / "short.toml", 'extends = "epochs.toml"\n[train]\nsteps = 7\n')
    assert (load_recipe(short).spec.train.steps, load_recipe(short).spec.train.epochs) == (7, None)
    grand = write(tmp_path / "grand.toml", 'extends = "short.toml"\n[train]\nepochs = 2\n')
    assert (load_recipe(grand).spec.train.steps, load_recipe(grand).spec.train.epochs) == (None, 2)
    both = write(tmp_path / "both.toml", 'extends = "epochs.toml"\n[train]\nsteps = 7\nepochs = 2\n')
    with pytest.raises(RecipeError, match="exactly one of"):
        load_recipe(both)
    write(tmp_path / "loop.toml", 'extends = "loop.toml"\n')
    with pytest.raises(RecipeError, match="cycle"):
        load_recipe(tmp_path / "loop.toml")


def test_missing_recipe_file(tmp_path):
    with pytest.raises(UserError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.toml")


def test_validate_cli_exit_codes_and_no_traceback(tmp_path):
    runner = CliRunner()
    ok = runner.invoke(cli, ["validate", str(RECIPES / "ali_mixture25.toml"), "--set", "train.steps=5"])
    assert ok.exit_code == 0, ok.output
    assert tomllib.loads(ok.output)["train"]["steps"] == 5
    bad = write(tmp_path / "bad.toml", ALI.replace("batch_size = 100", "bacth_size = 100"))
    res = runner.invoke(cli, ["validate", str(bad)])
    assert res.exit_code == 2
    assert "did you mean 'batch_size'" in res.output and "Traceback" not in res.output
    dbg = runner.invoke(cli, ["--debug", "validate", str(bad)])
    assert isinstance(dbg.exception, RecipeError)


# -- --set overrides (property-based) --------------------------------------------------------------------

keys = st.lists(st.text(string.ascii_lowercase + "_", min_size=1, max_size=8), min_size=1, max_size=4)
scalars = st.one_of(
    st.integers(-10**12, 10**12), st.booleans(), st.text(max_size=20),
    st.floats(allow_nan=False, allow_infinity=False),
)
values = st.one_of(scalars, st.lists(st.integers(-1000, 1000), max_size=4))


@given(keys, values)
def test_override_roundtrips_any_toml_value(path, value):
    raw = tomli_w.dumps({"v": value}).partition("=")[2].strip()
    data: dict = {}
    apply_override(data, ".".join(path) + "=" + raw)
    node = data
    for part in path[:-1]:
        node = node[part]
    assert node[path[-1]] == value


@given(keys, st.from_regex(r"[A-Za-z_/][A-Za-z0-9_/.-]{0,15}", fullmatch=True))
def test_bare_words_are_strings_unless_toml(path, word):
    parsed_path, value = parse_override(".".join(path) + "=" + word)
    assert parsed_path == path
    try:
        expected = tomllib.loads(f"v = {word}")["v"]
    except tomllib.TOMLDecodeError:
        expected = word
    assert value == expected


@given(keys, st.integers(), st.integers())
def test_later_overrides_win_and_siblings_survive(path, a, b):
    data = {"keep": 1}
    apply_override(data, ".".join(path) + f"={a}")
    apply_override(data, ".".join(path) + f"={b}")
    node = data
    for part in path[:-1]:
        node = node[part]
    assert node[path[-1]] == b and (data["keep"] == 1 or path == ["keep"])


def test_a_recipe_saved_with_a_byte_order_mark_reads_as_without(tmp_path):
    """Some editors start UTF-8 files with a BOM, which tomllib calls an invalid statement at line 1."""
    plain = (RECIPES / "ali_mixture25.toml").read_text(encoding="utf-8")
    path = tmp_path / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbf" + plain.encode("utf-8"))
    assert load_recipe(path).resolved() == load_recipe(RECIPES / "ali_mixture25.toml").resolved()


def test_a_step_count_beyond_what_int64_and_json_hold_is_refused():
    with pytest.raises(RecipeError, match=r"train.steps: Input should be less than or equal to 9007199254740992"):
        load_recipe(RECIPES / "ali_mixture25.toml", ["train.steps=9999999999999999"])
    with pytest.raises(RecipeError, match=r"train.steps: beyond a 64-bit integer"):  # any key: TOML's range
        load_recipe(RECIPES / "ali_mixture25.toml", ["train.steps=99999999999999999999"])


@pytest.mark.parametrize("overrides,expected", [
    (['encoder.hidden=" 50 "'], "encoder.hidden: a string where a number is expected"),  # lax mode read it as 50
    (['evaluators.mode_coverage.radius_std="3"'], "evaluators.mode_coverage.radius_std: a string where a number"),
    (["optimizer.lr=0"], "optimizer.lr: must be > 0 (a learning rate of 0 trains nothing"),
    (["optimizer.lr=1e-400"], "optimizer.lr: must be > 0"),  # read as 0.0
    (["optimizer.eps=0"], "optimizer.eps: must be > 0"),
    (['optimizer.fused="yes"'], "optimizer.fused: must be true or false (got 'yes')"),  # torch took it
    (["optimizers.critic.inherit=false", 'optimizer={name="rmsprop", alpha=1.5}'], "optimizer.alpha: must be in "
                                                                                   "[0, 1)"),
    (['optimizer={name="sgd", lr=0.1, momentum=1.5}'], "optimizer.momentum: must be in [0, 1)"),
    # options that could never act: the strict count always 0, a critic count in a game without a critic
    (["evaluators.mode_coverage.min_samples=20000"], "evaluators.mode_coverage.min_samples: min_samples = 20000 is "
                                                     "more than the 10000 samples drawn"),
    (["vae_mixture25", "train.update=alternating", "train.critic_steps=5"],
     "train.critic_steps: game 'vae' has no critic-side player"),
    (["ali_digits", "evaluators.knn_probe.k=1000", "evaluators.knn_probe.labels=200"],
     "evaluators.knn_probe.k: k = 1000 neighbours among 200 labelled examples"),  # voted with 200, reported 1000
    # a check of several options names the one to change (advinf.OptionError), with its value, not the section
    (["vae_mixture25", 'game.likelihood="bernoulli"'], "game.variance: variance = 'learned' is for the Gaussian "
                                                       "likelihood; a Bernoulli has no variance: leave variance out "
                                                       "or set it to 'fixed' (got 'learned')"),
    (["ali_semisup_digits", "game.labelled_batch_size=60"], "game.labelled_batch_size: labelled_batch_size (60) is "
                                                            "larger than labels (50) (got 60)"),
    (["ali_digits", 'evaluators.svm_probe.labelled_from_options={root="x"}'],
     "evaluators.svm_probe.labelled_from_options: labelled_from_options is given without labelled_from"),
    # a held-out split the model trains on: evaluators reported training images as held out
    (["ali_svhn", 'dataset.split="train"', 'dataset.heldout="train"'],
     "dataset.heldout: heldout = 'train' is the training split too"),
    (["ali_celeba", 'dataset.split="all"'], "dataset.heldout: heldout = 'test' is part of split = 'all'"),
    (["dataset.std=1e39"], "dataset.std: Input should be less than or equal to 1000000"),  # float32 points: inf
])
def test_values_torch_or_pydantic_would_take_are_refused_naming_the_key(overrides, expected):
    recipe, *sets = overrides if "=" not in overrides[0] else ["ali_mixture25", *overrides]
    args = ["validate", str(RECIPES / f"{recipe}.toml")] + [a for o in sets for a in ("--set", o)]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 2 and expected in " ".join(res.output.split()), res.output


def test_an_integer_beta_is_a_float_to_torch_and_a_network_is_given_once(tmp_path):
    """betas = [0, 0.9] (beta1 written as 0) was refused by torch ("both floats or both Tensors"), twice; a
    [networks.critic] beside [critic] (here the extended recipe's) replaced it silently, unchecked."""
    recipe = load_recipe(RECIPES / "ali_mixture25.toml", ["optimizer.betas=[0, 0.9]"])
    assert recipe.optimizers["critic"].options["betas"] == [0.0, 0.9] == recipe.spec.optimizer.options["betas"]
    text = (f'extends = "{RECIPES / "ali_mixture25.toml"}"\n[networks.critic]\nkind = "critic"\nname = "toy_critic"\n'
            "hidden = 7\n")
    assert "networks.critic: the critic is given twice, as [critic] and as [networks.critic]" in \
        problems_of(tmp_path, text)


@pytest.mark.parametrize("recipe,overrides,expected", [
    ("ali_mixture25", ["game.r1_every=16", 'game.r1_inputs="x"'], "game: r1_every = 16, r1_inputs = 'x' do nothing "
                                                                  "with r1 = 0"),
    ("ali_mixture25", ["game.instance_noise_steps=100"], "game: instance_noise_steps = 100 does nothing with "
                                                         "instance_noise = 0"),
    ("vae_mixture25", ['game.variance="learned"', 'decoder.name="toy_gaussian_decoder"', "game.sigma=2"],
     r"game: sigma = 2.0 does nothing with variance = learned"),
    ("ali_mixture25", ['encoder.init_network="decoder"'], "init_network = 'decoder' does nothing without init_from"),
])
def test_options_that_do_nothing_with_the_others_are_warned_of(recipe, overrides, expected):
    """A warning, not a refusal: a run written with them still resumes. The defaults (what a resolved recipe
    writes) are never warned of."""
    import re
    import warnings

    with pytest.warns(UserWarning, match=re.escape(expected)):
        load_recipe(RECIPES / f"{recipe}.toml", overrides)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_recipe(RECIPES / f"{recipe}.toml", [o for o in overrides if "name" in o or "variance" in o])


def test_an_option_error_naming_an_option_the_model_lacks_is_told_by_the_section_as_a_plugin_bug():
    from pydantic import BaseModel, ValidationError, model_validator

    from advinf import OptionError
    from advinf.options import problems_from

    class Options(BaseModel):
        batch_size: int = 10
        samples: int = 5

        @model_validator(mode="after")
        def _fits(self):
            raise OptionError("batch_size must be at most samples", option=self.wrong)

    for wrong, key in (("batchsize", "evaluators.x"), ("batch_size", "evaluators.x.batch_size")):
        Options.wrong = wrong
        with pytest.raises(ValidationError) as err:
            Options(batch_size=10)
        [problem] = problems_from(err.value, Options, {"batch_size": 10}, prefix="evaluators.x")
        assert problem.key == key
        assert ("names option 'batchsize', which it does not have" in problem.message) == (wrong == "batchsize")


def test_an_unknown_component_in_a_run_s_recipe_asks_whether_it_is_a_local_plugin_s():
    """A run trained from Python with a plugin its recipe does not list: loading it said only 'unknown game'."""
    data = tomllib.loads(ALI.replace('[game]\nname = "ali"', '[game]\nname = "my_wgan"'))
    with pytest.raises(RecipeError, match=r"game.name: unknown game \(got 'my_wgan'\).*from a local plugin\? load it "
                                          r"with --plugin PATH \(Python: plugins=\[...\]\)"):
        validate_recipe(data, source="RUN/state.json", load_plugins=False)
    with pytest.raises(RecipeError) as err:  # a recipe being written: no such hint
        validate_recipe(data, source="r.toml")
    assert "from a local plugin?" not in str(err.value)
    misspelt = tomllib.loads(ALI.replace("[game]", "[game]\nr1_evry = 2"))  # a known game's option: no plugin hint
    with pytest.raises(RecipeError, match=r"game.r1_evry: unknown option of game 'ali'") as err:
        validate_recipe(misspelt, source="RUN/state.json", load_plugins=False)
    assert "from a local plugin?" not in str(err.value)


def test_switching_a_component_by_its_name_alone_says_how_to_switch_it():
    """--set optimizer.name=sgd keeps the recipe's Adam betas, refused as unknown to SGD with no word of what to
    do; a whole table replaces them."""
    with pytest.raises(RecipeError, match=r"optimizer.betas: unknown option of optimizer 'sgd'.*--set optimizer.name="
                                          r"\.\.\. keeps the options the recipe gives optimizer; to switch it, give "
                                          r"the whole table: --set 'optimizer=\{name = \"\.\.\.\", \.\.\.\}'"):
        load_recipe(RECIPES / "ali_mixture25.toml", ["optimizer.name=sgd"])
    assert load_recipe(RECIPES / "ali_mixture25.toml", ['optimizer={name = "sgd", lr = 0.01}']).spec.optimizer.name \
        == "sgd"
