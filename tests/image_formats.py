"""Tiny datasets written in each dataset's real on-disk format (the files torchvision's loaders read).

Each writer returns what the loader should produce: uint8 pixels (N, C, H, W) and labels, in file order.
CIFAR-10's python batches are pickles because that is the official format; only these writers write them
(torchvision reads them); advinf's own code never unpickles anything.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
from PIL import Image

CELEBA_ATTRS = [f"Attr_{i:02d}" for i in range(40)]


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def write_svhn(root: Path, sizes: dict[str, int], seed: int = 0) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{split}_32x32.mat`` (SVHN format 2): X is (32, 32, 3, N) uint8, y is (N, 1) with 10 for the digit 0."""
    from scipy.io import savemat

    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for i, (split, n) in enumerate(sizes.items()):
        rng = _rng(seed + i)
        x = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
        y = rng.integers(1, 11, size=(n, 1)).astype(np.uint8)
        y[0, 0] = 10
        savemat(root / f"{split}_32x32.mat", {"X": x, "y": y})
        labels = torch.from_numpy(y[:, 0].astype(np.int64))
        labels[labels == 10] = 0
        out[split] = (torch.from_numpy(x.transpose(3, 2, 0, 1).copy()), labels)
    return out


def write_cifar10(root: Path, per_batch: int, test: int, seed: int = 0) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``cifar-10-batches-py/`` with data_batch_1..5, test_batch and batches.meta (python pickles)."""
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True, exist_ok=True)
    rng = _rng(seed)
    xs, ys = {}, {}
    for name, n in [*((f"data_batch_{i}", per_batch) for i in range(1, 6)), ("test_batch", test)]:
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=n)]
        with open(base / name, "wb") as f:
            pickle.dump({"batch_label": name, "labels": labels, "data": data,
                         "filenames": [f"img_{j}.png" for j in range(n)]}, f, protocol=2)
        xs[name], ys[name] = data.reshape(n, 3, 32, 32), labels
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({"num_cases_per_batch": per_batch, "num_vis": 3072,
                     "label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                                     "ship", "truck"]}, f, protocol=2)
    train = [f"data_batch_{i}" for i in range(1, 6)]
    train_y = [label for n in train for label in ys[n]]
    return {"train": (torch.from_numpy(np.concatenate([xs[n] for n in train])), torch.tensor(train_y)),
            "test": (torch.from_numpy(xs["test_batch"]), torch.tensor(ys["test_batch"]))}


def write_cifar10_bin(root: Path, per_batch: int, test: int, seed: int = 0
                      ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``cifar-10-batches-bin/``, the official binary version: data_batch_1..5.bin and test_batch.bin, records of
    one label byte and 3,072 pixel bytes (R, G and B planes), plus batches.meta.txt."""
    base = root / "cifar-10-batches-bin"
    base.mkdir(parents=True, exist_ok=True)
    rng = _rng(seed)
    xs, ys = {}, {}
    for name, n in [*((f"data_batch_{i}", per_batch) for i in range(1, 6)), ("test_batch", test)]:
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        (base / f"{name}.bin").write_bytes(np.concatenate([labels[:, None], data], axis=1).tobytes())
        xs[name], ys[name] = data.reshape(n, 3, 32, 32), labels.astype(np.int64)
    (base / "batches.meta.txt").write_text("airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n")
    train = [f"data_batch_{i}" for i in range(1, 6)]
    return {"train": (torch.from_numpy(np.concatenate([xs[n] for n in train])),
                      torch.from_numpy(np.concatenate([ys[n] for n in train]))),
            "test": (torch.from_numpy(xs["test_batch"]), torch.from_numpy(ys["test_batch"]))}


