"""A trained run away from its data: checkpoints describe the data, so a run samples without it, and
``--set dataset.KEY=VALUE`` (``load_run(data=...)``) says where moved data is now, checked against that record."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from click.testing import CliRunner
from conftest import RECIPES
from image_formats import write_image_folder, write_mnist
from pydantic import ValidationError

import advinf
from advinf import UserError
from advinf import checkpoint as ckpt
from advinf.cli import cli
from advinf.compare import compare_runs
from advinf.data import (
    DataDescription,
    Dataset,
    Split,
    StreamingSplit,
    describe,
    described_dataset,
    unlike_description,
)

torch.set_num_threads(1)


def test_a_description_rebuilds_what_networks_are_sized_and_conditioned_by():
    classes = Dataset(Split(torch.zeros(5, 1, 28, 28, dtype=torch.uint8), torch.tensor([0, 3, 1, 2, 3])))
    attributes = Dataset(Split(torch.rand(4, 3, 8, 8), torch.zeros(4, 2, dtype=torch.uint8)),
                         meta={"attributes": ["smiling", "male"]})
    unlabelled = Dataset(Split(torch.rand(6, 2)))
    streamed = Dataset(StreamingSplit([(torch.zeros(3, 4, 4, dtype=torch.uint8), 1)] * 3, labelled=True),
                       meta={"classes": ["cat", "dog"]})
    for data in (classes, attributes, unlabelled, streamed):
        record = describe(data)
        stand_in = described_dataset(json.loads(json.dumps(record.model_dump(mode="json"))))  # as state.json holds it
        assert len(stand_in.train) == 0 and stand_in.meta["described_only"] and stand_in.heldout is None
        assert stand_in.sample_shape == data.sample_shape and stand_in.label_info() == data.label_info()
        assert describe(stand_in) == record.model_copy(update={"examples": 0})  # no examples, what it describes
        assert record.examples == len(data.train) and record.heldout_examples is None
    assert describe(classes).labels.names == ["0", "1", "2", "3"] and describe(classes).labels.shape == []
    assert describe(attributes).labels.model_dump() == {"kind": "attributes", "names": ["smiling", "male"],
                                                        "shape": [2], "dtype": "uint8"}
    assert describe(unlabelled).labels is None and describe(streamed).dtype == "uint8"


def test_unlike_data_is_told_apart_and_a_damaged_record_refused():
    trained = describe(Dataset(Split(torch.zeros(2, 1, 28, 28, dtype=torch.uint8), torch.tensor([0, 1]))))
    assert unlike_description(trained, trained) is None
    bigger = describe(Dataset(Split(torch.zeros(2, 1, 32, 32, dtype=torch.uint8), torch.tensor([0, 1]))))
    assert unlike_description(bigger, trained) == "its examples have shape (1, 32, 32), the run's (1, 28, 28)"
    floats = describe(Dataset(Split(torch.zeros(2, 1, 28, 28), torch.tensor([0, 1]))))
    assert unlike_description(floats, trained) == "its examples are float32, the run's were uint8"
    more = describe(Dataset(Split(torch.zeros(3, 1, 28, 28, dtype=torch.uint8), torch.tensor([0, 1, 2]))))
    assert "its labels (classes: 0, 1, 2) are not the run's (classes: 0, 1)" in unlike_description(more, trained)
    none = describe(Dataset(Split(torch.zeros(2, 1, 28, 28, dtype=torch.uint8))))
    assert unlike_description(none, trained) == "it has no labels, the run's data had"
    good = trained.model_dump(mode="json")
    for bad in ({**good, "sample_shape": [1, 0, 28]}, {**good, "sample_shape": [True, 28, 28]},
                {**good, "dtype": "complex64"}, {**good, "sample_shape": []}, {**good, "extra": 1},
                {**good, "labels": {**good["labels"], "kind": "regression"}}):
        with pytest.raises(ValidationError):
            DataDescription.model_validate(bad)
    with pytest.raises(ValueError, match="datasets hold one of"):
        describe(Dataset(Split(torch.zeros(2, 3, dtype=torch.complex64))))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-step BiGAN MNIST run on real-format files, its data then moved from data/ to moved/."""
    root = tmp_path_factory.mktemp("moved")
    write_mnist(root / "data", train=40, test=12)
    run = root / "run"
    args = ["run", str(RECIPES / "bigan_mnist.toml"), "--out", str(run)]
    for s in (f"dataset.root={root / 'data'}", "dataset.verify=false", "train.steps=2", "train.batch_size=8",
              "train.progress=none", "evaluators.knn_probe.labels=10", "evaluators.knn_probe.validation=4"):
        args += ["--set", s]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    shutil.move(root / "data", root / "moved")
    return run


