"""Plugin host: entry-point loading, broken plugins, duplicates, strict mode, the CLI listing."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import RECIPES, cli_env, write
from pydantic import BaseModel, ConfigDict, Field

import advinf
from advinf import hookspecs
from advinf.cli import cli
from advinf.errors import PluginError, RecipeError, UserError
from advinf.plugins import PluginHost

BUILTIN = {"games", "baselines", "priors", "toy_networks", "mixture", "mode_coverage", "bigan_networks"}


def make_dist(root: Path, dist: str, plugins: dict[str, str], modules: dict[str, str]) -> Path:
    """A real installed distribution on a sys.path entry: dist-info with entry points, plus modules."""
    info = root / f"{dist.replace('-', '_')}-1.2.3.dist-info"  # the folder name is the normalised one
    write(info / "METADATA", f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.2.3\n")
    eps = "[advinf]\n" + "".join(f"{name} = {target}\n" for name, target in plugins.items())
    write(info / "entry_points.txt", eps)
    for mod, src in modules.items():
        write(root / f"{mod}.py", textwrap.dedent(src))
    return root


GOOD = """
from pydantic import BaseModel
from advinf import hookimpl
from advinf_plugins.priors import gaussian, PriorOptions

@hookimpl
def register_priors(register):
    register("third_party_prior", gaussian, PriorOptions, summary="a prior from elsewhere")
"""
BROKEN_IMPORT = "raise ImportError('missing dependency xyz')\n"
RAISES = """
from advinf import hookimpl
from advinf_plugins.priors import gaussian

@hookimpl
def register_priors(register):
    register("half_registered", gaussian)
    raise RuntimeError("boom")
"""
DUPLICATE = """
from advinf import hookimpl
from advinf_plugins.games import ali

@hookimpl
def register_games(register):
    register("ali", ali)
"""
TYPO = """
from advinf import hookimpl

@hookimpl
def register_gamez(register):
    pass
"""


@pytest.fixture
def third_party(tmp_path, monkeypatch):
    root = make_dist(tmp_path / "site", "advinf-extra",
                     {"good": "good_plugin", "broken": "broken_plugin", "raises": "raising_plugin",
                      "dupe": "dupe_plugin", "typo": "typo_plugin"},
                     {"good_plugin": GOOD, "broken_plugin": BROKEN_IMPORT, "raising_plugin": RAISES,
                      "dupe_plugin": DUPLICATE, "typo_plugin": TYPO})
    monkeypatch.syspath_prepend(str(root))
    for mod in ("good_plugin", "broken_plugin", "raising_plugin", "dupe_plugin", "typo_plugin"):
        sys.modules.pop(mod, None)
    return root


def test_builtins_load_through_entry_points():
    host = PluginHost(strict=True, disabled=set())
    host.load_entry_points()
    assert set(host.plugins) >= BUILTIN
    assert host.names("game") == ["ali", "ali_semisup", "alice", "bigan", "conditional_ali", "gan", "inverse_mapping",
                                  "vae"]
    assert host.plugins["games"].version == advinf.__version__
    assert host.get("game", "ali").plugin == "games"


def test_broken_plugins_are_recorded_and_the_rest_work(third_party):
    host = PluginHost(strict=False, disabled=set())
    host.load_entry_points()
    errors = host.errors()
    assert "missing dependency xyz" in errors["broken"]
    assert "register_priors raised RuntimeError: boom" in errors["raises"]
    assert "half_registered" not in host.registry["prior"]  # nothing of a failed plugin stays
    assert "register_gamez" in errors["typo"]
    conflict = "game 'ali' is registered by both plugin 'dupe' (1.2.3) and plugin 'games' (0.1.0)"
    assert errors["dupe"] == conflict and errors["games"] == conflict
    assert host.get("prior", "third_party_prior").summary == "a prior from elsewhere"
    assert host.plugins["good"].version == "1.2.3" and host.plugins["good"].error is None
    assert "mixture25" in host.registry["dataset"]
    with pytest.raises(PluginError, match=r"several plugins: plugin 'dupe' \(1.2.3\), plugin 'games'"):
        host.get("game", "ali")


def test_a_plugin_named_like_another_distributions_replaces_neither(tmp_path, monkeypatch):
    root = make_dist(tmp_path / "site", "advinf-ring", {"games": "ring_games"}, {"ring_games": """
        from advinf import hookimpl
        from advinf_plugins.games import ali

        @hookimpl
        def register_games(register):
            register("ring_ali", ali)
        """})
    monkeypatch.syspath_prepend(str(root))
    host = PluginHost(strict=True, disabled=set())
    host.load_entry_points()
    assert "games" not in host.plugins
    assert host.plugins["games (advinf)"].components["game"][:2] == ["ali", "bigan"]
    assert host.plugins["games (advinf-ring)"].components == {"game": ["ring_ali"]}
    assert host.get("game", "ali").plugin == "games (advinf)" and host.errors() == {}
    monkeypatch.setenv("ADVINF_DISABLE_PLUGINS", "games (advinf-ring)")
    host = PluginHost(strict=True)
    host.load_entry_points()
    assert host.plugins["games (advinf-ring)"].disabled and "ring_ali" not in host.registry["game"]
    assert "ali" in host.registry["game"]


def test_hook_functions_that_would_never_be_called_are_plugin_errors():
    import types

    from advinf import hookimpl
    from advinf_plugins.priors import PriorOptions, gaussian

    def register_priors(register):  # no @hookimpl: pluggy would skip it without a word
        register("never_registered", gaussian, PriorOptions)

    @hookimpl
    def register_prior(register):
        pass

    host = PluginHost(strict=False, disabled=set())
    host.add_plugin(types.SimpleNamespace(register_priors=register_priors), name="unmarked")
    assert host.errors()["unmarked"] == "register_priors is not marked @advinf.hookimpl, so it would never be called"
    host.add_plugin(types.SimpleNamespace(register_prior=register_prior), name="typo")
    assert host.errors()["typo"] == "unknown hook 'register_prior' (did you mean 'register_priors'?)"
    class Proxy:  # a lazy proxy raising on any attribute, and a mock answering every name: neither is a hook
        def __call__(self):
            pass

        def __getattr__(self, name):
            raise RuntimeError("working outside of a context")

    from unittest import mock

    ordinary = types.SimpleNamespace(current_app=Proxy(), helper=mock.MagicMock(), register_priors=register_prior)
    assert host.add_plugin(ordinary, name="ordinary").error is None
    long = "x" * 300
    host._fail("long", "1", long)
    assert f"long ({'x' * 159}…)" in host.broken_note()


def test_an_options_default_that_breaks_its_own_bounds_is_the_plugins_error(tmp_path):
    from advinf.options import default_problems

    write(tmp_path / "bad_default.py", """
