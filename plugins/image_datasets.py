"""Image datasets on torchvision: ``svhn``, ``cifar10``, ``celeba`` (64x64), ``mnist``, ``tiny_imagenet`` and
``image_folder`` (a user's own images).

Pixels are held as uint8 tensors (N, C, H, W) in an ``advinf.Dataset`` (train split and held-out split);
the trainer decodes them to [0, 1] floats on the device. The official files are read by torchvision's own
dataset classes. Every section takes ``root``, ``download`` (default false: a missing dataset is an error
naming the files it expects) and ``verify`` (default true: torchvision's checksum check of the official
files). ``verify = false`` skips only the checksum: each torchvision class is subclassed with its checksum
table set to ``None``, which torchvision's ``check_integrity`` treats as "the file exists"; parsing stays
torchvision's. CIFAR-10 is the exception: its python batches are pickles, which can run code, so advinf reads
the official *binary* version (``cifar-10-batches-bin/``, plain bytes; what ``download = true`` fetches) and
unpickles the python version only when every file has the official release's checksum, whatever ``verify``
says. The decoded tensors are cached under ``root/.advinf_cache/<name>-<key>.safetensors`` (key: a
hash of every option that changes the tensors), written atomically, so a second run starts fast.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import urllib.error
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor

from advinf import (
    DataAccess,
    Dataset,
    OptionError,
    Split,
    StreamingSplit,
    UserError,
    atomic_path,
    data_access_keys,
    hookimpl,
)

#: Bump when the decoded tensors of the same options would change (invalidates every cache file).
CACHE_FORMAT = 1
CACHE_DIR = ".advinf_cache"
#: Options that say where or how the files are read, not which data (DataAccess): not part of the cache key.
_Root = Annotated[str, DataAccess()]
_Flag = Annotated[bool, DataAccess()]
_Workers = Annotated[int | None, DataAccess()]


# -- options -----------------------------------------------------------------------------------------------


class _DatasetOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    root: _Root = Field(..., min_length=1, description="folder of the dataset's files (relative to the working "
                      "directory)")
    limit: int | None = Field(None, gt=0, description="at most this many examples per split (quick runs, tests)")
    cache: _Flag = Field(True, description="cache the decoded tensors under root/.advinf_cache (safetensors)")


class _OfficialOptions(_DatasetOptions):
    download: _Flag = Field(False, description="fetch missing files with torchvision's downloader")
    verify: _Flag = Field(True, description="check the official files' checksums (false: existence only)")


class SvhnOptions(_OfficialOptions):
    root: _Root = Field("data/svhn", min_length=1, description="folder holding {train,test,extra}_32x32.mat")
    split: Literal["train", "extra", "test"] = Field("train", description="training split (the original: extra)")
    heldout: Literal["test", "train", "none"] = Field("test", description="held-out split")

    @model_validator(mode="after")
    def _apart(self) -> SvhnOptions:
        if self.heldout == self.split:  # evaluators would report training images as held out
            raise OptionError(f"heldout = '{self.heldout}' is the training split too: hold out another split, or "
                              "'none'", option="heldout")
        return self


class Cifar10Options(_OfficialOptions):
    root: _Root = Field("data/cifar10", min_length=1, description="folder holding cifar-10-batches-bin/ (the "
                      "official binary version, preferred) or cifar-10-batches-py/ (the python version)")
    heldout: Literal["validation", "test", "none"] = Field(
        "validation", description="validation: hold out the last `validation` training examples (the original: "
                                  "train on 0-44,999, validate on 45,000-49,999); test: train on all 50,000, "
                                  "hold out the test batch; none: train on all 50,000")
    validation: int = Field(5000, gt=0, description="size of the validation split (heldout = 'validation')")
    verify: _Flag = Field(True, description="checksum of the downloaded archive; python batches (pickles) are read "
                                           "only if they are the official files, whatever this says")


class CelebaOptions(_OfficialOptions):
    root: _Root = Field("data", min_length=1, description="folder holding celeba/ (torchvision's layout)")
    split: Literal["train", "valid", "test", "all"] = Field("train", description="official partition to train on")
    heldout: Literal["valid", "test", "none"] = Field("test", description="official partition held out")
    workers: _Workers = Field(None, gt=0, description="image decoding threads (default: up to 8)")

    @model_validator(mode="after")
    def _apart(self) -> CelebaOptions:
        if self.heldout != "none" and self.split in (self.heldout, "all"):  # training images reported as held out
            raise OptionError(f"heldout = '{self.heldout}' is part of split = '{self.split}': hold out a partition "
                              "not trained on, or 'none'", option="heldout")
        return self


class MnistOptions(_OfficialOptions):
    root: _Root = Field("data/mnist", min_length=1, description="folder holding MNIST/raw/ (torchvision's layout)")
    size: Literal[28, 32] = Field(28, description="32: pad the 28x28 digits with 2 black pixels on every side "
                                                 "(for the 32x32 networks, e.g. the paper's SVHN ones)")
    heldout: Literal["test", "none"] = Field("test", description="held-out split")
    verify: _Flag = Field(True, description="checksums of downloaded archives (torchvision never checks the "
                                           "extracted idx files)")


class TinyImagenetOptions(_OfficialOptions):
    root: _Root = Field("data/tiny_imagenet", min_length=1, description="folder holding tiny-imagenet-200/")
    heldout: Literal["val", "none"] = Field("val", description="held-out split (the labelled val set)")
    verify: _Flag = Field(True, description="checksum of the downloaded zip (the extracted images have none)")
    workers: _Workers = Field(None, gt=0, description="image decoding threads (default: up to 8)")


class ImageFolderOptions(_DatasetOptions):
    root: _Root = Field(..., min_length=1, description="folder of images (optionally one subfolder per class)")
    size: int = Field(64, gt=0, description="images are resized (shorter side) and centre-cropped to size x size")
    grayscale: bool = Field(False, description="one channel instead of RGB")
    labels: Literal["auto", "folders", "none"] = Field(
        "auto", description="folders: the subfolder names are the classes; none: every image under root, "
                            "unlabelled; auto: folders if root has subfolders, else none")
    heldout_fraction: float = Field(0.0, ge=0, lt=1, description="fraction of the images held out")
    stream: bool = Field(False, description="decode the training images batch by batch in DataLoader workers "
                                            "instead of holding them in memory (for folders too large for it)")
    split_seed: int = Field(0, ge=0, lt=2**32, description="seed of the shuffle that picks the held-out images")
    workers: _Workers = Field(None, gt=0, description="image decoding threads (default: up to 8)")


# -- torchvision classes with the checksums switched off (verify = false) ----------------------------------


def _tv():
    import torchvision.datasets as tvd

    return tvd


def _svhn_class(verify: bool):
    cls = _tv().SVHN
    if verify:
        return cls
    table = {k: [url, name, None] for k, (url, name, _md5) in cls.split_list.items()}
    return type("UnverifiedSVHN", (cls,), {"split_list": table})


def _celeba_class(verify: bool):
    cls = _tv().CelebA
    if verify:
        return cls
    return type("UnverifiedCelebA", (cls,), {"file_list": [(fid, None, name) for fid, _, name in cls.file_list]})


def _mnist_class(verify: bool):
    cls = _tv().MNIST
    # MNIST's folder is named after the class, so keep "MNIST" for the subclass. torchvision reads
    # MNIST/processed/{training,test}.pt (torch.load: pickle) before the raw files when both are there: never here,
    # where data runs no code (and the raw files' checksums are not bypassed)
    members = {"_check_legacy_exist": lambda self: False,
               "raw_folder": property(lambda self: os.path.join(self.root, "MNIST", "raw")),
               "processed_folder": property(lambda self: os.path.join(self.root, "MNIST", "processed"))}
    if not verify:
        members["resources"] = [(name, None) for name, _ in cls.resources]
    return type("RawMNIST" if verify else "UnverifiedMNIST", (cls,), members)


# -- shared machinery --------------------------------------------------------------------------------------


def _require(name: str, root: Path, expected: Sequence[str], download_hint: bool = True) -> None:
    """A UserError naming the expected files under ``root`` if any of them is missing."""
    missing = [e for e in expected if not (root / e).exists()]
    if not missing:
        return
    what = ", ".join(str(root / e) for e in expected)
    msg = f"dataset '{name}': files not found under {root}: expected {what} (missing: {', '.join(missing)})."
    if download_hint:
        msg += (" Set `download = true` beside this `root` (for the run's data: --set dataset.download=true) to "
                "fetch them with torchvision's downloader, or point `root` at the folder that holds them.")
    raise UserError(msg, option="root")


def _torchvision(name: str, root: Path, make: Callable[[], Any], files: Sequence[Path] = (),
                 download: bool = True) -> Any:
    """Build a torchvision dataset, turning its 'not found', 'corrupted' and failed-download errors into
    UserErrors; folders a failed download made and left empty are removed. ``files``: what it reads, named when
    one is there but cannot be read (truncated, another format)."""
    # what a failed download may leave behind is removed; without one nothing is (and nothing is walked: CelebA's
    # root is often the folder of every dataset)
    before = {p for p in root.rglob("*") if p.is_dir()} if download and root.is_dir() else set()
    existed = root.exists()
    try:
        return make()
    except (MemoryError, UserError):
        raise
    except (RuntimeError, OSError) as exc:  # a failed download: RuntimeError (MNIST's mirrors) or URLError
        if download:
            _remove_new_empty_folders(root, before, existed)
        raise _load_error(name, root, exc, files) from None
    except Exception as exc:  # noqa: BLE001 -- ValueError, AssertionError, scipy's MatReadError...: a bad file
        raise damaged(name, files or [root], exc) from None


def _load_error(name: str, root: Path, exc: BaseException, files: Sequence[Path]) -> BaseException:
    text = " ".join(str(exc).split())[:600].rstrip(".")
    if isinstance(exc, urllib.error.URLError) or any(w in text for w in ("Error downloading", "urlopen",
                                                                             "HTTP Error")):
        return UserError(f"dataset '{name}': downloading into {root} failed: {text}. Check the network (or a "
                         "proxy), or put the files there by hand and set `download = false`.", option="root")
    checksum = any(w in text.lower() for w in ("checksum", "corrupt", "integrity", "md5"))
    if files and all(Path(f).is_file() for f in files) and not checksum:
        return damaged(name, files, exc)  # there, but unreadable: truncated, say
    if not isinstance(exc, RuntimeError):
        return exc
    hint = (" If a checksum fails, delete the file and download it again (`download = true`), or set "
            "`verify = false` for files you trust." if checksum else "")
    return UserError(f"dataset '{name}': torchvision could not load the files under {root}: {text}.{hint}",
                     option="root")


def damaged(name: str, files: Sequence[Path], exc: BaseException) -> UserError:
    """The error for files that are there but cannot be read as the dataset's."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
    return UserError(f"dataset '{name}': {', '.join(map(str, files))} cannot be read as {name}'s files ({text}): "
                     "damaged, or not the official release's; delete them and download them again "
                     "(`download = true`), or point `root` at a good copy", option="root")


