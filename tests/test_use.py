"""Using a trained run: evaluators on demand (merged into eval.json), the curves over steps."""

from __future__ import annotations

import json
import shutil
import warnings

import pytest
from click.testing import CliRunner
from conftest import RECIPES, TINY, TINY_ENCODER
from PIL import Image

import advinf
from advinf.cli import cli
from advinf.plots import curves, plot_run
from advinf.runs import evaluate_run


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("use") / "run"
    args = ["run", str(RECIPES / "ali_mixture25.toml"), "--out", str(out),
            "--set", "evaluators.mode_coverage.every=10"]
    res = CliRunner().invoke(cli, args + [a for t in TINY + TINY_ENCODER for a in ("--set", t)])
    assert res.exit_code == 0, res.output
    return out


def test_evaluators_on_demand_merge_into_eval_json(trained):
    before = json.loads((trained / "eval.json").read_text())
    (trained / "eval.json").write_text(json.dumps({**before, "earlier": {"kept": 1}}))
    results = evaluate_run(trained, ["mode_coverage"], ["evaluators.mode_coverage.samples=200",
                                                         "evaluators.mode_coverage.plot=false"], device="cpu")
    merged = json.loads((trained / "eval.json").read_text())
    assert merged["earlier"] == {"kept": 1}  # never loses earlier entries
    options = merged["mode_coverage"].pop("options")  # the options it was computed with, `every` left out
    assert (options["samples"], "plot" in options, "every" in options) == (200, False, False)  # plot: pictures
    assert merged["mode_coverage"] == {**results["mode_coverage"], "step": 30}  # the step of the model evaluated
    assert results["mode_coverage"]["modes_total"] == 25
    with pytest.raises(advinf.UserError, match="unknown evaluator"):
        evaluate_run(trained, ["mode_coverag"], device="cpu")
    with pytest.raises(advinf.UserError, match=r"changes evaluators \(evaluators.NAME.key=value\) and where "
                                               r"the run.s data is \(dataset.KEY=VALUE\), not: train.steps=5"):
        evaluate_run(trained, ["mode_coverage"], ["train.steps=5"], device="cpu")
    with pytest.raises(advinf.RecipeError, match="evaluators.mode_coverage.samples"):
        evaluate_run(trained, ["mode_coverage"], ["evaluators.mode_coverage.samples=true"], device="cpu")


def test_curves_over_steps(trained, tmp_path):
    series = curves(trained)
    assert series["loss_critic"][0] == [10, 20, 30] and len(series["loss_critic"][1]) == 3
    assert series["eval/mode_coverage.modes_covered"][0] == [10, 20, 30]  # every 10, then eval.json at the end
    path = plot_run(trained, tmp_path / "curves.png")
    with Image.open(path) as img:
        assert img.size[0] > 800 and img.size[1] > 400
    with pytest.raises(advinf.UserError, match="not an advinf run directory"):
        plot_run(tmp_path)


def test_the_plot_leaves_out_how_numbers_were_computed_and_numbers_that_never_change():
    """An image run's plot had ~100 panels, most of them the feature network's description and timings."""
    from advinf.plots import _bookkeeping

    assert _bookkeeping("eval/fid.network_info.seconds", [1.0]) and _bookkeeping("eval/svm_probe.repeats", [10.0])
    assert _bookkeeping("eval/mode_coverage.modes_total", [25.0, 25.0, 25.0])
    assert not _bookkeeping("eval/mode_coverage.modes_covered", [3.0, 7.0]) and not _bookkeeping("eval/fid.fid", [9.0])
    assert not _bookkeeping("loss_critic", [1.0, 1.0])  # training curves are all drawn


