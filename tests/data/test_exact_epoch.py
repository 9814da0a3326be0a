"""Exact epochs: one pass, every pair at most once, every rank the same batches; the layout's arithmetic."""

from __future__ import annotations

import itertools
import json

import lightning as L
import pytest
import torch
from test_shards import TRANSFORM, good_sample, indices, tokenize, write

from cir.data.epochs import EpochPlan, epoch_share
from cir.data.exact_epoch import (
    ExactEpochSamples,
    exact_epoch_layout,
    stream_start,
)
from cir.data.image_text import ImageTextDataModule
from cir.data.shard_sizes import sample_offset
from cir.data.shards import image_text_loader, image_text_pipeline

UNEVEN = (7, 1, 12, 3, 9, 5)  # 37 samples


def uneven_shards(root, sizes=UNEVEN) -> list[str]:
    urls, start = [], 0
    for s, size in enumerate(sizes):
        urls.append(write(root / f"shard-{s:06d}.tar", [good_sample(start + i) for i in range(size)]))
        start += size
    return urls


@pytest.mark.parametrize("world_size", [1, 2, 3, 8])
@pytest.mark.parametrize("num_workers", [1, 2, 5])
def test_streams_tile_the_kept_samples_and_leave_out_fewer_than_the_ranks(world_size, num_workers):
    for sizes, batch in [(UNEVEN, 4), ((100,) * 50, 16), ((1,) * 9, 2), ((3, 0, 0, 50), 8)]:
        layout = exact_epoch_layout(sizes, world_size)
        assert layout.left_out == sum(sizes) % world_size < world_size
        cursor = 0
        for rank, worker in itertools.product(range(world_size), range(num_workers)):
            assert stream_start(layout.per_rank, batch, world_size, num_workers, rank, worker) == cursor
            cursor += epoch_share(layout.per_rank * world_size, batch, world_size, num_workers, worker)
        assert cursor == layout.per_rank * world_size == sum(sizes) - layout.left_out


def test_shipped_scales_leave_out_at_most_a_few_pairs():
    """LAION 2M in 200 shards on 64 GPUs x 8 workers (global batch 1024), LLaVA-Align 558K, CC3M in 331 shards on 8 GPUs."""
    laion = exact_epoch_layout([10_000] * 200, 64)
    assert laion.left_out == 0 and laion.per_rank == 31_250
    assert "2000000 pairs in 200 shards, 31250 per rank per epoch, 0 left out (0.00 %) to keep 64 ranks x 8 workers" in laion.summary(8)
    llava = exact_epoch_layout([10_000] * 55 + [8128], 8)
    assert (llava.samples, llava.left_out) == (558_128, 0)
    cc3m = exact_epoch_layout([10_000] * 330 + [3_333], 8)  # any split: fewer left out than ranks
    assert cc3m.left_out == 3_303_333 % 8 == 5


def test_simulated_ranks_and_workers_see_each_pair_at_most_once_in_equal_batches(tmp_path, monkeypatch):
    urls = uneven_shards(tmp_path)
    seen, batch_counts = [], {}
    for rank, worker in itertools.product(range(2), range(2)):
        for key, value in {"RANK": rank, "WORLD_SIZE": 2, "WORKER": worker, "NUM_WORKERS": 2}.items():
            monkeypatch.setenv(key, str(value))
        pipeline = image_text_pipeline(urls, image_transform=TRANSFORM, tokenize=tokenize, batch_size=4, exact_epoch=True, seed=3)
        batches = list(pipeline)
        batch_counts.setdefault(worker, set()).add(tuple(len(b.images) for b in batches))
        seen += indices(batches)
    assert len(seen) == len(set(seen)) == 36  # 37 samples, 18 per rank, 1 left out
    assert all(len(sizes) == 1 for sizes in batch_counts.values())  # worker k of each rank: the same batch sizes