def _cli(*args: str):
    return CliRunner().invoke(cli, list(args))


def test_a_run_samples_without_its_data_and_says_what_needs_it(trained, tmp_path):
    state = json.loads((ckpt.latest_checkpoint(trained / "checkpoints") / "state.json").read_text())
    assert state["data"] == {"sample_shape": [1, 28, 28], "dtype": "uint8",
                             "labels": {"kind": "classes", "names": [str(i) for i in range(10)], "shape": [],
                                        "dtype": "int64"}, "examples": 40, "heldout_examples": 12}
    res = _cli("sample", str(trained), "--out", str(tmp_path / "s.png"), "--count", "4")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "s.png").is_file()
    res = _cli("reconstruct", str(trained), "--out", str(tmp_path / "r.png"))
    assert res.exit_code == 2 and not (tmp_path / "r.png").exists()
    assert f"this needs the data of run '{trained}', which cannot be used here: dataset.root: dataset 'mnist': " \
           "files not found under" in res.output
    assert "--set dataset.root=PATH" in res.output and "Traceback" not in res.output

    run = advinf.load_run(trained, device="cpu")
    assert run.sample(3).shape == (3, 1, 28, 28) and "files not found" in run.data_problem
    assert run.built.dataset.meta["described_only"]
    with pytest.raises(UserError, match="this needs the data of run"):
        _ = run.dataset


def test_moved_data_is_found_again_and_checked(trained, tmp_path):
    moved = trained.parent / "moved"
    res = _cli("reconstruct", str(trained), "--out", str(tmp_path / "r.png"), "--set", f"dataset.root={moved}")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "r.png").is_file()  # the default --count (50), on a held-out split of 12: all of them
    res = _cli("reconstruct", str(trained), "--count", "13", "--set", f"dataset.root={moved}")
    assert res.exit_code == 2 and "--count 13 asks for more examples than the heldout split holds (12)" in res.output
    run = advinf.load_run(trained, device="cpu", data=[f"dataset.root={moved}"])
    # where the data is read from is no change to it (dataset.root is marked DataAccess): nothing to record
    assert len(run.dataset.heldout) == 12 and run.data_problem is None and run.data_changes == {}
    with pytest.warns(UserWarning, match=r"loaded with other data than it trained on \(dataset.limit = 30, was "):
        run = advinf.load_run(trained, device="cpu", data=[f"dataset.root={moved}", "dataset.limit=30"])
    assert run.data_changes == {"limit": 30} and len(run.dataset.train) == 30

    res = _cli("reconstruct", str(trained), "--set", f"dataset.root={moved}", "--set", "dataset.size=32")
    assert res.exit_code == 2
    assert "cannot be used: the data found is not what the run trained on: its examples have shape (1, 32, 32), " \
           "the run's (1, 28, 28)" in res.output
    res = _cli("reconstruct", str(trained), "--set", f"dataset.root={tmp_path / 'nowhere'}")
    assert res.exit_code == 2 and f"the data of run '{trained}' cannot be loaded" in res.output
    res = _cli("sample", str(trained), "--set", "train.steps=3")
    assert res.exit_code == 2 and "set with dataset.KEY=VALUE (where it is now), not: train.steps=3" in res.output

    res = _cli("evaluate", str(trained), "--with", "knn_probe", "--set", f"dataset.root={moved}", "--json")
    assert res.exit_code == 0, res.output
    entry = json.loads((trained / "eval.json").read_text())["knn_probe"]
    assert "dataset_changes" not in entry and entry["test_examples"] == 12
    # the untrained baseline is rebuilt on the data found, not from the recipe's old root
    assert entry["untrained"]["init"].startswith("rebuilt by advinf.build from the loaded run's recipe")
    assert advinf.load_run(trained, device="cpu", data=f"dataset.root={moved}").data_problem is None  # one, bare
    assert "dataset_changes" not in json.loads(res.output)["knn_probe"]


