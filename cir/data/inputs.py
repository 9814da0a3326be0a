"""Which input files a run read: loaders note them, a run's completion record (cir.completion) names them.

Every benchmark loader reads its annotation files through
cir.data.retrieval_benchmarks.annotations.read_json, which notes each here; a run collects
what was noted inside its `watch_inputs()` block. A module of its own, importing
nothing of cir, so the loaders can note without importing what reads the notes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_watchers: list[set[Path]] = []  # the open watch_inputs() blocks, innermost last


@contextmanager
def watch_inputs() -> Iterator[set[Path]]:
    """Collect the input files read inside the block (note_input), as absolute paths."""
    seen: set[Path] = set()
    _watchers.append(seen)
    try:
        yield seen
    finally:
        _watchers.pop()


def note_input(path: str | Path) -> None:
    """A loader read `path`: every open watch_inputs() block records it."""
    for seen in _watchers:
        seen.add(Path(path).resolve())
