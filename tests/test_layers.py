"""The layering of advinf/: no import cycles, the core never imports the plugins, the engine never imports the
recipe or plugin layers (settings come as plain models)."""

from __future__ import annotations

import ast

from conftest import ROOT

CORE = ROOT / "advinf"


def imports() -> dict[str, set[str]]:
    """advinf module -> the advinf modules it imports anywhere (module level or inside functions)."""
    out: dict[str, set[str]] = {}
    for path in CORE.glob("*.py"):
        name = "advinf" if path.stem == "__init__" else f"advinf.{path.stem}"
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.module == "advinf":
                    deps |= {f"advinf.{a.name}" if (CORE / f"{a.name}.py").exists() else "advinf" for a in node.names}
                else:
                    deps.add(node.module)
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names}
        out[name] = {d for d in deps if d.split(".")[0] in ("advinf", "advinf_plugins")} - {name}
    return out


def test_no_import_cycles():
    graph = {m: d for m, d in imports().items() if m != "advinf"}
    assert all("advinf" not in deps for deps in graph.values()), "a module imports the package itself"
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph.get(m, ())):
            assert state.get(d) != 1, f"import cycle: {' -> '.join([*path, d])}"
            if d not in state:
                visit(d, [*path, d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


def test_the_core_never_imports_plugins_and_the_engine_not_the_config_layer():
    graph = imports()
    assert not any(d.startswith("advinf_plugins") for deps in graph.values() for d in deps)
    config = {"advinf.recipe", "advinf.plugins", "advinf.builder", "advinf.hookspecs", "advinf.session"}

    def reach(m: str, seen: set[str]) -> set[str]:
        for d in graph.get(m, ()):
            if d not in seen:
                seen.add(d)
                reach(d, seen)
        return seen

    for engine in ("advinf.trainer", "advinf.batches", "advinf.checkpoint", "advinf.evaluation", "advinf.settings"):
        assert not reach(engine, set()) & config, f"{engine} reaches {reach(engine, set()) & config}"
