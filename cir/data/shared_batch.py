"""A DataLoader worker's batch stacked into shared memory with its pages mapped in one system call.

In a worker, torch's default_collate stacks a batch into a fresh shared-memory segment, so the batch reaches the
main process without another copy. Writing the stack then takes one page fault per 4 kB page: 4,704 for a batch of
128 uint8 images at 224 px, about a third of the stack's cost (benchmarks/README.md, "Issue 33, third round").
madvise(MADV_POPULATE_WRITE) (Linux 5.14 and later) maps them all in one call first; where the kernel lacks it,
the pages fault in one by one as before. The tensor and its values are default_collate's.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Sequence

import torch
from torch.utils.data import get_worker_info

_MADV_POPULATE_WRITE = 23  # linux/mman.h; Python's mmap module names it only from 3.13 (and only for its own maps)
_PAGE = 4096
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


def stack(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """torch.stack(tensors); in a DataLoader worker into shared memory, as default_collate's collate_tensor_fn
    allocates it (torch/utils/data/_utils/collate.py), with its pages populated before the copy."""
    if get_worker_info() is None:
        return torch.stack(list(tensors))
    first = tensors[0]
    storage = first._typed_storage()._new_shared(first.numel() * len(tensors), device=first.device)
    out = first.new(storage).resize_(len(tensors), *first.shape)
    populate(out)
    return torch.stack(list(tensors), 0, out=out)
