"""The docs are true: their code runs (with a tiny budget), their recipes validate, and the architecture's
layer table matches the imports of advinf/."""

from __future__ import annotations

import ast
import contextlib
import io
import json
import os
import re
import shlex
import shutil
import site
import subprocess
import sys
import sysconfig
import tomllib
import types
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import RECIPES, ROOT, TINY, TINY_ENCODER, cli_env

DOCS = ROOT / "docs"

#: How many ```python blocks each doc has; every one of them is run by a test below.
PYTHON_BLOCKS = {"library.md": 4, "plugins.md": 4, "writing-plugins.md": 2}


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def toml_blocks(path: Path) -> list[str]:
    return re.findall(r"```toml\n(.*?)```", path.read_text(), flags=re.S)


def tiny(code: str) -> str:
    """A doc's run_recipe call with the tiny budget of the tests instead of its own."""
    assert '"train.steps=2000"' in code
    return code.replace('"train.steps=2000"', ", ".join(f'"{o}"' for o in TINY + TINY_ENCODER))


def test_every_python_block_is_tested():
    found = {p.name: len(python_blocks(p)) for p in DOCS.glob("*.md")}
    assert {name: n for name, n in found.items() if n} == PYTHON_BLOCKS


# -- docs/plugins.md -------------------------------------------------------------------------------------

def test_plugin_example_registers_and_validates(tmp_path, advinf_host):
    code = python_blocks(DOCS / "plugins.md")[0]
    module = types.ModuleType("doc_plugin")
    exec(compile(code, "plugins.md", "exec"), module.__dict__)
    info = advinf_host.add_plugin(module, name="doc_plugin")
    assert info.error is None and info.components == {"critic": ["dot"]}
    import advinf

    ctx = advinf.BuildContext(dataset=advinf.create("dataset", "mixture25", None, samples=10, heldout=0),
                              prior=advinf.create("prior", "gaussian", None, dim=2))
    critic = advinf_host.create("critic", "dot", ctx, hidden=8)
    assert critic.net[0].in_features == 4


