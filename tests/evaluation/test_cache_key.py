"""The feature cache's key covers the image files (size and modification time), so an evaluation after images were
regenerated or replaced in place, with the same eval.cache_dir, scores the new images, not the cached features."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from cir import evaluate
from cir.data.retrieval_benchmarks import load_benchmarks
from cir.evaluation.features import EvalIndex, cache_key

ARGS = ["model.name=cir-tiny", "model.pretrained=none", "data.num_workers=0", "trainer.accelerator=cpu",
        "trainer.enable_progress_bar=false", "eval.examples=0", "eval.alphas=[0.8]"]


def run(root: Path, out: Path, cache: Path | None) -> dict[str, float]:
    evaluate.main(None, [*ARGS, f"data.root={root}", f"output_dir={out}",
                         f"eval.cache_dir={cache if cache is not None else 'null'}"])
    return {k: v for k, v in json.loads((out / "metrics.json").read_text()).items() if not k.startswith("meta/")}


def regenerate(root: Path, size: int) -> None:
    """Every image rewritten in place with new content and another size, as a regenerated benchmark would be."""
    rng = np.random.default_rng(size)
    for path in sorted(root.rglob("*.png")):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)


def test_images_replaced_in_place_are_encoded_again_with_the_same_cache_dir(cirr_root, tmp_path):
    cache = tmp_path / "cache"
    before = run(cirr_root, tmp_path / "first", cache)
    regenerate(cirr_root, 24)
    after = run(cirr_root, tmp_path / "cached", cache)
    uncached = run(cirr_root, tmp_path / "uncached", None)
    assert uncached != before  # the new images score otherwise, so serving the old features would show
    assert after == uncached
    assert len(list(cache.iterdir())) == 2  # one entry per state of the images


def key(root: Path) -> str:
    bench = load_benchmarks("cirr", root, "val")[0]
    return cache_key("weights", bench, EvalIndex.build(bench), "preprocess")


def test_the_key_follows_each_file_s_size_and_time_and_nothing_else(cirr_root):
    first = key(cirr_root)
    assert key(cirr_root) == first
    image = sorted((cirr_root / "dev").glob("*.png"))[0]
    stat = image.stat()
    image.write_bytes(image.read_bytes() + b"\0")  # one byte longer
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    longer = key(cirr_root)
    assert longer != first
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))  # same size, touched
    assert key(cirr_root) not in (first, longer)
