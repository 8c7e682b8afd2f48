"""Image datasets (plugins/image_datasets.py) on tiny files in each dataset's real on-disk format, their
safetensors cache, and the paper recipes run end to end through the CLI."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import RECIPES
from image_formats import (
    CELEBA_ATTRS,
    write_celeba,
    write_cifar10,
    write_cifar10_bin,
    write_image_folder,
    write_mnist,
    write_svhn,
    write_tiny_imagenet,
)
from PIL import Image

import advinf
from advinf import Dataset, UserError
from advinf.cli import cli
from advinf_plugins.image_datasets import CIFAR_BIN_URL, celeba_64

torch.set_num_threads(1)


def load(name: str, **options) -> Dataset:
    data = advinf.create("dataset", name, None, **options)
    assert isinstance(data, Dataset)
    return data


def cache_files(root) -> list:
    return sorted((root / ".advinf_cache").glob("*.safetensors"))


def test_svhn_reads_the_official_mat_files(tmp_path):
    files = write_svhn(tmp_path, {"train": 5, "test": 4, "extra": 6})
    data = load("svhn", root=str(tmp_path), split="extra", verify=False)
    x, y = files["extra"]
    assert data.train.x.dtype == torch.uint8 and data.train.x.shape == (6, 3, 32, 32)
    assert torch.equal(data.train.x, x) and torch.equal(data.train.y, y) and data.train.y[0] == 0  # 10 -> 0
    assert torch.equal(data.heldout.x, files["test"][0]) and torch.equal(data.heldout.y, files["test"][1])
    assert data.meta["name"] == "svhn" and data.meta["classes"][0] == "0"
    train = load("svhn", root=str(tmp_path), verify=False, heldout="none", limit=3)
    assert torch.equal(train.train.x, files["train"][0][:3]) and train.heldout is None


EVIL = """
import os

class Evil:
    def __reduce__(self):
        return (os.system, ("touch {marker}",))
"""


def test_a_crafted_pickle_under_the_cifar_root_never_runs(tmp_path):
    """CIFAR-10's python batches are pickles: advinf unpickles only the official files, even with verify = false."""
    write_cifar10(tmp_path, per_batch=2, test=2)  # the python version, but not the official files
    marker = tmp_path / "pwned"
    namespace: dict = {}
    exec(EVIL.format(marker=marker), namespace)
    import pickle

    (tmp_path / "cifar-10-batches-py" / "data_batch_1").write_bytes(pickle.dumps(namespace["Evil"]()))
    with pytest.raises(UserError, match="not the official release's file .* advinf unpickles only the official"):
        load("cifar10", root=str(tmp_path), verify=False, validation=3, cache=False)
    assert not marker.exists()
    res = CliRunner().invoke(cli, ["validate", str(RECIPES / "ali_cifar10.toml")])
    assert res.exit_code == 0  # the recipe itself is fine; only the data is refused
    # download = true fetches the binary version beside python batches that are not the official ones (it did
    # nothing while cifar-10-batches-py/ was there, and the message advised it)
    fetched = []

    def fake_download(url, root, md5=None):
        fetched.append(url)
        write_cifar10_bin(Path(root), per_batch=2, test=2)

    import torchvision.datasets.utils as tv_utils

    real = tv_utils.download_and_extract_archive
    tv_utils.download_and_extract_archive = fake_download
    try:
        data = load("cifar10", root=str(tmp_path), verify=False, validation=3, cache=False, download=True)
    finally:
        tv_utils.download_and_extract_archive = real
    assert fetched == [CIFAR_BIN_URL] and len(data.train) == 7 and not marker.exists()


def test_cifar10_binary_batches_are_checked(tmp_path):
    write_cifar10_bin(tmp_path, per_batch=2, test=2)
    (tmp_path / "cifar-10-batches-bin" / "data_batch_3.bin").write_bytes(b"\x00" * 100)
    with pytest.raises(UserError, match="data_batch_3.bin is not a CIFAR-10 binary batch"):
        load("cifar10", root=str(tmp_path), validation=3, cache=False)


