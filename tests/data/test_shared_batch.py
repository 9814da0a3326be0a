from __future__ import annotations

import gc
import io
import os
import pickle
import sys
from multiprocessing.reduction import ForkingPickler

import numpy as np
import pytest
import torch
import webdataset as wds
from open_clip.transform import PreprocessCfg, image_transform_v2
from PIL import Image

from cir.data import shared_batch
from cir.data.samples import ImageTextBatch
from cir.data.shards import image_text_loader, image_text_pipeline
from cir.data.transforms import stack_images, uint8_version


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


@pytest.fixture
def worker_pool(monkeypatch):
    """This process as a DataLoader worker, with a pool of its own."""
    monkeypatch.setattr(shared_batch, "get_worker_info", lambda: object())
    monkeypatch.setattr(shared_batch, "_segments", [])
    monkeypatch.setattr(shared_batch, "_leases", {})
    return shared_batch


def handed_out(batch: ImageTextBatch) -> ImageTextBatch:
    """The batch as the main process rebuilds it from a worker's queue."""
    return pickle.loads(bytes(ForkingPickler.dumps(batch)))


def image_batch(value: int, n: int = 4) -> ImageTextBatch:
    items = [torch.full((6, 5, 3), value, dtype=torch.uint8).permute(2, 0, 1) for _ in range(n)]
    return ImageTextBatch(stack_images(items, pooled=True), torch.full((n, 2), value), torch.zeros(6, dtype=torch.long))


def test_a_pooled_segment_goes_back_only_when_nothing_in_the_main_process_uses_its_batch(worker_pool):
    first = handed_out(image_batch(1))
    assert len(worker_pool._segments) == 1 and first.images.is_contiguous(memory_format=torch.channels_last)
    view, array = first.images[2], first.images.numpy()
    del first
    gc.collect()
    held = handed_out(image_batch(2))  # the first segment is still used through a view and a numpy array
    assert len(worker_pool._segments) == 2
    del view
    gc.collect()
    handed_out(image_batch(3))  # dropped at once: its segment is free again
    assert len(worker_pool._segments) == 3
    assert (array == 1).all() and (held.images == 2).all()
    del array
    gc.collect()
    reused = image_batch(4)
    assert len(worker_pool._segments) == 3  # no new segment: one whose batch is gone
    assert (held.images == 2).all() and (handed_out(reused).images == 4).all()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_forked_child_dropping_its_copy_of_a_batch_does_not_give_its_segment_back(worker_pool):
    held = handed_out(image_batch(1))
    child = os.fork()
    if child == 0:  # the copy of the batch a fork inherits goes; so would it at a normal exit
        del held
        gc.collect()
        os._exit(0)
    assert os.waitpid(child, 0)[1] == 0
    handed_out(image_batch(2))
    assert len(worker_pool._segments) == 2 and (held.images == 1).all()


def test_a_full_pool_gives_fresh_segments_and_a_lone_batch_is_plain_torch_stack(worker_pool, monkeypatch):
    monkeypatch.setattr(worker_pool, "MAX_SEGMENTS", 2)
    batches = [handed_out(image_batch(v)) for v in range(4)]
    assert len(worker_pool._segments) == 2
    assert [int(b.images.float().mean()) for b in batches] == [0, 1, 2, 3]
    plain = shared_batch.stack(images(3))  # not pooled: default_collate's fresh segment
    assert plain.is_shared() and not worker_pool.pooled(plain)


def test_a_batch_made_in_place_is_handed_out_without_a_copy(worker_pool):
    buffer = worker_pool.batch_buffer((4, 6, 5, 3), torch.uint8)
    items = [buffer[i].permute(2, 0, 1) for i in range(3)]  # the last batch of an epoch: 3 of 4 places filled
    for value, item in enumerate(items):
        item.fill_(value)
    out_of_order = stack_images(items[::-1], pooled=True)  # not the buffer's items in order: copied
    assert out_of_order.data_ptr() != buffer.data_ptr() and torch.equal(out_of_order, torch.stack(items[::-1]))
    batch = stack_images(items, pooled=True)
    assert batch.data_ptr() == buffer.data_ptr() and batch.shape == (3, 3, 6, 5)
    assert [int(i.float().mean()) for i in handed_out(ImageTextBatch(batch, torch.zeros(3), torch.zeros(6))).images] == [0, 1, 2]