def _listed(name: str, folder: Path, entry: str, listing: Path) -> Path:
    """``folder / entry`` for a file name a dataset's listing gives (CelebA's partition, Tiny ImageNet's
    annotations): a bare name, never a path leading out of the folder (``../..``, ``/etc``)."""
    if not entry or entry in (".", "..") or "/" in entry or "\\" in entry or os.sep in entry:
        raise damaged(name, [listing], ValueError(f"it names the file {entry!r}, not a file name in {folder}"))
    return folder / entry


def _class_labels(name: str, y: Tensor, classes: int, path: Path) -> Tensor:
    """``y`` when every label is a class index below ``classes``; a wrong one would train a conditional model on
    an extra class, or fail mid-training."""
    bad = (y < 0) | (y >= classes)
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        raise damaged(name, [path], ValueError(f"{int(bad.sum())} labels outside 0..{classes - 1}, the first "
                                               f"{int(y[i])} at example {i}"))
    return y


def _remove_new_empty_folders(root: Path, before: set[Path], existed: bool) -> None:
    """Remove the folders under ``root`` (and ``root`` if it is new) that did not exist before and are empty."""
    if not root.is_dir():
        return
    for folder in sorted((p for p in root.rglob("*") if p.is_dir() and p not in before), key=lambda p: -len(p.parts)):
        with contextlib.suppress(OSError):
            folder.rmdir()  # only if empty
    if not existed:
        with contextlib.suppress(OSError):
            root.rmdir()


