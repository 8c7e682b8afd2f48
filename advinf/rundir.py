"""The run directory: resolved recipe, metrics.jsonl, samples/, checkpoints/, evals.jsonl, eval.json."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shlex
import shutil
import tempfile
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from advinf.atomic import open_append, read_bytes, read_text, regular_file, write_json, write_text
from advinf.errors import UserError
from advinf.values import parse_json

RECIPE_FILE = "recipe.toml"
LIBRARY_FILE = "library.json"  # a run trained from Python with components that have no recipe
METRICS_FILE = "metrics.jsonl"
EVAL_FILE = "eval.json"
EVALS_FILE = "evals.jsonl"
SAMPLES_DIR = "samples"
CHECKPOINTS_DIR = "checkpoints"
#: The keys of a metrics.jsonl line the trainer writes itself (besides loss_PLAYER): no game scalar may take them.
RESERVED_METRICS = frozenset({"step", "epoch", "steps_averaged", "samples_per_s", "time", "skipped_steps"})


def default_run_dir(name: str, root: Path = Path("runs")) -> Path:
    """``runs/NAME-YYYYmmdd-HHMMSS`` (a suffix is added if that exists)."""
    base = root / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, i = base, 1
    while path.exists():
        path, i = Path(f"{base}-{i}"), i + 1
    return path


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` holds an advinf run: its recipe, or (a Trainer used from Python with components not
    made by name) library.json."""
    return (path / RECIPE_FILE).is_file() or (path / LIBRARY_FILE).is_file()


def require_run_dir(path: Path) -> None:
    """A UserError unless ``path`` holds an advinf run."""
    if path.exists() and not path.is_dir():
        raise UserError(f"{path} is a file, not an advinf run directory")
    if not is_run_dir(path):
        seeds = seed_runs(path)
        if seeds:
            raise UserError(f"{path} holds a group of seeds ({', '.join(p.name for p in seeds)}), not one run; "
                            f"continue each seed on its own: advinf run --resume {shlex.quote(str(seeds[0]))}")
        empty = not path.exists() or not any(path.iterdir())
        raise UserError(f"{path} is not an advinf run directory (no {RECIPE_FILE}); check --out"
                        + (", or drop --resume to start a new run there" if empty else ""))


def seed_runs(path: Path) -> list[Path]:
    """The run directories ``seed_K`` in ``path`` (a group of seeds, ``advinf run --seeds``), by K."""
    if not path.is_dir():
        return []
    found = [p for p in path.glob("seed_*") if p.name[5:].isdigit() and is_run_dir(p)]
    return sorted(found, key=lambda p: int(p.name[5:]))


def check_target(path: Path, *, resume: bool) -> None:
    """A UserError unless ``path`` can take a new run (absent or empty) or, with ``resume``, holds a run.
    Creates nothing: called before anything slow (data loading) happens."""
    try:
        _check_target(path, resume)
    except OSError as exc:  # e.g. a name too long for the file system
        raise UserError(f"cannot use the run directory {path}: {exc.strerror or exc}; choose another --out") from None


def _check_target(path: Path, resume: bool) -> None:
    if path.is_symlink() and not path.exists():
        raise UserError(f"--out {path} is a symbolic link to nothing; remove it or choose another --out")
    if path.exists() and not path.is_dir():
        raise UserError(f"--out {path} is a file, not a directory")
    if resume:
        require_run_dir(path)
        refuse_links(path)
        for name in (CHECKPOINTS_DIR, SAMPLES_DIR):
            if (path / name).exists() and not (path / name).is_dir():
                raise UserError(f"{path / name} is not a directory; move it away to resume the run")
    elif path.exists() and any(path.iterdir()):
        if is_run_dir(path):
            raise UserError(f"run directory {path} already holds a run; pass --resume to continue it (resume=True "
                            "in Python), or choose another --out (run_dir / out)")
        seeds = seed_runs(path)
        held = f"holds a group of seeds ({seeds[0].name}, ...)" if seeds else "is not empty (and holds no run)"
        raise UserError(f"{path} {held}; choose another --out")


def refuse_links(path: Path) -> None:
    """A UserError if an entry of run directory ``path`` is a symbolic link: a run handed over must not make
    advinf write (checkpoints, logs, pictures) or delete (old checkpoints) wherever the link points."""
    linked = sorted(p.name for p in path.iterdir() if p.is_symlink()) if path.is_dir() else []
    if linked:
        raise UserError(f"{path} holds symbolic links ({', '.join(linked[:5])}{', ...' if len(linked) > 5 else ''}): "
                        "advinf never follows links in a run directory, where it writes and deletes files; put "
                        "the files themselves there, or move the links away")


def prepare_target(path: Path, *, resume: bool) -> bool:
    """Check ``path`` (see check_target), create it if needed and check that files can be written there, before
    anything slow happens. Returns whether it was created (so that a failed start can remove it again)."""
    check_target(path, resume=resume)
    created = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".advinf-write-test-", dir=path)  # a new file: nothing planted is
        os.close(fd)  # written through
        os.unlink(probe)
    except OSError as exc:
        if created:
            remove_if_empty(path)
        raise UserError(f"cannot write the run directory {path}: {exc.strerror or exc}; choose another --out")\
            from None
    return created


