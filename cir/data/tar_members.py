"""webdataset's tar reading (`tarfile_to_samples`) with plain members of local shards read from one header each.

Python's tarfile parses every field of every 512-byte header (and webdataset streams each member through
its buffered reader): about a fifth of the training loader's CPU time on shards of 256 px photos, the
largest part of it beyond decoding and resizing (benchmarks/README.md). Shards as img2dataset and cir write
them hold plain POSIX members, regular files whose header needs four fields: name, size, type and checksum.
Those are read here. At any other header (pax or GNU extensions, links, directories, a bad number) the rest
of the shard goes to webdataset's own reader from that header, and where tarfile ends a shard quietly (a
zero or invalid header after the first) so does this reader; streamed shards (pipe:, http) are webdataset's
alone. The samples, their order and the handler's calls are webdataset's (tests/data/test_tar_members.py).
"""

from __future__ import annotations

import re
import tarfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from webdataset.filters import pipelinefilter
from webdataset.tariterators import (
    group_by_keys,
    meta_prefix,
    meta_suffix,
    tar_file_expander,
    tar_file_iterator,
    url_opener,
)

from cir.data.shard_sizes import local_path

BLOCK = 512
_POSIX_MAGIC = b"ustar\x0000"
_SKIP_META = re.compile(r"__[^/]*__($|/)")  # tar_file_iterator's default skip_meta
Handler = Callable[[Exception], bool]


def _string(field: bytes) -> bytes:
    """tarfile's nts: the bytes up to the first NUL."""
    end = field.find(b"\0")
    return field if end < 0 else field[:end]


def _header(block: bytes) -> tuple[str, int] | None | bool:
    """(name, size) of a regular file's header as tarfile reads it; False for a block tarfile refuses or ends
    at (short, all zeros, bad checksum or number); None for a valid header of another kind."""
    if len(block) != BLOCK or not block.strip(b"\0"):
        return False
    try:
        checksum = int(_string(block[148:156]).strip() or b"0", 8)
        size = int(_string(block[124:136]).strip() or b"0", 8)
    except ValueError:  # base-256 numbers included: tarfile reads those, this reader leaves them to it
        return None if block[124] in (0o200, 0o377) or block[148] in (0o200, 0o377) else False
    unsigned = 256 + sum(block) - sum(block[148:156])
    if checksum != unsigned and checksum != 256 + sum(b - 256 * (b > 127) for i, b in enumerate(block) if not 148 <= i < 156):
        return False
    name = _string(block[:100])
    if block[257:265] == _POSIX_MAGIC and block[345] != 0:
        name = _string(block[345:500]) + b"/" + name
    if block[156:157] not in (b"0", b"\0") or name.endswith(b"/"):
        return None
    return name.decode(tarfile.ENCODING, "surrogateescape"), size


def local_members(stream: BinaryIO, url: str, handler: Handler) -> Iterator[dict[str, Any]]:
    """The members webdataset's tar_file_iterator yields from `stream` (at a header), each with its url."""
    start = stream.tell()
    while True:
        at = stream.tell()
        block = stream.read(BLOCK)
        header = _header(block)
        data = b""
        if header:
            data = stream.read(header[1])
        if not header or len(data) != header[1]:
            if header is False and at > start:
                return  # where tarfile ends an archive quietly
            stream.seek(at)
            for member in tar_file_iterator(stream, handler=handler):
                member["__url__"] = url
                yield member
            return
        name, size = header
        if not name.startswith(meta_prefix) or not ("/" not in name and name.endswith(meta_suffix) or _SKIP_META.match(name)):
            yield {"fname": name, "data": data, "__url__": url}
        if len(stream.read(-size % BLOCK)) != -size % BLOCK:
            raise tarfile.ReadError("unexpected end of data")  # tarfile's error for a member cut in its padding


def _expand(sources: Iterable[dict[str, Any]], handler: Handler, offset: int = 0) -> Iterator[dict[str, Any]]:
    """webdataset's url_opener + tar_file_expander: members of each shard, then the end-of-shard marker {}."""
    for source in sources:
        url = source["url"]
        path = local_path(url)
        if path is None:
            yield from tar_file_expander(url_opener([source], handler=handler), handler=handler)
            continue
        try:
            with Path(path).open("rb") as stream:
                stream.seek(offset)
                yield from local_members(stream, url, handler)
        except Exception as exn:  # noqa: BLE001 - as webdataset's reader: the handler decides on any error
            exn.args = (*exn.args, url)
            if handler(exn):
                continue
            break
        yield {}


def tar_samples(sources: Iterable[dict[str, Any]], handler: Handler, offset: int = 0) -> Iterator[dict[str, Any]]:
    """webdataset's tarfile_samples (samples grouped by key), local shards read from byte `offset` on."""
    return group_by_keys(_expand(sources, handler, offset), handler=handler)


tarfile_to_samples = pipelinefilter(tar_samples)
