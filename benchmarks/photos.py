"""Representative training shards: 256 px JPEGs (quality 95) of real photos, in img2dataset's layout.

The project's generated benchmark (cir.data.synth) has 32 px images that decode
almost for free; what TAT is fed in practice are img2dataset shards of ~256 px
photos. scikit-image ships a few real colour photos (the `bench` extra installs
it); random crops, flips and colour jitter of them make thousands of distinct,
realistic JPEGs. Each sample is `{key}.jpg`, `{key}.txt`, `{key}.json` in a
`NNNNN.tar`, with a `NNNNN_stats.json` beside it, as img2dataset writes them
(keys: 5 digits of shard, 4 of sample; shortest side resized to 256, its
`keep_ratio` mode). Written once under BENCH_DIR and reused.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import tarfile
import time
from pathlib import Path

import common
import numpy as np
from PIL import Image, ImageEnhance

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina")
SIZE = 256
QUALITY = 95
MAX_PER_SHARD = 10_000  # img2dataset's default number_sample_per_shard


def source_photos() -> dict[str, Image.Image]:
    import skimage.data

    return {name: Image.fromarray(getattr(skimage.data, name)()).convert("RGB") for name in PHOTOS}


def variant(photo: Image.Image, rng: random.Random) -> Image.Image:
    """A random crop (10-100 % of the area, aspect 3:4-4:3), flip and colour jitter, shortest side SIZE."""
    width, height = photo.size
    area = width * height * rng.uniform(0.1, 1.0)
    aspect = rng.uniform(3 / 4, 4 / 3)
    w = min(width, max(32, round((area * aspect) ** 0.5)))
    h = min(height, max(32, round((area / aspect) ** 0.5)))
    left, top = rng.randint(0, width - w), rng.randint(0, height - h)
    image = photo.crop((left, top, left + w, top + h))
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        image = enhance(image).enhance(rng.uniform(0.7, 1.3))
    scale = SIZE / min(image.size)
    return image.resize((max(SIZE, round(image.width * scale)), max(SIZE, round(image.height * scale))), Image.Resampling.BICUBIC)


def _member(tar: tarfile.TarFile, name: str, data: bytes, mtime: int) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime = len(data), mtime
    tar.addfile(info, io.BytesIO(data))


def write_shard(path: Path, shard: int, count: int, photos: dict[str, Image.Image], rng: random.Random) -> None:
    began = time.time()
    names = list(photos)
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for i in range(count):
            key = f"{shard:05d}{i:04d}"
            name = rng.choice(names)
            image = variant(photos[name], rng)
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=QUALITY)
            jpeg = buffer.getvalue()
            caption = f"a photo of the {name.replace('_', ' ')}, {rng.choice(['close up', 'detail', 'wide shot', 'cropped'])}"
            meta = {"url": f"https://example.invalid/{name}/{key}.jpg", "caption": caption, "key": key, "status": "success",
                    "error_message": None, "width": image.width, "height": image.height,
                    "original_width": photos[name].width, "original_height": photos[name].height,
                    "exif": None, "sha256": hashlib.sha256(jpeg).hexdigest()}
            mtime = int(began)
            _member(tar, f"{key}.jpg", jpeg, mtime)
            _member(tar, f"{key}.txt", caption.encode(), mtime)
            _member(tar, f"{key}.json", json.dumps(meta).encode(), mtime)
    stats = {"count": count, "successes": count, "failed_to_download": 0, "failed_to_resize": 0,
             "duration": time.time() - began, "start_time": began, "end_time": time.time(),
             "status_dict": {"success": count}}
    path.with_name(f"{shard:05d}_stats.json").write_text(json.dumps(stats, indent=4))


def photo_shards(samples: int = 4000, per_shard: int = 1000, seed: int = 0) -> list[str]:
    """Shard paths of `samples` distinct 256 px photo JPEGs, `per_shard` (<= 10,000) per shard; written once."""
    if not 0 < per_shard <= MAX_PER_SHARD:
        raise ValueError(f"per_shard must be in 1..{MAX_PER_SHARD}, got {per_shard}")
    out = common.BENCH_DIR / f"photos-{samples}-{per_shard}-{SIZE}-q{QUALITY}-seed{seed}" / "shards"
    counts = [min(per_shard, samples - start) for start in range(0, samples, per_shard)]
    paths = [out / f"{shard:05d}.tar" for shard in range(len(counts))]
    if all(p.is_file() and p.with_name(f"{p.stem}_stats.json").is_file() for p in paths):
        return [str(p) for p in paths]
    out.mkdir(parents=True, exist_ok=True)
    photos = source_photos()
    for shard, (path, count) in enumerate(zip(paths, counts)):
        partial = path.with_suffix(".tar.partial")
        write_shard(partial, shard, count, photos, random.Random(seed * 100_003 + shard))
        partial.replace(path)
    return [str(p) for p in paths]


def jpeg_sizes(urls: list[str]) -> tuple[float, float, float]:
    """Mean JPEG bytes, mean width and mean height over the shards' images (what the data looks like)."""
    sizes, widths, heights = [], [], []
    for url in urls:
        with tarfile.open(url) as tar:
            for member in tar:
                if member.name.endswith(".jpg"):
                    data = tar.extractfile(member).read()
                    sizes.append(len(data))
                    with Image.open(io.BytesIO(data)) as image:
                        widths.append(image.width)
                        heights.append(image.height)
    return float(np.mean(sizes)), float(np.mean(widths)), float(np.mean(heights))
