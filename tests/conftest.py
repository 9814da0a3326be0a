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


@pytest.fixture
def shard_writer() -> Callable[..., str]:
    """write_image_text_shards, for tests that need other sizes (test modules cannot import this conftest by name:
    pytest imports several modules called conftest)."""
    return write_image_text_shards


@pytest.fixture
def image_text_shards(tmp_path: Path) -> str:
    return write_image_text_shards(tmp_path / "shards")