def test_verify_checks_the_official_checksums(tmp_path):
    write_svhn(tmp_path, {"train": 2, "test": 2})
    with pytest.raises(UserError) as err:
        load("svhn", root=str(tmp_path))  # verify = true: the tiny files are not the official ones
    assert "verify = false" in str(err.value) and not cache_files(tmp_path)
    load("svhn", root=str(tmp_path), verify=False)  # cached: the files were never checked
    assert len(cache_files(tmp_path)) == 1
    with pytest.raises(UserError, match="verify = false"):  # that cache is no way around the check
        load("svhn", root=str(tmp_path))


def test_cifar10_keeps_the_original_validation_split(tmp_path):
    files = write_cifar10_bin(tmp_path, per_batch=4, test=3)
    data = load("cifar10", root=str(tmp_path), verify=False, validation=5)
    x, y = files["train"]
    assert data.train.x.shape == (15, 3, 32, 32) and data.train.x.dtype == torch.uint8
    assert torch.equal(data.train.x, x[:15]) and torch.equal(data.train.y, y[:15])
    assert torch.equal(data.heldout.x, x[15:]) and torch.equal(data.heldout.y, y[15:])
    test = load("cifar10", root=str(tmp_path), verify=False, heldout="test")
    assert torch.equal(test.train.x, x) and torch.equal(test.heldout.x, files["test"][0])
    assert data.meta["classes"][0] == "airplane"
    with pytest.raises(UserError, match="validation = 5000 leaves no training examples: it must be below the 20"):
        load("cifar10", root=str(tmp_path), verify=False)