from pydantic import ConfigDict, Field
from advinf import hookimpl
from advinf_plugins.toy_networks import CriticOptions, toy_critic

class BadOptions(CriticOptions):
    model_config = ConfigDict(extra="forbid")
    width: int = Field(0, gt=0)

@hookimpl
def register_critics(register):
    register("bad_default_critic", lambda o, ctx: toy_critic(CriticOptions(**o.model_dump(exclude={"width"})), ctx),
             BadOptions)
""")
    recipe = write(tmp_path / "r.toml", (RECIPES / "ali_mixture25.toml").read_text().replace(
        "seed = 0", 'seed = 0\nplugins = ["bad_default.py"]'))
    with pytest.raises(advinf.RecipeError) as err:
        advinf.load_recipe(recipe, ["critic.name=bad_default_critic"])
    assert ("critic.width: the default of critic 'bad_default_critic' (plugin " in str(err.value)
            and "is invalid: Input should be greater than 0 (got 0); a bug in that plugin" in str(err.value))
    assert advinf.load_recipe(recipe, ["critic.name=bad_default_critic", "critic.width=2"]).spec.critic.name
    host = PluginHost(strict=True, disabled=set())  # and no built-in component has such a default
    host.load_entry_points()
    checked = 0
    for kind, comps in host.registry.items():
        for comp in comps.values():
            if not any(f.is_required() for f in comp.options.model_fields.values()):
                assert default_problems(comp, {}, kind) == [], (kind, comp.name)
                checked += 1
    assert checked > 40

    class Fine(BaseModel):  # defaults this check must not misjudge: one computed from another field, an alias
        model_config = ConfigDict(extra="forbid")
        n: int = 2
        m: int = Field(default_factory=lambda data: data["n"] * 2, gt=3)
        lr: float = Field(0.1, alias="learning_rate", gt=0)

    fine = host.get("critic", "toy_critic")
    assert default_problems(dataclasses.replace(fine, options=Fine), {}, "critic") == []


def test_strict_mode_makes_load_errors_fatal(third_party, monkeypatch):
    monkeypatch.setenv("ADVINF_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match="ADVINF_STRICT_PLUGINS"):
        PluginHost(disabled=set()).load_entry_points()


def test_disabled_plugins_are_not_imported(third_party, monkeypatch):
    monkeypatch.setenv("ADVINF_DISABLE_PLUGINS", "broken, raises,dupe,typo")
    host = PluginHost(strict=True)
    host.load_entry_points()
    assert host.plugins["broken"].disabled and "broken_plugin" not in sys.modules
    assert host.errors() == {} and host.unmatched_disabled() == []
    monkeypatch.setenv("ADVINF_DISABLE_PLUGINS", "gams,broken")  # a typo disables nothing: list-plugins says so
    res = CliRunner().invoke(cli, ["list-plugins", "--json"])
    assert "warning: ADVINF_DISABLE_PLUGINS names 'gams', which is no installed plugin; did you mean 'games'?" \
        in res.output and "'broken'" not in res.output.split("warning:")[1]


def test_list_plugins_json_and_help_survive_broken_plugins(third_party):
    env = cli_env(PYTHONPATH=str(third_party))
    out = subprocess.run([sys.executable, "-m", "advinf", "list-plugins", "--json"], capture_output=True,
                         text=True, env=env)
    assert out.returncode == 2 and "error: broken plugins: broken, dupe, games, raises, typo" in out.stderr
    listing = {p["name"]: p for p in json.loads(out.stdout)}  # still printed in full
    assert set(listing["games"]) >= {"name", "version", "components", "error"}
    assert listing["good"]["components"] == {"prior": ["third_party_prior"]}
    assert listing["good"]["error"] is None and listing["good"]["version"] == "1.2.3"
    assert listing["mixture"]["components"] == {"dataset": ["mixture25"]}
    assert "registered by both" in listing["games"]["error"]
    assert "missing dependency xyz" in listing["broken"]["error"]
    table = subprocess.run([sys.executable, "-m", "advinf", "list-plugins"], capture_output=True, text=True,
                           env=env)
    assert table.returncode == 2 and "Traceback" not in table.stderr
    assert "toy_networks" in table.stdout and "failed to import" in table.stdout
    fine = subprocess.run([sys.executable, "-m", "advinf", "list-plugins"], capture_output=True, text=True,
                          env={**env, "ADVINF_DISABLE_PLUGINS": "broken,dupe,raises,typo"})
    assert fine.returncode == 0 and fine.stderr == "" and "disabled" in fine.stdout
    helped = subprocess.run([sys.executable, "-m", "advinf", "--help"], capture_output=True, text=True, env=env)
    assert helped.returncode == 0 and "list-plugins" in helped.stdout
    strict = subprocess.run([sys.executable, "-m", "advinf", "list-plugins"], capture_output=True, text=True,
                            env={**env, "ADVINF_STRICT_PLUGINS": "1"})
    assert strict.returncode == 2 and "Traceback" not in strict.stderr and "error: plugin" in strict.stderr


def test_plugin_commands_hook(tmp_path):
    src = """