def _cache_path(name: str, options: BaseModel, extra: Any = None) -> Path:
    key = {"dataset": name, "format": CACHE_FORMAT, "extra": extra,
           **{k: v for k, v in options.model_dump().items() if k not in data_access_keys(options)}}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Path(options.root).expanduser() / CACHE_DIR / f"{name}-{digest}.safetensors"


def save_cached(path: Path, data: Dataset) -> None:
    """Write ``data``'s tensors and JSON meta to one safetensors file, atomically."""
    from safetensors.torch import save_file

    tensors = {"train.x": data.train.x}
    if data.train.y is not None:
        tensors["train.y"] = data.train.y
    if data.heldout is not None:
        tensors["heldout.x"] = data.heldout.x
        if data.heldout.y is not None:
            tensors["heldout.y"] = data.heldout.y
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp),
                  metadata={"advinf_meta": json.dumps(data.meta), "format": str(CACHE_FORMAT)})


def load_cached(path: Path) -> Dataset:
    """Read a file written by :func:`save_cached` (safetensors: no code runs)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads((f.metadata() or {})["advinf_meta"])
        t = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    heldout = Split(t["heldout.x"], t.get("heldout.y")) if "heldout.x" in t else None
    return Dataset(Split(t["train.x"], t.get("train.y")), heldout, meta)


def _cached(name: str, options: _DatasetOptions, build: Callable[[], Dataset], extra: Any = None) -> Dataset:
    """The dataset from its cache file if there is one, else ``build()`` it and write the cache."""
    path = _cache_path(name, options, extra)
    # verify is left out of the key (it says how the files are read), so a cache of files never verified is not
    # taken where they are to be verified: they are read, and checked, again
    verify = bool(getattr(options, "verify", False))
    if options.cache and path.is_file():
        try:
            cached = load_cached(path)
            if cached.meta.get("verified", False) or not verify:
                return cached
        except Exception as exc:  # a damaged cache is rebuilt, never trusted
            warnings.warn(f"ignoring unreadable dataset cache {path}: {exc}", stacklevel=2)
    data = build()
    if verify:
        data.meta["verified"] = True
    if options.cache:
        try:
            save_cached(path, data)
        except OSError as exc:
            warnings.warn(f"could not write the dataset cache {path}: {exc}", stacklevel=2)
    return data


def _limit(x: Tensor, y: Tensor | None, limit: int | None) -> Split:
    if limit is not None:
        x, y = x[:limit], None if y is None else y[:limit]
    return Split(x.contiguous(), None if y is None else y.contiguous())


def _workers(o: Any) -> int:
    return o.workers or max(1, min(8, os.cpu_count() or 1))


def decode_images(n: int, load: Callable[[int], Tensor], shape: tuple[int, ...], workers: int,
                  what: str = "") -> Tensor:
    """Decode ``n`` images with ``load(i) -> uint8 (C, H, W)`` on a thread pool into one (n, C, H, W) tensor."""
    out = torch.empty((n, *shape), dtype=torch.uint8)
    if n >= 5000 and what:
        print(f"advinf: decoding {n} images of {what} (cached afterwards)", file=sys.stderr, flush=True)

    def one(i: int) -> None:
        out[i] = load(i)

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, range(n)))
    return out


def _pil_to_uint8(img: Image.Image) -> Tensor:
    from torchvision.transforms.functional import pil_to_tensor

    return pil_to_tensor(img)


def resize_crop(img: Image.Image, size: int, mode: str) -> Tensor:
    """Resize the shorter side to ``size`` (Lanczos, antialiased), centre-crop to size x size, uint8 (C, H, W)."""
    img = eight_bit(img).convert(mode)
    w, h = img.size
    if (w, h) != (size, size):
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        img = img.resize((nw, nh), Image.Resampling.LANCZOS)
        left, top = (nw - size) // 2, (nh - size) // 2
        img = img.crop((left, top, left + size, top + size))
    return _pil_to_uint8(img)


#: The raster formats images are read in. Pillow picks a file's format by its content, whatever its name, and
#: some formats run programs (EPS and PDF-like PostScript go to Ghostscript): data never runs code, so only these.
IMAGE_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "TIFF", "WEBP", "PPM")


def eight_bit(img: Image.Image) -> Image.Image:
    """16-bit greyscale (a 16-bit PNG or TIFF) scaled to 8 bits: ``convert`` would clip it at 255 instead."""
    if img.mode.startswith("I;16") or (img.mode == "I" and img.format in ("PNG", "TIFF")):
        wide = np.asarray(img).astype(np.int64).clip(0, 65535)
        return Image.fromarray((wide >> 8).astype(np.uint8), "L")
    return img


def _open(path: str | Path) -> Image.Image:
    try:
        with Image.open(path, formats=IMAGE_FORMATS) as img:
            img.load()
            return img
    except (OSError, Image.DecompressionBombError) as exc:  # UnidentifiedImageError: not in IMAGE_FORMATS
        raise UserError(f"cannot read the image {path}: {exc} (images are read as "
                        f"{', '.join(IMAGE_FORMATS)}); remove or convert it") from None


# -- SVHN --------------------------------------------------------------------------------------------------


def svhn(options: SvhnOptions, ctx) -> Dataset:
    """SVHN 32x32 digits from the official .mat files (format 2); train on train|extra, hold out test."""
    root = Path(options.root).expanduser()
    splits = [options.split] + ([options.heldout] if options.heldout != "none" else [])

    def build() -> Dataset:
        cls = _svhn_class(options.verify)
        if not options.download:
            _require("svhn", root, [cls.split_list[s][1] for s in splits])
        out = []
        for s in splits:
            mat = root / cls.split_list[s][1]
            ds = _torchvision("svhn", root, lambda s=s: cls(str(root), split=s, download=options.download), [mat],
                              options.download)
            if ds.data.dtype != np.uint8 or ds.data.ndim != 4 or ds.data.shape[1:] != (3, 32, 32):
                raise damaged("svhn", [mat], ValueError(f"X is {ds.data.dtype} of shape (after torchvision's "
                                                        f"transpose) {ds.data.shape}, not uint8 (N, 3, 32, 32)"))
            labels = torch.from_numpy(np.asarray(ds.labels).astype(np.int64).reshape(-1))
            out.append(_limit(torch.from_numpy(ds.data), _class_labels("svhn", labels, 10, mat), options.limit))
        return Dataset(out[0], out[1] if len(out) > 1 else None,
                       meta={"name": "svhn", "classes": [str(i) for i in range(10)], "split": options.split})

    return _cached("svhn", options, build)


# -- CIFAR-10 ----------------------------------------------------------------------------------------------


CIFAR_BIN = "cifar-10-batches-bin"
CIFAR_BIN_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
CIFAR_BIN_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
CIFAR_BIN_FILES = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]


def read_cifar10_bin(path: Path) -> tuple[Tensor, Tensor]:
    """One file of the official binary version: records of 1 label byte and 3,072 pixel bytes (the red, green
    and blue 32x32 planes). Plain bytes: reading it runs no code."""
    raw = np.frombuffer(path.read_bytes(), dtype=np.uint8)
    if raw.size == 0 or raw.size % 3073:
        raise UserError(f"dataset 'cifar10': {path} is not a CIFAR-10 binary batch (its size, {raw.size} bytes, is "
                        "not a multiple of 3073)", option="root")
    records = raw.reshape(-1, 3073)
    labels = records[:, 0].astype(np.int64)
    if labels.max() > 9:
        raise UserError(f"dataset 'cifar10': {path} holds labels above 9; it is not a CIFAR-10 binary batch",
                        option="root")
    return torch.from_numpy(records[:, 1:].reshape(-1, 3, 32, 32).copy()), torch.from_numpy(labels)


def _unofficial_python_batch(root: Path) -> Path | None:
    """The first file of the python version under ``root`` that is not the official release's (checksum)."""
    from torchvision.datasets.utils import check_integrity

    cls = _tv().CIFAR10
    base = root / cls.base_folder
    for name, md5 in [*cls.train_list, *cls.test_list, (cls.meta["filename"], cls.meta["md5"])]:
        if not check_integrity(str(base / name), md5):
            return base / name
    return None