def test_celeba_64_crop_attributes_and_partitions(tmp_path):
    # (torchvision's CelebA cannot hold a partition of exactly one image: none here has one)
    paths, attrs = write_celeba(tmp_path, [0, 0, 0, 1, 1, 2, 2])
    data = load("celeba", root=str(tmp_path), verify=False)
    assert data.train.x.shape == (3, 3, 64, 64) and data.train.x.dtype == torch.uint8
    assert data.heldout.x.shape == (2, 3, 64, 64)  # the test partition
    assert data.train.y.shape == (3, 40) and data.train.y.dtype == torch.uint8
    assert torch.equal(data.train.y, ((attrs[:3] + 1) // 2).to(torch.uint8))  # {-1, 1} -> {0, 1}
    assert torch.equal(data.heldout.y, ((attrs[5:] + 1) // 2).to(torch.uint8))
    assert data.meta["attributes"] == CELEBA_ATTRS
    # Fuel's convert_celeba_64: resize to 64 x 78 (w x h) with antialiasing, crop the box (0, 7, 64, 71)
    with Image.open(paths[1]) as img:
        ref = img.convert("RGB").resize((64, 78), Image.Resampling.LANCZOS)
        assert torch.equal(data.train.x[1], torch.from_numpy(np.asarray(ref)[7:71].copy()).permute(2, 0, 1))
        assert torch.equal(celeba_64(img), data.train.x[1])
    valid = load("celeba", root=str(tmp_path), verify=False, split="valid", heldout="none")
    assert len(valid.train) == 2 and valid.heldout is None


def test_mnist_reads_the_idx_files(tmp_path):
    files = write_mnist(tmp_path, train=6, test=3)
    data = load("mnist", root=str(tmp_path), verify=False)
    assert data.train.x.shape == (6, 1, 28, 28) and data.train.x.dtype == torch.uint8
    assert torch.equal(data.train.x, files["train"][0]) and torch.equal(data.train.y, files["train"][1])
    assert torch.equal(data.heldout.x, files["test"][0])
    assert torch.equal(load("mnist", root=str(tmp_path)).train.x, files["train"][0])  # idx files carry no checksum


@pytest.mark.parametrize("verify", [True, False])
def test_mnist_never_unpickles_torchvision_s_processed_files(tmp_path, monkeypatch, verify):
    """torchvision's MNIST loads MNIST/processed/{training,test}.pt with torch.load (pickle) before the raw idx
    files when both are there: a dataset folder would have run the unpickler and passed off its own data."""
    files = write_mnist(tmp_path, train=6, test=3)
    processed = tmp_path / "MNIST" / "processed"
    processed.mkdir()
    for name in ("training.pt", "test.pt"):
        torch.save((torch.zeros(7, 28, 28, dtype=torch.uint8), torch.zeros(7, dtype=torch.long)), processed / name)
    loads = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: (loads.append(a), real(*a, **k))[1])
    data = load("mnist", root=str(tmp_path), verify=verify, cache=False)
    assert loads == [] and torch.equal(data.train.x, files["train"][0])


def test_file_names_in_a_dataset_s_listing_never_lead_out_of_its_folder(tmp_path):
    """Tiny ImageNet's val_annotations.txt and CelebA's list_eval_partition.txt name image files: a name like
    ../../../elsewhere/photo.png read a file outside the dataset as a held-out image."""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    Image.new("RGB", (64, 64)).save(outside / "photo.png")
    write_tiny_imagenet(tmp_path / "t", ["n01", "n02"], per_class=2, val=2)
    annotations = tmp_path / "t" / "tiny-imagenet-200" / "val" / "val_annotations.txt"
    first, *rest = annotations.read_text().splitlines()
    annotations.write_text("\n".join(["../../../../elsewhere/photo.png\t" + first.split("\t", 2)[1], *rest]) + "\n")
    with pytest.raises(advinf.UserError, match=r"val_annotations.txt cannot be read as tiny_imagenet's files .*names "
                                               r"the file '\.\./\.\./\.\./\.\./elsewhere/photo.png'"):
        load("tiny_imagenet", root=str(tmp_path / "t"), verify=False, cache=False)
    annotations.write_text("\n".join(["val_0.JPEG", *rest]) + "\n")  # a row without its class
    with pytest.raises(advinf.UserError, match=r"val_annotations.txt cannot be read as tiny_imagenet's files"):
        load("tiny_imagenet", root=str(tmp_path / "t"), verify=False, cache=False)
    write_celeba(tmp_path / "c", [0, 0, 1])
    partition = tmp_path / "c" / "celeba" / "list_eval_partition.txt"
    lines = partition.read_text().splitlines()
    partition.write_text("\n".join(["../../../elsewhere/photo.png " + lines[0].split()[1], *lines[1:]]) + "\n")
    with pytest.raises(advinf.UserError, match=r"list_eval_partition.txt cannot be read as celeba's files"):
        load("celeba", root=str(tmp_path / "c"), verify=False, cache=False)


def test_a_limited_tiny_imagenet_takes_every_class_in_turn(tmp_path):
    write_tiny_imagenet(tmp_path, ["n01", "n02", "n03"], per_class=3, val=3)
    data = load("tiny_imagenet", root=str(tmp_path), verify=False, limit=4, heldout="none", cache=False)
    assert data.train.y.tolist() == [0, 1, 2, 0]  # was [0, 0, 0, 1]: the first classes only
    full = load("tiny_imagenet", root=str(tmp_path), verify=False, heldout="none", cache=False)
    assert full.train.y.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]  # without a limit, as listed
    assert torch.equal(data.train.x[1], full.train.x[3])


def test_tiny_imagenet_train_and_val(tmp_path):
    val_wnids = write_tiny_imagenet(tmp_path, ["n02", "n01"], per_class=3, val=4)
    data = load("tiny_imagenet", root=str(tmp_path), verify=False)
    assert data.train.x.shape == (6, 3, 64, 64) and data.train.x.dtype == torch.uint8
    assert data.meta["classes"] == ["n01", "n02"]
    assert data.train.y.tolist() == [0, 0, 0, 1, 1, 1]
    assert data.heldout.y.tolist() == [data.meta["classes"].index(w) for w in val_wnids]
    gray = data.train.x[3]  # n02_0 is a grayscale JPEG: three equal channels
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])