import click
from advinf import hookimpl

@hookimpl
def register_commands(cli):
    @cli.command()
    def hello():
        click.echo("hello from a plugin")
"""
    root = make_dist(tmp_path / "site", "advinf-hello", {"hello": "hello_plugin"}, {"hello_plugin": src})
    out = subprocess.run([sys.executable, "-m", "advinf", "hello"], capture_output=True, text=True,
                         env=cli_env(PYTHONPATH=str(root)))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "hello from a plugin"
    listing = subprocess.run([sys.executable, "-m", "advinf", "list-plugins", "--json"], capture_output=True,
                             text=True, env=cli_env(PYTHONPATH=str(root)))
    assert listing.returncode == 0, listing.stderr  # the commands a plugin adds are listed with it
    assert {p["name"]: p for p in json.loads(listing.stdout)}["hello"]["components"] == {"command": ["hello"]}
    broken = make_dist(tmp_path / "site2", "advinf-broken-cmd", {"badcmd": "badcmd_plugin"}, {"badcmd_plugin": """
from advinf import hookimpl

@hookimpl
def register_commands(cli):
    raise RuntimeError("no click here")
"""})
    listing = subprocess.run([sys.executable, "-m", "advinf", "list-plugins", "--json"], capture_output=True,
                             text=True, env=cli_env(PYTHONPATH=str(broken)))
    assert listing.returncode == 2  # a failing register_commands is a broken plugin, listed as one
    assert {p["name"]: p for p in json.loads(listing.stdout)}["badcmd"]["error"] == \
        "register_commands raised RuntimeError: no click here"
    clash = make_dist(tmp_path / "site3", "advinf-clash", {"clash": "clash_plugin"}, {"clash_plugin": """
import click
from advinf import hookimpl

@hookimpl
def register_commands(cli):
    @cli.command()
    def validate():
        click.echo("not advinf's")