def _official_python_batches(root: Path) -> Callable[[bool], tuple[Tensor, Tensor]]:
    """The python version, read by torchvision, which unpickles it: only files with the official release's
    checksums are read (a pickle can run code), whatever ``verify`` says."""
    cls = _tv().CIFAR10
    bad = _unofficial_python_batch(root)
    if bad is not None:
        raise UserError(f"dataset 'cifar10': {bad} is not the official release's file (checksum); advinf unpickles "
                        "only the official python batches, since a pickle can run code. Use the official binary "
                        f"version instead ({CIFAR_BIN}/, plain bytes), e.g. with download = true", option="root")

    def load(train: bool) -> tuple[Tensor, Tensor]:
        ds = _torchvision("cifar10", root, lambda: cls(str(root), train=train, download=False), download=False)
        return torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(ds.targets)

    return load


def cifar10(options: Cifar10Options, ctx) -> Dataset:
    """CIFAR-10 32x32 from the official binary batches (or the official python ones); the original's 45,000 /
    5,000 split by default."""
    root = Path(options.root).expanduser()

    def build() -> Dataset:
        binary = root / CIFAR_BIN
        python = root / "cifar-10-batches-py"
        # download: where neither version is there, or the python one is not the official release's
        if options.download and not binary.is_dir() and (not python.is_dir() or _unofficial_python_batch(root)):
            from torchvision.datasets.utils import download_and_extract_archive

            download_and_extract_archive(CIFAR_BIN_URL, str(root), md5=CIFAR_BIN_MD5 if options.verify else None)
        if binary.is_dir() or not python.is_dir():
            _require("cifar10", root, [f"{CIFAR_BIN}/{name}" for name in CIFAR_BIN_FILES])

            def load(train: bool) -> tuple[Tensor, Tensor]:
                parts = [read_cifar10_bin(binary / name) for name in
                         (CIFAR_BIN_FILES[:5] if train else CIFAR_BIN_FILES[5:])]
                return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        else:
            load = _official_python_batches(root)

        x, y = load(True)
        heldout = None
        if options.heldout == "validation":
            if options.validation >= len(x):
                raise UserError(f"dataset 'cifar10': validation = {options.validation} leaves no training "
                                f"examples: it must be below the {len(x)} the training batches hold",
                                option="validation")
            cut = len(x) - options.validation
            heldout, x, y = _limit(x[cut:], y[cut:], options.limit), x[:cut], y[:cut]
        elif options.heldout == "test":
            heldout = _limit(*load(False), options.limit)
        classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
        return Dataset(_limit(x, y, options.limit), heldout, meta={"name": "cifar10", "classes": classes})

    return _cached("cifar10", options, build)


