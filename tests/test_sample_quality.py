"""fid and kid (torchmetrics on a real feature network), the feature networks, and the safe Inception loader."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import RECIPES
from safetensors.torch import save_file
from torch import nn

import advinf
from advinf import BuildContext, Dataset, Networks, Split, TrainedModel, UserError
from advinf.cli import cli
from advinf_plugins.games import JointGame, JointGameOptions
from advinf_plugins.priors import GaussianPrior
from advinf_plugins.sample_quality import (
    InceptionFeatures,
    InceptionOptions,
    LabelClassifierOptions,
    inception,
    label_classifier,
    quantise,
    read_inception_weights,
)

torch.set_num_threads(1)


def digits() -> Dataset:
    data = advinf.create("dataset", "digits", None, size=8)
    assert isinstance(data, Dataset)
    return data


class Replay(advinf.Decoder):
    """Decodes the n-th z it is given into the n-th of ``images`` (in order, cycling): a model whose samples are
    exactly a given image set."""

    def __init__(self, images: torch.Tensor):
        super().__init__()
        self.images = images
        self.seen = 0

    def forward(self, z, y=None):
        idx = torch.arange(self.seen, self.seen + len(z)) % len(self.images)
        self.seen += len(z)
        return self.images[idx].to(z.device)


def replaying(images: torch.Tensor) -> TrainedModel:
    nets = Networks(GaussianPrior((4,)), decoder=Replay(images))
    return TrainedModel(nets, JointGame(JointGameOptions(), stochastic=False), torch.device("cpu"))


CLASSIFIER = {"epochs": 5, "width": 8, "hidden": 32}


def test_label_classifier_is_deterministic_and_reads_the_digits():
    data = digits()
    ctx = BuildContext(dataset=data)
    a = label_classifier(LabelClassifierOptions(**CLASSIFIER), ctx)
    b = label_classifier(LabelClassifierOptions(**CLASSIFIER), ctx)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert a.num_features == 32 and a(data.heldout.x[:5]).shape == (5, 32)
    assert a.about["heldout_accuracy"] > 0.8 and a.about["trained_on"] == 1438
    unlabelled = Dataset(Split(data.train.x), Split(data.heldout.x))
    with pytest.raises(UserError, match="trains on class labels, but the dataset has none"):
        label_classifier(LabelClassifierOptions(), BuildContext(dataset=unlabelled))
    with pytest.raises(UserError, match=r"reads square images \(C, S, S\); this dataset's examples have shape \(2,\)"):
        label_classifier(LabelClassifierOptions(), BuildContext(dataset=advinf.create("dataset", "mixture25")))


def test_quantise_rounds_to_uint8_and_passes_uint8_unchanged():
    x = torch.tensor([0.0, 0.5 / 255, 0.6 / 255, 1.0, 1.5, -0.2])
    assert quantise(x).tolist() == [0, 0, 1, 255, 255, 0]
    u = torch.tensor([3, 200], dtype=torch.uint8)
    assert quantise(u) is u


@pytest.mark.parametrize("name", ["fid", "kid"])
def test_identical_sets_score_zero_and_shifted_sets_more(tmp_path, name):
    data = digits()
    held = Dataset.decode(data.heldout.x)
    options = {"network_options": CLASSIFIER, "samples": len(held), "batch_size": 100}
    if name == "kid":
        options.update(subsets=20, subset_size=200)
    ev = advinf.create("evaluator", name, BuildContext(dataset=data), **options)
    key = "fid" if name == "fid" else "kid_mean"
    same = ev.evaluate(replaying(held), data, tmp_path)
    # FID of a set with itself is 0; KID's unbiased estimate is 0 in expectation, within its spread over subsets
    assert abs(same[key]) < 1e-6 if name == "fid" else abs(same[key]) < 3 * same["kid_std"]
    shifted = ev.evaluate(replaying(torch.roll(held, shifts=2, dims=3)), data, tmp_path)  # digits moved right
    darker = ev.evaluate(replaying(held * 0.5), data, tmp_path)
    assert shifted[key] > 1.0 if name == "fid" else shifted[key] > 10 * same["kid_std"]
    assert darker[key] > same[key] + 1e-3
    assert same["protocol"] == f"{name}359_heldout359_label_classifier"
    assert same["samples"] == 359 and same["feature_dim"] == 32 and same["quantised"] == "uint8"
    assert same["network_info"]["heldout_accuracy"] > 0.8
    if name == "kid":
        assert same["subset_size"] == 200 and same["subsets"] == 20
    # the same model twice: the same number (real features and the network are kept, the draws are seeded)
    again = ev.evaluate(replaying(torch.roll(held, shifts=2, dims=3)), data, tmp_path)
    assert again[key] == shifted[key]


def test_fewer_samples_or_real_examples_and_a_kid_subset_lowered_to_fit(tmp_path):
    data = digits()
    held = Dataset.decode(data.heldout.x)
    ev = advinf.create("evaluator", "kid", BuildContext(dataset=data), network_options=CLASSIFIER, samples=50,
                       real_examples=80, subsets=5)
    out = ev.evaluate(replaying(held), data, tmp_path)
    assert out["subset_size"] == 50 and out["real_examples"] == 80 and out["protocol"] == "kid50_heldout80_" \
                                                                                           "label_classifier"


def test_bad_network_names_and_options_are_user_errors():
    ctx = BuildContext(dataset=digits())
    with pytest.raises(UserError, match=r"network: unknown feature_network \(got 'inceptoin'\); did you mean "
                                        r"'inception'\? available: inception, label_classifier"):
        advinf.create("evaluator", "fid", ctx, network="inceptoin")
    with pytest.raises(UserError, match="network_options.epochs: Input should be greater than or equal to 1"):
        advinf.create("evaluator", "fid", ctx, network_options={"epochs": 0})


@pytest.mark.parametrize(("override", "message"), [
    ("evaluators.fid.network_options={epochs = -1}",
     "evaluators.fid.network_options.epochs: Input should be greater than or equal to 1 (got -1)"),
    ("evaluators.kid.network_options={epoch = 2}",
     "evaluators.kid.network_options.epoch: unknown option of feature_network 'label_classifier' (got 2); did you "
     "mean 'epochs'?"),
    ("evaluators.fid.network_options={epochs = true}",
     "evaluators.fid.network_options.epochs: a boolean where a number is expected"),
    ("evaluators.fid.network=inceptoin", "evaluators.fid.network: unknown feature_network (got 'inceptoin'); did you "
                                         "mean 'inception'?"),
    ('evaluators.fid.network="inception"', "evaluators.fid.network_options.weights: feature network 'inception' "
                                            "needs its weights"),
])
def test_advinf_validate_checks_the_feature_network_and_its_options_naming_the_key(override, message):
    """Found before any training, by `advinf validate` too (not only when the evaluator is built)."""
    res = CliRunner().invoke(cli, ["validate", str(RECIPES / "ali_digits.toml"), "--set", override])
    assert res.exit_code == 2 and message in res.output, res.output
    assert "1 problem" in res.output and "Traceback" not in res.output


def test_a_run_whose_inception_weights_are_gone_still_loads_and_says_so_when_evaluated(tmp_path, monkeypatch):
    """The weights file is checked before training and whenever the evaluator is built, but a run read back to
    sample from does not need it: load_run works where the file is not."""
    from test_digits import TINY

    monkeypatch.chdir(tmp_path)
    Path("w.safetensors").write_bytes(b"")  # there while the run is built; never read (stopped before evaluating)
    sets = [s for s in TINY if not s.startswith("evaluators.")]
    sets += ['evaluators.fid.network="inception"', 'evaluators.fid.network_options={weights = "w.safetensors"}']
    out = tmp_path / "run"
    res = CliRunner().invoke(cli, ["run", str(RECIPES / "ali_digits.toml"), "--out", str(out), "--stop-after", "2",
                                   *[a for s in sets for a in ("--set", s)]])
    assert res.exit_code == 0, res.output
    Path("w.safetensors").unlink()
    assert advinf.load_run(out, device="cpu").sample(n=2).shape[0] == 2
    sampled = CliRunner().invoke(cli, ["sample", str(out), "--out", str(tmp_path / "s.png"), "--count", "4"])
    assert sampled.exit_code == 0, sampled.output
    ran = CliRunner().invoke(cli, ["evaluate", str(out), "--with", "fid"])
    assert ran.exit_code == 2 and "no Inception weights at w.safetensors" in ran.output, ran.output
    assert "evaluators.fid" in ran.output and "Traceback" not in ran.output
    validated = CliRunner().invoke(cli, ["validate", str(RECIPES / "ali_digits.toml"), *[a for s in sets
                                                                                          for a in ("--set", s)]])
    assert validated.exit_code == 2 and "no Inception weights at w.safetensors" in validated.output


def test_missing_inception_weights_say_where_to_get_them(tmp_path):
    for opts in ({}, {"weights": str(tmp_path / "nope.safetensors")}):
        with pytest.raises(UserError, match="torch-fidelity.*weights-inception-2015-12-05-6726825d.pth.*"
                                            "safetensors"):
            advinf.create("evaluator", "fid", BuildContext(), network="inception", network_options=opts)


def random_inception_state(monkeypatch) -> dict[str, torch.Tensor]:
    """A randomly initialised FID Inception's state dict (its architecture; no real weights here)."""
    import torch_fidelity.feature_extractor_inceptionv3 as fe

    with monkeypatch.context() as m:
        m.setattr(fe, "load_state_dict_from_url", lambda *a, **k: {})
        m.setattr(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None)
        torch.manual_seed(0)
        net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    return {k: v.clone() for k, v in net.state_dict().items()}


