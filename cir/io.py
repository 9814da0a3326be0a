"""File writes that never leave a half-written file. Atomic writes: a temp file in the target's folder, renamed over it only once complete.

A kill mid-write leaves the old file (or none), never a half-written one that a
later run would trust: checkpoints, feature caches, exports, metrics and
submission files all go through here. The temp file sits beside the target, so
the rename never crosses a filesystem (a copy from $TMPDIR would not be atomic),
and it is flushed to disk before the rename, so a crash right after cannot leave
the new name on missing data.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

TEMP_SUFFIX = ".tmp"


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync(path: str | Path, flags: int = os.O_RDONLY) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[str]:
    """Yield a temporary path to write; on success it replaces `path`, on failure it is removed.

    The file gets the mode a plain `open` would give it (0666 less the umask; mkstemp's is 0600),
    so folders shared by a group stay readable. A failed write (disk full) is re-raised naming `path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~current_umask())
        try:
            yield tmp
            _fsync(tmp)
        except OSError as err:
            if err.filename is None and err.errno is not None:  # ENOSPC from a library's write: say which file
                raise OSError(err.errno, err.strerror, str(path)) from err
            raise
        os.replace(tmp, path)
        _fsync(path.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder to fill; on success it replaces the folder `path` whole (an old one is moved aside
    and removed), on failure it is removed. Every file in it is flushed to disk before the rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent))
    old = path.with_name(f"{tmp.name}.old")
    try:
        yield tmp
        for file in (f for f in tmp.rglob("*") if f.is_file()):
            _fsync(file)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        _fsync(path.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
        if old.is_dir():
            shutil.rmtree(old)
        elif old.exists():
            old.unlink()


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1) + "\n")


def leftover_temps(folder: str | Path, name: str = "") -> list[Path]:
    """The temp files that killed atomic writes of `name*` left in `folder` (a write that fails removes its own)."""
    return sorted(Path(folder).glob(f".{name}*{TEMP_SUFFIX}"))


class Discarded(Exception):
    """Thrown into an AtomicFiles write that is given up, so atomic_path removes its temp file."""


class AtomicFiles:
    """atomic_path for writers that open and finish files through callbacks (webdataset's ShardWriter opener / post):
    `open(name)` gives the temp path to write, `publish(name)` flushes it and renames it over `name`, `discard()`
    removes every unpublished one."""

    def __init__(self) -> None:
        self._writing: dict[str, AbstractContextManager[str]] = {}

    def open(self, name: str) -> str:
        write = atomic_path(name)
        tmp = write.__enter__()
        self._writing[name] = write
        return tmp

    def publish(self, name: str) -> None:
        self._writing.pop(name).__exit__(None, None, None)

    def discard(self) -> None:
        while self._writing:
            _, write = self._writing.popitem()
            write.__exit__(Discarded, Discarded(), None)