def test_image_folder_with_class_subfolders(tmp_path):
    root = tmp_path / "pics"
    write_image_folder(root, {"cat": 3, "dog": 2}, size=(80, 60))
    data = load("image_folder", root=str(root), size=32, heldout_fraction=0.4)
    assert data.train.x.shape == (3, 3, 32, 32) and data.heldout.x.shape == (2, 3, 32, 32)
    assert data.meta["classes"] == ["cat", "dog"]
    assert sorted(data.train.y.tolist() + data.heldout.y.tolist()) == [0, 0, 0, 1, 1]
    # resized (shorter side to 32) and centre-cropped: compare one image with PIL's own resize
    all_x = torch.cat([data.train.x, data.heldout.x])
    with Image.open(root / "dog" / "dog_1.png") as img:
        ref = img.convert("RGB").resize((43, 32), Image.Resampling.LANCZOS).crop((5, 0, 37, 32))
    ref_t = torch.from_numpy(np.asarray(ref).copy()).permute(2, 0, 1)
    assert any(torch.equal(ref_t, xi) for xi in all_x)
    gray = load("image_folder", root=str(root), size=16, grayscale=True, labels="none")
    assert gray.train.x.shape == (5, 1, 16, 16) and gray.train.y is None and gray.heldout is None


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n%%EndComments\n0 0 moveto 8 8 lineto stroke\nshowpage\n%%EOF\n"


def test_an_image_file_holding_postscript_is_refused_and_never_reaches_ghostscript(tmp_path, monkeypatch):
    """Pillow picks a format by content: an EPS file named .png / .JPEG / .jpg went to Ghostscript (`gs`), a
    program run on the file's contents. Data never runs code: images are read in raster formats only."""
    fake = tmp_path / "bin"
    fake.mkdir()
    ran = tmp_path / "gs_ran"
    (fake / "gs").write_text(f"#!/bin/sh\ntouch {ran}\n[ \"$1\" = --version ] && echo 10.0\nexit 1\n")
    (fake / "gs").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    folder = tmp_path / "pics"
    write_image_folder(folder, {"a": 2, "b": 2})
    (folder / "a" / "a_0.png").write_bytes(EPS)
    tiny = tmp_path / "tiny"
    write_tiny_imagenet(tiny, ["n01", "n02"], per_class=2, val=2)
    (tiny / "tiny-imagenet-200" / "train" / "n01" / "images" / "n01_0.JPEG").write_bytes(EPS)
    celeba = tmp_path / "celeba"
    paths, _ = write_celeba(celeba, [0, 0, 0, 1, 1, 2, 2])
    paths[1].write_bytes(EPS)
    for name, root, bad in (("image_folder", folder, "a_0.png"), ("tiny_imagenet", tiny, "n01_0.JPEG"),
                            ("celeba", celeba, paths[1].name)):
        options = {"size": 8} if name == "image_folder" else {"verify": False}
        with pytest.raises(UserError, match=f"cannot read the image .*{bad}.*read as JPEG, PNG"):
            load(name, root=str(root), cache=False, workers=1, **options)
        assert not ran.exists(), name


def test_a_16_bit_greyscale_png_is_scaled_to_8_bits_not_clipped(tmp_path):
    ramp = (np.arange(64, dtype=np.uint32).reshape(8, 8) * 1040).astype(np.uint16)  # 0 .. 65520
    (tmp_path / "a").mkdir()
    Image.fromarray(ramp).save(tmp_path / "a" / "ramp.png")
    with Image.open(tmp_path / "a" / "ramp.png") as img:
        assert img.mode.startswith("I")  # what Pillow makes of it
    data = load("image_folder", root=str(tmp_path), size=8, grayscale=True, labels="none", cache=False, workers=1)
    assert torch.equal(data.train.x[0, 0], torch.from_numpy((ramp >> 8).astype(np.uint8)))  # was 255 from 0.4 on