def test_inception_reads_safetensors_and_never_a_pickle(tmp_path, monkeypatch):
    state = random_inception_state(monkeypatch)
    save_file(state, str(tmp_path / "w.safetensors"))
    images = torch.randint(0, 256, (2, 1, 8, 8), dtype=torch.uint8)
    net = inception(InceptionOptions(weights=str(tmp_path / "w.safetensors")), BuildContext(dataset=digits()))
    assert net.num_features == 2048
    with torch.no_grad():
        assert net(images).shape == (2, 2048)
    assert all(torch.equal(state[k], v) for k, v in net.net.state_dict().items())

    class Evil:
        def __reduce__(self):
            return (exec, (f"open({str(tmp_path / 'pwned')!r}, 'w').write('ran')",))

    (tmp_path / "evil.pth").write_bytes(pickle.dumps({"x": Evil()}, protocol=2))
    with pytest.raises(UserError, match=r"evil.pth is not a .safetensors file \(advinf reads no pickles\).*convert"):
        advinf.create("evaluator", "fid", BuildContext(), network="inception",
                      network_options={"weights": str(tmp_path / "evil.pth")})
    (tmp_path / "evil.safetensors").write_bytes((tmp_path / "evil.pth").read_bytes())
    with pytest.raises(UserError, match="cannot read Inception weights"):
        read_inception_weights(InceptionOptions(weights=str(tmp_path / "evil.safetensors")))
    assert not (tmp_path / "pwned").exists()