#: The run directories this process holds: real path -> [the descriptor holding the lock, how many hold it].
_HELD: dict[str, list[int]] = {}


def _forget_held() -> None:
    """In a forked child (a DataLoader worker streaming the data): its copies of the locks' descriptors are
    closed, so that the lock ends with the process that holds it (a worker outliving a ``kill -9`` of its parent
    for a few seconds kept the run directory refused), and the child holds nothing."""
    for fd, _count in _HELD.values():
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_held)


def hold(path: Path) -> Callable[[], None]:
    """Hold the run directory ``path`` for this process and return what lets it go: an advisory lock on the
    directory itself, released when every holder has let it go or the process ends (``kill -9`` included). Two
    processes training into one run directory (a resume started twice, a Trainer from Python beside ``advinf
    run``) would interleave their checkpoints and metrics; the second is refused. Holding is counted within the
    process (``advinf run`` holds the directory, and so does the Trainer it builds). Where the system has no
    ``flock``, nothing."""
    try:
        import fcntl
    except ImportError:  # not on POSIX
        return lambda: None
    key = os.path.realpath(path)
    if key in _HELD:
        _HELD[key][1] += 1
    else:
        fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UserError(f"{path} is in use: another advinf process is training into it (a run, or a resume of "
                            "it started twice, or a Trainer from Python that still exists); wait for that one to "
                            "end, or stop it, then resume") from None
        except OSError:  # a file system without locks: go on as before
            pass
        _HELD[key] = [fd, 1]
    released = False

    def release() -> None:
        nonlocal released
        if released:
            return
        released = True
        entry = _HELD.get(key)
        if entry is None:  # a forked child, which holds nothing (_forget_held)
            return
        entry[1] -= 1
        if entry[1] == 0:
            del _HELD[key]
            os.close(entry[0])

    return release


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold the run directory ``path`` (see :func:`hold`) for the block."""
    release = hold(path)
    try:
        yield
    finally:
        release()


def remove_if_empty(path: Path) -> None:
    """Remove a run directory that holds no file (only empty folders): what a failed start leaves."""
    if path.is_dir() and not any(p.is_file() for p in path.rglob("*")):
        shutil.rmtree(path, ignore_errors=True)


def remove_unstarted(path: Path) -> None:
    """Remove a run directory this command created, when training failed before its first update: it holds
    what a start writes (the recipe, library.json, the step-0 pictures, a logger's empty files), no checkpoint.
    Anything else in it (a file someone put there meanwhile) keeps it."""
    started = {RECIPE_FILE, LIBRARY_FILE, SAMPLES_DIR, CHECKPOINTS_DIR, METRICS_FILE, EVALS_FILE, EVAL_FILE}
    if not path.is_dir() or any(p.name not in started and not p.name.startswith((".", "metrics.", "evals."))
                                for p in path.iterdir()):
        return
    checkpoints = path / CHECKPOINTS_DIR
    if checkpoints.is_dir() and any(p.is_file() for p in checkpoints.rglob("*")):
        return
    shutil.rmtree(path, ignore_errors=True)


class RunDir:
    """Writes the files of one run; never overwrites a different run's files."""

    def __init__(self, path: Path, *, resume: bool = False):
        self.path = Path(path)
        check_target(self.path, resume=resume)
        self.path.mkdir(parents=True, exist_ok=True)
        # held while this object exists: a Trainer from Python, too, is alone in writing here
        self._finalizer = weakref.finalize(self, hold(self.path))
        refuse_links(self.path)  # checked again, now that it is held
        (self.path / SAMPLES_DIR).mkdir(exist_ok=True)

    @property
    def samples(self) -> Path:
        return self.path / SAMPLES_DIR

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS_DIR

    def write_recipe(self, toml_text: str) -> None:
        write_text(self.path / RECIPE_FILE, toml_text)

    def truncate_after(self, step: int) -> None:
        """Drop metrics and evaluations logged after ``step`` (they belong to steps a resume will redo)."""
        for name in (METRICS_FILE, EVALS_FILE):
            path = self.path / name
            if not regular_file(path):
                continue
            keep = [ln for ln in read_bytes(path).decode("utf-8", errors="replace").splitlines()
                    if (s := _step_of(ln)) is not None and s <= step]  # a torn last line (a crash) is dropped
            write_text(path, "".join(ln + "\n" for ln in keep))

    def write_library(self, info: dict[str, Any]) -> None:
        write_json(self.path / LIBRARY_FILE, info)

    def write_eval(self, results: dict[str, Any], step: int,
                   options: Mapping[str, dict[str, Any]] | None = None) -> None:
        """Merge ``results`` (of the model at ``step``, computed with the evaluators' ``options``) into eval.json:
        entries of other evaluators (``advinf evaluate``) are kept."""
        merge_eval(self.path / EVAL_FILE, results, step, options)


def read_eval(path: Path, advice: str = "repair it, or move it away to start it afresh") -> dict[str, Any]:
    """An eval.json's entries ({} when there is none): a JSON object of tables, one per evaluator. Anything else
    is refused, naming the file (and the entry), never replaced: it may hold results nothing else has. A
    non-finite number (an older file's bare ``NaN``) is read as null, as evaluation writes it now."""
    if not regular_file(path):
        return {}
    try:
        data = parse_json(read_text(path))
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise UserError(f"{path} cannot be read as JSON ({reason}); {advice}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} does not hold a JSON object; {advice}")
    for name, entry in data.items():
        if not isinstance(entry, dict):
            raise UserError(f"{path}: the entry '{name}' is {json.dumps(entry)[:40]}, not a table of an "
                            f"evaluator's metrics; {advice}")
    return _finite(data)


def _finite(value: Any) -> Any:
    """``value`` with every non-finite number (JSON's ``NaN``, ``Infinity``, which Python reads) as None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


#: The key of an eval.json entry that says which step's model gave it: entries written at different times (the
#: run's final evaluation, ``advinf evaluate`` before a resume) may be of different steps.
EVAL_STEP = "step"
#: The key of an eval.json entry that holds its evaluator's options: ``advinf evaluate --set`` may have computed an
#: entry with other options than the run's recipe.
EVAL_OPTIONS = "options"
#: The key of an eval.json entry that holds the dataset keys it was computed with where they differ from the run's
#: recipe (``advinf evaluate --set dataset.root=...`` after the data moved): absent when they do not.
EVAL_DATA = "dataset_changes"
#: Every key advinf stamps eval.json entries with: an evaluator's own metrics may not use them.
EVAL_STAMPS = (EVAL_STEP, EVAL_OPTIONS, EVAL_DATA)


def merge_eval(path: Path, results: dict[str, Any], step: int,
               options: Mapping[str, dict[str, Any]] | None = None, data: Mapping[str, Any] | None = None) -> None:
    """Write ``results`` (of the model at ``step``, each entry stamped with it, with its evaluator's options
    where ``options`` has them, and with ``data``, the dataset keys changed from the run's recipe, where there are
    some) into the eval.json at ``path`` over its earlier entries, keeping the others."""
    options = options or {}
    changed = {EVAL_DATA: dict(data)} if data else {}
    stamped = {k: {**v, EVAL_STEP: step, **({EVAL_OPTIONS: options[k]} if k in options else {}), **changed}
               if isinstance(v, dict) else v for k, v in results.items()}
    write_json(path, {**read_eval(path), **stamped})


def eval_entries(data: dict[str, Any]) -> tuple[dict[str, Any], dict[str, int]]:
    """An eval.json's results without their stamps, and each stamped entry's step (older files have none)."""
    results, steps = {}, {}
    for name, entry in data.items():
        if isinstance(entry, dict) and isinstance(entry.get(EVAL_STEP), int):
            steps[name] = entry[EVAL_STEP]
            entry = {k: v for k, v in entry.items() if k not in EVAL_STAMPS}
        results[name] = entry
    return results, steps


def eval_options(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The evaluator options each stamped entry of an eval.json was computed with (older files have none)."""
    return {name: entry[EVAL_OPTIONS] for name, entry in data.items()
            if isinstance(entry, dict) and isinstance(entry.get(EVAL_STEP), int)
            and isinstance(entry.get(EVAL_OPTIONS), dict)}


def eval_dataset_changes(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The dataset keys each stamped entry of an eval.json was computed with where they differ from the run's
    recipe (``advinf evaluate --set dataset.KEY=VALUE``); entries without such changes are left out."""
    return {name: entry[EVAL_DATA] for name, entry in data.items()
            if isinstance(entry, dict) and isinstance(entry.get(EVAL_DATA), dict)}


def evaluator_options(recipe: Mapping[str, Any], evaluators: Mapping[str, Any] | None = None
                      ) -> dict[str, dict[str, Any]]:
    """Each evaluator's options in a resolved recipe, as JSON gives them back, to stamp eval.json entries with
    and compare them: its ``every`` left out (it says when, not what), and the ``pictures_only`` options of the
    built ``evaluators`` given (they change no number)."""
    tables, evaluators = recipe.get("evaluators", {}), evaluators or {}
    return json.loads(json.dumps({
        n: {k: v for k, v in t.items() if k != "every" and k not in getattr(evaluators.get(n), "pictures_only", ())}
        for n, t in tables.items() if isinstance(t, dict)}))


def unlike_options(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """The options two stamps of one evaluator disagree on, over the keys both hold: a stamp leaves out its
    evaluator's pictures-only options, and an older advinf may have known fewer options."""
    return sorted(k for k in a.keys() & b.keys() if a[k] != b[k])


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON object as a line of ``path``."""
    with open_append(path) as fh:  # a non-finite number as null: NaN is no JSON (strict readers refuse it)
        fh.write(json.dumps(_finite(record)) + "\n")


def _step_of(line: str) -> int | None:
    """The step of one JSON line, or None if the line is not a complete record."""
    try:
        record = parse_json(line)
        return int(record["step"]) if isinstance(record, dict) and isinstance(record.get("step"), int) else None
    except (ValueError, TypeError):
        return None