# -- CelebA ------------------------------------------------------------------------------------------------

CELEBA_FILES = ["img_align_celeba", "list_attr_celeba.txt", "identity_CelebA.txt", "list_bbox_celeba.txt",
                "list_landmarks_align_celeba.txt", "list_eval_partition.txt"]


def celeba_64(img: Image.Image) -> Tensor:
    """Fuel's ``convert_celeba_64``: resize the aligned image to 64x78 (w x h) with antialiasing, then crop the
    box (0, 7, 64, 71)."""
    img = img.convert("RGB").resize((64, 78), Image.Resampling.LANCZOS).crop((0, 7, 64, 71))
    return _pil_to_uint8(img)


def celeba(options: CelebaOptions, ctx) -> Dataset:
    """CelebA aligned faces at 64x64 (Fuel's crop), 40 binary attributes in {0, 1} as labels, official splits."""
    root = Path(options.root).expanduser()
    splits = [options.split] + ([options.heldout] if options.heldout != "none" else [])

    def build() -> Dataset:
        cls = _celeba_class(options.verify)
        if not options.download:
            _require("celeba", root, [f"{cls.base_folder}/{f}" for f in CELEBA_FILES])
        out, names = [], []
        for s in splits:
            texts = [root / cls.base_folder / f for f in CELEBA_FILES if f.endswith(".txt")]
            ds = _torchvision("celeba", root, lambda s=s: cls(str(root), split=s, target_type="attr",
                                                              download=options.download), texts, options.download)
            if bool(((ds.attr != 0) & (ds.attr != 1)).any()):  # torchvision's (a + 1) // 2 of values not -1 or 1
                raise damaged("celeba", texts[:1], ValueError("attributes other than -1 and 1"))
            n = len(ds) if options.limit is None else min(options.limit, len(ds))
            folder = Path(ds.root) / ds.base_folder / "img_align_celeba"  # torchvision's list, opened safely
            listing = root / cls.base_folder / "list_eval_partition.txt"
            x = decode_images(n, lambda i, ds=ds, folder=folder, listing=listing: celeba_64(
                _open(_listed("celeba", folder, ds.filename[i], listing))),
                              (3, 64, 64), _workers(options), f"CelebA {s}")
            out.append(Split(x, ds.attr[:n].to(torch.uint8).contiguous()))
            names = [a for a in ds.attr_names if a]
        return Dataset(out[0], out[1] if len(out) > 1 else None,
                       meta={"name": "celeba", "attributes": names, "split": options.split})

    return _cached("celeba", options, build)