def test_damaged_metric_lines_are_left_out_with_a_warning_and_a_torn_last_line_quietly(trained, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    lines = (copy / "metrics.jsonl").read_text().splitlines()
    (copy / "metrics.jsonl").write_text("\n".join([lines[0], "{not json", lines[1], '{"step": true}', "", lines[2],
                                                    '{"step": 40, "loss_cr']))  # torn: no newline after it
    with pytest.warns(UserWarning, match=r"metrics.jsonl: lines 2, 4 are not a JSON record with a step; left out"):
        series = curves(copy)
    assert series["loss_critic"][0] == [10, 20, 30]
    (copy / "metrics.jsonl").write_text("\n".join([*lines, '{"step": 40, "loss_cr']))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert curves(copy)["loss_critic"][0] == [10, 20, 30]


def test_evaluate_and_plot_commands(trained, tmp_path):
    res = CliRunner().invoke(cli, ["evaluate", str(trained), "--with", "mode_coverage", "--set",
                                   "evaluators.mode_coverage.plot=false", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "modes_covered" in res.output and "merged into eval.json" in res.output
    # a probe that cannot run on this data says why, in the table too (the toy mixture has too few examples)
    res = CliRunner().invoke(cli, ["evaluate", str(trained), "--with", "svm_probe", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "skipped" in res.output and "evaluators.svm_probe" in res.output.replace("\n", "").replace(" ", "")
    res = CliRunner().invoke(cli, ["evaluate", str(trained), "--json", "--device", "cpu"])
    assert res.exit_code == 0 and json.loads(res.output)["mode_coverage"]["modes_total"] == 25
    res = CliRunner().invoke(cli, ["plot", str(trained), "--out", str(tmp_path / "c.png")])
    assert res.exit_code == 0 and (tmp_path / "c.png").stat().st_size > 10_000
    plugin = tmp_path / "mine.py"
    plugin.write_text("VALUE = 1\n")
    res = CliRunner().invoke(cli, ["plot", str(trained), "--out", str(tmp_path / "d.png"), "--plugin", str(plugin)])
    assert res.exit_code == 0, res.output  # --plugin, as every command on a run takes it (a usage error, before)
    # a setting of an evaluator --with did not pick ran that evaluator too
    before = (trained / "eval.json").read_bytes()
    for picked in (["--with", "mode_coverage"], []):
        res = CliRunner().invoke(cli, ["evaluate", str(trained), *picked, "--set", "evaluators.knn_probe.k=3"])
        assert res.exit_code == 2 and "--set evaluators.knn_probe.k=3: that evaluator is not among those to run " \
            "(mode_coverage); add it to --with" in res.output, res.output
    assert (trained / "eval.json").read_bytes() == before


def test_eval_json_entries_say_their_step_and_a_stale_one_is_not_shown_as_the_runs(tmp_path):
    from advinf.compare import compare_runs

    run = tmp_path / "run"
    tiny = [a for t in TINY + TINY_ENCODER for a in ("--set", t)]
    assert CliRunner().invoke(cli, ["run", str(RECIPES / "ali_mixture25.toml"), "--out", str(run), *tiny]).exit_code \
        == 0
    evaluate_run(run, ["reconstruction"], ["evaluators.reconstruction.classifier=false"], device="cpu")  # step 30
    res = CliRunner().invoke(cli, ["run", "--resume", str(run), "--set", "train.steps=40", "--allow-changes"])
    assert res.exit_code == 0, res.output
    saved = json.loads((run / "eval.json").read_text())
    assert (saved["mode_coverage"]["step"], saved["reconstruction"]["step"]) == (40, 30)
    series = curves(run)  # each entry drawn at its own step
    assert series["eval/reconstruction.mse_mean"][0][-1] == 30
    assert series["eval/mode_coverage.modes_covered"][0][-1] == 40
    with (run / "evals.jsonl").open("a") as f:  # an evaluation after that entry's step: drawn in step order
        f.write(json.dumps({"step": 35, "reconstruction": {"mse_mean": 0.5}}) + "\n")
    assert curves(run)["eval/reconstruction.mse_mean"][0] == [30, 35]
    with pytest.warns(UserWarning, match=r"'reconstruction' is of step 30, the run is at step 40: left out"):
        table = compare_runs([run], tmp_path / "cmp", figure=False)
    assert set(table.runs[0].metrics) == {"mode_coverage"} and "step" not in table.runs[0].metrics["mode_coverage"]


def test_resuming_a_finished_run_does_not_redo_its_evaluation_unless_it_is_missing(tmp_path):
    run = tmp_path / "run"
    tiny = [a for t in TINY + TINY_ENCODER for a in ("--set", t)]
    assert CliRunner().invoke(cli, ["run", str(RECIPES / "ali_mixture25.toml"), "--out", str(run), *tiny]).exit_code \
        == 0
    before = (run / "eval.json").read_bytes()
    res = CliRunner().invoke(cli, ["run", "--resume", str(run)])
    assert res.exit_code == 0 and "had already finished at step 30, and eval.json holds its evaluation" in res.output
    assert (run / "eval.json").read_bytes() == before  # nothing evaluated again
    assert json.loads(res.output[res.output.index("{"):])["mode_coverage"]["modes_total"] == 25  # still reported
    (run / "eval.json").write_text("{}")  # as if the final evaluation had been interrupted
    res = CliRunner().invoke(cli, ["run", "--resume", str(run)])
    assert res.exit_code == 0 and "already finished" not in res.output
    assert json.loads((run / "eval.json").read_text())["mode_coverage"]["step"] == 30
    written = (run / "eval.json").stat().st_mtime_ns
    res = CliRunner().invoke(cli, ["run", "--resume", str(run), "--set", "evaluators.mode_coverage.samples=300",
                                   "--allow-changes"])  # a changed evaluator runs again
    assert res.exit_code == 0 and "already finished" not in res.output
    assert (run / "eval.json").stat().st_mtime_ns != written and "trained 0 steps; at step 30 of 30" in res.output
    assert json.loads((run / "eval.json").read_text())["mode_coverage"]["options"]["samples"] == 300

    # a one-off `advinf evaluate --set` at the last step is not the run's evaluation: a resume evaluates again
    evaluate_run(run, ["mode_coverage"], ["evaluators.mode_coverage.samples=200"], device="cpu")
    assert json.loads((run / "eval.json").read_text())["mode_coverage"]["options"]["samples"] == 200
    res = CliRunner().invoke(cli, ["run", "--resume", str(run)])
    assert res.exit_code == 0 and "already finished" not in res.output
    assert json.loads((run / "eval.json").read_text())["mode_coverage"]["options"]["samples"] == 300
    res = CliRunner().invoke(cli, ["run", "--resume", str(run)])  # now it is: nothing to do
    assert res.exit_code == 0 and "had already finished" in res.output
    assert "options" not in json.loads(res.stdout)["mode_coverage"]  # the stamps stay in eval.json
    # an option that changes only the pictures (ModeCoverage.pictures_only) changes no number: nothing to do again
    evaluate_run(run, ["mode_coverage"], ["evaluators.mode_coverage.plot=false"], device="cpu")
    assert "plot" not in json.loads((run / "eval.json").read_text())["mode_coverage"]["options"]
    res = CliRunner().invoke(cli, ["run", "--resume", str(run)])
    assert res.exit_code == 0 and "had already finished" in res.output
    # nor is an evaluation on other data (`advinf evaluate --set dataset.grid=4`): it was reported as the run's
    with pytest.warns(UserWarning, match="other data than it trained on"):
        evaluate_run(run, ["mode_coverage"], ["dataset.grid=4"], device="cpu")
    assert json.loads((run / "eval.json").read_text())["mode_coverage"]["modes_total"] == 16
    res = CliRunner().invoke(cli, ["run", "--resume", str(run)])
    assert res.exit_code == 0 and "already finished" not in res.output
    assert json.loads((run / "eval.json").read_text())["mode_coverage"]["modes_total"] == 25


def test_evaluating_a_run_whose_recipe_names_no_evaluator_says_what_to_do(tmp_path):
    """Not an empty table and exit status 0."""
    run, recipe = tmp_path / "run", tmp_path / "no_evaluators.toml"
    recipe.write_text((RECIPES / "ali_mixture25.toml").read_text().split("[evaluators")[0])
    tiny = [a for t in TINY + TINY_ENCODER if not t.startswith("evaluators.") for a in ("--set", t)]
    res = CliRunner().invoke(cli, ["run", str(recipe), "--out", str(run), *tiny])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(cli, ["evaluate", str(run), "--device", "cpu"])
    assert res.exit_code == 2 and "recipe names no evaluators: choose some with --with NAME" in res.output, res.output
    assert not (run / "eval.json").exists()


def test_a_recipe_and_a_run_directory_both_given_say_which_form_to_use(tmp_path):
    """Not click's bare 'Got unexpected extra argument'."""
    res = CliRunner().invoke(cli, ["run", str(RECIPES / "ali_mixture25.toml"), "--resume", str(tmp_path / "r")])
    said = " ".join(res.output.split())
    assert res.exit_code == 2 and f"continue the run with advinf run --resume {tmp_path / 'r'} (its own recipe), " \
        f"or advinf run {RECIPES / 'ali_mixture25.toml'} --out {tmp_path / 'r'} --resume" in said, said
    res = CliRunner().invoke(cli, ["run", str(RECIPES / "ali_mixture25.toml"), str(tmp_path / "r")])
    assert res.exit_code == 2 and "give the run directory as --out DIR" in res.output
    assert not (tmp_path / "r").exists()


def test_a_start_an_evaluator_refuses_leaves_nothing_behind(tmp_path, monkeypatch):
    """An evaluator's skip_reason that raises (data it can never read) fails the run before it writes a file."""
    from advinf.session import run_recipe
    from advinf_plugins.mode_coverage import ModeCoverage

    def refuse(self, data):
        raise advinf.UserError("evaluator 'mode_coverage' cannot read this data")

    monkeypatch.setattr(ModeCoverage, "skip_reason", refuse)
    with pytest.raises(advinf.UserError, match="cannot read this data"):
        run_recipe(RECIPES / "ali_mixture25.toml", out=tmp_path / "run", overrides=[*TINY, *TINY_ENCODER],
                   log=lambda m: None)
    assert not (tmp_path / "run").exists()


def test_a_gpu_run_s_saved_recipe_reads_back_on_a_machine_without_one(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    text = (RECIPES / "ali_mixture25.toml").read_text().replace("[train]", '[train]\ndevice = "cuda:7"')
    (run / "recipe.toml").write_text(text)
    assert advinf.saved_recipe(run).spec.train.device == "cuda:7"


def test_a_damaged_eval_json_is_named_by_compare_and_left_out_of_plots_with_a_warning(trained, tmp_path):
    """compare refuses an eval.json that is not a table of entries (it would tabulate wrong numbers); plot draws
    the training curves and warns; a bare NaN of an older file is read as null, as evaluation writes it now."""
    from advinf.compare import compare_runs

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    good = json.loads((run / "eval.json").read_text())
    path = run / "eval.json"
    for damaged, why in (('{"mode_coverage": 5}', "the entry 'mode_coverage' is 5, not a table"),
                         ("[1]", "does not hold a JSON object"), ("{,", "cannot be read as JSON")):
        path.write_text(damaged)
        res = CliRunner().invoke(cli, ["compare", str(run), "--out", str(tmp_path / "cmp")])
        assert res.exit_code == 2 and why in res.output and str(path) in " ".join(res.output.split()), res.output
        assert "move it away to recompute" in res.output and path.read_text() == damaged
        with pytest.warns(UserWarning, match=f"{why}.*left out of the plot"):
            series = curves(run)
        assert series["loss_critic"][0] == [10, 20, 30] and series["eval/mode_coverage.modes_covered"][0] == [10, 20]
    path.unlink()
    path.mkdir()  # a folder in its place is not a missing file: compare does not recompute behind it
    res = CliRunner().invoke(cli, ["compare", str(run), "--out", str(tmp_path / "cmp")])
    assert res.exit_code == 2 and "eval.json is not a regular file; move it away" in res.output, res.output
    path.rmdir()
    good["mode_coverage"]["reconstruction_accuracy"] = float("nan")
    path.write_text(json.dumps(good))  # Python writes NaN, which JSON has not
    table = compare_runs([run], tmp_path / "cmp2", figure=False)
    assert table.runs[0].metrics["mode_coverage"]["reconstruction_accuracy"] is None
    assert curves(run)["eval/mode_coverage.modes_covered"][0] == [10, 20, 30]


def test_what_files_hold_reaches_the_terminal_as_text(trained, tmp_path):
    """An eval.json handed over with an escape sequence (a terminal title, a colour) or rich markup in a key: the
    error quoting it and the tables showing it print it as text."""
    import shutil

    from advinf.cli import printable

    assert printable("a\x1b]0;owned\x07b\nc\td") == "a\\x1b]0;owned\\x07b\nc\td"
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    data = json.loads((run / "eval.json").read_text())
    (run / "eval.json").write_text(json.dumps({**data, "bad\x1b]0;owned\x07": 1}))
    res = CliRunner().invoke(cli, ["evaluate", str(run), "--with", "mode_coverage"])
    assert res.exit_code == 2 and "bad\\x1b]0;owned\\x07" in res.output and "\x1b" not in res.output, res.output
    data["mode_coverage"]["[red]x\x1b[31m"] = 1.5
    (run / "eval.json").write_text(json.dumps(data))
    res = CliRunner().invoke(cli, ["compare", str(run), "--out", str(tmp_path / "cmp")])
    assert res.exit_code == 0, res.output
    assert "\x1b" not in res.output and "[red]x\\x1b[31m" in res.output.replace("\n", ""), res.output


def test_commands_suggested_for_a_path_with_spaces_are_quoted(trained, tmp_path):
    """They were pasted as two arguments: `advinf evaluate /x/a b/run`."""
    import shlex
    import shutil

    run = tmp_path / "a b" / "run"
    shutil.copytree(trained, run)
    res = CliRunner().invoke(cli, ["run", "--resume", str(run)])
    assert res.exit_code == 0 and f"advinf evaluate {shlex.quote(str(run))} runs the evaluators" in res.output, \
        res.output