"""})
    listing = subprocess.run([sys.executable, "-m", "advinf", "list-plugins", "--json"], capture_output=True,
                             text=True, env=cli_env(PYTHONPATH=str(clash)))
    assert listing.returncode == 2  # the plugin is broken: its command would hide advinf's own
    assert {p["name"]: p for p in json.loads(listing.stdout)}["clash"]["error"] == \
        "register_commands added command(s) named validate, which advinf or an earlier plugin has already; " \
        "name them otherwise (the existing ones were kept)"
    res = CliRunner().invoke(cli, ["validate", "--help"])
    assert res.exit_code == 0 and "not advinf's" not in res.output and "--build" in res.output


def test_every_registration_hook_feeds_its_kind(advinf_host):
    """One component per registration hook, registered by a plugin object, found under its kind."""
    plugin = types.SimpleNamespace()
    for hook, kind in hookspecs.COMPONENT_HOOKS.items():
        def impl(register, kind=kind):
            register(f"my_{kind}", lambda options, ctx: None)
        impl.__name__ = hook
        setattr(plugin, hook, advinf.hookimpl(impl))
    info = advinf_host.add_plugin(plugin, name="all_hooks", version="9")
    assert info.error is None
    assert info.components == {kind: [f"my_{kind}"] for kind in hookspecs.KINDS}


def test_a_factory_returning_the_wrong_type_is_a_recipe_error_naming_the_key():
    host = PluginHost()
    host.load_entry_points()
    wrong = types.SimpleNamespace(register_encoders=advinf.hookimpl(
        lambda register: register("dict_encoder", lambda options, ctx: {"not": "a module"})))
    wrong.register_encoders.__name__ = "register_encoders"
    assert host.add_plugin(wrong, name="wrong_type").error is None
    recipe = advinf.load_recipe(RECIPES / "ali_mixture25.toml", ["encoder.name=dict_encoder"], host=host)
    with pytest.raises(RecipeError, match=r"encoder.name: the factory of encoder 'dict_encoder' \(plugin "
                                          r"'wrong_type'\) returned dict, not an Encoder: a bug in that plugin"):
        advinf.build(recipe, host=host)
    with pytest.raises(PluginError, match=r"returned dict, not an Encoder$"):
        host.create("encoder", "dict_encoder")


def test_an_option_named_like_a_key_advinf_keeps_in_its_section_is_refused(advinf_host):
    """``[evaluators.x] every = 5`` is the schedule, ``[critic] trainable``/``init_from`` are advinf's: an option of
    such a name would silently keep its default while the recipe seemed to set it."""
    from pydantic import BaseModel

    class EveryOptions(BaseModel):
        every: int = 7

    class CriticOptions(BaseModel):
        width: int = 3
        trainable: bool = True

    for hook, kind, options, taken in (("register_evaluators", "evaluator", EveryOptions, "every"),
                                       ("register_critics", "critic", CriticOptions, "trainable")):
        def impl(register, options=options):
            register("clash", lambda o, ctx: None, options)

        impl.__name__ = hook
        plugin = types.SimpleNamespace(**{hook: advinf.hookimpl(impl)})
        info = advinf_host.add_plugin(plugin, name=f"clash_{kind}")
        assert f"the options of {kind} 'clash' have a field '{taken}', which a recipe's {kind} section keeps for " \
            "advinf" in info.error and "rename it" in info.error


def test_register_checks_its_arguments(advinf_host):
    bad = types.SimpleNamespace(register_priors=advinf.hookimpl(lambda register: register("x", 42)))
    bad.register_priors.__name__ = "register_priors"
    info = advinf_host.add_plugin(bad, name="bad")
    assert "factory of prior 'x' is not callable" in info.error
    for name in ("x y", "a.b", "", "é"):
        spaced = types.SimpleNamespace(register_priors=advinf.hookimpl(lambda register, n=name: register(n, dict)))
        spaced.register_priors.__name__ = "register_priors"
        info = advinf_host.add_plugin(spaced, name=f"named {name!r}")
        assert f"a prior name must be a word of at most 100 letters, digits, '_', '+' or '-' (recipes use it as a " \
               f"key: `evaluators.NAME.KEY`), got {name!r}" in info.error


def test_a_hook_of_the_wrong_signature_is_one_line_in_messages(advinf_host):
    def register_priors(register, extra):
        register("x", dict)

    info = advinf_host.add_plugin(types.SimpleNamespace(register_priors=advinf.hookimpl(register_priors)),
                                  name="wrong_signature")
    assert "\n" not in info.error and "Argument(s) {'extra'} are declared in the hookimpl" in info.error
    assert info.error.startswith("invalid hook implementation: Plugin 'wrong_signature' for hook 'register_priors'; ")
    with pytest.raises(UserError) as err:
        advinf_host.get("prior", "x")
    assert "\n" not in str(err.value)


def test_a_hook_that_returns_its_components_instead_of_registering_them_fails_to_load(advinf_host):
    listing = types.SimpleNamespace(register_priors=advinf.hookimpl(lambda register: [("x", dict)]))
    listing.register_priors.__name__ = "register_priors"
    info = advinf_host.add_plugin(listing, name="listing")
    assert info.error == "register_priors returned list: a hook registers each component by calling " \
                         "register(name, factory, ...) and returns nothing"
    assert info.components == {}


def test_unknown_name_lists_available(advinf_host):
    import advinf_plugins.games

    advinf_host.add_plugin(advinf_plugins.games, name="games")
    expected = "unknown game 'alli'; did you mean 'ali'\\? Available: ali, bigan, conditional_ali, gan"
    with pytest.raises(UserError, match=expected):
        advinf_host.get("game", "alli")
    game = advinf_host.create("game", "ali", None, divergence="minimax")
    assert game.divergence == "minimax"
    with pytest.raises(RecipeError, match=r"create\('game', 'alli'\): 1 problem\n  name: unknown game \(got 'alli'\); "
                                          r"did you mean 'ali'\?"):  # as misspelt options are (library.md)
        advinf_host.create("game", "alli")
    with pytest.raises(UserError, match=r"^unknown critic 'toy_critic'; available: \(none registered\)$"):
        advinf_host.get("critic", "toy_critic")  # no near miss: still a separator before the list


def test_an_unknown_name_says_which_plugins_are_disabled(monkeypatch):
    """Not only a "did you mean" for another plugin's name: the name may be the disabled plugin's."""
    monkeypatch.setenv("ADVINF_DISABLE_PLUGINS", "toy_networks")
    res = CliRunner().invoke(cli, ["validate", str(RECIPES / "ali_mixture25.toml")])
    said = " ".join(res.output.split())
    assert res.exit_code == 2 and "encoder.name: unknown encoder (got 'toy_encoder')" in said, said
    assert "plugins disabled by ADVINF_DISABLE_PLUGINS (the name may be theirs): toy_networks" in said


def test_a_plugin_that_registers_one_name_twice_is_told_so(advinf_host):
    class Plugin:
        @advinf.hookimpl
        def register_priors(self, register):
            register("twice", lambda o, ctx: None)
            register("twice", lambda o, ctx: None)

    info = advinf_host.add_plugin(Plugin(), name="selfdup")
    assert info.error == ("register_priors raised TypeError: prior 'twice' is registered twice by this plugin; give "
                          "each a name of its own")
    assert "twice" not in advinf_host.names("prior")


class _Inner(BaseModel):  # a plugin's nested options model, with pydantic's default extra="ignore"
    scale: float = 1.0


class _NestedOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    inner: _Inner = _Inner()


def test_unknown_keys_of_nested_options_are_refused_not_dropped(advinf_host):
    """pydantic would drop ``inner.scal`` silently, and the factory would train with scale 1.0."""
    from advinf_plugins.priors import GaussianPrior

    class Plugin:
        @advinf.hookimpl
        def register_priors(self, register):
            register("nested", lambda o, ctx: GaussianPrior((2,)), _NestedOptions)

    advinf_host.add_plugin(Plugin(), name="nested")
    with pytest.raises(advinf.RecipeError) as err:
        advinf_host.create("prior", "nested", None, inner={"scale": 2.0, "scal": 3})
    assert str(err.value) == ("create('prior', 'nested'): 1 problem\n  inner.scal: unknown key (got 3); did you mean "
                              "'scale'?")
    assert advinf_host.create("prior", "nested", None, inner={"scale": 2.0}) is not None


def test_list_plugins_shows_a_local_plugin_file_named_with_plugin(tmp_path):
    """A plugin tried before it is installed: listed with its components, or its import error (exit status 2)."""
    from click.testing import CliRunner

    from advinf.cli import cli

    good = write(tmp_path / "my_plugin.py", GOOD)
    res = CliRunner().invoke(cli, ["list-plugins", "--json", "--verbose", "--plugin", str(good)])
    assert res.exit_code == 0, res.output
    [mine] = [p for p in json.loads(res.output) if p["name"] == str(good)]
    assert mine["components"] == {"prior": ["third_party_prior"]} and mine["details"][0]["name"] == "third_party_prior"
    bad = write(tmp_path / "bad.py", "import no_such_module_here\n")
    res = CliRunner().invoke(cli, ["list-plugins", "--plugin", str(bad)])
    assert res.exit_code == 2 and "failed to import: ModuleNotFoundError: No module named 'no_such_module_here'" in \
        res.output and "Traceback" not in res.output
    res = CliRunner().invoke(cli, ["list-plugins", "--json", "--plugin", str(bad)])  # it was missing from the JSON
    assert res.exit_code == 2
    [broken] = [p for p in json.loads(res.stdout) if p["name"] == str(bad)]
    assert "No module named 'no_such_module_here'" in broken["error"]


def test_list_plugins_says_who_plays_each_game():
    """A game's players (with their networks and side), as built with its default options."""
    from click.testing import CliRunner

    from advinf.cli import cli

    res = CliRunner().invoke(cli, ["list-plugins", "--verbose"])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "game ali: ALI: stochastic encoder, joint critic (Dumoulin et al. 2017). players (default options): " \
        "critic (critic): critic; generator (generator): encoder, decoder" in text
    assert "players (default options): encoder (generator): encoder; decoder not trained (frozen)" in text
    assert "streams: data, labelled; reads labels" in text
    listing = json.loads(CliRunner().invoke(cli, ["list-plugins", "--json", "--verbose"]).stdout)
    [gan] = [d for p in listing for d in p.get("details", []) if d["kind"] == "game" and d["name"] == "gan"]
    assert gan["players"] == {"critic": {"role": "critic", "networks": ["critic"]},
                              "generator": {"role": "generator", "networks": ["decoder"]}}
    assert gan["networks"] == {"decoder": "decoder", "critic": "critic"} and gan["labels"] is False