def test_divergence_example_trains(tmp_path, monkeypatch):
    """The relativistic divergence of register_divergences: a recipe names it and ALI trains with it."""
    import advinf

    monkeypatch.chdir(tmp_path)
    block = python_blocks(DOCS / "plugins.md")[1]
    assert block.startswith("# relativistic.py\n")
    (tmp_path / "relativistic.py").write_text(block)
    overrides = [*TINY, *TINY_ENCODER, f'plugins=["{tmp_path / "relativistic.py"}"]', "game.divergence=relativistic"]
    outcome = advinf.run_recipe(RECIPES / "ali_mixture25.toml", out="runs/rel", overrides=overrides)
    assert outcome.trainer.game.divergence_fn.__name__ == "relativistic"
    record = json.loads((tmp_path / "runs" / "rel" / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["step"] == 30 and {"loss_critic", "loss_generator"} <= set(record)
    with pytest.raises(advinf.RecipeError, match="did you mean 'relativistic'"):
        advinf.load_recipe(RECIPES / "ali_mixture25.toml", [*overrides[-2:-1], "game.divergence=relativstic"])


def test_plugin_game_example_trains_from_its_recipe(tmp_path, monkeypatch):
    """The one-player game of "Writing a game", run from its recipe on the decoder of a (tiny) GAN run."""
    import advinf
    from advinf.plugins import PluginHost

    monkeypatch.chdir(tmp_path)
    (tmp_path / "inverse.py").write_text(python_blocks(DOCS / "plugins.md")[2])
    recipe = next(b for b in toml_blocks(DOCS / "plugins.md") if 'name = "inverse"' in b)
    (tmp_path / "inverse.toml").write_text(recipe.replace("steps = 2000", "steps = 30"))
    host = PluginHost(strict=False, disabled=set())
    host.load_entry_points()
    small = [o for o in TINY if not o.startswith(("decoder.", "critic."))]
    advinf.run_recipe(RECIPES / "gan_mixture25.toml", out="runs/gan", overrides=small, host=host)
    outcome = advinf.run_recipe("inverse.toml", out="runs/inverse", overrides=small, host=host)
    assert [p.name for p in outcome.trainer.players] == ["encoder"]
    assert outcome.trainer.nets.frozen == {"decoder"}
    record = json.loads((tmp_path / "runs" / "inverse" / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"loss_encoder", "data_error"} <= set(record)
    assert "modes_covered" in outcome.result.eval["mode_coverage"]
    run = advinf.load_run("runs/inverse", plugins=["inverse.py"], host=host)
    assert run.encode(run.sample(4)).mean.shape == (4, 2)
    with pytest.raises(advinf.UserError, match="does not use a network 'critic'"):
        advinf.load_recipe("inverse.toml", ["critic.name=toy_critic"], host=host)
    with pytest.raises(advinf.UserError, match="needs a fixed decoder"):
        advinf.run_recipe("inverse.toml", out="runs/unfrozen", overrides=[*small, "decoder.trainable=true"],
                          host=host)


def test_plugin_testing_example(tmp_path, monkeypatch, advinf_host):
    package = tmp_path / "my_package"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "critics.py").write_text(python_blocks(DOCS / "plugins.md")[0])
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        namespace: dict = {}
        exec(compile(python_blocks(DOCS / "plugins.md")[3], "plugins.md", "exec"), namespace)
        namespace["test_dot_critic"](advinf_host)
    finally:
        for name in ("my_package", "my_package.critics"):
            sys.modules.pop(name, None)


# -- every code block of docs/, as printed ------------------------------------------------------------------
#
# Each doc runs in a fresh folder (holding a copy of recipes/), its blocks in order:
# - a block preceded by `<!-- illustrative: REASON -->` is not run (few; see ILLUSTRATIVE);
# - a file block (preceded by `<!-- file: PATH -->`, or whose first line is `# PATH` naming a .py/.toml file)
#   is written to PATH under the current folder (Python files are compiled);
# - ```python defining `def test_...` is written to a file and run with pytest; any other ```python block is
#   executed in one namespace per doc, in the doc's folder (which is on sys.path);
# - ```toml is parsed, and validated with advinf.load_recipe when it is a whole recipe ([dataset] and [game]);
# - ```bash runs with bash -e; `cd` carries over to the next block. A doc that runs `pip install` gets a throwaway
#   virtual environment layered over the test environment (offline: no index, no build isolation, no dependency
#   resolution), so what it installs never reaches the test environment;
# - other blocks (```text, plain ```) are output or maths, not code.

#: The blocks not run, by doc: each says why in its marker.
ILLUSTRATIVE = {"distributed.md": 4, "performance.md": 2, "recipes.md": 5, "writing-plugins.md": 1}

_BLOCK = re.compile(r"(?:^<!-- (?P<mark>[^>]*?) -->\n)?^```(?P<lang>[\w-]*)\n(?P<code>.*?)^```\s*$", re.S | re.M)
_FIRST_LINE_FILE = re.compile(r"^# ([\w./-]+\.(?:py|toml))\n")


@dataclass
class Block:
    doc: str
    line: int
    lang: str
    code: str
    file: str | None = None
    illustrative: str | None = None

    @property
    def where(self) -> str:
        return f"docs/{self.doc}:{self.line}"


def doc_blocks(path: Path) -> list[Block]:
    text = path.read_text()
    out = []
    for m in _BLOCK.finditer(text):
        mark, lang, code = m.group("mark") or "", m.group("lang"), m.group("code")
        block = Block(path.name, text.count("\n", 0, m.start("code")), lang, code)
        if mark.startswith("file: "):
            block.file = mark[len("file: "):].strip()
        elif mark.startswith("illustrative"):
            block.illustrative = mark.partition(":")[2].strip()
        elif lang in ("python", "toml") and _FIRST_LINE_FILE.match(code):
            block.file = _FIRST_LINE_FILE.match(code).group(1)
        out.append(block)
    return out


class DocSession:
    """Runs one doc's blocks in order in ``root`` (see above)."""

    def __init__(self, root: Path, blocks: list[Block]):
        self.root = root
        self.cwd = root / "work"
        shutil.copytree(RECIPES, self.cwd / "recipes")
        self.namespace: dict = {}
        self.outputs: dict[int, str] = {}  # what each block printed, by its line
        self.env = cli_env(COLUMNS="120", PYTHONPATH=str(self.cwd))
        if any(b.lang == "bash" and not b.illustrative and "pip install" in b.code for b in blocks):
            self._make_venv()

    def _make_venv(self) -> None:
        venv = self.root / "venv"
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
        pure = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
        pure.mkdir(parents=True, exist_ok=True)
        parents = "; ".join(f"site.addsitedir({p!r})" for p in site.getsitepackages())
        (pure / "_test_environment.pth").write_text(f"import site; {parents}\n")
        for name, module in (("pip", "pip._internal.cli.main"), ("advinf", "advinf.cli"), ("pytest", "pytest")):
            script = venv / "bin" / name
            script.write_text(f"#!{venv / 'bin' / 'python'}\nimport sys\nfrom {module} import main\n"
                              "sys.exit(main())\n")
            script.chmod(0o755)
        self.env.update(PATH=f"{venv / 'bin'}{os.pathsep}{self.env['PATH']}", VIRTUAL_ENV=str(venv),
                        PIP_NO_INDEX="1", PIP_NO_BUILD_ISOLATION="0", PIP_NO_DEPS="1",
                        PIP_DISABLE_PIP_VERSION_CHECK="1")

    def run(self, block: Block) -> None:
        if block.illustrative is not None:
            return
        if block.file is not None:
            path = self.cwd / block.file
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(block.code)
            if path.suffix == ".py":
                compile(block.code, block.where, "exec")
            return
        runner = {"python": self._python, "toml": self._toml, "bash": self._bash}.get(block.lang)
        if runner is not None:
            runner(block)

    def _python(self, block: Block) -> None:
        if re.search(r"^def test_", block.code, re.M):
            test = self.cwd / f"test_doc_{block.line}.py"
            test.write_text(block.code)
            self._shell(block, f"{shlex.quote(sys.executable)} -m pytest -q -p no:cacheprovider {test.name}")
            return
        import advinf.plugins

        old_cwd, old_path, old_modules = Path.cwd(), list(sys.path), set(sys.modules)
        os.chdir(self.cwd)
        sys.path.insert(0, str(self.cwd))
        advinf.plugins.reset_default_host()
        printed = io.StringIO()
        try:
            with contextlib.redirect_stdout(printed):
                exec(compile(block.code, block.where, "exec"), self.namespace)
        finally:
            self.outputs[block.line] = printed.getvalue()
            os.chdir(old_cwd)
            sys.path[:] = old_path
            for name in set(sys.modules) - old_modules:  # modules of the doc's folder
                if str(getattr(sys.modules[name], "__file__", None) or "").startswith(str(self.root)):
                    del sys.modules[name]
            advinf.plugins.reset_default_host()

    def _toml(self, block: Block) -> None:
        data = tomllib.loads(block.code)
        if {"dataset", "game"} <= set(data):
            import advinf

            path = self.cwd / f"doc_recipe_{block.line}.toml"
            path.write_text(block.code)
            advinf.load_recipe(path)

    def _bash(self, block: Block) -> None:
        self._shell(block, block.code)

    def _shell(self, block: Block, code: str) -> None:
        where = self.root / "cwd"
        script = f"cd {shlex.quote(str(self.cwd))}\n{code}\npwd > {shlex.quote(str(where))}\n"
        out = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script], capture_output=True, text=True,
                             env=self.env, timeout=900)
        tail = f"{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
        assert out.returncode == 0, f"{block.where} failed ({out.returncode}):\n{tail}"
        self.outputs[block.line] = out.stdout
        self.cwd = Path(where.read_text().strip())