def test_a_buffer_none_of_whose_items_left_goes_back_to_the_pool(worker_pool):
    buffer = worker_pool.batch_buffer((4, 6, 5, 3), torch.uint8)
    worker_pool.release(buffer)
    assert worker_pool.batch_buffer((4, 6, 5, 3), torch.uint8).data_ptr() == buffer.data_ptr()
    assert len(worker_pool._segments) == 1


def test_outside_a_worker_there_is_no_pool():
    assert shared_batch.batch_buffer((4, 6, 5, 3), torch.uint8) is None
    batch = stack_images([torch.zeros(3, 6, 5, dtype=torch.uint8)] * 2, pooled=True)
    assert not batch.is_shared() and not shared_batch.pooled(batch)


def shm_segment(tensor: torch.Tensor) -> str:
    """Name of the shared-memory file mapped where the tensor's memory is (/proc/self/maps)."""
    address = tensor.data_ptr()
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split()
            start, end = (int(x, 16) for x in fields[0].split("-"))
            if start <= address < end:
                return " ".join(fields[5:])
    raise AssertionError("no mapping holds the tensor")


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/maps")
def test_workers_reuse_segments_and_never_overwrite_a_batch_the_main_process_holds(tmp_path, monkeypatch):
    """The real loader with 2 workers: every batch equals the unpooled loader's, batches kept for the whole run
    keep their pixels, and the workers go round a few segments."""
    urls = photo_shards(tmp_path)
    transform = uint8_version(image_transform_v2(PreprocessCfg(size=24), is_train=True))

    def run(hold: set[int], check: list[ImageTextBatch] | None) -> tuple[list[ImageTextBatch], set[str]]:
        pipeline = image_text_pipeline(urls, image_transform=transform, tokenize=lambda c: torch.tensor([[int(t)] for t in c]),
                                       batch_size=5, resampled=True, samples_per_epoch=120, shuffle_buffer=0)
        kept, segments = [], set()
        for i, batch in enumerate(image_text_loader(pipeline, num_workers=2)):
            segments.add(shm_segment(batch.images))
            if check is not None:
                assert torch.equal(batch.images, check[i].images) and torch.equal(batch.texts, check[i].texts), i
            kept.append(batch if i in hold else ImageTextBatch(batch.images.clone(), batch.texts, batch.skipped))
        return kept, segments

    monkeypatch.setattr(shared_batch, "MAX_SEGMENTS", 0)  # the workers fork with it: default_collate's fresh segments
    unpooled, fresh = run(set(), None)
    monkeypatch.setattr(shared_batch, "MAX_SEGMENTS", 8)
    hold = {0, 3, 4, 11}
    pooled, used = run(hold, unpooled)
    assert len(fresh) == len(unpooled) == 24 and sum(int(b.skipped.sum()) for b in unpooled) > 0
    assert len(used) <= 2 * shared_batch.MAX_SEGMENTS + len(hold)  # each worker's pool (12 batches each, 4 held)
    for i in hold:
        assert torch.equal(pooled[i].images, unpooled[i].images), i


def photo_shards(root) -> list[str]:
    """Two shards of 30 distinct JPEGs with their index as caption, two of each that do not decode."""
    rng = np.random.default_rng(0)
    urls = []
    for s in range(2):
        with wds.TarWriter(str(root / f"shard-{s}.tar")) as sink:
            for i in range(30):
                image = Image.fromarray(rng.integers(0, 256, (30 + i % 7, 34, 3), dtype=np.uint8))
                data = io.BytesIO()
                image.save(data, format="JPEG")
                jpg = {7: data.getvalue()[:300], 12: b"not an image"}.get(i, data.getvalue())  # skipped mid-batch
                sink.write({"__key__": f"{s}-{i:03d}", "jpg": jpg, "txt": str(s * 30 + i)})
        urls.append(str(root / f"shard-{s}.tar"))
    return urls