FAILING_EVALUATOR = """
from pydantic import BaseModel
import advinf

class Options(BaseModel):
    pass

class E(advinf.Evaluator):
    def evaluate(self, model, data, out_dir):
        raise RuntimeError("not today")

@advinf.hookimpl
def register_evaluators(register):
    register("fails", lambda options, ctx: E(), Options)
"""


def test_the_command_that_resumes_after_a_failed_evaluation_names_the_local_plugins(tmp_path):
    from click.testing import CliRunner
    from conftest import TINY, TINY_ENCODER

    from advinf.cli import cli

    plugin = write(tmp_path / "fails.py", FAILING_EVALUATOR)
    out = tmp_path / "run"
    sets = [*TINY, *TINY_ENCODER, f'plugins=["{plugin}"]', "evaluators={fails={every=2}}"]
    res = CliRunner().invoke(cli, ["run", str(RECIPES / "ali_mixture25.toml"), "--out", str(out),
                                   *[a for s in sets for a in ("--set", s)]])
    assert res.exit_code == 2, res.output
    assert f"Once the evaluator is fixed: advinf run --resume {out} --plugin {plugin}" in res.output


def test_recipe_can_name_a_project_local_plugin(tmp_path):
    write(tmp_path / "my_plugin.py", GOOD)
    text = (RECIPES / "ali_mixture25.toml").read_text().replace('seed = 0', 'seed = 0\nplugins = ["my_plugin.py"]')
    text = text.replace('name = "gaussian"', 'name = "third_party_prior"')
    rec = advinf.load_recipe(write(tmp_path / "r.toml", text))
    assert rec.spec.prior.name == "third_party_prior"
    missing = write(tmp_path / "m.toml", text.replace("my_plugin.py", "nope.py"))
    with pytest.raises(UserError, match="nope.py does not exist"):
        advinf.load_recipe(missing)


