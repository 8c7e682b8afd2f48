"""Checkpoints: safetensors for every tensor, JSON for the rest; atomic, verified, pickle-free.

Layout of ``RUN/checkpoints/``::

    step_0001000/            one complete checkpoint (written as .tmp-*, renamed into place)
        model.safetensors    every network's state_dict, keys "NETWORK.…" (e.g. "encoder.…"), and the moving
                             averages' "ema_NETWORK.module.…"
        optim.safetensors    each player's optimiser state keyed by parameter name:
                             "PLAYER/NETWORK.PARAM/KEY", e.g. "generator/decoder.net.0.weight/exp_avg"
        rng.safetensors      torch CPU and CUDA generator states
        state.json           step, data position, param groups, Python RNG, learning-rate schedules and other
                             components' state, recipe, versions, file checksums
    latest                   text file: the directory name of the newest complete checkpoint

A crash at any moment leaves the previous checkpoint intact: a checkpoint directory only ever appears by an
atomic rename of a fully written and fsynced temporary directory, ``latest`` is replaced atomically after that,
and old checkpoints are renamed away before they are deleted.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from advinf.atomic import default_mode, fsync_dir, open_own, read_text, write_text
from advinf.data import DataDescription
from advinf.errors import UserError
from advinf.values import parse_json

FILES = ("model", "optim", "rng")
STATE_FILE = "state.json"
LATEST = "latest"
_NAME_RE = re.compile(r"^step_(\d+)$")


@dataclass
class Checkpoint:
    """A loaded, verified checkpoint."""

    path: Path
    state: dict[str, Any]
    tensors: dict[str, dict[str, Tensor]]  # "model" / "optim" / "rng" -> flat tensor dict

    @property
    def step(self) -> int:
        return int(self.state["step"])


def checkpoint_name(step: int) -> str:
    return f"step_{step:07d}"


def save_checkpoint(root: Path, step: int, tensors: dict[str, dict[str, Tensor]], state: dict[str, Any],
                    keep: int) -> Path:
    """Write one checkpoint atomically, point ``latest`` at it, and keep the newest ``keep``."""
    root.mkdir(parents=True, exist_ok=True)
    _clear_debris(root)
    final = root / checkpoint_name(step)
    if final.is_symlink() or (final.exists() and not (final / STATE_FILE).is_file()):
        raise UserError(f"{final} is in the way of step {step}'s checkpoint and is no complete checkpoint (a link, "
                        "or no state.json): its weights may be all that is left of a training, so it is not written "
                        f"over; move it out of {root} and resume")
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=root))
    os.chmod(tmp, default_mode(folder=True))  # mkdtemp makes it private (0700)
    replaced: Path | None = None  # this step's earlier checkpoint, moved aside until the new one is in place
    try:
        sums = {}
        for name in FILES:
            path = tmp / f"{name}.safetensors"
            try:
                save_file({k: v.detach().to("cpu").contiguous().clone() for k, v in tensors[name].items()},
                          str(path), metadata={"format": "advinf-checkpoint"})
            except SafetensorError as exc:  # its own error type, for the file system's refusals too (a full disk)
                raise UserError(f"cannot write the checkpoint of step {step} into {root}: {exc}; free some space "
                                "(or fix what the message says) and resume: the previous checkpoint is intact") \
                    from exc
            os.chmod(path, default_mode())  # safetensors writes its files private (0600)
            sums[name] = _sha256(path)
            _fsync_file(path)
        state = {**state, "step": step, "checksums": sums}
        state["state_checksum"] = _state_checksum(state)
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=1, sort_keys=True), encoding="utf-8")
        _fsync_file(tmp / STATE_FILE)
        fsync_dir(tmp)
        if final.exists():  # the same step again (e.g. a resumed run stopped where it started)
            replaced = root / f".trash-{final.name}-{os.getpid()}"
            os.replace(final, replaced)
        os.replace(tmp, final)
        fsync_dir(root)
    except BaseException:
        if replaced is not None and replaced.exists() and not final.exists():
            os.replace(replaced, final)  # interrupted between the two renames: the earlier one goes back
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:  # one protected region: a second Ctrl-C can land on any call or loop, not only inside a delete
        if replaced is not None:
            shutil.rmtree(replaced, ignore_errors=True)  # only once the new checkpoint is in place
        write_text(root / LATEST, final.name + "\n")
        fsync_dir(root)
        for old_ckpt in list_checkpoints(root)[:-keep] if keep > 0 else []:
            trash = root / f".trash-{old_ckpt.name}-{os.getpid()}"
            os.replace(old_ckpt, trash)  # one atomic rename: it stops being a checkpoint
            shutil.rmtree(trash, ignore_errors=True)
    except BaseException:
        _clear_debris(root)  # finish the deletes an interrupt cut short before going on up
        raise
    return final


def list_checkpoints(root: Path) -> list[Path]:
    """Checkpoint directories that look complete (have state.json), oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _NAME_RE.match(p.name) and not p.is_symlink() and p.is_dir()
             and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(_NAME_RE.match(p.name).group(1)))  # type: ignore[union-attr]