def test_damaged_official_files_are_errors_naming_the_file_and_labels_are_checked(tmp_path):
    """Files that are there but cannot be read (truncated, another format, labels no class has) are one message
    naming the file; they were torchvision's or scipy's bare text ("AssertionError: "), or, for labels out of
    range, a crash mid-training of a conditional model."""
    from scipy.io import savemat

    write_svhn(tmp_path / "svhn", {"train": 6, "test": 3})
    mat = tmp_path / "svhn" / "train_32x32.mat"
    mat.write_bytes(mat.read_bytes()[:300])
    with pytest.raises(UserError, match=f"dataset 'svhn': {mat} cannot be read as svhn's files .*download them "
                                        "again") as err:
        load("svhn", root=str(tmp_path / "svhn"), verify=False, cache=False)
    assert err.value.option == "root"
    x = np.zeros((32, 32, 3, 4), np.uint8)
    savemat(mat, {"X": x, "y": np.array([[1], [11], [2], [3]], np.uint8)})  # 11: no class
    with pytest.raises(UserError, match=r"train_32x32.mat cannot be read .*1 labels outside 0..9, the first 11 at "
                                        r"example 1"):
        load("svhn", root=str(tmp_path / "svhn"), verify=False, cache=False)
    savemat(mat, {"X": x.astype(np.float64), "y": np.array([[1], [10], [2], [3]], np.uint8)})  # MATLAB's doubles
    with pytest.raises(UserError, match=r"X is float64 .* not uint8"):
        load("svhn", root=str(tmp_path / "svhn"), verify=False, cache=False)

    write_mnist(tmp_path / "mnist", train=4, test=2)
    labels = tmp_path / "mnist" / "MNIST" / "raw" / "train-labels-idx1-ubyte"
    raw = bytearray(labels.read_bytes())
    raw[-1] = 200
    labels.write_bytes(bytes(raw))
    with pytest.raises(UserError, match=f"{labels} cannot be read .*labels outside 0..9, the first 200 at example 3"):
        load("mnist", root=str(tmp_path / "mnist"), cache=False)
    images = tmp_path / "mnist" / "MNIST" / "raw" / "train-images-idx3-ubyte"
    images.write_bytes(b"\x1f\x8b" + images.read_bytes()[2:50])  # a .gz kept under the idx name, say
    with pytest.raises(UserError, match=f"{images}.* cannot be read as mnist's files"):
        load("mnist", root=str(tmp_path / "mnist"), cache=False)


def test_loose_images_beside_class_folders_are_not_left_out_silently(tmp_path):
    write_image_folder(tmp_path, {"cat": 2, "dog": 2})
    write_image_folder(tmp_path, None, n=3)  # loose images in root itself
    with pytest.raises(UserError, match=r"holds 3 images of its own beside 2 subfolders \(cat, dog\): with "
                                        r"labels = 'auto' which is meant is unclear") as err:
        load("image_folder", root=str(tmp_path), size=8, cache=False)
    assert err.value.option == "labels"
    assert len(load("image_folder", root=str(tmp_path), size=8, cache=False, labels="folders").train) == 4
    assert len(load("image_folder", root=str(tmp_path), size=8, cache=False, labels="none").train) == 7


def test_image_folder_flat_and_its_cache_follows_the_files(tmp_path):
    root = tmp_path / "flat"
    write_image_folder(root, None, n=4, size=(40, 40))
    first = load("image_folder", root=str(root), size=24)
    assert first.train.x.shape == (4, 3, 24, 24) and first.train.y is None and len(cache_files(root)) == 1
    write_image_folder(root / "more", None, n=0)  # an empty subfolder: labels = "folders" finds no images
    with pytest.raises(UserError, match="no images"):
        load("image_folder", root=str(root), size=24, labels="folders")
    shutil.rmtree(root / "more")
    Image.new("RGB", (30, 50), (255, 0, 0)).save(root / "img_new.png")
    second = load("image_folder", root=str(root), size=24)
    assert len(second.train) == 5 and len(cache_files(root)) == 2  # a changed folder is a new cache key
    with pytest.raises(UserError, match="is not a folder"):
        load("image_folder", root=str(tmp_path / "nowhere"))