MISDECLARED_GAME = """
from pydantic import BaseModel
import advinf
from advinf_plugins.games import JointGame, JointGameOptions

class Options(JointGameOptions):
    mistake: str = "player"

def make(options, ctx):
    game = JointGame(options, stochastic=True)
    if options.mistake == "player":
        game.players = (advinf.CRITIC, advinf.Player("generator", ("encoder", "decodr")))
    else:
        game.networks = {**game.networks, "aux": "critc"}
    return game

@advinf.hookimpl
def register_games(register):
    register("misdeclared", make, Options)
"""


@pytest.mark.parametrize("mistake,expected", [
    ("player", "game.name: game 'misdeclared' (plugin '{plugin}'): player 'generator' trains 'decodr', which "
               "is not one of its networks (encoder, decoder, critic): a bug in that plugin"),
    ("kind", "game.name: game 'misdeclared' (plugin '{plugin}') declares network 'aux' of kind 'critc', which "
             "is no network kind (encoder, decoder, critic): a bug in that plugin"),
])
def test_a_game_s_declarations_are_checked_by_plain_validate(tmp_path, mistake, expected):
    """What a game declares needs no data to check: refused by `advinf validate`, not only by --build (and for a
    network kind that is none, not sent round in a loop of sections to add)."""
    write(tmp_path / "misdeclared.py", MISDECLARED_GAME)
    text = (RECIPES / "ali_mixture25.toml").read_text().replace('seed = 0', 'seed = 0\nplugins = ["misdeclared.py"]')
    text = text.replace('[game]\nname = "ali"', f'[game]\nname = "misdeclared"\nmistake = "{mistake}"')
    with pytest.raises(advinf.RecipeError) as err:
        advinf.load_recipe(write(tmp_path / "r.toml", text))
    assert expected.format(plugin=tmp_path / "misdeclared.py") in str(err.value), str(err.value)


RAISING_VALIDATOR = """
from pydantic import BaseModel, ConfigDict, field_validator
from advinf import hookimpl
from advinf_plugins.priors import gaussian

class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dim: int = 2

    @field_validator("dim")
    @classmethod
    def _dim(cls, v):
        return 1 // (v - 2)  # a plugin author's bug: ZeroDivisionError, not the ValueError pydantic expects

@hookimpl
def register_priors(register):
    register("fragile_prior", gaussian, Options)
"""


def test_a_plugin_validator_that_raises_anything_is_one_clear_error_naming_the_plugin(tmp_path):
    write(tmp_path / "fragile.py", RAISING_VALIDATOR)
    text = (RECIPES / "ali_mixture25.toml").read_text().replace('seed = 0', 'seed = 0\nplugins = ["fragile.py"]')
    recipe = write(tmp_path / "r.toml", text.replace('name = "gaussian"', 'name = "fragile_prior"'))
    res = CliRunner().invoke(cli, ["validate", str(recipe)])
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert "prior: the options check of prior 'fragile_prior'" in res.output
    assert "fragile.py') failed with ZeroDivisionError" in res.output and "a bug in that plugin" in res.output


def test_every_hook_is_documented_with_its_signature_and_tested():
    docs = (Path(__file__).parent.parent / "docs" / "plugins.md").read_text()
    tests = "".join(p.read_text() for p in Path(__file__).parent.glob("test_*.py"))
    for name in [n for n in dir(hookspecs) if n.startswith("register_")]:
        spec = getattr(hookspecs, name)
        args = ", ".join(spec.__code__.co_varnames[: spec.__code__.co_argcount])
        assert f"{name}({args})" in docs, f"docs/plugins.md lacks {name}({args})"
        assert spec.__doc__, f"{name} has no docstring"
        assert name in tests or name in hookspecs.COMPONENT_HOOKS