# -- MNIST -------------------------------------------------------------------------------------------------


def mnist(options: MnistOptions, ctx) -> Dataset:
    """MNIST 28x28 digits (one channel, or padded to 32x32) from the official idx files; held out: the test set."""
    root = Path(options.root).expanduser()

    def build() -> Dataset:
        cls = _mnist_class(options.verify)
        if not options.download:
            _require("mnist", root, [f"MNIST/raw/{Path(name).stem}" for name, _ in cls.resources])

        def load(train: bool) -> Split:
            raw = root / "MNIST" / "raw"
            files = [raw / f"{'train' if train else 't10k'}-{part}-idx{dim}-ubyte"
                     for part, dim in (("images", 3), ("labels", 1))]
            ds = _torchvision("mnist", root, lambda: cls(str(root), train=train, download=options.download), files,
                              options.download)
            x = ds.data.unsqueeze(1)
            if options.size == 32:
                x = torch.nn.functional.pad(x, (2, 2, 2, 2))
            return _limit(x, _class_labels("mnist", ds.targets, 10, files[1]), options.limit)

        return Dataset(load(True), load(False) if options.heldout == "test" else None,
                       meta={"name": "mnist", "classes": [str(i) for i in range(10)]})

    return _cached("mnist", options, build)


# -- Tiny ImageNet -----------------------------------------------------------------------------------------

