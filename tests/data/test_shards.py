"""Training batches from generated image-caption shards: shapes, coverage over ranks and workers, resampling, bad samples."""

from __future__ import annotations

import io
import itertools
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import webdataset as wds
from PIL import Image

from cir.data import samples as sample_conversion
from cir.data.epochs import batches_per_rank, epoch_share
from cir.data.errors import DataError
from cir.data.samples import NpyReader
from cir.data.shards import SKIP_REASONS, image_text_loader, image_text_pipeline

FORMATS = (("jpg", "JPEG"), ("png", "PNG"), ("webp", "WEBP"))
TRANSFORM = T.Compose([T.Resize((8, 8)), T.ToTensor()])


def colour(index: int) -> tuple[int, int, int]:
    return (index * 7 % 256, index * 13 % 256, 200)


def encode(index: int, fmt: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (12, 10), colour(index)).save(out, format=fmt)
    return out.getvalue()


def tokenize(captions: list[str]) -> torch.Tensor:
    """Stand-in tokenizer: the caption is the sample index, so tokens say which samples a batch holds."""
    return torch.tensor([[int(c), 0] for c in captions])


def good_sample(index: int) -> dict:
    ext, fmt = FORMATS[index % 3]
    return {"__key__": f"{index:06d}", ext: encode(index, fmt), "txt": str(index), "json": {"index": index}}


def write(path: Path, samples: list[dict]) -> str:
    with wds.TarWriter(str(path)) as sink:
        for sample in samples:
            sink.write(sample)
    return str(path)


def make_shards(root: Path, num_shards: int, per_shard: int) -> list[str]:
    return [
        write(root / f"shard-{s:06d}.tar", [good_sample(s * per_shard + i) for i in range(per_shard)])
        for s in range(num_shards)
    ]


def indices(batches) -> list[int]:
    return sorted(int(i) for b in batches for i in b.texts[:, 0])


def test_batches_hold_every_sample_once_with_its_pixels(tmp_path):
    make_shards(tmp_path, num_shards=4, per_shard=5)
    pipeline = image_text_pipeline(str(tmp_path / "shard-{000000..000003}.tar"), image_transform=TRANSFORM, tokenize=tokenize, batch_size=6)
    batches = list(pipeline)
    assert [len(b.images) for b in batches] == [6, 6, 6, 2]
    for batch in batches:
        assert batch.images.shape[1:] == (3, 8, 8) and batch.images.dtype == torch.float32
        assert batch.texts.dtype == torch.long and batch.texts.shape[1] == 2
        assert batch.skipped.tolist() == [0] * len(SKIP_REASONS)
        for image, index in zip(batch.images, batch.texts[:, 0].tolist()):
            if index % 3 == 1:  # png: lossless, so the pixels are the written colour
                expected = torch.tensor(colour(index), dtype=torch.float32).div(255).view(3, 1, 1).expand(3, 8, 8)
                torch.testing.assert_close(image, expected, atol=1e-6, rtol=0)
    assert indices(batches) == list(range(20))
    assert pipeline.skip_stats.total == 0


def test_list_urls_and_pipe_urls_read_the_same_samples(tmp_path):
    urls = make_shards(tmp_path, num_shards=2, per_shard=3)

    def read(source):
        return indices(image_text_pipeline(source, image_transform=TRANSFORM, tokenize=tokenize, batch_size=4, shuffle_buffer=0))

    assert read(urls) == list(range(6))
    assert read([f"pipe:cat {u}" for u in urls]) == list(range(6))
    assert read(f"pipe:cat {tmp_path}/shard-{{000000..000001}}.tar") == list(range(6))


def test_unshuffled_order_is_the_shard_order(tmp_path):
    urls = make_shards(tmp_path, num_shards=2, per_shard=3)
    pipeline = image_text_pipeline(urls[::-1], image_transform=TRANSFORM, tokenize=tokenize, batch_size=2, shuffle_buffer=0)
    assert [int(i) for b in pipeline for i in b.texts[:, 0]] == [3, 4, 5, 0, 1, 2]