DOC_NAMES = sorted(p.name for p in DOCS.glob("*.md"))


@pytest.mark.parametrize("doc", DOC_NAMES)
def test_every_block_of_the_doc_runs_as_printed(doc, tmp_path):
    blocks = doc_blocks(DOCS / doc)
    session = DocSession(tmp_path, blocks)
    for block in blocks:
        session.run(block)
    check = DOC_CHECKS.get(doc)
    if check is not None:
        check(session)


def _check_writing_plugins(session: DocSession) -> None:
    listing = next(out for out in session.outputs.values() if "spectral 0.1.0" in out)  # list-plugins --verbose
    assert "spectral_critic" in listing and "relativistic_hinge" in listing
    assert "      hidden: int > 0 <= 65536 = 256  (width of each hidden layer)" in listing
    run = session.cwd / "runs" / "spectral"
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["step"] == 50
    assert "modes_covered" in json.loads((run / "eval.json").read_text())["mode_coverage"]
    recipe = tomllib.loads((run / "recipe.toml").read_text())
    assert (recipe["critic"]["name"], recipe["game"]["divergence"]) == ("spectral_critic", "relativistic_hinge")
    check = subprocess.run([sys.executable, "-c", "import advinf_spectral"], capture_output=True, env=cli_env())
    assert check.returncode != 0, "the doc's pip install reached the test environment"


