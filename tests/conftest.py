"""Benchmark roots built from real annotation excerpts plus placeholder images.

The excerpts live in tests/fixtures (annotations only, see its README.md); each
fixture copies one benchmark into tmp_path and writes a small solid-colour image
for every name it lists, read straight from the JSON (not through the loaders).
"""

from __future__ import annotations

import json
import shutil
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ANNOTATION_FIXTURES = Path(__file__).resolve().parent / "fixtures"


def placeholder_color(image_id: str) -> tuple[int, int, int]:
    """A colour fixed by the id, so a test can tell which file an image tensor came from."""
    code = zlib.crc32(image_id.encode())
    return (code & 0xFF, (code >> 8) & 0xFF, (code >> 16) & 0xFF)


def _write_image(path: Path, image_id: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), placeholder_color(image_id)).save(path)


def _copy_fixture(name: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(ANNOTATION_FIXTURES / name, tmp_path / name))


def _read(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture
def color_of() -> Callable[[str], tuple[int, int, int]]:
    return placeholder_color


@pytest.fixture
def cirr_root(tmp_path: Path) -> Path:
    """<root>/cirr/{captions,image_splits} with every image of every split file under <root>."""
    root = _copy_fixture("cirr", tmp_path)
    for split_file in sorted((root / "cirr" / "image_splits").glob("*.json")):
        for name, relative in _read(split_file).items():
            _write_image(root / relative, name)
    return root


@pytest.fixture
def circo_root(tmp_path: Path) -> Path:
    """<root>/annotations and COCO2017_unlabeled with every image listed in image_info."""
    root = _copy_fixture("circo", tmp_path)
    coco = root / "COCO2017_unlabeled"
    for image in _read(coco / "annotations" / "image_info_unlabeled2017.json")["images"]:
        _write_image(coco / "unlabeled2017" / image["file_name"], str(image["id"]))
    return root


@pytest.fixture
def fashioniq_root(tmp_path: Path) -> Path:
    """<root>/{captions,image_splits} with an image for every split name, candidate and target."""
    root = _copy_fixture("fashioniq", tmp_path)
    names: set[str] = set()
    for split_file in (root / "image_splits").glob("*.json"):
        names.update(_read(split_file))
    for captions_file in (root / "captions").glob("*.json"):
        for entry in _read(captions_file):
            names.update(value for key, value in entry.items() if key in ("candidate", "target"))
    for name in sorted(names):
        _write_image(root / "images" / f"{name}.png", name)
    return root


def genecis_attribute_queries(count: int = 6, distractors: int = 9) -> list[dict]:
    """Attribute-task queries in the official format (datasets/vaw_dataset.py reads `image_id` and
    `instance_bbox` [x, y, w, h] of each item): boxes near the image borders, so the crops clip."""
    def item(n: int) -> dict:
        return {"image_id": 100 + n % 7, "instance_bbox": [(3 * n) % 30, (5 * n) % 20, 6 + n % 9, 4 + n % 5]}
    return [{"reference": item(q), "target": item(q + 1), "gallery": [item(q + 2 + d) for d in range(distractors)],
             "condition": f"colour {q}"} for q in range(count)]


GENECIS_IMAGE_SIZE = (40, 30)


@pytest.fixture
def genecis_root(tmp_path: Path) -> Path:
    """<root>/genecis with the real object-task excerpts and generated attribute tasks, an image for every item
    (COCO <val_image_id:012d>.jpg, Visual Genome <image_id>.jpg of GENECIS_IMAGE_SIZE with varied pixels)."""
    root = _copy_fixture("genecis", tmp_path)
    for task in ("focus_attribute", "change_attribute"):
        (root / "genecis" / f"{task}.json").write_text(json.dumps(genecis_attribute_queries()))
    for task in ("focus_object", "change_object"):
        for entry in _read(root / "genecis" / f"{task}.json"):
            for item in (entry["reference"], entry["target"], *entry["gallery"]):
                _write_image(root / "coco" / "val2017" / f"{item['val_image_id']:012d}.jpg", str(item["val_image_id"]))
    for image_id in range(100, 107):
        path = root / "vg" / "images" / f"{image_id}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = (np.arange(GENECIS_IMAGE_SIZE[0] * GENECIS_IMAGE_SIZE[1] * 3) * (image_id % 13 + 1)) % 251
        Image.fromarray(pixels.reshape(GENECIS_IMAGE_SIZE[1], GENECIS_IMAGE_SIZE[0], 3).astype(np.uint8)).save(path)
    return root


COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 220, 40)}


def write_image_text_shards(root: Path, num_shards: int = 4, per_shard: int = 16) -> str:
    """Colour squares on grey with their captions: a pairing a tiny CLIP can learn in a few steps."""
    import io

    import webdataset as wds

    root.mkdir(parents=True, exist_ok=True)
    names = list(COLOURS)
    for shard in range(num_shards):
        with wds.TarWriter(str(root / f"train-{shard:06d}.tar")) as sink:
            for i in range(per_shard):
                index = shard * per_shard + i
                name = names[index % len(names)]
                image = Image.new("RGB", (32, 32), (128, 128, 128))
                offset = 4 + (index * 5) % 12
                image.paste(COLOURS[name], (offset, offset, offset + 14, offset + 14))
                buffer = io.BytesIO()
                image.save(buffer, format="PNG")
                sink.write({"__key__": f"{index:08d}", "png": buffer.getvalue(), "txt": f"a {name} square"})
    return str(root / f"train-{{000000..{num_shards - 1:06d}}}.tar")


@pytest.fixture(scope="session")
def shard_writer() -> Callable[..., str]:
    """write_image_text_shards, for tests that need other sizes (test modules cannot import this conftest by name:
    pytest imports several modules called conftest)."""
    return write_image_text_shards


@pytest.fixture
def image_text_shards(tmp_path: Path) -> str:
    return write_image_text_shards(tmp_path / "shards")