def test_a_resume_on_unlike_data_is_refused(trained, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    moved = trained.parent / "moved"
    res = _cli("run", "--resume", "--out", str(copy), "--set", f"dataset.root={moved}", "--set", "dataset.size=32",
               "--set", "train.steps=3", "--allow-changes")
    assert res.exit_code == 2
    assert "was trained on other data: its examples have shape (1, 32, 32), the run's (1, 28, 28)" in res.output
    res = _cli("run", "--resume", "--out", str(copy), "--set", f"dataset.root={moved}", "--set", "train.steps=3")
    assert res.exit_code == 2 and "differs from the one" in res.output
    assert "in: train.steps;" in res.output  # the root is no change to the run: not listed
    res = _cli("run", "--resume", "--out", str(copy), "--set", f"dataset.root={moved}", "--set", "train.steps=3",
               "--allow-changes")
    assert res.exit_code == 0, res.output


def test_a_run_whose_data_moved_resumes_with_the_new_root_alone(trained, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    moved = trained.parent / "moved"
    res = _cli("run", "--resume", "--out", str(copy), "--stop-after", "2")
    assert res.exit_code == 2 and "dataset.root: dataset 'mnist': files not found" in res.output
    res = _cli("run", "--resume", "--out", str(copy), "--set", f"dataset.root={moved}")  # no --allow-changes
    assert res.exit_code == 0, res.output
    assert f'the data is read with dataset.root = "{moved}" (was "{trained.parent / "data"}")' in res.output
    assert "nothing to do" in res.output  # the run had finished: no change to it, nothing to train again
    assert advinf.saved_recipe(copy).spec.dataset.name == "mnist"
    assert advinf.saved_recipe(copy).options["dataset"].root == str(moved)  # the next resume finds it there
    res = _cli("run", "--resume", "--out", str(copy), "--set", "train.steps=3", "--allow-changes")
    assert res.exit_code == 0 and "resuming" in res.output, res.output
    assert ckpt.latest_checkpoint(copy / "checkpoints").name == "step_0000003"


def test_a_checkpoint_without_a_record_needs_its_data(trained, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    folder = ckpt.latest_checkpoint(copy / "checkpoints")
    state = json.loads((folder / "state.json").read_text())
    del state["data"]  # as an older advinf wrote it
    state["state_checksum"] = ckpt._state_checksum(state)
    (folder / "state.json").write_text(json.dumps(state))
    with pytest.raises(UserError, match=r"the data of run .* cannot be loaded: dataset.root: .*\n.*--set "
                                        r"dataset.root=PATH"):
        advinf.load_run(copy, device="cpu")
    run = advinf.load_run(copy, device="cpu", data=[f"dataset.root={trained.parent / 'moved'}"])
    assert run.sample(2).shape == (2, 1, 28, 28)


CONDITIONAL = """
name = "c"
[dataset]
name = "image_folder"
root = "{root}"
size = 8
grayscale = true
labels = "folders"
[prior]
name = "gaussian"
dim = 8
[encoder]
name = "digits_encoder"
width = 4
hidden = 16
[decoder]
name = "digits_decoder"
width = 4
[critic]
name = "digits_critic"
width = 4
hidden = 16
[game]
{game}
[train]
steps = 4
batch_size = 4
checkpoint_every = 2
progress = "none"
threads = 1
"""


def test_labels_a_game_reads_are_checked_on_resume_and_classes_need_no_data(tmp_path):
    pics = tmp_path / "pics"
    write_image_folder(pics, {"a": 3, "b": 3, "c": 3}, size=(12, 12))
    recipe = tmp_path / "c.toml"
    recipe.write_text(CONDITIONAL.format(root=pics, game='name = "conditional_ali"\nembedding_dim = 8'))
    run = tmp_path / "run"
    assert _cli("run", str(recipe), "--out", str(run), "--stop-after", "2").exit_code == 0
    (pics / "c").rename(pics / "x")  # class 2 now means another thing
    res = _cli("run", "--resume", str(run))
    assert res.exit_code == 2 and "was trained on other data: its labels (classes: a, b, x) are not the run's " \
        "(classes: a, b, c)" in res.output and "--allow-changes" in res.output
    (pics / "x").rename(pics / "c")
    shutil.copytree(pics / "a", pics / "d")  # a fourth class: the condition embedding cannot take it
    res = _cli("run", "--resume", str(run), "--allow-changes")
    assert res.exit_code == 2 and "its labels (classes: a, b, c, d) are not the run's" in res.output
    assert "--allow-changes" not in res.output
    shutil.rmtree(pics / "d")
    pics.rename(tmp_path / "elsewhere")
    for args in ([], ["--grid", "conditions"], ["--condition", "b"]):  # classes: no data needed
        res = _cli("sample", str(run), "--out", str(tmp_path / "s.png"), *args)
        assert res.exit_code == 0, res.output


def test_labels_a_game_never_reads_may_change(tmp_path):
    pics = tmp_path / "pics"
    write_image_folder(pics, {"a": 3, "b": 3}, size=(12, 12))
    recipe = tmp_path / "u.toml"
    recipe.write_text(CONDITIONAL.format(root=pics, game='name = "ali"'))
    run = tmp_path / "run"
    assert _cli("run", str(recipe), "--out", str(run), "--stop-after", "2").exit_code == 0
    shutil.copytree(pics / "a", pics / "c")
    # more images are other data, said where they are used, and a resume on them is asked for
    with pytest.warns(UserWarning, match="the data found is not the data it trained on: it holds 9 training "
                                         "examples, the run's data 6"):
        res = _cli("reconstruct", str(run), "--out", str(tmp_path / "r.png"), "--count", "4", "--split", "train")
    assert res.exit_code == 0, res.output
    res = _cli("run", "--resume", str(run))
    assert res.exit_code == 2 and "was trained on other data: it holds 9 training examples, the run's data 6" in \
        res.output and "--allow-changes" in res.output
    res = _cli("run", "--resume", str(run), "--allow-changes")
    assert res.exit_code == 0, res.output


def test_attribute_conditions_without_the_data_name_the_option_that_gives_them():
    from types import SimpleNamespace

    from advinf.cli import _examples_of

    run = SimpleNamespace(condition=SimpleNamespace(kind="attributes"), data_problem="this needs the data of run")
    with pytest.raises(UserError, match=r"this needs the data of run\nOr give the conditions yourself: --condition"):
        _examples_of(run)
    assert _examples_of(SimpleNamespace(condition=SimpleNamespace(kind="classes"), data_problem="x")) is None


def test_compare_relocates_only_the_runs_that_need_it_and_warns_of_changed_data(trained, tmp_path):
    from conftest import TINY, TINY_ENCODER

    toy = tmp_path / "toy"
    res = _cli("run", str(RECIPES / "ali_mixture25.toml"), "--out", str(toy),
               *[a for t in [*TINY, *TINY_ENCODER] for a in ("--set", t)])
    assert res.exit_code == 0, res.output
    moved = trained.parent / "moved"
    res = _cli("compare", str(toy), str(trained), "--out", str(tmp_path / "cmp"), "--json",
               "--set", f"dataset.root={moved}")  # the toy's data is where it was; only the MNIST run moved
    assert res.exit_code == 0, res.output
    copy = tmp_path / "toy2"
    shutil.copytree(toy, copy)
    with pytest.warns(UserWarning, match=r"toy2: loaded with other data than it trained on \(dataset.std = 0.5, "
                                         r"was 0.05\)"):
        res = _cli("evaluate", str(copy), "--set", "dataset.std=0.5")
    assert res.exit_code == 0, res.output
    with pytest.warns(UserWarning, match=r"'mode_coverage' was computed on data set otherwise in these runs \(toy: "
                                         r"its recipe's; toy2: dataset.std = 0.5\)"):
        result = compare_runs([toy, copy], tmp_path / "cmp2", device="cpu", figure=False)
    assert result.runs[1].dataset_changes == {"mode_coverage": {"std": 0.5}}
    # settings compare would not use were ignored without a word, and read as applied
    for setting, said in (("train.steps=5", "data is set with dataset.KEY=VALUE (where it is now), not: train.steps"),
                          ("dataset.std=0.5", "every run's data is where its recipe says, so these settings would")):
        res = _cli("compare", str(toy), "--out", str(tmp_path / "cmp3"), "--set", setting)
        assert res.exit_code == 2 and said in res.output, res.output
    assert not (tmp_path / "cmp3").exists()


def test_compare_takes_runs_that_read_their_data_elsewhere_for_one_experiment():
    from advinf.compare import _setting

    def recipe(seed: int, root: str, limit: int | None = None) -> dict:
        dataset = {"name": "mnist", "root": root, "verify": False, **({"limit": limit} if limit else {})}
        return {"name": "b", "seed": seed, "dataset": dataset, "train": {"steps": 2, "threads": 1}}

    from advinf_plugins.image_datasets import MnistOptions

    access = advinf.data_access_keys(MnistOptions)
    assert _setting(recipe(0, "/a"), access) == _setting(recipe(1, "/b"), access)  # one experiment, two seeds
    assert _setting(recipe(0, "/a"), access) != _setting(recipe(1, "/a", limit=5), access)  # other data
    assert _setting(recipe(0, "/a")) != _setting(recipe(1, "/b"))  # without the marks, as before