def test_cache_roundtrip_is_safetensors_and_skips_the_source_files(tmp_path):
    write_cifar10_bin(tmp_path, per_batch=2, test=2)
    first = load("cifar10", root=str(tmp_path), verify=False, validation=3)
    [path] = cache_files(tmp_path)
    header_len = int.from_bytes(path.read_bytes()[:8], "little")  # safetensors: u64 length + JSON header
    header = json.loads(path.read_bytes()[8:8 + header_len])
    assert set(header) == {"__metadata__", "train.x", "train.y", "heldout.x", "heldout.y"}
    assert header["train.x"]["dtype"] == "U8" and header["train.x"]["shape"] == [7, 3, 32, 32]
    assert not list(path.parent.glob(".*.tmp"))  # written atomically: no temporary left behind
    shutil.rmtree(tmp_path / "cifar-10-batches-bin")
    again = load("cifar10", root=str(tmp_path), verify=False, validation=3)  # from the cache alone
    for a, b in [(first.train.x, again.train.x), (first.train.y, again.train.y), (first.heldout.x, again.heldout.x)]:
        assert torch.equal(a, b) and a.dtype == b.dtype
    assert again.meta == first.meta
    with pytest.raises(UserError):  # another option, another key: it needs the files again
        load("cifar10", root=str(tmp_path), verify=False, validation=3, limit=2)


@pytest.mark.parametrize("name,expected", [
    ("svhn", ["train_32x32.mat", "test_32x32.mat"]),
    ("cifar10", ["cifar-10-batches-bin/data_batch_1.bin", "cifar-10-batches-bin/test_batch.bin"]),
    ("celeba", ["celeba/img_align_celeba", "celeba/list_eval_partition.txt"]),
    ("mnist", ["MNIST/raw/train-images-idx3-ubyte", "MNIST/raw/t10k-labels-idx1-ubyte"]),
    ("tiny_imagenet", ["tiny-imagenet-200/wnids.txt", "tiny-imagenet-200/val/val_annotations.txt"]),
])
def test_missing_data_names_the_files_and_the_download_option(tmp_path, name, expected):
    with pytest.raises(UserError) as err:
        load(name, root=str(tmp_path / "empty"))
    msg = str(err.value)
    assert f"dataset '{name}'" in msg and "download = true" in msg and err.value.option == "root"
    for e in expected:
        assert str(tmp_path / "empty" / e) in msg
    assert not (tmp_path / "empty").exists()  # nothing created, nothing downloaded


def test_cli_reports_missing_data_without_a_traceback(tmp_path):
    res = CliRunner().invoke(cli, ["run", str(RECIPES / "ali_svhn.toml"), "--out", str(tmp_path / "run"),
                                   "--set", f"dataset.root={tmp_path / 'nothing'}", "--set", "train.threads=1",
                                   "--set", "train.progress=none"])
    assert res.exit_code == 2 and "extra_32x32.mat" in res.output and "download = true" in res.output
    assert "  dataset.root: dataset 'svhn': files not found" in res.output  # the key to change, not dataset.name
    assert "Traceback" not in res.output


# -- the paper recipes, end to end on tiny real-format data --------------------------------------------------

def _svhn(root):
    write_svhn(root, {"extra": 8, "test": 2, "train": 3})
    return root


def _cifar10(root):
    write_cifar10_bin(root, per_batch=2, test=2)
    return root


def _celeba(root):
    write_celeba(root, [0] * 8 + [2, 2])
    return root


def _tiny(root):
    write_tiny_imagenet(root, ["n01", "n02"], per_class=4, val=2)
    return root


#: The recipes' FID budgets cut to a few samples and a one-epoch feature classifier (the real-format data holds a
#: few images; the probes' budgets do not fit them, which they report instead of failing).
FID_TINY = ["evaluators.fid.samples=4", "evaluators.fid.network_options={epochs = 1, width = 4, hidden = 8}"]


