"""FeatureCache: an entry that is truncated, overwritten or short of rows is named and encoded again; a save that
fails (disk full) warns and the evaluation goes on with the features in memory."""

from __future__ import annotations

import errno
import json
import logging
import os
from types import SimpleNamespace

import pytest
import torch

from cir import evaluate
from cir.evaluation.features import FeatureCache, Features

BENCH = SimpleNamespace(name="cirr", split="val")
KEY = "0123456789abcdef01234567"
ROWS = (40, 12)


@pytest.fixture
def cache(tmp_path) -> FeatureCache:
    return FeatureCache(tmp_path / "cache")


def features(rows: tuple[int, int] = ROWS) -> Features:
    generator = torch.Generator().manual_seed(0)
    return Features(image=torch.randn(rows[0], 16, generator=generator), text=torch.randn(rows[1], 16, generator=generator))


def assert_damaged(cache: FeatureCache, caplog, why: str) -> None:
    with caplog.at_level(logging.WARNING, logger="cir.evaluation.features"):
        assert cache.load(BENCH, KEY, ROWS) is None
    assert f"feature cache {cache.path(BENCH, KEY)} is damaged ({why}" in caplog.text


def test_an_entry_comes_back_as_saved(cache):
    saved = features()
    cache.save(BENCH, KEY, saved)
    loaded = cache.load(BENCH, KEY, ROWS)
    assert torch.equal(loaded.image, saved.image) and torch.equal(loaded.text, saved.text)


def test_a_truncated_entry_is_named_and_not_used(cache, caplog):
    cache.save(BENCH, KEY, features())
    path = cache.path(BENCH, KEY)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert_damaged(cache, caplog, "it does not load")


def test_overwritten_bytes_fail_the_checksum(cache, caplog):
    saved = features()
    cache.save(BENCH, KEY, saved)
    path = cache.path(BENCH, KEY)
    raw = bytearray(path.read_bytes())
    at = raw.find(saved.image.half().numpy().tobytes()[:32])
    assert at > 0
    raw[at + 100: at + 104] = b"\xff\xff\xff\xff"
    path.write_bytes(bytes(raw))
    assert_damaged(cache, caplog, "its tables do not match their checksum")


def test_an_entry_with_too_few_rows_is_not_used(cache, caplog):
    cache.save(BENCH, KEY, features((39, 12)))
    assert_damaged(cache, caplog, "it has 39 image / 12 text rows, the split needs 40 / 12")


def test_a_save_on_a_full_disk_warns_and_leaves_no_file(cache, caplog, monkeypatch):
    def disk_full(obj, f, *args, **kwargs):
        open(f, "wb").write(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", disk_full)
    with caplog.at_level(logging.WARNING, logger="cir.evaluation.features"):
        cache.save(BENCH, KEY, features())
    path = cache.path(BENCH, KEY)
    assert f"could not write the feature cache {path} (No space left on device): going on with the features" in caplog.text
    assert not list(path.parent.iterdir())


def test_an_evaluation_encodes_a_damaged_entry_again_and_scores_as_before(cirr_root, tmp_path, caplog, monkeypatch):
    out = tmp_path / "out"
    args = ["model.name=cir-tiny", "model.pretrained=none", f"data.root={cirr_root}", f"output_dir={out}",
            f"eval.cache_dir={tmp_path / 'cache'}", "data.num_workers=0", "trainer.accelerator=cpu",
            "trainer.enable_progress_bar=false", "eval.examples=0"]
    evaluate.main(None, args)
    first = json.loads((out / "metrics.json").read_text())
    [entry] = (tmp_path / "cache").iterdir()
    raw = bytearray(entry.read_bytes())
    raw[len(raw) // 2: len(raw) // 2 + 64] = b"\xa5" * 64
    entry.write_bytes(bytes(raw))
    with caplog.at_level(logging.WARNING, logger="cir.evaluation.features"):
        evaluate.main(None, args)
    assert f"feature cache {entry} is damaged" in caplog.text
    again = json.loads((out / "metrics.json").read_text())
    assert {k: v for k, v in again.items() if "/" in k} == {k: v for k, v in first.items() if "/" in k}
    assert FeatureCache(tmp_path / "cache").load(SimpleNamespace(name="cirr", split="val"), entry.stem.split("-")[-1])