def test_the_inception_network_resizes_as_torch_fidelity_does(monkeypatch):
    """The same (random) weights in advinf's 'inception' and torch-fidelity's own FID Inception give the same
    features: the TF1 bilinear resize to 299 x 299 of the reference FID code. torchmetrics' default (an
    antialiased resize) gave features up to 3 % apart, so FIDs not comparable with published ones."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    state = random_inception_state(monkeypatch)
    ours = InceptionFeatures(state, "2048").eval()
    with monkeypatch.context() as m:
        m.setattr(FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None)
        m.setattr("torch_fidelity.feature_extractor_inceptionv3.load_state_dict_from_url", lambda *a, **k: {})
        reference = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    reference.load_state_dict(state)
    reference.eval()
    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = ours(images), reference(images)[0]
    assert (a - b).norm() <= 1e-4 * b.norm() and b.norm() > 0  # relative: random weights give small features


def test_samples_that_are_not_finite_are_reported_not_scored(tmp_path):
    """NaN samples quantised to uint8 were black pixels: a diverged decoder got the black images' FID."""
    data = digits()
    images = Dataset.decode(data.heldout.x).clone()
    images[:3] = float("nan")
    ev = advinf.create("evaluator", "fid", BuildContext(dataset=data), samples=100, network_options=CLASSIFIER)
    out = ev.evaluate(replaying(images), data, tmp_path)
    assert out == {"skipped": "3 of 100 samples are not finite (NaN or inf): the decoder has diverged",
                   "non_finite_samples": 3}
    assert "fid" in ev.evaluate(replaying(Dataset.decode(data.heldout.x)), data, tmp_path)


def test_a_registered_feature_network_is_used_by_name(tmp_path, advinf_host):
    """The hook: a plugin's feature network, found by the evaluator through the host that built the recipe."""
    import advinf_plugins.sample_quality as sq

    class Flat(nn.Module):
        num_features = 64

        def forward(self, x):
            return x.flatten(1).float()

    class Plugin:
        @staticmethod
        @advinf.hookimpl
        def register_feature_networks(register):
            register("pixels", lambda options, ctx: Flat())

    advinf_host.add_plugin(sq, name="sample_quality")
    advinf_host.add_plugin(Plugin(), name="mine")
    data = digits()
    ev = advinf_host.create("evaluator", "fid", BuildContext(dataset=data, host=advinf_host), network="pixels",
                            samples=100)
    out = ev.evaluate(replaying(Dataset.decode(data.heldout.x)), data, tmp_path)
    assert out["network"] == "pixels" and out["feature_dim"] == 64 and out["fid"] > 0
    assert out["singular_covariances"] is False  # 100 samples, 359 real examples, 64 features
    few = advinf_host.create("evaluator", "fid", BuildContext(dataset=data, host=advinf_host), network="pixels",
                             samples=50)
    assert few.evaluate(replaying(Dataset.decode(data.heldout.x)), data, tmp_path)["singular_covariances"] is True