def test_an_unknown_name_also_names_the_plugins_that_failed_to_load(third_party, tmp_path):
    env = cli_env(PYTHONPATH=str(third_party))
    recipe = write(tmp_path / "r.toml", (RECIPES / "ali_mixture25.toml").read_text()
                   .replace('name = "toy_critic"', 'name = "critic_from_a_broken_plugin"'))
    out = subprocess.run([sys.executable, "-m", "advinf", "validate", str(recipe)], capture_output=True, text=True,
                         env=env)
    assert out.returncode == 2 and "critic.name: unknown critic" in out.stderr
    assert "plugins that failed to load (the name may be theirs): broken (failed to import broken_plugin: " \
           "ImportError: missing dependency xyz)" in out.stderr


def test_list_plugins_verbose_shows_options_with_types_defaults_and_descriptions():
    out = subprocess.run([sys.executable, "-m", "advinf", "list-plugins", "--verbose"], capture_output=True,
                         text=True, env=cli_env(COLUMNS="200"))
    assert out.returncode == 0, out.stderr
    text = out.stdout
    games = text[text.index("\ngames "):]
    assert "  game ali: ALI: stochastic encoder, joint critic (Dumoulin et al. 2017)." in games
    assert '      divergence: a registered divergence name = "original"  (any registered divergence' in games
    assert "      joint_batch: bool = true  (pass data and model pairs through the critic as one batch" in games
    assert "  divergence hinge: Hinge loss for the critic" in games
    toy = text[text.index("\ntoy_networks "):]
    assert "      pieces: int >= 1 = 5  (maxout pieces)" in toy
    assert "      x_dim: int | None > 0 <= 1000000 = null  (data dimensions (default: from the dataset))" in toy
    assert "      dim: int > 0 <= 1000000 required" in text[text.index("\npriors "):]
    listing = json.loads(subprocess.run([sys.executable, "-m", "advinf", "list-plugins", "--json", "-v"],
                                        capture_output=True, text=True, env=cli_env(), check=True).stdout)
    details = {(d["kind"], d["name"]): d for p in listing for d in p["details"]}
    assert {"name": "layers", "type": "int >= 1", "required": False, "default": 3,
            "description": "maxout layers"} in details[("critic", "toy_critic")]["options"]
    assert details[("divergence", "original")]["options"] == []


BROKEN_HOOK = types.SimpleNamespace()


@pytest.mark.parametrize(("kind", "override", "key"), [
    ("game", "game.name=nope", "game.name"), ("encoder", "encoder.name=nope", "encoder.name"),
    ("decoder", "decoder.name=nope", "decoder.name"), ("critic", "critic.name=nope", "critic.name"),
    ("prior", "prior.name=nope", "prior.name"), ("dataset", "dataset.name=nope", "dataset.name"),
    ("evaluator", "evaluators.nope.every=5", "evaluators.nope"),
    ("divergence", "game.divergence=nope", "game.divergence"),
    ("logger", 'train.loggers=["nope"]', "train.loggers"),
])
def test_an_unknown_name_of_every_kind_names_the_broken_plugins(kind, override, key):
    """Whatever kind of component a recipe names, an unknown name also names the plugins that failed to load."""
    host = PluginHost(strict=False, disabled=set())
    host.load_entry_points()

    def register_critics(register):
        raise ImportError("needs torch_spectral 2.0")
    BROKEN_HOOK.register_critics = advinf.hookimpl(register_critics)
    assert host.add_plugin(BROKEN_HOOK, name="sn_critics", version="0.3").error
    with pytest.raises(advinf.RecipeError) as err:
        advinf.load_recipe(RECIPES / "ali_mixture25.toml", [override], host=host)
    message = str(err.value)
    assert f"{key}: unknown {kind} (got 'nope')" in message
    assert "plugins that failed to load (the name may be theirs): sn_critics (register_critics raised " \
           "ImportError: needs torch_spectral 2.0)" in message
    for any_kind in hookspecs.KINDS:  # and every kind, looked up by name from code (e.g. feature networks)
        with pytest.raises(UserError, match=f"unknown {any_kind} 'nope'.*failed to load.*sn_critics"):
            host.get(any_kind, "nope")


def test_the_pytest_plugin_imports_no_torch_until_a_test_asks_for_its_fixture(tmp_path):
    """pytest loads advinf's plugin in every run of any project in the environment; only ``advinf_host`` may
    import advinf (and torch)."""
    (tmp_path / "test_other.py").write_text(
        "import sys\n\n"
        "def test_a_project_without_advinf():\n"
        "    assert 'torch' not in sys.modules and 'advinf' not in sys.modules\n\n"
        "def test_with_the_fixture(advinf_host):\n"
        "    assert advinf_host.names('critic') == [] and 'advinf' in sys.modules\n")
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
                          "-p", "no:hypothesispytest", "test_other.py"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "2 passed" in run.stdout, run.stdout + run.stderr


