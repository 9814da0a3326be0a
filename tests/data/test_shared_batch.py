from __future__ import annotations

import sys

import pytest
import torch

from cir.data import shared_batch


def mapped_kb(tensor: torch.Tensor) -> int:
    """Resident kB of the mapping that holds the tensor's storage (/proc/self/smaps)."""
    address = tensor.untyped_storage().data_ptr()
    inside = False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            fields = line.split()
            if "-" in fields[0] and not fields[0].endswith(":"):
                start, end = (int(x, 16) for x in fields[0].split("-"))
                inside = start <= address < end
            elif inside and fields[0] == "Rss:":
                return int(fields[1])
    raise AssertionError("no mapping holds the tensor")


def images(n: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [torch.randint(0, 256, (24, 20, 3), dtype=torch.uint8, generator=generator) for _ in range(n)]


def test_in_a_worker_the_batch_is_default_collates_in_shared_memory(monkeypatch):
    monkeypatch.setattr(shared_batch, "get_worker_info", lambda: object())
    batch = shared_batch.stack(images(5))
    assert batch.is_shared()
    assert torch.equal(batch, torch.stack(images(5)))


def test_outside_a_worker_it_is_torch_stack():
    batch = shared_batch.stack(images(3))
    assert not batch.is_shared()
    assert torch.equal(batch, torch.stack(images(3)))


@pytest.mark.skipif(sys.platform != "linux", reason="madvise(MADV_POPULATE_WRITE) is Linux's")
def test_populate_maps_every_page_of_a_fresh_shared_segment():
    tensor = torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage._new_shared(64 * 4096))
    assert mapped_kb(tensor) == 0  # fresh: no page mapped before the first write
    if not shared_batch.populate(tensor):
        pytest.skip("this kernel has no MADV_POPULATE_WRITE (Linux < 5.14)")
    assert mapped_kb(tensor) == 64 * 4