def test_fid_and_kid_through_the_cli_on_a_tiny_digits_run(tmp_path):
    from test_digits import TINY

    out = tmp_path / "run"
    sets = [s for s in TINY if not s.startswith("evaluators.")]
    result = CliRunner().invoke(cli, ["run", str(RECIPES / "ali_digits.toml"), "--out", str(out), "--stop-after", "6",
                                      *[a for s in sets for a in ("--set", s)]])
    assert result.exit_code == 0, result.output
    args = ["evaluate", str(out), "--with", "fid,kid", "--set", "evaluators.fid.samples=200",
            "--set", "evaluators.fid.network_options={epochs = 2, width = 4, hidden = 16}",
            "--set", "evaluators.kid.samples=200", "--set", "evaluators.kid.subsets=10",
            "--set", "evaluators.kid.network_options={epochs = 2, width = 4, hidden = 16}"]
    ran = CliRunner().invoke(cli, args)
    assert ran.exit_code == 0, ran.output
    report = json.loads((out / "eval.json").read_text())
    assert report["fid"]["protocol"] == "fid200_heldout359_label_classifier" and report["fid"]["fid"] > 0
    assert report["kid"]["subset_size"] == 200 and report["kid"]["feature_dim"] == 16
    missing = CliRunner().invoke(cli, ["evaluate", str(out), "--with", "fid", "--set",
                                       'evaluators.fid.network="inception"', "--set",
                                       'evaluators.fid.network_options={weights = "nowhere.safetensors"}'])
    assert missing.exit_code == 2
    assert "no Inception weights at nowhere.safetensors" in missing.output and "Traceback" not in missing.output
    assert "evaluators.fid.network_options.weights: no Inception" in missing.output  # the key to change


def test_evaluators_every_n_steps_leave_training_and_resume_bit_exact(tmp_path):
    """The digits recipe's evaluators every 2 steps: the same weights as without them, straight or resumed."""
    from test_digits import TINY

    from advinf import checkpoint as ckpt

    base = [s for s in TINY if s != "train.steps=6"] + ["train.steps=8", "train.checkpoint_every=4",
                                                        "train.sample_every=0"]
    every = [f"evaluators.{n}.every=2" for n in ("svm_probe", "knn_probe", "reconstruction", "fid", "kid")]

    def run(name: str, sets: list[str], *extra: str):
        args = ["run", str(RECIPES / "ali_digits.toml"), "--out", str(tmp_path / name), *extra]
        result = CliRunner().invoke(cli, args + [a for s in sets for a in ("--set", s)])
        assert result.exit_code == 0, result.output

    run("straight", base + every)
    run("sliced", base + every, "--stop-after", "5")
    run("sliced", base + every, "--resume")
    run("quiet", base + [f"evaluators.{n}.every=0" for n in ("svm_probe", "knn_probe", "reconstruction", "fid",
                                                              "kid")])
    tensors = {n: ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path / n / "checkpoints")).tensors
               for n in ("straight", "sliced", "quiet")}
    for part in ("model", "optim"):
        for k, v in tensors["straight"][part].items():
            assert torch.equal(v, tensors["sliced"][part][k]) and torch.equal(v, tensors["quiet"][part][k]), k
    evals = [json.loads(ln) for ln in (tmp_path / "straight" / "evals.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [2, 4, 6] and all("fid" in e and "kid" in e for e in evals)


def _rank_evaluates_alone(rank: int, port: int, out: str, name: str) -> None:
    """Rank 0 of a 2-process group evaluates (as the trainer does under torchrun); rank 1 waits for it."""
    import datetime
    import os
    import time

    import torch.distributed as dist

    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=20))
    done = Path(out) / "done.json"
    try:
        if rank == 0:
            data = digits()
            held = Dataset.decode(data.heldout.x)
            options = {"network_options": {"epochs": 1, "width": 4, "hidden": 8}, "samples": 100}
            if name == "kid":
                options.update(subsets=5, subset_size=50)
            ev = advinf.create("evaluator", name, BuildContext(dataset=data), **options)
            done.write_text(json.dumps(ev.evaluate(replaying(held), data, Path(out))))
        else:
            deadline = time.monotonic() + 120
            while not done.exists() and time.monotonic() < deadline:
                time.sleep(0.2)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("name", ["fid", "kid"])
def test_one_rank_of_a_data_parallel_run_computes_the_metric_alone(tmp_path, name):
    """torchmetrics gathers a metric's state from every rank when it computes; advinf evaluates on rank 0 only,
    over all the samples, so FID and KID must not wait for the other ranks (they timed out, or failed when a
    rank closed its connection)."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank_evaluates_alone, args=(port, str(tmp_path), name), nprocs=2)
    result = json.loads((tmp_path / "done.json").read_text())
    assert result["samples"] == 100 and ("fid" in result if name == "fid" else "kid_mean" in result)