def test_shuffling_changes_order_with_the_seed(tmp_path):
    urls = make_shards(tmp_path, num_shards=4, per_shard=5)

    def order(seed):
        pipeline = image_text_pipeline(urls, image_transform=TRANSFORM, tokenize=tokenize, batch_size=20, shuffle_buffer=20, seed=seed)
        return [int(i) for b in pipeline for i in b.texts[:, 0]]

    assert order(0) == order(0)
    assert order(0) != order(1)
    assert sorted(order(1)) == list(range(20))


def test_simulated_ranks_and_workers_split_the_shards_exactly(tmp_path, monkeypatch):
    """webdataset reads RANK / WORLD_SIZE and WORKER / NUM_WORKERS from the environment first."""
    urls = make_shards(tmp_path, num_shards=8, per_shard=3)
    seen = []
    for rank, worker in itertools.product(range(2), range(2)):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("WORKER", str(worker))
        monkeypatch.setenv("NUM_WORKERS", "2")
        got = indices(image_text_pipeline(urls, image_transform=TRANSFORM, tokenize=tokenize, batch_size=4, seed=3))
        assert len(got) == 6, (rank, worker, got)
        seen += got
    assert sorted(seen) == list(range(24))


def test_dataloader_workers_under_two_ranks_cover_each_sample_once(tmp_path, monkeypatch):
    urls = make_shards(tmp_path, num_shards=4, per_shard=3)
    seen = []
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        pipeline = image_text_pipeline(urls, image_transform=TRANSFORM, tokenize=tokenize, batch_size=2)
        seen += indices(image_text_loader(pipeline, num_workers=2))
    assert sorted(seen) == list(range(12))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resampled_epoch_has_exactly_samples_per_epoch(tmp_path, num_workers):
    urls = make_shards(tmp_path, num_shards=3, per_shard=4)
    pipeline = image_text_pipeline(
        urls, image_transform=TRANSFORM, tokenize=tokenize, batch_size=4, resampled=True, samples_per_epoch=23, shuffle_buffer=8
    )
    loader = image_text_loader(pipeline, num_workers=num_workers)
    assert len(loader) == 6
    for _ in range(2):
        sizes = [len(b.images) for b in loader]
        assert sorted(sizes) == [3, 4, 4, 4, 4, 4]
    assert set(indices(loader)) <= set(range(12))


