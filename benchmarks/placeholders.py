"""Placeholder data at real sizes for benchmarks/bench_gpu.py: the three benchmarks' val splits in their official
layouts, and image-text shards as img2dataset writes them.

Images are a few distinct pictures hard-linked under every name, so 123,403 CIRCO
gallery files take seconds to write and one picture's disk space, while each read
still decodes a full-size file (640 x 480 JPEG for COCO, PNG for CIRR and FashionIQ).
Annotations have the fields of the official files (tests/fixtures holds real excerpts).
"""

from __future__ import annotations

import io
import json
import os
import random
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

# Official val sizes: CIRR rc2 val (4,181 queries, 2,297 images), CIRCO val (220 queries; gallery: COCO 2017
# unlabeled, 123,403 images), FashionIQ val (queries / split images per category).
FULL_SIZES = {"cirr": (4181, 2297), "circo": (220, 123_403),
              "fashioniq": {"dress": (2017, 3817), "shirt": (2038, 6346), "toptee": (1961, 5373)}}
SMOKE_SIZES = {"cirr": (40, 60), "circo": (10, 300), "fashioniq": {"dress": (10, 30), "shirt": (10, 30), "toptee": (10, 30)}}
WORDS = "a the red blue green small large dog cat car shirt dress with without more less two three on under near".split()


def picture(width: int, height: int, seed: int) -> Image.Image:
    """A smooth random picture (a photo's JPEG size and decode cost, unlike white noise)."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize((width, height), Image.BICUBIC)
    noise = rng.normal(0, 6, (height, width, 3))
    return Image.fromarray(np.clip(np.asarray(coarse, dtype=np.float64) + noise, 0, 255).astype(np.uint8))


def linked_images(paths: list[Path], fmt: str, size: tuple[int, int], distinct: int = 8) -> None:
    """`distinct` pictures written once and hard-linked under every path (skips paths that exist)."""
    sources = []
    for i in range(distinct):
        source = paths[0].parent.parent / f".placeholder-{i}-{size[0]}x{size[1]}.{fmt}"
        if not source.is_file():
            source.parent.mkdir(parents=True, exist_ok=True)
            picture(*size, seed=i).save(source, quality=90) if fmt == "jpg" else picture(*size, seed=i).save(source)
        sources.append(source)
    for parent in {path.parent for path in paths}:
        parent.mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(paths):
        if not path.exists():
            os.link(sources[i % distinct], path)


def caption(rng: random.Random, words: int = 8) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def write_json(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))


def write_cirr(root: Path, queries: int, images: int, rng: random.Random) -> None:
    """<root>/cirr/{captions/cap.rc2.val.json, image_splits/split.rc2.val.json} and <root>/dev/<name>.png."""
    names = [f"dev-{i}-0-img{i % 2}" for i in range(images)]
    write_json(root / "cirr" / "image_splits" / "split.rc2.val.json", {n: f"./dev/{n}.png" for n in names})
    entries = []
    for i in range(queries):
        members = rng.sample(names, 6)
        entries.append({"pairid": i, "reference": members[0], "target_hard": members[1], "target_soft": {members[1]: 1.0},
                        "caption": caption(rng), "img_set": {"id": i, "members": members, "reference_rank": 0, "target_rank": 1}})
    write_json(root / "cirr" / "captions" / "cap.rc2.val.json", entries)
    linked_images([root / "dev" / f"{n}.png" for n in names], "png", (512, 384))


def write_circo(root: Path, queries: int, gallery: int, rng: random.Random) -> None:
    """<root>/annotations/val.json and <root>/COCO2017_unlabeled/{annotations/image_info_unlabeled2017.json, unlabeled2017/}."""
    ids = list(range(1, gallery + 1))
    coco = root / "COCO2017_unlabeled"
    write_json(coco / "annotations" / "image_info_unlabeled2017.json",
               {"images": [{"id": i, "file_name": f"{i:012d}.jpg"} for i in ids]})
    entries = []
    for q in range(queries):
        reference, *targets = rng.sample(ids, 4)
        entries.append({"reference_img_id": reference, "target_img_id": targets[0], "relative_caption": caption(rng),
                        "shared_concept": caption(rng, 4), "gt_img_ids": targets, "id": q, "semantic_aspects": []})
    write_json(root / "annotations" / "val.json", entries)
    linked_images([coco / "unlabeled2017" / f"{i:012d}.jpg" for i in ids], "jpg", (640, 480))


def write_fashioniq(root: Path, sizes: dict[str, tuple[int, int]], rng: random.Random) -> None:
    """<root>/{captions/cap.<c>.val.json, image_splits/split.<c>.val.json, images/<name>.png} per category."""
    paths = []
    for category, (queries, images) in sizes.items():
        names = [f"{category[0].upper()}{i:09d}" for i in range(images)]
        write_json(root / "image_splits" / f"split.{category}.val.json", names)
        entries = [{"target": t, "candidate": c, "captions": [caption(rng), caption(rng, 4)]}
                   for t, c in (rng.sample(names, 2) for _ in range(queries))]
        write_json(root / "captions" / f"cap.{category}.val.json", entries)
        paths += [root / "images" / f"{n}.png" for n in names]
    linked_images(paths, "png", (300, 400))


def write_benchmarks(root: Path, smoke: bool) -> dict[str, Path]:
    """The three val splits under root/<name> (written once, reused); returns each benchmark's data.root."""
    sizes = SMOKE_SIZES if smoke else FULL_SIZES
    roots = {name: root / name for name in sizes}
    done = root / ".complete"
    if not done.is_file():
        rng = random.Random(0)
        write_cirr(roots["cirr"], *sizes["cirr"], rng)
        write_circo(roots["circo"], *sizes["circo"], rng)
        write_fashioniq(roots["fashioniq"], sizes["fashioniq"], rng)
        done.write_text("ok")
    return roots


def _write_shard(args: tuple[Path, int, int, int]) -> None:
    import webdataset as wds

    path, first, count, side = args
    rng = random.Random(first)
    with wds.TarWriter(str(path)) as sink:
        for key in range(first, first + count):
            buffer = io.BytesIO()
            picture(side, side, seed=key).save(buffer, format="JPEG", quality=95)
            text = caption(rng)
            meta = {"url": f"https://example.invalid/{key}.jpg", "caption": text, "key": f"{key:09d}", "status": "success",
                    "error_message": None, "width": side, "height": side, "original_width": 640, "original_height": 480}
            sink.write({"__key__": f"{key:09d}", "jpg": buffer.getvalue(), "txt": text, "json": json.dumps(meta).encode()})


def write_img2dataset_shards(out: Path, samples: int, shard_size: int, side: int = 256, workers: int = 8) -> list[str]:
    """`samples` pairs in shards of `shard_size` as img2dataset writes them (resize_mode=center_crop, 256 px, jpg
    quality 95; members <key>.jpg, .txt, .json), written once in parallel; returns the shard paths."""
    shards = [out / f"{i:05d}.tar" for i in range((samples + shard_size - 1) // shard_size)]
    if not (out / ".complete").is_file():
        out.mkdir(parents=True, exist_ok=True)
        jobs = [(p, i * shard_size, min(shard_size, samples - i * shard_size), side) for i, p in enumerate(shards)]
        with ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
            list(pool.map(_write_shard, jobs))
        (out / ".complete").write_text("ok")
    return [str(p) for p in shards]
