"""A DataLoader worker's batch stacked into shared memory that the worker reuses once the main process is done with it.

In a worker, torch's default_collate stacks a batch into a fresh shared-memory segment, so the batch reaches the
main process without another copy. A fresh segment costs more than the copy: torch reserves its pages
(posix_fallocate, zeroed), the writes map them one by one (4,704 page faults for a batch of 128 uint8 images at
224 px), and the main process frees them when it drops the batch; about 27 ms a batch, a seventh of the
decode + crop + resize it carries (benchmarks/README.md, "Issue 33, fourth round"). torch's DataLoader never
reuses a segment, since it cannot know when the main process stops using one.

A worker here keeps a few segments and writes a batch into one the main process has released: `batch_buffer`
for a stage that makes the batch's items in place (cir.data.samples resizes each image straight into it, and
`stack` then hands the items out without a copy), `stack(..., pooled=True)` for a batch stacked from items made
apart. Each segment starts with a lease byte: the worker sets it when it takes the segment; in the main process
`leased` wraps the batch so that the byte is cleared only when no tensor there refers to the memory any more
(the batch, any view of it, any numpy array over it: they all hold the buffer that a finalizer watches). A
segment whose byte is still set is never written; when every segment is taken (and the pool is full) a batch
gets a fresh one, as default_collate does. A pooled batch must travel in a container that asks `pooled` when it
is pickled and calls `leased` when it is rebuilt (cir.data.samples.ImageTextBatch does); anything else would
keep its segment taken for good, costing memory, never a wrong batch.

Where a fresh segment is made, its pages are mapped in one madvise(MADV_POPULATE_WRITE) call (Linux 5.14 and
later; elsewhere they fault in as before).
"""

from __future__ import annotations

import ctypes
import math
import os
import sys
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import get_worker_info

_MADV_POPULATE_WRITE = 23  # linux/mman.h; Python's mmap module names it only from 3.13 (and only for its own maps)
_PAGE = 4096
_HEADER = 64  # bytes before a pooled batch; byte 0 is its lease (1 while the main process may use the batch)
MAX_SEGMENTS = 8  # per worker: a worker has prefetch_factor batches queued and the main process holds one or two
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None
if _libc is not None:
    _libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)


def populate(tensor: torch.Tensor) -> bool:
    """Map every page of the tensor's storage for writing, in one call; False where this kernel cannot."""
    if _libc is None:
        return False
    start = tensor.untyped_storage().data_ptr()
    aligned = start & ~(_PAGE - 1)
    return _libc.madvise(aligned, start - aligned + tensor.untyped_storage().nbytes(), _MADV_POPULATE_WRITE) == 0


@dataclass
class _Segment:
    storage: torch.UntypedStorage
    lease: torch.Tensor  # uint8 view of byte 0

    @property
    def capacity(self) -> int:
        return self.storage.nbytes() - _HEADER


# This process's segments (a DataLoader worker's), and their leases by storage address for `pooled`, which runs in
# the worker's queue-feeding thread while the worker makes its next batch.
_segments: list[_Segment] = []
_leases: dict[int, torch.Tensor] = {}


def _new_segment(nbytes: int) -> torch.UntypedStorage:
    """A shared-memory storage as default_collate's collate_tensor_fn allocates one in a worker
    (torch/utils/data/_utils/collate.py), its pages mapped."""
    storage = torch.UntypedStorage._new_shared(nbytes)
    populate(torch.empty(0, dtype=torch.uint8).set_(storage))
    return storage


def _take_segment(nbytes: int) -> _Segment | None:
    """A released segment that holds `nbytes` (a released one too small is replaced), a new one while the pool has
    room, else None. Its lease is set."""
    released = [s for s in _segments if s.lease.item() == 0]
    segment = next((s for s in released if s.capacity >= nbytes), None)
    if segment is None and (released or len(_segments) < MAX_SEGMENTS):
        if released:
            _segments.remove(released[0])
            _leases.pop(released[0].storage.data_ptr(), None)
        storage = _new_segment(_HEADER + nbytes)
        segment = _Segment(storage, torch.empty(0, dtype=torch.uint8).set_(storage, 0, (1,)))
        _segments.append(segment)
        _leases[storage.data_ptr()] = segment.lease
    if segment is not None:
        segment.lease.fill_(1)
    return segment


