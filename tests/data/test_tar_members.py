"""cir's tar reading gives webdataset's samples and handler calls, on plain, extended, cut and damaged shards."""

from __future__ import annotations

import io
import itertools
import tarfile
from pathlib import Path

import pytest
import webdataset as wds

from cir.data import tar_members
from cir.data.shard_sizes import sample_offset
from cir.data.tar_members import tar_samples


def member(tar: tarfile.TarFile, name: str, data: bytes, **fields) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for key, value in fields.items():
        setattr(info, key, value)
    tar.addfile(info, io.BytesIO(data))


def shard(path: Path, fmt: int = tarfile.USTAR_FORMAT, extra: bool = False) -> Path:
    """Samples of jpg / txt / json members (sizes on and off the block boundary, an empty one); with `extra`,
    what plain readers stumble on: a directory, meta files, a long name, a symlink, a pax header mid-shard."""
    with tarfile.open(path, "w", format=fmt) as tar:
        for i in range(6):
            member(tar, f"{i:04d}.jpg", bytes([i]) * (300 + 512 * i))
            member(tar, f"{i:04d}.txt", f"caption {i}".encode())
            member(tar, f"{i:04d}.json", b"" if i == 2 else b"{}" * 256)
            if extra and i == 1:
                member(tar, "dir/", b"", type=tarfile.DIRTYPE)
                member(tar, "__meta__", b"x")
                member(tar, "__skip__/x.txt", b"x")
                member(tar, "sub/" * 30 + f"{i:04d}b.txt", b"long name")
                member(tar, "link.txt", b"", type=tarfile.SYMTYPE, linkname="0000.txt")
            if extra and i == 3:
                member(tar, f"{i:04d}b.txt", b"pax", pax_headers={"comment": "é"})
    return path


def read(reader, url: str, offset: int = 0) -> tuple[list[dict], list[str]]:
    errors: list[str] = []

    def handler(exn: Exception) -> bool:
        errors.append(type(exn).__name__)
        return True

    if reader == "webdataset":
        with open(url, "rb") as stream:
            stream.seek(offset)
            members = wds.tariterators.tar_file_expander(iter([{"url": url, "stream": stream}]), handler=handler)
            samples = list(wds.tariterators.group_by_keys(members, handler=handler))
    else:
        samples = list(tar_samples([{"url": url}], handler, offset))
    return samples, errors


@pytest.mark.parametrize(("fmt", "extra"), [(tarfile.USTAR_FORMAT, False), (tarfile.GNU_FORMAT, True),
                                            (tarfile.PAX_FORMAT, True), (tarfile.USTAR_FORMAT, True)])
def test_whole_shards_read_as_webdataset_reads_them(tmp_path: Path, fmt: int, extra: bool) -> None:
    url = str(shard(tmp_path / "s.tar", fmt, extra))
    ours, errors = read("cir", url)
    assert (ours, errors) == read("webdataset", url)
    assert len(ours) == 6 + 2 * extra and not errors


def test_cut_or_damaged_anywhere_reads_as_webdataset_reads_it(tmp_path: Path) -> None:
    """A shard cut at every 151st byte, or with a byte changed there (headers, data and padding alike)."""
    whole = shard(tmp_path / "s.tar", extra=True).read_bytes()
    damaged = tmp_path / "d.tar"
    for at, kind in itertools.product(range(0, len(whole), 151), ("cut", "flip", "zero")):
        data = {"cut": whole[:at], "flip": whole[:at] + bytes([whole[at] ^ 0x5A]) + whole[at + 1 :],
                "zero": whole[:at] + b"\0" * 512 + whole[at + 512 :]}[kind]
        damaged.write_bytes(data)
        assert read("cir", str(damaged)) == read("webdataset", str(damaged)), (at, kind)


def test_from_an_offset_and_streamed(tmp_path: Path) -> None:
    path = shard(tmp_path / "s.tar")
    second = sample_offset(path, 1)
    assert read("cir", str(path), second)[0] == read("webdataset", str(path), second)[0]
    assert [s["__key__"] for s in read("cir", str(path), second)[0]][0] == "0001"
    streamed = f"pipe:cat {path}"
    samples = list(tar_samples([{"url": streamed}], lambda exn: False))
    assert [s["__key__"] for s in samples] == [f"{i:04d}" for i in range(6)]
    assert samples == [{**s, "__url__": streamed} for s in read("webdataset", str(path))[0]]


def test_plain_members_skip_tarfile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast path is taken: a plain shard is read without webdataset's tar reader."""
    url = str(shard(tmp_path / "s.tar"))
    monkeypatch.setattr(tar_members, "tar_file_iterator", None)
    assert len(read("cir", url)[0]) == 6


def test_missing_shard_goes_to_the_handler(tmp_path: Path) -> None:
    assert read("cir", str(tmp_path / "absent.tar")) == ([], ["FileNotFoundError"])