@pytest.mark.parametrize("recipe,writer,size,extra", [
    ("ali_svhn", _svhn, 32, FID_TINY),
    ("ali_cifar10", _cifar10, 32, ["dataset.validation=2", *FID_TINY]),
    ("ali_celeba", _celeba, 64, []),
    ("ali_tiny_imagenet", _tiny, 64, FID_TINY),
])
def test_paper_recipe_runs_through_the_cli(tmp_path, recipe, writer, size, extra):
    root = writer(tmp_path / "data")
    out = tmp_path / "run"
    overrides = [f"dataset.root={root}", "dataset.verify=false",
                 "train.epochs=1", "train.batch_size=4",
                 "train.threads=1", "train.progress=none", "train.sample_every=1", "train.num_samples=4",
                 "train.log_every=1", "train.device=cpu", *extra]
    args = ["run", str(RECIPES / f"{recipe}.toml"), "--out", str(out)]
    for item in overrides:
        args += ["--set", item]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    records = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]  # 8 training images at batch 4: one epoch is two steps
    assert all(math.isfinite(r["loss_critic"]) and math.isfinite(r["loss_generator"]) for r in records)
    pngs = sorted((out / "samples").glob("*.png"))
    assert [p.name for p in pngs] == ["step_0000000.png", "step_0000001.png", "step_0000002.png"]
    side = 2 * (size + 2) + 2  # a 2 x 2 grid with torchvision's 2-pixel padding
    for p in pngs:
        with Image.open(p) as img:
            assert img.size == (side, side)
    assert cache_files(root)  # the decoded data was cached under the root
    check_recipe_evaluators(out, recipe)


def check_recipe_evaluators(out, recipe: str) -> None:
    """The evaluators an image recipe configures ran at the end: probes report that a few images are too few for
    their budget, reconstruction and FID give numbers."""
    report = json.loads((out / "eval.json").read_text())
    configured = set(advinf.load_recipe(RECIPES / f"{recipe}.toml").spec.evaluators)
    assert set(report) == configured and "reconstruction" in configured
    assert math.isfinite(report["reconstruction"]["mse_mean"]) and report["reconstruction"]["examples"] >= 2
    if "svm_probe" in report:
        validation = advinf.load_recipe(RECIPES / f"{recipe}.toml").spec.evaluators["svm_probe"].options.get(
            "validation", 1000)
        pool = 3 if recipe == "ali_svhn" else None  # ali_svhn draws its labels from SVHN train (3 images here)
        assert f"fewer than validation ({validation}) plus labels (1000)" in report["svm_probe"]["skipped"]
        if pool is not None:
            assert f"holds {pool} examples" in report["svm_probe"]["skipped"]
        assert "skipped" in report["reconstruction"]["classifier"]
    if "fid" in report:
        assert report["fid"]["protocol"].startswith("fid4_heldout") and math.isfinite(report["fid"]["fid"])


def test_image_folder_stream_reads_the_same_images_lazily(tmp_path):
    root = tmp_path / "pics"
    write_image_folder(root, {"cat": 4, "dog": 3}, size=(40, 30))
    memory = load("image_folder", root=str(root), size=16, heldout_fraction=0.3, cache=False)
    stream = load("image_folder", root=str(root), size=16, heldout_fraction=0.3, stream=True, workers=1)
    assert isinstance(stream.train, advinf.StreamingSplit) and len(stream.train) == len(memory.train) == 5
    assert torch.equal(stream.heldout.x, memory.heldout.x) and stream.sample_shape == (3, 16, 16)
    x, y = stream.train.take(torch.arange(5))
    assert torch.equal(x, memory.train.x) and torch.equal(y, memory.train.y)
    assert not (root / ".advinf_cache").exists()
    # a file damaged after the run started is one message naming it, not the worker's traceback
    for image in root.rglob("*.png"):
        image.write_bytes(image.read_bytes()[:60])
    source = advinf.StreamSource(stream.train, 5, torch.device("cpu"), seed=0)
    with pytest.raises(UserError) as err:
        source.next()
    assert str(err.value).startswith("cannot read the image ") and "Traceback" not in str(err.value)


STREAM_RECIPE = """
name = "folder"
[dataset]
name = "image_folder"
root = "{root}"
size = 32
labels = "none"
stream = {stream}
workers = 2
[prior]
name = "gaussian"
dim = 256
spatial = true
[encoder]
name = "ali_svhn_encoder"
[decoder]
name = "ali_svhn_decoder"
[critic]
name = "ali_svhn_critic"
[game]
name = "ali"
[train]
steps = 6
batch_size = 4
threads = 1
progress = "none"
sample_every = 0
log_every = 2
checkpoint_every = 2
"""