def incomplete_checkpoints(root: Path, after: int | None = None) -> str | None:
    """What the ``step_*`` entries under ``root`` that are no complete checkpoint are, when there are such (links
    are never followed: a checkpoint is a folder of the run), for messages; None when there are none. With
    ``after``, only those a run resumed from step ``after`` would reach and write over (named for a later step)."""
    if not root.is_dir():
        return None
    complete = set(list_checkpoints(root))
    found = sorted((p for p in root.glob("step_*") if p not in complete and (
        after is None or ((m := _NAME_RE.match(p.name)) is not None and int(m.group(1)) > after))),
        key=lambda p: p.name)
    if not found:
        return None
    linked = [p.name for p in found if p.is_symlink()]
    misnamed = [p.name for p in found if not p.is_symlink() and not _NAME_RE.match(p.name)]
    files = [p.name for p in found if not p.is_symlink() and _NAME_RE.match(p.name) and not p.is_dir()]
    missing = [p.name for p in found if not p.is_symlink() and _NAME_RE.match(p.name) and p.is_dir()]
    parts = [f"{', '.join(linked)} {'is a link' if len(linked) == 1 else 'are links'} (a checkpoint must be a "
             f"folder of the run: copy the folder in instead of linking it)"] if linked else []
    parts += [f"{', '.join(misnamed)}: not named step_N (N: the step)"] if misnamed else []
    parts += [f"{', '.join(files)}: not a folder"] if files else []
    parts += [f"{', '.join(missing)}: state.json missing"] if missing else []
    return "; ".join(parts)


def latest_checkpoint(root: Path) -> Path | None:
    """The checkpoint ``latest`` names; if it is missing or incomplete, the newest complete one (warned)."""
    if root.exists() and not root.is_dir():
        raise UserError(f"{root} is not a directory; move it away (a run keeps its checkpoints in that folder)")
    complete = list_checkpoints(root)
    pointer = root / LATEST
    if pointer.exists() or pointer.is_symlink():
        name = None
        if pointer.is_file() and not pointer.is_symlink():
            try:
                name = pointer.read_bytes()[:64].decode("utf-8").strip()
            except (UnicodeDecodeError, OSError):
                name = None
        target = root / name if name else None
        if name and _NAME_RE.match(name) and target in complete:  # type: ignore[operator]
            return target
        fallback = complete[-1].name if complete else "none"
        what = f"names {name[:40]!r}, which is missing or incomplete" if name else "is not a readable pointer file"
        warnings.warn(f"{pointer} {what}; using the newest complete checkpoint ({fallback})", stacklevel=2)
    return complete[-1] if complete else None