def _check_library(session: DocSession) -> None:
    printed = list(session.outputs.values())
    assert "modes_covered" in printed[0]  # the Trainer example's evaluation
    assert (session.cwd / "runs" / "mine" / "eval.json").is_file()
    trainer = session.namespace["trainer"]
    critic, generator = trainer.optimizers["critic"], trainer.optimizers["generator"]
    assert critic.param_groups[0]["lr"] == 4e-4 and critic.param_groups[0]["betas"] == (0.2, 0.999)
    assert generator.param_groups[0]["lr"] == 1e-4
    lines = printed[1].splitlines()  # run_recipe and load_run
    assert lines[0].split()[0] == "100"
    assert lines[1] == "100 torch.Size([500, 2]) torch.Size([500, 2]) torch.Size([500, 2])"
    assert printed[2].startswith("mode 7 ")  # the conditional run
    lines = printed[3].splitlines()  # library runs that reload
    assert "cannot rebuild by name: critic (builtins.MyCritic, not made by advinf.create)" in lines[0]
    assert lines[-1] == "100 None"
    assert (session.cwd / "runs" / "by_name" / "recipe.toml").is_file()
    assert (session.cwd / "runs" / "own" / "library.json").is_file()


DOC_CHECKS = {"library.md": _check_library, "writing-plugins.md": _check_writing_plugins}


def test_illustrative_blocks_are_few_and_say_why():
    found = {}
    for doc in DOC_NAMES:
        marked = [b for b in doc_blocks(DOCS / doc) if b.illustrative is not None]
        assert all(b.illustrative for b in marked), f"docs/{doc}: an illustrative block without a reason"
        if marked:
            found[doc] = len(marked)
    assert found == ILLUSTRATIVE


def test_the_writing_plugins_tutorial_builds_the_example_package():
    """docs/writing-plugins.md writes exactly the files of examples/advinf-spectral, and all of them."""
    example = ROOT / "examples" / "advinf-spectral"
    files = {b.file: b.code for b in doc_blocks(DOCS / "writing-plugins.md") if b.file}
    shipped = {str(p.relative_to(example)): p.read_text() for p in example.rglob("*") if p.is_file()
               and not {"__pycache__", "build"} & set(p.parts) and ".egg-info" not in str(p)}
    assert files == shipped


# -- recipes shown in the docs ---------------------------------------------------------------------------

def test_readme_recipe_validates(tmp_path):
    import advinf

    block = next(b for b in toml_blocks(ROOT / "README.md") if b.startswith('name = "my_mixture25"'))
    rec = advinf.load_recipe(_write(tmp_path / "readme.toml", block))
    assert rec.optimizers["critic"].options == {"lr": 4e-4}
    assert rec.eval_every == {"mode_coverage": 5000}


def test_recipes_doc_optimizer_example_merges(tmp_path):
    import advinf

    block = next(b for b in toml_blocks(DOCS / "recipes.md") if "[optimizers.critic]" in b)
    base = (RECIPES / "ali_mixture25.toml").read_text().split("[optimizer]")[0]
    train = "\n[train]\nsteps = 10\n"
    rec = advinf.load_recipe(_write(tmp_path / "r.toml", base + block + train))
    critic = rec.optimizers["critic"]
    assert (critic.name, critic.options) == ("adam", {"lr": 4e-4, "betas": [0.2, 0.999]})


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# -- docs/architecture.md --------------------------------------------------------------------------------

LAYERS = ["foundations", "config", "engine", "use", "cli", "package"]


def _advinf_modules(node: ast.AST) -> set[str]:
    """The advinf modules an import statement names (``__init__`` for the package itself)."""
    core = ROOT / "advinf"
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        parts = node.module.split(".")
        if parts[0] != "advinf":
            return set()
        if len(parts) > 1:
            return {parts[1]}
        return {a.name if (core / f"{a.name}.py").exists() else "__init__" for a in node.names}
    if isinstance(node, ast.Import):
        return {a.name.split(".")[1] if "." in a.name else "__init__"
                for a in node.names if a.name.split(".")[0] == "advinf"}
    return set()


def _imports() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """Per module of advinf/: the modules it imports when loaded, and every module it imports anywhere."""
    loaded: dict[str, set[str]] = {}
    anywhere: dict[str, set[str]] = {}
    for path in sorted((ROOT / "advinf").glob("*.py")):
        tree = ast.parse(path.read_text())
        found: set[str] = set()
        stack = list(tree.body)
        while stack:  # module level, into if/try blocks, but not functions, classes or `if TYPE_CHECKING`
            node = stack.pop()
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) or (
                    isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)):
                continue
            found |= _advinf_modules(node)
            for name in ("body", "orelse", "finalbody", "handlers"):
                stack.extend(getattr(node, name, None) or [])
        loaded[path.stem] = found - {path.stem}
        anywhere[path.stem] = set().union(*map(_advinf_modules, ast.walk(tree))) - {path.stem}
    return loaded, anywhere