TINY_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
TINY_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"
TINY_FOLDER = "tiny-imagenet-200"


def tiny_imagenet(options: TinyImagenetOptions, ctx) -> Dataset:
    """Tiny ImageNet-200 (Stanford, 64x64, 100,000 training images in 200 classes; held-out: the val set)."""
    root = Path(options.root).expanduser()
    base = root / TINY_FOLDER

    def build() -> Dataset:
        expected = [f"{TINY_FOLDER}/wnids.txt", f"{TINY_FOLDER}/train", f"{TINY_FOLDER}/val/images",
                    f"{TINY_FOLDER}/val/val_annotations.txt"]
        if options.download and any(not (root / e).exists() for e in expected):
            from torchvision.datasets.utils import download_and_extract_archive

            download_and_extract_archive(TINY_URL, str(root), md5=TINY_MD5 if options.verify else None)
        _require("tiny_imagenet", root, expected)
        from torchvision.datasets import ImageFolder

        train = ImageFolder(str(base / "train"))
        wnids = [w.strip() for w in (base / "wnids.txt").read_text().split() if w.strip()]
        if sorted(wnids) != train.classes:
            raise UserError(f"dataset 'tiny_imagenet': the class folders of {base / 'train'} do not match "
                            f"{base / 'wnids.txt'}", option="root")

        def split(samples: list[tuple[str, int]], what: str) -> Split:
            samples = _interleaved(samples)[:options.limit] if options.limit else samples
            x = decode_images(len(samples), lambda i: resize_crop(_open(samples[i][0]), 64, "RGB"),
                              (3, 64, 64), _workers(options), what)
            return Split(x, torch.tensor([c for _, c in samples], dtype=torch.int64))

        heldout = None
        if options.heldout == "val":
            listing = base / "val" / "val_annotations.txt"
            rows = [ln.split("\t") for ln in listing.read_text().splitlines() if ln]
            try:
                val = [(str(_listed("tiny_imagenet", base / "val" / "images", r[0], listing)),
                        train.class_to_idx[r[1]]) for r in rows]
            except (IndexError, KeyError) as exc:  # a row without a class, or of a class train/ does not have
                raise damaged("tiny_imagenet", [listing], exc) from None
            heldout = split(val, "Tiny ImageNet val")
        return Dataset(split(train.samples, "Tiny ImageNet train"), heldout,
                       meta={"name": "tiny_imagenet", "classes": train.classes})

    # "limit": a limited subset takes every class in turn (it took the first classes' images)
    return _cached("tiny_imagenet", options, build, extra="limit: classes interleaved" if options.limit else None)


