"""Samples per shard: from sizes.json, img2dataset's stats, or counted once and cached until the shard changes."""

from __future__ import annotations

import io
import json
import logging
import os
import tarfile

import pytest
import webdataset as wds
from test_shards import good_sample, write

from cir.data import shard_sizes as sizes_module
from cir.data.shard_sizes import (
    COUNT_CACHE,
    count_samples,
    shard_sizes,
    without_samples,
    write_sizes,
)


def shard(path, n: int, start: int = 0) -> str:
    return write(path, [good_sample(start + i) for i in range(n)])


def test_counting_groups_members_into_samples_as_webdataset_does(tmp_path):
    url = shard(tmp_path / "a.tar", 5)
    with tarfile.open(tmp_path / "meta.tar", "w") as tar:  # a directory, a __info__ file webdataset skips, one sample
        for name, kind in [("dir", tarfile.DIRTYPE), ("__info__", tarfile.REGTYPE), ("x.txt", tarfile.REGTYPE),
                           ("x.jpg", tarfile.REGTYPE)]:
            info = tarfile.TarInfo(name)
            info.type, info.size = kind, 0 if kind == tarfile.DIRTYPE else 1
            tar.addfile(info, io.BytesIO(b"1"))
    read = len(list(wds.DataPipeline(wds.SimpleShardList([url, str(tmp_path / "meta.tar")]), wds.tarfile_to_samples())))
    assert count_samples(url) + count_samples(tmp_path / "meta.tar") == read == 6
    (tmp_path / "text.tar").write_text("not a tar\n" * 100)
    (tmp_path / "empty.tar").write_bytes(b"")
    assert count_samples(tmp_path / "text.tar") == count_samples(tmp_path / "empty.tar") == 0


def test_sizes_json_then_img2dataset_stats_then_counting(tmp_path):
    urls = [shard(tmp_path / f"{i:05d}.tar", n) for i, n in enumerate((3, 4, 2))]
    write_sizes(tmp_path, {"00000.tar": 30})
    (tmp_path / "00001_stats.json").write_text(json.dumps({"count": 50, "successes": 40, "failed_to_download": 10}))
    assert shard_sizes(urls) == [30, 40, 2]  # stated counts are trusted (they are what the tools wrote)


def test_counts_are_cached_beside_the_shards_until_a_shard_changes(tmp_path, monkeypatch):
    urls = [shard(tmp_path / "a.tar", 3), shard(tmp_path / "b.tar", 4)]
    assert shard_sizes(urls) == [3, 4]
    assert set(json.loads((tmp_path / COUNT_CACHE).read_text())) == {"a.tar", "b.tar"}
    counted = []
    monkeypatch.setattr(sizes_module, "count_samples", lambda path: counted.append(path.name) or 0)
    assert shard_sizes(urls) == [3, 4] and counted == []
    shard(tmp_path / "b.tar", 6)  # rewritten: another size
    os.utime(tmp_path / "b.tar", ns=(1, 1))
    monkeypatch.undo()
    assert shard_sizes(urls) == [3, 6]


def test_an_unwritable_folder_is_counted_every_time(tmp_path, monkeypatch, caplog):
    url = shard(tmp_path / "a.tar", 2)

    def refuse(path, obj):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(sizes_module, "write_json", refuse)
    caplog.set_level(logging.INFO, logger="cir.data.shard_sizes")
    assert shard_sizes([url]) == [2] and "could not cache" in caplog.text
    assert not (tmp_path / COUNT_CACHE).exists()


def test_streamed_shards_need_a_sizes_file(tmp_path):
    url = shard(tmp_path / "a.tar", 2)
    with pytest.raises(ValueError, match="sizes.json"):
        shard_sizes([f"pipe:cat {url}"])
    write_sizes(tmp_path, {"a.tar": 2})
    assert shard_sizes([f"pipe:cat {url}"]) == [2]


def test_without_samples_only_when_every_local_shard_holds_none(tmp_path):
    (tmp_path / "empty.tar").write_bytes(b"\0" * 10240)
    (tmp_path / "text.tar").write_text("not a tar\n" * 100)
    empty = [str(tmp_path / name) for name in ("empty.tar", "text.tar", "missing.tar")]
    assert without_samples(empty)
    assert not without_samples([*empty, shard(tmp_path / "a.tar", 1)])
    assert not without_samples([*empty, "pipe:curl -s https://example.org/0.tar"])  # streamed: taken on trust