def batch_buffer(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor | None:
    """In a DataLoader worker, an uninitialised batch in a pooled segment (its lease set), for a stage that makes a
    batch's items in place (`stack` then hands them out without a copy); None outside a worker or when every segment
    of a full pool is taken. Give it back with `release` if none of its items is handed out."""
    if get_worker_info() is None:
        return None
    segment = _take_segment(math.prod(shape) * dtype.itemsize)
    if segment is None:
        return None
    return torch.empty(0, dtype=dtype).set_(segment.storage, _HEADER // dtype.itemsize, shape)


def release(buffer: torch.Tensor) -> None:
    """Give back the segment of a `batch_buffer` none of whose items left this process."""
    lease_byte = _leases.get(buffer.untyped_storage().data_ptr())
    if lease_byte is not None:
        lease_byte.fill_(0)


def _made_in_place(tensors: Sequence[torch.Tensor]) -> torch.Tensor | None:
    """The batch that `tensors` already are, when they are the consecutive first items of a pooled segment's batch."""
    first = tensors[0]
    address, size, start = first.untyped_storage().data_ptr(), first.numel(), first.storage_offset()
    if address not in _leases or not first.is_contiguous():
        return None
    for i, tensor in enumerate(tensors):
        if (tensor.untyped_storage().data_ptr() != address or tensor.storage_offset() != start + i * size
                or tensor.shape != first.shape or tensor.dtype != first.dtype or not tensor.is_contiguous()):
            return None
    return torch.empty(0, dtype=first.dtype).set_(first.untyped_storage(), start, (len(tensors), *first.shape))


def stack(tensors: Sequence[torch.Tensor], *, pooled: bool = False) -> torch.Tensor:
    """torch.stack(tensors); in a DataLoader worker into shared memory, as default_collate's collate_tensor_fn does,
    and with `pooled` into a segment of this worker's pool (see the module's docstring for what that asks), or
    without a copy when the tensors are a `batch_buffer`'s items in order."""
    if get_worker_info() is None:
        return torch.stack(list(tensors))
    if pooled and (in_place := _made_in_place(tensors)) is not None:
        return in_place
    first = tensors[0]
    shape = (len(tensors), *first.shape)
    nbytes = math.prod(shape) * first.element_size()
    segment = _take_segment(nbytes) if pooled else None
    if segment is None:
        storage, offset = _new_segment(nbytes), 0
    else:
        storage, offset = segment.storage, _HEADER // first.element_size()
    out = torch.empty(0, dtype=first.dtype).set_(storage, offset, shape)
    return torch.stack(list(tensors), 0, out=out)


def pooled(tensor: torch.Tensor) -> bool:
    """Whether `tensor` is a batch in a segment of this process's pool (its container must then call `leased` on
    it once rebuilt: pickling sends the whole segment, its lease byte included)."""
    return tensor.device.type == "cpu" and tensor.untyped_storage().data_ptr() in _leases


def _give_back(lease_byte: torch.Tensor, owner: int) -> None:
    if os.getpid() == owner:
        lease_byte.fill_(0)


def leased(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` (a pooled batch as rebuilt in the main process, over the whole segment) as a tensor whose segment
    goes back to its worker once neither it nor anything made from its memory is alive."""
    whole = torch.empty(0, dtype=torch.uint8).set_(tensor.untyped_storage())
    buffer = memoryview(whole.numpy())  # torch.frombuffer keeps this very object alive as long as its storage
    # The lease byte, cleared when that storage goes; not at exit, nor by a forked child dropping its copy.
    weakref.finalize(buffer, _give_back, whole[0:1], os.getpid()).atexit = False
    flat = torch.frombuffer(buffer, dtype=torch.uint8).view(tensor.dtype)
    return flat.as_strided(tensor.shape, tensor.stride(), tensor.storage_offset())