def _interleaved(samples: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """The first example of each class (in class order), then the second of each, ...: a prefix of any length
    holds every class about equally (the files are listed class by class)."""
    rank: dict[int, int] = {}
    keyed = []
    for sample in samples:
        keyed.append((rank.get(sample[1], 0), sample[1], sample))
        rank[sample[1]] = rank.get(sample[1], 0) + 1
    return [sample for _, _, sample in sorted(keyed, key=lambda t: (t[0], t[1]))]


# -- a user's own images -----------------------------------------------------------------------------------


def image_folder(options: ImageFolderOptions, ctx) -> Dataset:
    """Your own images, resized and centre-cropped to `size`; class subfolders become labels."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    root = Path(options.root).expanduser()
    exts = tuple(sorted({e.lower() for e in IMG_EXTENSIONS}))
    if not root.is_dir():
        raise UserError(f"dataset 'image_folder': {root} is not a folder; set `root` to a folder of images "
                        f"({', '.join(exts)}), optionally with one subfolder per class", option="root")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    mode = options.labels if options.labels != "auto" else ("folders" if classes else "none")
    if options.labels == "auto" and classes:
        loose = sum(1 for p in root.iterdir() if p.suffix.lower() in exts and p.is_file())
        if loose:  # a stray subfolder would otherwise leave every loose image out, without a word
            raise UserError(f"dataset 'image_folder': {root} holds {loose} images of its own beside "
                            f"{len(classes)} subfolders ({', '.join(classes[:5])}{', ...' if len(classes) > 5 else ''})"
                            ": with labels = 'auto' which is meant is unclear. Set labels = 'folders' (the "
                            "subfolders are the classes; the loose images are left out) or labels = 'none' (every "
                            "image, no labels)", option="labels")
    if mode == "folders":
        if not classes:
            raise UserError(f"dataset 'image_folder': labels = 'folders', but {root} has no subfolders",
                            option="labels")
        samples = make_dataset(str(root), {c: i for i, c in enumerate(classes)}, extensions=exts, allow_empty=True)
    else:
        classes = []
        samples = sorted((str(p), -1) for p in root.rglob("*")
                         if p.suffix.lower() in exts and p.is_file()
                         and not any(part.startswith(".") for part in p.relative_to(root).parts))
    if not samples:
        raise UserError(f"dataset 'image_folder': no images under {root} (looked for {', '.join(exts)})",
                        option="root")
    # The cache key includes every file's path, size and modification time: edited folders are re-read.
    fingerprint = hashlib.sha256("\n".join(
        f"{os.path.relpath(p, root)}\t{c}\t{os.stat(p).st_size}\t{os.stat(p).st_mtime_ns}"
        for p, c in samples).encode()).hexdigest()

    def build() -> Dataset:
        g = torch.Generator().manual_seed(options.split_seed)
        order = torch.randperm(len(samples), generator=g).tolist()
        n_held = int(round(options.heldout_fraction * len(samples)))
        mode_pil, channels = ("L", 1) if options.grayscale else ("RGB", 3)

        def split(idx: list[int], what: str) -> Split:
            idx = idx[:options.limit] if options.limit else idx
            x = decode_images(len(idx), lambda i: resize_crop(_open(samples[idx[i]][0]), options.size, mode_pil),
                              (channels, options.size, options.size), _workers(options), what)
            y = torch.tensor([samples[i][1] for i in idx], dtype=torch.int64) if mode == "folders" else None
            return Split(x, y)

        heldout = split(order[:n_held], f"{root} (held out)") if n_held else None
        train: Split | StreamingSplit
        if options.stream:
            files = [samples[i] for i in order[n_held:]][:options.limit]
            train = StreamingSplit(FolderImages(files, options.size, mode_pil, mode == "folders"),
                                   workers=_workers(options), labelled=mode == "folders")
        else:
            train = split(order[n_held:], str(root))
        return Dataset(train, heldout, meta={"name": "image_folder", "classes": classes, "root": str(root)})

    if options.stream:
        return build()  # only the (small) held-out split is decoded; nothing to cache
    return _cached("image_folder", options, build, extra=fingerprint)


class FolderImages(torch.utils.data.Dataset):
    """Image files decoded on demand (in DataLoader workers) to uint8 (C, size, size), with labels if any."""

    def __init__(self, files: list[tuple[str, int]], size: int, mode: str, labelled: bool):
        self.files, self.size, self.mode, self.labelled = files, size, mode, labelled

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> Tensor | tuple[Tensor, int]:
        path, label = self.files[i]
        x = resize_crop(_open(path), self.size, self.mode)
        return (x, label) if self.labelled else x


@hookimpl
def register_datasets(register) -> None:
    register("svhn", svhn, SvhnOptions, labels="classes")
    register("cifar10", cifar10, Cifar10Options, labels="classes")
    register("celeba", celeba, CelebaOptions, labels="attributes")
    register("mnist", mnist, MnistOptions, labels="classes")
    register("tiny_imagenet", tiny_imagenet, TinyImagenetOptions, labels="classes")
    register("image_folder", image_folder, ImageFolderOptions, labels=_folder_labels)


def _folder_labels(options: ImageFolderOptions) -> str | None:
    """labels = "folders": classes; "none": no labels; "auto": known only once the folder is read."""
    return {"folders": "classes", "none": None}.get(options.labels, "unknown")