def test_streaming_training_equals_in_memory_training_and_resumes_exactly(tmp_path):
    """Same seeded batch order from DataLoader workers as from the on-device tensor, across a resume."""
    root = tmp_path / "pics"
    write_image_folder(root, None, n=10, size=(40, 40))
    finals = {}
    for stream in ("false", "true"):
        recipe = tmp_path / f"r_{stream}.toml"
        recipe.write_text(STREAM_RECIPE.format(root=root, stream=stream))
        out = tmp_path / f"run_{stream}"
        args = ["run", str(recipe), "--out", str(out)]
        if stream == "true":  # in slices: stop at 3 (mid-epoch), resume
            assert CliRunner().invoke(cli, [*args, "--stop-after", "3"]).exit_code == 0
            args.append("--resume")
        res = CliRunner().invoke(cli, args)
        assert res.exit_code == 0, res.output
        finals[stream] = advinf.checkpoint.load_checkpoint(out / "checkpoints" / "step_0000006").tensors["model"]
    assert finals["true"].keys() == finals["false"].keys()
    for k, v in finals["false"].items():
        assert torch.equal(v, finals["true"][k]), k


def test_a_failed_download_says_so_and_leaves_no_empty_folders(tmp_path):
    import urllib.error

    from advinf_plugins.image_datasets import _torchvision

    root = tmp_path / "data" / "mnist"

    def offline():
        (root / "MNIST" / "raw").mkdir(parents=True)  # what torchvision makes before it downloads
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    with pytest.raises(UserError) as err:
        _torchvision("mnist", root, offline)
    msg = str(err.value)
    assert f"downloading into {root} failed" in msg and "Name or service not known" in msg
    assert "checksum" not in msg and err.value.option == "root"
    assert not root.exists() and (tmp_path / "data").exists()  # its new folders went; what was there stays

    def mirrors():
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried https://a/, got: <urlopen error>")

    with pytest.raises(UserError, match="downloading into .* failed: Error downloading"):
        _torchvision("mnist", root, mirrors)

    def corrupt():
        raise RuntimeError("File not found or corrupted.")

    with pytest.raises(UserError, match=r"could not load the files under .*corrupted\. If a checksum fails"):
        _torchvision("svhn", root, corrupt)

    def other():
        raise RuntimeError("something else")

    with pytest.raises(UserError) as err:
        _torchvision("svhn", root, other)
    assert "checksum" not in str(err.value)
    with pytest.raises(PermissionError):  # not the dataset's problem: not dressed up as one
        _torchvision("svhn", root, lambda: (_ for _ in ()).throw(PermissionError(13, "denied")))


def test_the_options_that_say_where_and_how_the_data_is_read_are_marked_and_left_out_of_the_cache_key():
    """``root``, ``download``, ``verify``, ``cache`` and ``workers`` are marked DataAccess (a resume may change
    them); the cache key is what it was before they were (caches written then stay valid)."""
    import hashlib

    from advinf_plugins import image_datasets as m

    assert advinf.data_access_keys(m.SvhnOptions) == {"root", "download", "verify", "cache"}
    assert advinf.data_access_keys(m.CelebaOptions()) == {"root", "download", "verify", "cache", "workers"}
    assert advinf.data_access_keys(m.ImageFolderOptions(root="x")) == {"root", "cache", "workers"}
    options = m.CelebaOptions(root="/somewhere", workers=3, split="valid")
    key = {"dataset": "celeba", "format": m.CACHE_FORMAT, "extra": None,
           **{k: v for k, v in options.model_dump().items()
              if k not in {"root", "download", "verify", "cache", "workers"}}}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    assert m._cache_path("celeba", options).name == f"celeba-{digest}.safetensors"
    elsewhere = m.CelebaOptions(root="/else", workers=1, split="valid", download=True)
    assert m._cache_path("celeba", elsewhere).name == m._cache_path("celeba", options).name
    other = m.CelebaOptions(split="test", heldout="valid")
    assert m._cache_path("celeba", other).name != m._cache_path("celeba", options).name
