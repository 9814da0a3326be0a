"""How many samples each shard holds, so an exact epoch can be laid out before any shard is read for training.

Per shard, the first source that has it wins:
1. `sizes.json` beside the shards, {shard file name: samples} (open_clip's
   convention; cir.data.make_shards and cir.data.embed_text write it);
2. img2dataset's `<shard>_stats.json` beside `<shard>.tar`: its "successes",
   the samples it wrote into that tar;
3. counted from the tar's member headers (no image is read), grouped into
   samples as webdataset groups them, and cached in `.shard_counts.json` beside
   the shards, keyed by name, size and mtime, so a changed shard is counted again.
Only local shards can be counted: streamed ones (pipe:, http) need a source 1 or 2.
Stated counts (1, 2) are trusted: a shard rewritten since holds other samples than
its count says, and an exact epoch then cuts its streams in the wrong places (some
pairs seen twice or not at all; no rank is left short).
"""

from __future__ import annotations

import json
import logging
import os
import re
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from webdataset.tariterators import (
    group_by_keys,
    meta_prefix,
    meta_suffix,
)

from cir.io import write_json

log = logging.getLogger(__name__)

SIZES_FILE = "sizes.json"
COUNT_CACHE = ".shard_counts.json"
_SKIP_META = re.compile(r"__[^/]*__($|/)")  # webdataset's tar_file_iterator default skip_meta


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _members(path: Path) -> Iterator[dict[str, Any]]:
    """The members webdataset's tar_file_iterator would yield, each with its header's byte offset for data
    (only headers are read: the seekable reader skips the data)."""
    with tarfile.open(path, mode="r:") as tar:
        for info in tar:
            name = info.name
            if not info.isreg() or ("/" not in name and name.startswith(meta_prefix) and name.endswith(meta_suffix)):
                continue
            if _SKIP_META.match(name):
                continue
            yield {"fname": name, "data": info.offset, "__url__": str(path)}


def count_samples(path: str | Path) -> int:
    """Samples in a local tar shard, as webdataset would group its members; an unreadable tar holds 0.

    A tar cut short counts the samples before the cut (webdataset reads those, then fails on the shard).
    """
    path = Path(path)
    count = 0
    try:
        for _ in group_by_keys(_members(path)):
            count += 1
    except (tarfile.TarError, OSError) as err:
        log.warning("shard %s is not a readable tar after %d samples (%s): the rest is left out", path, count, err)
    return count


def sample_offset(path: str | Path, index: int) -> int | None:
    """Byte offset in a local tar where sample `index` (as webdataset numbers them) starts; None if it has no such
    sample or cannot be read. A tar read from there is a valid tar of the samples from `index` on."""
    try:
        for i, sample in enumerate(group_by_keys(_members(Path(path)))):
            if i == index:
                return min(v for k, v in sample.items() if not k.startswith("__"))
    except (tarfile.TarError, OSError):
        return None
    return None


def without_samples(urls: Sequence[str]) -> bool:
    """Whether every shard is a local file holding no sample (missing, empty, not a tar). Streamed shards are
    taken on trust; for the rest, reading stops at the first sample found."""
    for url in urls:
        path = local_path(url)
        if path is None or (path.is_file() and sample_offset(path, 0) is not None):
            return False
    return True


def _stat_key(path: Path) -> list[int]:
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]


def local_path(url: str) -> Path | None:
    """The file a shard url names, or None for a streamed one (pipe:, http, ...)."""
    parsed = urlparse(url)
    if parsed.scheme in ("", "file"):
        return Path(parsed.path if parsed.scheme else url)
    return None


def shard_sizes(urls: Sequence[str]) -> list[int]:
    """Samples per shard, in the order of `urls` (see the module docstring for where they come from)."""
    sizes: list[int | None] = [None] * len(urls)
    folders: dict[Path, dict[str, Any]] = {}
    to_count: dict[Path, list[int]] = {}
    for i, url in enumerate(urls):
        path = local_path(url) or Path(urlparse(url.split()[-1]).path)
        folder = folders.setdefault(path.parent, _read_json(path.parent / SIZES_FILE) or {})
        stats = _read_json(path.with_name(path.name.removesuffix(".tar") + "_stats.json")) if local_path(url) else None
        if isinstance(folder.get(path.name), int):
            sizes[i] = folder[path.name]
        elif isinstance(stats, dict) and isinstance(stats.get("successes"), int):
            sizes[i] = stats["successes"]
        elif local_path(url) is None:
            raise ValueError(
                f"the sample count of {url} is unknown: streamed shards need a {SIZES_FILE} beside them "
                "({shard name: samples}), or use data.resampled=true"
            )
        else:
            to_count.setdefault(path.parent, []).append(i)
    for folder, indices in to_count.items():
        _count_folder(folder, [local_path(urls[i]) for i in indices], indices, sizes)
    return [int(s) for s in sizes]


def _count_folder(folder: Path, paths: list[Path], indices: list[int], sizes: list[int | None]) -> None:
    """Counts from the folder's cache where size and mtime still match, else counted now and cached."""
    cache = _read_json(folder / COUNT_CACHE)
    cache = cache if isinstance(cache, dict) else {}
    fresh = 0
    for i, path in zip(indices, paths):
        key = _stat_key(path)
        entry = cache.get(path.name)
        if isinstance(entry, dict) and entry.get("stat") == key and isinstance(entry.get("samples"), int):
            sizes[i] = entry["samples"]
            continue
        if fresh == 0:
            log.info("counting the samples of shards in %s (once; cached in %s)", folder, COUNT_CACHE)
        sizes[i] = count_samples(path)
        cache[path.name] = {"stat": key, "samples": sizes[i]}
        fresh += 1
    if fresh:
        try:
            write_json(folder / COUNT_CACHE, cache)
        except OSError as err:
            log.info("could not cache the shard counts in %s (%s): they are counted again next run", folder, err.strerror)


def write_sizes(folder: str | Path, sizes: dict[str, int]) -> None:
    """Add {shard file name: samples} to FOLDER/sizes.json (atomically, keeping other shards' entries)."""
    path = Path(folder) / SIZES_FILE
    existing = _read_json(path)
    write_json(path, {**(existing if isinstance(existing, dict) else {}), **sizes})


def remove_sizes(folder: str | Path, names: Sequence[str]) -> None:
    """Drop shards from FOLDER/sizes.json (they are being rewritten); the file goes when it is empty."""
    path = Path(folder) / SIZES_FILE
    existing = _read_json(path)
    if not isinstance(existing, dict):
        return
    kept = {k: v for k, v in existing.items() if k not in set(names)}
    if kept:
        write_json(path, kept)
    else:
        os.unlink(path)