def write_celeba(root: Path, partitions: list[int], seed: int = 0) -> tuple[list[Path], torch.Tensor]:
    """``celeba/`` as torchvision expects it: img_align_celeba/*.jpg (178 x 218) and the five text files.

    Returns the image paths and the attributes in {-1, 1} (as in list_attr_celeba.txt)."""
    base = root / "celeba"
    (base / "img_align_celeba").mkdir(parents=True, exist_ok=True)
    rng = _rng(seed)
    n = len(partitions)
    names = [f"{i + 1:06d}.jpg" for i in range(n)]
    paths = []
    for name in names:
        # smooth random images so that JPEG keeps them recognisable
        small = rng.integers(0, 256, size=(7, 6, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((178, 218), Image.Resampling.BILINEAR)
        img.save(base / "img_align_celeba" / name, quality=95)
        paths.append(base / "img_align_celeba" / name)
    attrs = rng.choice([-1, 1], size=(n, 40))

    def table(header: str | None, rows: list[str]) -> str:
        return "\n".join(([str(n), header] if header is not None else []) + rows) + "\n"

    (base / "list_attr_celeba.txt").write_text(table(" ".join(CELEBA_ATTRS) + " ", [
        name + "".join(f" {v:2d}" for v in row) for name, row in zip(names, attrs, strict=True)]))
    (base / "identity_CelebA.txt").write_text(table(None, [f"{name} {i % 3 + 1}" for i, name in enumerate(names)]))
    (base / "list_bbox_celeba.txt").write_text(table("image_id x_1 y_1 width height",
                                                     [f"{name}    95  71 226 313" for name in names]))
    (base / "list_landmarks_align_celeba.txt").write_text(table(
        "lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y rightmouth_x rightmouth_y",
        [f"{name}  69  109  106  113   77  142   73  152  108  154" for name in names]))
    (base / "list_eval_partition.txt").write_text(table(None, [f"{name} {p}" for name, p in zip(names, partitions,
                                                                                                   strict=True)]))
    return paths, torch.from_numpy(attrs)


def _idx(path: Path, array: np.ndarray, code: int) -> None:
    header = bytes([0, 0, 0x08, code]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_mnist(root: Path, train: int, test: int, seed: int = 0) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``MNIST/raw/`` idx files (uncompressed, as torchvision leaves them after download)."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = _rng(seed)
    out = {}
    for prefix, split, n in [("train", "train", train), ("t10k", "test", test)]:
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, size=n, dtype=np.uint8)
        _idx(raw / f"{prefix}-images-idx3-ubyte", x, 3)
        _idx(raw / f"{prefix}-labels-idx1-ubyte", y, 1)
        out[split] = (torch.from_numpy(x).unsqueeze(1), torch.from_numpy(y.astype(np.int64)))
    return out


def _image(rng: np.random.Generator, w: int, h: int, mode: str = "RGB") -> Image.Image:
    channels = 3 if mode == "RGB" else 1
    arr = rng.integers(0, 256, size=(h, w, channels), dtype=np.uint8)
    return Image.fromarray(arr[:, :, 0] if channels == 1 else arr, mode)


def write_tiny_imagenet(root: Path, wnids: list[str], per_class: int, val: int, seed: int = 0) -> list[str]:
    """``tiny-imagenet-200/``: wnids.txt, words.txt, train/<wnid>/images/*.JPEG (+ boxes), val/images +
    val_annotations.txt. One training image is grayscale, as some of the real ones are. Returns the val wnids."""
    base = root / "tiny-imagenet-200"
    rng = _rng(seed)
    base.mkdir(parents=True, exist_ok=True)
    (base / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (base / "words.txt").write_text("".join(f"{w}\tthing {i}\n" for i, w in enumerate(wnids)))
    for c, wnid in enumerate(wnids):
        (base / "train" / wnid / "images").mkdir(parents=True, exist_ok=True)
        boxes = []
        for j in range(per_class):
            mode = "L" if (c, j) == (0, 0) else "RGB"
            _image(rng, 64, 64, mode).save(base / "train" / wnid / "images" / f"{wnid}_{j}.JPEG", "JPEG")
            boxes.append(f"{wnid}_{j}.JPEG\t0\t0\t63\t63")
        (base / "train" / wnid / f"{wnid}_boxes.txt").write_text("\n".join(boxes) + "\n")
    (base / "val" / "images").mkdir(parents=True, exist_ok=True)
    val_wnids, rows = [], []
    for j in range(val):
        wnid = wnids[j % len(wnids)]
        _image(rng, 64, 64).save(base / "val" / "images" / f"val_{j}.JPEG", "JPEG")
        rows.append(f"val_{j}.JPEG\t{wnid}\t0\t0\t63\t63")
        val_wnids.append(wnid)
    (base / "val" / "val_annotations.txt").write_text("\n".join(rows) + "\n")
    (base / "test" / "images").mkdir(parents=True, exist_ok=True)
    return val_wnids


def write_image_folder(root: Path, classes: dict[str, int] | None, n: int = 0, size: tuple[int, int] = (80, 60),
                       seed: int = 0) -> None:
    """PNG images, in one subfolder per class (``classes``: name -> count), or ``n`` loose ones."""
    rng = _rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    if classes is None:
        for j in range(n):
            _image(rng, *size).save(root / f"img_{j}.png")
        return
    for name, count in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for j in range(count):
            _image(rng, *size).save(root / name / f"{name}_{j}.png")