@pytest.mark.parametrize("world_size", [1, 2, 3, 8])
@pytest.mark.parametrize("num_workers", [1, 2, 5])
def test_epoch_share_gives_every_rank_the_same_batches(world_size, num_workers):
    for samples, batch in [(1, 1), (23, 4), (100, 8), (1000, 64), (7, 16)]:
        per_rank = -(-samples // world_size)
        shares = [epoch_share(samples, batch, world_size, num_workers, k) for k in range(num_workers)]
        assert sum(shares) == per_rank
        assert sum(-(-s // batch) for s in shares) == batches_per_rank(samples, batch, world_size) == -(-per_rank // batch)
        assert sum(s % batch != 0 for s in shares) <= 1


def bad_shard(path: Path) -> str:
    good = [good_sample(i) for i in range(4)]
    corrupt = {**good_sample(10), "jpg": b"not an image"}
    no_caption = {k: v for k, v in good_sample(11).items() if k != "txt"}
    blank_caption = {**good_sample(12), "txt": "   "}
    no_image = {"__key__": "000013", "txt": "13", "json": {}}
    return write(path, [good[0], corrupt, good[1], no_caption, blank_caption, good[2], no_image, good[3]])


def test_bad_samples_and_shards_are_skipped_counted_and_logged(tmp_path, caplog):
    (tmp_path / "broken.tar").write_bytes(b"this is not a tar file" * 40)
    urls = [str(tmp_path / "broken.tar"), bad_shard(tmp_path / "bad.tar")]
    pipeline = image_text_pipeline(urls, image_transform=TRANSFORM, tokenize=tokenize, batch_size=3, shuffle_buffer=0)
    with caplog.at_level(logging.WARNING, logger="cir.data.shards"):
        batches = list(pipeline)
    assert indices(batches) == [0, 1, 2, 3]
    expected = {"shard_error": 1, "missing_image": 1, "bad_image": 1, "missing_caption": 2, "missing_embedding": 0, "bad_embedding": 0}
    assert pipeline.skip_stats.counts == expected
    per_batch = sum(b.skipped for b in batches)
    assert dict(zip(SKIP_REASONS, per_batch.tolist())) == expected
    messages = " ".join(r.getMessage() for r in caplog.records)
    for reason in ("bad_image", "missing_caption", "missing_image", "shard_error"):
        assert reason in messages
    assert "000010" in messages and "broken.tar" in messages


@pytest.mark.parametrize("resampled", [False, True])
def test_resume_passes_over_the_trained_batches_bad_samples_and_all(tmp_path, resampled):
    urls = [bad_shard(tmp_path / "bad.tar"), *make_shards(tmp_path, num_shards=2, per_shard=5)]
    kw = {"image_transform": TRANSFORM, "tokenize": tokenize, "batch_size": 3, "shuffle_buffer": 4, "seed": 5}
    if resampled:
        kw.update(resampled=True, samples_per_epoch=17)

    def epoch(resume: tuple[int, int] | None) -> list[list[int]]:
        pipeline = image_text_pipeline(urls, **kw)
        if resume is not None:
            pipeline.resume(*resume)
        return [b.texts[:, 0].tolist() for b in pipeline]

    pipeline = image_text_pipeline(urls, **kw)
    first, second = ([b.texts[:, 0].tolist() for b in pipeline] for _ in range(2))
    assert first != second
    assert epoch((0, 2)) == first[2:]
    assert epoch((1, 0)) == second
    assert epoch((1, 4)) == second[4:]


def undecodable_shard(path: Path) -> str:
    """Samples whose header parses but whose image does not decode: a truncated JPEG, and a 16 x 16 PNG that is over
    PIL's decompression-bomb warning limit but under its error limit once the test sets MAX_IMAGE_PIXELS to 200."""
    noise = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(noise, format="JPEG")
    truncated = {"__key__": "000020", "jpg": noise.getvalue()[: -len(noise.getvalue()) // 3], "txt": "20"}
    big = io.BytesIO()
    Image.new("RGB", (16, 16), (1, 2, 3)).save(big, format="PNG")
    between = {"__key__": "000021", "png": big.getvalue(), "txt": "21"}
    good = [good_sample(i) for i in range(7)]
    return write(path, [good[0], truncated, good[1], good[2], between, good[3], good[4], good[5], good[6]])


@pytest.mark.parametrize("mode", [{}, {"resampled": True, "samples_per_epoch": 13}, {"exact_epoch": True}])
def test_resume_is_exact_past_images_that_only_fail_when_decoded(tmp_path, monkeypatch, mode):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 200)  # the 12 x 10 samples stay under it
    urls = [undecodable_shard(tmp_path / "bad.tar"), *make_shards(tmp_path, num_shards=1, per_shard=4)]
    kw = {"image_transform": TRANSFORM, "tokenize": tokenize, "batch_size": 2, "shuffle_buffer": 0, **mode}

    def epoch(batches: int) -> list[list[int]]:
        pipeline = image_text_pipeline(urls, **kw)
        pipeline.resume(0, batches)
        return [b.texts[:, 0].tolist() for b in pipeline]

    pipeline = image_text_pipeline(urls, **kw)
    whole = [b.texts[:, 0].tolist() for b in pipeline]
    assert 20 not in sum(whole, []) and 21 not in sum(whole, []) and pipeline.skip_stats.counts["bad_image"] >= 2
    for batches in range(1, len(whole)):
        assert epoch(batches) == whole[batches:], batches


def test_a_long_run_of_skips_raises(tmp_path, monkeypatch):
    monkeypatch.setattr(sample_conversion, "MAX_CONSECUTIVE_SKIPS", 3)
    url = write(tmp_path / "x.tar", [{"__key__": f"{i:06d}", "txt": "1"} for i in range(5)])
    with pytest.raises(DataError, match=r"^3 consecutive samples or shards were skipped \(missing_image 3; .*: no usable"):
        list(image_text_pipeline(url, image_transform=TRANSFORM, tokenize=tokenize, batch_size=2))


def test_cached_embeddings_replace_tokens(tmp_path):
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((5, 6)).astype(np.float32)
    samples = [{**good_sample(i), "txtemb.npy": vectors[i]} for i in range(5)]
    samples[2] = {k: v for k, v in samples[2].items() if k != "txtemb.npy"}
    samples[3]["txt"] = ""  # captions are not read in this mode
    url = write(tmp_path / "emb.tar", samples)
    pipeline = image_text_pipeline(url, image_transform=TRANSFORM, tokenize=None, batch_size=8, shuffle_buffer=0, text_embedding_key="txtemb.npy")
    (batch,) = list(pipeline)
    assert batch.images.shape == (4, 3, 8, 8)
    torch.testing.assert_close(batch.texts, torch.from_numpy(vectors[[0, 1, 3, 4]]))
    assert pipeline.skip_stats.counts["missing_embedding"] == 1


def npy(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, array)
    return out.getvalue()


def test_npy_reader_equals_np_load():
    reader = NpyReader()
    rng = np.random.default_rng(0)
    cases = [
        rng.standard_normal(8).astype(np.float32),
        rng.standard_normal(8).astype(np.float32),  # same header: the fast path
        rng.standard_normal(8).astype(np.float16),  # another dtype
        rng.standard_normal(5).astype(np.float16),  # another shape
        np.asfortranarray(rng.standard_normal((3, 4))),  # Fortran order: never the fast path
        np.asfortranarray(rng.standard_normal((3, 4))),
        rng.standard_normal(5).astype(np.float16),
    ]
    for array in cases:
        got = reader.load(npy(array))
        assert got.dtype == array.dtype and got.shape == array.shape
        np.testing.assert_array_equal(got, array)
    reader.load(npy(cases[0]))  # primed with this header: odd payloads must not take the fast path
    for payload in (npy(cases[0]) + b"\0" * 4, npy(cases[0])[:-4]):  # trailing bytes, truncated data
        try:
            expected = np.load(io.BytesIO(payload), allow_pickle=False)
        except ValueError:
            with pytest.raises(ValueError):
                reader.load(payload)
        else:
            np.testing.assert_array_equal(reader.load(payload), expected)


def test_bad_arguments_are_named(tmp_path):
    url = make_shards(tmp_path, num_shards=1, per_shard=1)[0]
    kw = dict(image_transform=TRANSFORM, batch_size=2)
    with pytest.raises(ValueError, match="tokenize"):
        image_text_pipeline(url, tokenize=None, **kw)
    with pytest.raises(ValueError, match="tokenize"):
        image_text_pipeline(url, tokenize=tokenize, text_embedding_key="txtemb.npy", **kw)
    with pytest.raises(ValueError, match="samples_per_epoch"):
        image_text_pipeline(url, tokenize=tokenize, resampled=True, **kw)
    with pytest.raises(ValueError, match="samples_per_epoch"):
        image_text_pipeline(url, tokenize=tokenize, samples_per_epoch=10, **kw)
    with pytest.raises(FileNotFoundError, match="shard-000001.tar"):
        image_text_pipeline(str(tmp_path / "shard-{000000..000001}.tar"), tokenize=tokenize, **kw)
