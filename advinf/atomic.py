"""Atomic file writes: write beside the target, then rename, so a crash never leaves half a file. And the
safe reads and appends of a run directory's files: never through a symbolic link (a run directory handed over
must not make advinf write, or wait, elsewhere), only regular files (a FIFO would block forever)."""

from __future__ import annotations

import json
import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from advinf.errors import UserError


@contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # mkstemp makes the file private (0600), as do some writers (safetensors): it gets the mode the file has, or
    # the one a new file would get
    mode = path.stat().st_mode & 0o777 if path.is_file() else default_mode()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        _fsync(tmp)
        os.chmod(tmp, mode)  # after the fsync, which opens it for writing: the mode may be read-only
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: Path | str, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: Path | str, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def current_umask() -> int:
    """The process's umask: from /proc on Linux; elsewhere by setting it and back (for an instant, another
    thread creating a file would get umask 022)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_mode(folder: bool = False) -> int:
    """The mode ``open`` (or ``mkdir``) gives a new file (folder) under the umask: what files and folders made
    private by ``tempfile`` or safetensors (0600, 0700) are given instead."""
    return (0o777 if folder else 0o666) & ~current_umask()


def _fsync(path: str) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def fsync_dir(path: Path | str) -> None:
    """Make a rename inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def regular_file(path: Path | str) -> bool:
    """Whether ``path`` is a regular file (False when absent); a UserError when it is a symbolic link or
    something else (a folder, a FIFO, a device): advinf never reads or writes a run's files through links."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(mode):
        raise UserError(f"{path} is a symbolic link: advinf never follows links in a run directory; put the file "
                        "itself there (or move the link away)")
    if not stat.S_ISREG(mode):
        raise UserError(f"{path} is not a regular file; move it away")
    return True


def _open_own(path: Path | str, flags: int) -> int:
    """A descriptor of ``path`` opened with ``flags``, never through a link, and only if a regular file."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError:
        regular_file(path)  # a link, a FIFO without a reader, ...: said as such
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UserError(f"{path} is not a regular file; move it away")
    os.set_blocking(fd, True)
    return fd


def open_own(path: Path | str) -> IO[bytes]:
    """A run's file opened to read, in binary (FileNotFoundError when absent), never through a link."""
    return os.fdopen(_open_own(path, os.O_RDONLY), "rb")


def read_bytes(path: Path | str) -> bytes:
    """The contents of a run's file (FileNotFoundError when absent), never through a link."""
    with open_own(path) as fh:
        return fh.read()


def read_text(path: Path | str) -> str:
    """A run's text file (UTF-8), never through a link; see ``read_bytes``."""
    return read_bytes(path).decode("utf-8")


@contextmanager
def open_append(path: Path | str, newline: str | None = None) -> Iterator[IO[str]]:
    """A run's text file opened to append (created if absent), never through a link: a logger's file."""
    with os.fdopen(_open_own(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT), "a", encoding="utf-8",
                   newline=newline) as fh:
        yield fh