def test_a_factory_s_user_error_is_keyed_by_the_option_it_names(tmp_path):
    """UserError(..., option=KEY) from a game's, a logger's and a critic's factory: the recipe error names the
    key under the section (docs/plugins.md, the registration contract)."""
    write(tmp_path / "optplug.py", textwrap.dedent("""
        from pydantic import BaseModel, ConfigDict
        from advinf import UserError, hookimpl

        class O(BaseModel):
            model_config = ConfigDict(extra="forbid")
            knob: int = 1

        def refuse(o, ctx):
            raise UserError("the knob is wrong", option="knob")

        @hookimpl
        def register_games(register):
            register("badgame", refuse, O)

        @hookimpl
        def register_loggers(register):
            register("badlog", refuse, O)

        @hookimpl
        def register_critics(register):
            register("badcritic", refuse, O)
    """))
    recipe = write(tmp_path / "r.toml", 'plugins = ["optplug.py"]\n' + (RECIPES / "ali_mixture25.toml").read_text())
    for override, key in (('game={name="badgame"}', "game.knob"), ('train.loggers=["badlog"]', "loggers.badlog.knob"),
                          ('critic={name="badcritic"}', "critic.knob")):
        res = CliRunner().invoke(cli, ["validate", "--build", str(recipe), "--set", override, "--set",
                                       "dataset.samples=200"], env=cli_env())
        assert res.exit_code == 2 and f"  {key}: " in res.output and "the knob is wrong" in res.output, res.output


def test_the_package_imports_its_names_on_first_use_and_the_command_line_starts_without_torch():
    """``advinf --help`` took 2-4 s importing torch through advinf/__init__ (docs/architecture.md promised a fast
    start); every public name and module is still there on first use."""
    code = ("import sys, advinf.cli\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n"
            "import advinf\n"
            "missing = [n for n in advinf.__all__ if getattr(advinf, n, None) is None]\n"
            "assert not missing, missing\n"
            "assert set(advinf.__all__) <= set(dir(advinf))\n"
            "assert advinf.runs.evaluate_run and advinf.checkpoint.load_checkpoint  # modules, as before\n"
            "from advinf import Trainer, hookimpl\n"
            "try:\n    advinf.no_such_name\nexcept AttributeError:\n    pass\nelse:\n    raise SystemExit(1)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    helped = subprocess.run([sys.executable, "-X", "importtime", "-m", "advinf", "--help"], capture_output=True,
                            text=True, timeout=120)
    assert helped.returncode == 0 and "list-plugins" in helped.stdout
    assert not re.search(r"\|\s+torch$", helped.stderr, re.M)  # python -X importtime: one line per module


def test_ctrl_c_while_a_plugin_imports_is_the_user_s_not_the_plugin_s(tmp_path, advinf_host):
    """A KeyboardInterrupt during a plugin's import (Ctrl-C during start-up) went on as the plugin's failure and
    the command trained on; a plugin's own sys.exit is still its failure."""
    # what the command line's SIGINT handler raises (a plugin's own KeyboardInterrupt is its failure:
    # test_reliability.py)
    (tmp_path / "interrupted.py").write_text("from advinf.errors import Interrupted\nraise Interrupted\n")
    (tmp_path / "exits.py").write_text("import sys\nsys.exit(3)\n")
    with pytest.raises(KeyboardInterrupt):
        advinf_host.load_local(str(tmp_path / "interrupted.py"))
    with pytest.raises(PluginError, match=r"failed to import: called sys.exit\(3\)"):
        advinf_host.load_local(str(tmp_path / "exits.py"))
    from advinf.errors import Terminated

    hooked = types.SimpleNamespace(register_priors=advinf.hookimpl(lambda register: (_ for _ in ()).throw(
        Terminated())))
    hooked.register_priors.__name__ = "register_priors"
    with pytest.raises(Terminated):
        advinf_host.add_plugin(hooked, name="hooked")


def test_a_plugin_path_that_is_no_python_file_says_what_it_is(tmp_path, advinf_host):
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "folder.py").mkdir()
    for spec, message in ((str(tmp_path / "notes.txt"), "is not Python source (a .py file)"),
                          (str(tmp_path / "folder.py"), "is a folder, not a file"),
                          ("", "give a .py file or a module name"), (".", "give a .py file or a module name")):
        with pytest.raises(UserError, match=re.escape(message)) as err:
            advinf_host.load_local(spec)
        assert not isinstance(err.value, PluginError) or "AssertionError" not in str(err.value)


def test_two_local_plugin_files_of_one_name_are_both_loaded_and_named(tmp_path):
    """pa/extra.py and pb/extra.py were both imported as the module advinf_local_extra: the second replaced the
    first in sys.modules, and a printed resume command named only one of them."""
    from advinf.plugins import PluginHost
    from advinf.provenance import loaded_plugin_paths

    for folder in ("pa", "pb"):
        write(tmp_path / folder / "extra.py", f"VALUE = {folder!r}\n")
    host = PluginHost()  # no entry points loaded: only the two files
    names = [host.load_local(str(tmp_path / f / "extra.py")) for f in ("pa", "pb")]
    assert loaded_plugin_paths(["pa/extra.py", "pb/extra.py"], tmp_path) == names
