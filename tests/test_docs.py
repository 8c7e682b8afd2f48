"""The code in the docs runs (with a tiny budget)."""

from __future__ import annotations

import re
from pathlib import Path

DOCS = Path(__file__).parent.parent / "docs"


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def test_library_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = python_blocks(DOCS / "library.md")[0]
    code = code.replace("steps=5000", "steps=5").replace('"mixture25")', '"mixture25", None, samples=500)')
    evaluator = 'create("evaluator", "mode_coverage"'
    code = code.replace(evaluator + ")", evaluator + ", None, plot=False)")
    exec(compile(code, "library.md", "exec"), {})
    assert "modes_covered" in capsys.readouterr().out
    assert (tmp_path / "runs" / "mine" / "eval.json").is_file()


def test_plugin_example_registers_and_validates(tmp_path, advinf_host):
    import types

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