class _Loose(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class SamplerState(_Loose):
    epoch: int = Field(ge=0, le=2**40)  # seeds each epoch's permutation: bounded so that the seed fits 64 bits
    position: int = Field(ge=0, le=2**62)
    streams: dict[str, SamplerState] = Field(default_factory=dict)


class OptimizerMeta(_Loose):
    param_groups: list[dict[str, Any]]
    scalars: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @field_validator("param_groups")
    @classmethod
    def _groups(cls, groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for g in groups:
            if not isinstance(g.get("params"), list) or not all(isinstance(p, str) for p in g["params"]):
                raise ValueError("every param group needs `params`, a list of parameter names")
            for k, v in g.items():
                if k != "params" and not (v is None or isinstance(v, bool | int | float)
                                          or (isinstance(v, list) and all(isinstance(x, int | float) for x in v))):
                    raise ValueError(f"param group value {k!r} is not a number, flag or list of numbers")
        return groups


class PythonRng(_Loose):
    python: tuple[int, list[int], float | None] = Field(strict=False)  # JSON has no tuples
    # numpy's global generator (its 624 keys are the tensor numpy_keys): position, has_gauss, cached gaussian;
    # absent from checkpoints of older versions
    numpy: tuple[int, int, float] | None = Field(default=None, strict=False)


class CheckpointState(_Loose):
    """The schema of state.json: a damaged file is a clear error, never a traceback later in training."""

    step: int = Field(ge=0)
    epoch: int = Field(0, ge=0)
    sampler: SamplerState
    skipped: int = Field(0, ge=0)
    optimizers: dict[str, OptimizerMeta]
    rng: PythonRng
    recipe: dict[str, Any] | None = None
    components: dict[str, dict[str, Any]] = Field(default_factory=dict)  # e.g. "lr_schedule.PLAYER" -> its state
    data: DataDescription | None = None  # what the model depends on of its data (checkpoints before it have none)
    checksums: dict[str, str]
    state_checksum: str | None = None  # of this file's other contents (checkpoints before it have none)


def load_checkpoint(path: Path) -> Checkpoint:
    """Read and verify a checkpoint directory; a UserError says what is wrong with it."""
    state_path = path / STATE_FILE
    advice = f"delete {path} to resume from an older checkpoint"
    try:
        state = parse_json(read_text(state_path))
        CheckpointState.model_validate(state)
        sums = state["checksums"]
    except FileNotFoundError:
        raise UserError(f"{path} is not a complete checkpoint (no {STATE_FILE})") from None
    except (PermissionError, IsADirectoryError) as exc:  # the file may be fine: nothing to delete
        raise UserError(f"{state_path} cannot be read ({exc.strerror or exc}): fix its permissions (or what is in "
                        "its place) and try again") from None
    except ValidationError as exc:
        where = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(top level)'}: {e['msg']}" for e in exc.errors()[:3])
        raise UserError(f"{state_path} is damaged ({where}); {advice}") from None
    except (ValueError, KeyError, TypeError, OSError) as exc:
        raise UserError(f"{state_path} is corrupted ({type(exc).__name__}: {str(exc)[:200]}); {advice}") from None
    if state.get("state_checksum") is not None and state["state_checksum"] != _state_checksum(state):
        raise UserError(f"{state_path} was changed or damaged after it was written (its checksum does not match); "
                        f"restore it, or {advice} (to change a setting, resume with --set ... --allow-changes)")
    named = _NAME_RE.match(path.name)
    if named and int(named.group(1)) != state["step"]:
        raise UserError(f"{state_path} says step {state['step']}, but its folder is {path.name}; {advice}")
    tensors = {}
    for name in FILES:
        file = path / f"{name}.safetensors"
        if not file.is_file():
            raise UserError(f"checkpoint file {file} is missing; delete {path} to use an older checkpoint")
        try:
            digest = _sha256(file)
        except PermissionError as exc:
            raise UserError(f"checkpoint file {file} cannot be read ({exc.strerror or exc}): fix its permissions "
                            "and try again") from None
        if digest != sums.get(name):
            raise UserError(f"checkpoint file {file} is corrupted or truncated (checksum mismatch); "
                            f"delete {path} to resume from an older checkpoint")
        try:
            tensors[name] = load_file(str(file))
        except (SafetensorError, OSError, ValueError) as exc:
            raise UserError(f"checkpoint file {file} cannot be read ({exc})") from None
    return Checkpoint(path, state, tensors)


# -- pieces of training state ------------------------------------------------------------------------------

def optimizer_state(opt: torch.optim.Optimizer, names: list[str], prefix: str
                    ) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """An optimiser's state as tensors keyed ``prefix/param_name/key`` plus JSON (groups, scalar state)."""
    sd = opt.state_dict()
    flat_ids = [i for g in sd["param_groups"] for i in g["params"]]
    if len(flat_ids) != len(names):
        raise ValueError(f"{prefix}: {len(flat_ids)} parameters in the optimiser but {len(names)} names")
    name_of = dict(zip(flat_ids, names, strict=True))
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for key, value in st.items():
            if isinstance(value, Tensor):
                tensors[f"{prefix}/{name_of[idx]}/{key}"] = value
            else:
                scalars.setdefault(name_of[idx], {})[key] = value
    groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": [name_of[i] for i in g["params"]]}
              for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


#: The per-parameter state of torch's optimisers that has its parameter's shape (Adam, AdamW, SGD, RMSprop,
#: Adagrad, Adadelta, ...), checked when a checkpoint is loaded.
PARAMETER_SHAPED = frozenset({"exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer", "square_avg",
                              "grad_avg", "acc_delta", "sum", "ax", "prev", "step_size", "exp_inf"})


def load_optimizer_state(opt: torch.optim.Optimizer, names: list[str], prefix: str, tensors: dict[str, Tensor],
                         meta: dict[str, Any], where: Path) -> None:
    """Restore what optimizer_state saved; parameters are matched by name, so a changed model fails loudly."""
    saved = [n for g in meta["param_groups"] for n in g["params"]]
    if saved != names:
        missing, extra = sorted(set(names) - set(saved)), sorted(set(saved) - set(names))
        detail = (f"parameters not in the checkpoint: {missing[:5]}; " if missing else "") + \
                 (f"checkpoint parameters not in the model: {extra[:5]}" if extra else "") or \
                 "the parameters are in a different order"
        raise UserError(f"{where}: the {prefix} optimiser state does not fit this model ({detail})")
    index = {n: i for i, n in enumerate(names)}
    params = [p for g in opt.param_groups for p in g["params"]]
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        head, _, rest = key.partition("/")
        if head != prefix:
            continue
        pname, _, skey = rest.rpartition("/")
        if pname not in index:
            raise UserError(f"{where}: the {prefix} optimiser state holds '{key}', for no parameter of this model")
        shape = tuple(params[index[pname]].shape)
        if skey in PARAMETER_SHAPED and tuple(value.shape) != shape:  # torch would read past it, or train on it
            raise UserError(f"{where}: the {prefix} optimiser state '{key}' has shape {tuple(value.shape)}, its "
                            f"parameter {shape}: the checkpoint is damaged; resume from an older one")
        if skey == "step" and (value.numel() != 1 or not bool(torch.isfinite(value).all()) or float(value) < 1):
            # a count of updates made (at least one, or there would be no state): the step would fail, or
            # Adam's bias correction divide by 0
            raise UserError(f"{where}: the {prefix} optimiser state '{key}' is not a count of steps taken (shape "
                            f"{tuple(value.shape)}): the checkpoint is damaged; resume from an older one")
        state.setdefault(index[pname], {})[skey] = value
    for pname, values in meta.get("scalars", {}).items():
        state.setdefault(index[pname], {}).update(values)
    groups = [{**g, "params": [index[n] for n in g["params"]]} for g in meta["param_groups"]]
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    opt.load_state_dict({"state": state, "param_groups": groups})


def rng_state() -> tuple[dict[str, Tensor], dict[str, Any]]:
    import random

    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = s
    version, internal, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state()  # type: ignore[misc]
    tensors["numpy_keys"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    return tensors, {"python": [version, list(internal), gauss], "numpy": [int(pos), int(has_gauss), float(cached)]}


def load_rng_state(tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
    import random

    torch.set_rng_state(tensors["torch_cpu"])
    cuda_keys = sorted((k for k in tensors if k.startswith("torch_cuda_")), key=lambda k: int(k.rsplit("_", 1)[1]))
    cuda = [tensors[k] for k in cuda_keys]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))
    if "numpy_keys" in tensors and meta.get("numpy") is not None:  # a plugin drawing from numpy's global RNG
        pos, has_gauss, cached = meta["numpy"]
        try:
            np.random.set_state(("MT19937", tensors["numpy_keys"].numpy().astype(np.uint32), int(pos),
                                 int(has_gauss), float(cached)))
        except (ValueError, TypeError, IndexError) as exc:  # consistent files, wrong contents: not a traceback
            raise UserError(f"the checkpoint's numpy random state cannot be restored ({exc}): the checkpoint is "
                            "damaged; resume from an earlier one") from None


def load_module_state(module: torch.nn.Module, prefix: str, tensors: dict[str, Tensor], where: Path,
                      name: str | None = None) -> None:
    """Load ``prefix.*`` tensors into ``module`` (the recipe's network ``name``, default ``prefix``) with a clear
    error for a different architecture."""
    own = module.state_dict()
    saved = {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
    missing, extra = sorted(set(own) - set(saved)), sorted(set(saved) - set(own))
    shapes = [f"{k}: checkpoint {tuple(saved[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in saved and saved[k].shape != own[k].shape]
    if missing or extra or shapes:
        parts = ([f"missing {missing[:4]}"] if missing else []) + ([f"unexpected {extra[:4]}"] if extra else []) \
            + shapes[:4]
        raise UserError(f"{where}: the checkpoint's {prefix} does not fit the recipe's {name or prefix} "
                        f"(a different architecture?): {'; '.join(parts)}")
    module.load_state_dict(saved)


def network_prefix(tensors: dict[str, Tensor], name: str) -> str | None:
    """The key prefix of network ``name`` in a checkpoint's model tensors: its moving average
    (``ema_NAME.module``) when the run kept one, else ``NAME``; None if the checkpoint has no such network."""
    for prefix in (f"ema_{name}.module", name):
        if any(k.startswith(prefix + ".") for k in tensors):
            return prefix
    return None


def network_names(tensors: dict[str, Tensor]) -> list[str]:
    """The networks a checkpoint's model tensors hold (moving averages not listed separately)."""
    return sorted({k.split(".", 1)[0] for k in tensors if not k.startswith("ema_")})


def _state_checksum(state: dict[str, Any]) -> str:
    """SHA-256 of state.json's contents but this checksum, in one canonical JSON form: an edited or damaged file
    is told apart from what training wrote."""
    body = json.loads(json.dumps({k: v for k, v in state.items() if k != "state_checksum"}))  # as read back:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode("utf-8")).hexdigest()  # keys become text


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open_own(path) as fh:  # never a link's target, nor a FIFO (which would block)
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _clear_debris(root: Path) -> None:
    """Remove temporary and trash directories left by a process killed while checkpointing."""
    for p in root.iterdir():
        if p.name.startswith((".tmp-", ".trash-")) and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