def _architecture() -> tuple[dict[str, tuple[str, set[str]]], set[tuple[str, str]]]:
    """docs/architecture.md: module -> (layer, documented imports), and the documented upward imports."""
    text = (DOCS / "architecture.md").read_text()
    table = {}
    for layer, module, deps in re.findall(r"^\| (\w+) \| `(\w+)` \| .*? \| ([^|]*) \|$", text, flags=re.M):
        table[module] = (layer, set(re.findall(r"`(\w+)`", deps)))
    upward = set()
    for src, dsts in re.findall(r"^- `(\w+)` → ((?:`\w+`(?:, )?)+):", text, flags=re.M):
        upward |= {(src, d) for d in re.findall(r"`(\w+)`", dsts)}
    return table, upward


def test_architecture_table_lists_every_module_with_its_imports():
    table, _ = _architecture()
    loaded, _ = _imports()
    assert set(table) == set(loaded), "docs/architecture.md: modules missing or gone: " \
                                      f"{sorted(set(table) ^ set(loaded))}"
    for module, deps in loaded.items():
        layer, documented = table[module]
        assert layer in LAYERS
        row = ", ".join(f"`{d}`" for d in sorted(deps)) or "–"
        assert documented == deps, f"docs/architecture.md: the imports of `{module}` are now: {row}"


def test_architecture_layers_hold_and_there_is_no_import_cycle():
    table, upward = _architecture()
    loaded, anywhere = _imports()
    rank = {m: LAYERS.index(layer) for m, (layer, _) in table.items()}
    found = {(m, d) for m, deps in loaded.items() for d in deps if rank[d] > rank[m]}
    assert found == upward, "imports that go up a layer, as found vs as docs/architecture.md lists them"
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(anywhere[m]):
            assert state.get(d) != 1, f"import cycle: {' -> '.join([*path, d])}"
            if d not in state:
                visit(d, [*path, d])
        state[m] = 2

    for m in sorted(anywhere):
        if m not in state:
            visit(m, [m])


def test_the_built_in_plugins_use_only_the_public_api():
    """docs/architecture.md: the built-in plugins import advinf like any third-party plugin: the package itself
    (its __all__, which lists the helpers for plugins of docs/plugins.md) and the documented modules ``advinf.layers``,
    ``advinf.divergences`` and ``advinf.regularisers``; anywhere in the file, functions included."""
    import advinf

    public_modules = {"layers", "divergences", "regularisers"}
    wrong = []
    for path in sorted((ROOT / "plugins").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                parts = node.module.split(".")
                if parts[0] != "advinf":
                    continue
                if len(parts) > 1 and parts[1] not in public_modules:
                    wrong.append(f"{path.name}:{node.lineno} from {node.module}")
                elif len(parts) == 1:
                    wrong += [f"{path.name}:{node.lineno} advinf.{a.name} (not in __all__)" for a in node.names
                              if a.name not in advinf.__all__ and a.name not in public_modules]
            elif isinstance(node, ast.Import):
                wrong += [f"{path.name}:{node.lineno} import {a.name}" for a in node.names
                          if a.name.startswith("advinf.") and a.name.split(".")[1] not in public_modules]
    assert wrong == []
    documented = (DOCS / "plugins.md").read_text()
    helpers = advinf.__all__[advinf.__all__.index("MAIN"):]  # the helpers for plugins, listed last
    assert [h for h in helpers if f"`{h}`" not in documented and f"`{h}(" not in documented] == []


def test_every_public_method_says_what_it_does():
    """Each public method of the classes ``import advinf`` exports has a docstring, its own or an advinf base
    class's (a torch base class's ``forward`` doc says nothing about an encoder)."""
    import inspect

    import advinf

    missing = []
    for name in advinf.__all__:
        cls = getattr(advinf, name)
        if not inspect.isclass(cls) or not cls.__module__.startswith("advinf"):
            continue
        for attr, value in vars(cls).items():
            if attr.startswith("_") or not callable(value):
                continue
            owners = [k for k in cls.__mro__ if attr in vars(k) and (getattr(vars(k)[attr], "__doc__", None) or "")
                      .strip()]
            if not owners or not owners[0].__module__.startswith("advinf"):
                missing.append(f"{name}.{attr}")
    assert missing == []