def test_epochs_reorder_the_shards_and_still_cover_them(tmp_path):
    urls = uneven_shards(tmp_path)
    pipeline = image_text_pipeline(urls, image_transform=TRANSFORM, tokenize=tokenize, batch_size=5, exact_epoch=True, seed=1)
    loader = image_text_loader(pipeline, num_workers=2)
    assert len(loader) == 8  # 37 samples: worker shares 20 + 17 -> 4 + 4 batches
    first, second = ([b.texts[:, 0].tolist() for b in loader] for _ in range(2))
    assert first != second
    assert sorted(itertools.chain(*first)) == sorted(itertools.chain(*second)) == list(range(37))


def test_a_short_stream_fills_in_from_the_next_share(tmp_path, caplog):
    """A bad sample leaves its stream short: the next samples in the epoch's order stand in, so batches stay full."""
    samples = [good_sample(i) for i in range(8)]
    samples[1] = {**samples[1], "jpg": b"not an image"}
    url = write(tmp_path / "one.tar", samples)
    pipeline = image_text_pipeline([url], image_transform=TRANSFORM, tokenize=tokenize, batch_size=4, exact_epoch=True, shuffle_buffer=0)
    assert [b.texts[:, 0].tolist() for b in pipeline] == [[0, 2, 3, 4], [5, 6, 7, 0]]
    assert "fill in" in caplog.text


def test_a_stream_starting_inside_a_local_shard_seeks_to_its_first_sample(tmp_path):
    url = write(tmp_path / "a.tar", [good_sample(i) for i in range(5)])
    stage = ExactEpochSamples([url], [5], EpochPlan(), batch_size=2, seed=0, shuffle_buffer=0, handler=lambda exn: False)
    keys = [s["__key__"] for s in stage._shard(url, 0)]
    offsets = [sample_offset(url, i) for i in range(6)]
    assert offsets[0] == 0 and offsets == sorted(offsets[:5]) + [None]  # increasing, none past the end
    for first in range(1, 5):
        seeked = list(stage._shard(url, first))
        streamed = list(stage._shard(f"pipe:cat {url}", first))  # no seeking through a pipe: read and passed over
        assert [s["__key__"] for s in seeked] == keys[first:]
        assert [{**s, "__url__": url} for s in streamed] == seeked  # same members, same bytes


@pytest.mark.parametrize("content", [b"", b"\0" * 10240, b"this is not a tar file\n" * 40])
def test_shards_without_samples_are_an_error_naming_them(tmp_path, content):
    (tmp_path / "empty.tar").write_bytes(content)
    with pytest.raises(ValueError, match="empty.tar"):
        image_text_pipeline([str(tmp_path / "empty.tar")], image_transform=TRANSFORM, tokenize=tokenize, batch_size=2, exact_epoch=True)


class KeyRecorder(L.LightningModule):
    """Writes the sample indices each step of this rank saw to <out>/rank<R>.json at the end of training."""

    def __init__(self, out) -> None:
        super().__init__()
        self.out = out
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.seen: list[list[int]] = []

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        self.seen.append(batch.texts[:, 0].tolist())
        return self.weight * batch.images.mean()

    def on_train_end(self) -> None:
        (self.out / f"rank{self.global_rank}.json").write_text(json.dumps(self.seen))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.ddp
def test_two_ranks_pass_once_over_uneven_shards_in_step(tmp_path):
    urls = uneven_shards(tmp_path)
    data = ImageTextDataModule(urls, TRANSFORM, tokenize, batch_size=3, num_workers=0, exact_epoch=True, shuffle_buffer=4, seed=2)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", max_epochs=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path))
    trainer.fit(KeyRecorder(tmp_path), datamodule=data)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [[len(b) for b in steps] for steps in ranks] == [[3] * 6, [3] * 6]  # 18 each, in step
    seen = [i for steps in ranks for batch in steps for i in batch]
    left_out = exact_epoch_layout(UNEVEN, 2).left_out
    assert len(seen) == len(set(seen)) and len(seen) + left_out == sum(UNEVEN) and left_out == 1
