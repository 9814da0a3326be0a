"""Cached caption embeddings: round trip through the training pipeline, backbone identity checks, CLI."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
import torch
import webdataset as wds
from PIL import Image

from cir.data.embed_text import (
    check_backbone_identity,
    embed_shards,
    load_text_embedding_meta,
    main,
)
from cir.data.shard_sizes import COUNT_CACHE, count_samples, shard_sizes
from cir.data.shards import image_text_pipeline
from cir.models import create_backbone

CAPTIONS = ["a red square", "two dogs on a sofa", "", "a large blue circle on the left", "make it green", "x", "the sky"]


@pytest.fixture(scope="module")
def backbone():
    return create_backbone("cir-tiny", "none")


def jpeg(index: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (index * 30, 0, 0)).save(out, format="JPEG")
    return out.getvalue()


@pytest.fixture
def shards(tmp_path: Path) -> str:
    """Two shards of image-caption samples; sample 2 has a blank caption."""
    root = tmp_path / "in"
    root.mkdir()
    with wds.ShardWriter(str(root / "shard-%06d.tar"), maxcount=4, verbose=0) as sink:
        for i, caption in enumerate(CAPTIONS):
            sink.write({"__key__": f"{i:06d}", "jpg": jpeg(i), "txt": caption, "json": {"i": i}})
    return str(root / "shard-{000000..000001}.tar")


def test_pipeline_yields_the_backbones_caption_embeddings(tmp_path, shards, backbone):
    meta = embed_shards(shards, tmp_path / "out", backbone, batch_size=3)
    assert meta == load_text_embedding_meta(tmp_path / "out")
    assert (meta.samples, meta.dim, meta.shards, meta.skipped) == (6, backbone.embed_dim, ("shard-000000.tar", "shard-000001.tar"), {"missing_caption": 1})
    check_backbone_identity(meta, backbone)
    assert shard_sizes(meta.urls) == [count_samples(u) for u in meta.urls] and sum(shard_sizes(meta.urls)) == 6
    assert (tmp_path / "out" / "sizes.json").exists()  # where those came from: no counting cache was needed
    assert not (tmp_path / "out" / COUNT_CACHE).exists()

    pipeline = image_text_pipeline(
        meta.urls, image_transform=backbone.preprocess_val, tokenize=None, batch_size=4, shuffle_buffer=0, text_embedding_key=meta.key
    )
    batches = list(pipeline)
    embeddings = torch.cat([b.texts for b in batches])
    kept = [c for c in CAPTIONS if c]
    with torch.no_grad():
        expected = backbone.encode_text(backbone.tokenize(kept))
    torch.testing.assert_close(embeddings, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(embeddings.norm(dim=1), torch.ones(len(kept)))
    assert torch.cat([b.images for b in batches]).shape[0] == len(kept)
    assert pipeline.skip_stats.total == 0

    with tarfile.open(tmp_path / "out" / "shard-000000.tar") as tar:
        names = tar.getnames()
        assert tar.extractfile("000000.jpg").read() == jpeg(0)
    assert "000002.jpg" not in names and {"000000.txt", "000000.json", "000000.txtemb.npy"} <= set(names)
    # plain ustar members: a PAX header per member would double the shards and their parsing time
    assert b"PaxHeader" not in (tmp_path / "out" / "shard-000000.tar").read_bytes()


def test_another_backbone_is_a_clear_error(tmp_path, shards, backbone):
    meta = embed_shards(shards, tmp_path / "out", backbone)
    other = create_backbone("cir-tiny", "none")
    with pytest.raises(ValueError) as info:
        check_backbone_identity(meta, other)
    message = str(info.value)
    assert backbone.fingerprint() in message and other.fingerprint() in message and "cir-tiny" in message


def test_cli_with_a_checkpoint_reruns_and_refuses_the_input_folder(tmp_path, shards, backbone, capsys):
    checkpoint = tmp_path / "tiny.pt"
    torch.save(backbone.model.state_dict(), checkpoint)
    out = tmp_path / "out"
    args = ["--shards", shards, "--model", "cir-tiny", "--pretrained", str(checkpoint), "--out", str(out), "--device", "cpu"]
    assert main(args) == 0
    meta = load_text_embedding_meta(out / "text_embeddings.json")
    assert meta.fingerprint == backbone.fingerprint() and meta.pretrained == str(checkpoint)
    check_backbone_identity(meta, backbone)
    with pytest.raises(SystemExit):
        main(args)
    assert "--overwrite" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0
    with pytest.raises(SystemExit):
        main([*args[:-4], "--out", str(Path(shards).parent), "--device", "cpu"])
    assert "holds the input shards" in capsys.readouterr().err


def test_missing_metadata_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="text_embeddings.json"):
        load_text_embedding_meta(tmp_path)
