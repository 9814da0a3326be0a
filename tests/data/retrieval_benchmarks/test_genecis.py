"""GeneCIS on the real object-task excerpts (tests/fixtures/genecis) and generated attribute tasks: layout, ids,
per-query galleries, and the object crop against the official formula (datasets/vaw_dataset.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from cir.data.retrieval_benchmarks import AnnotationError, BenchmarkLayoutError, load_benchmarks, missing_images
from cir.data.retrieval_benchmarks.crops import crop_object, dilated_box
from cir.data.retrieval_benchmarks.genecis import GENECIS_TASKS, load_genecis


def official_box(bbox, im_width, im_height, dilate=0.7):
    """vaw_dataset.py load_cropped_image's corners, written out as the official code computes them."""
    orig_left, orig_top, width, height = bbox
    left, top = max(0, orig_left - dilate * width), max(0, orig_top - dilate * height)
    right, bottom = min(im_width, left + (1 + dilate) * width), min(im_height, top + (1 + dilate) * height)
    return left, top, right, bottom


# Hand-made boxes: inside, at each border, wider than the image, fractional, degenerate.
BOXES = [(10, 10, 8, 6), (0, 0, 5, 5), (35, 25, 5, 5), (2, 3, 60, 50), (12.5, 7.25, 3.5, 9.75), (39, 29, 1, 1),
         (1, 20, 30, 2)]


@pytest.mark.parametrize("bbox", BOXES)
def test_crop_box_follows_the_official_formula(bbox):
    assert dilated_box(bbox, (40, 30)) == official_box(bbox, 40, 30)


def test_crop_is_asymmetric_where_the_left_edge_clips():
    # left clips at 0, so right is 0 + 1.7 w, not x + w + 0.7 w
    assert dilated_box((2, 0, 10, 10), (100, 100)) == (0, 0, 17.0, 17.0)


@pytest.mark.parametrize("bbox", BOXES)
def test_crop_is_the_official_crop_padded_to_a_black_square(bbox):
    pixels = (np.arange(30 * 40 * 3).reshape(30, 40, 3) % 251).astype(np.uint8)
    image = Image.fromarray(pixels)
    crop = image.crop(official_box(bbox, 40, 30))
    width, height = crop.size
    side = max(width, height)
    expected = np.zeros((side, side, 3), dtype=np.uint8)  # expand2square: pasted at ((side - w) // 2, (side - h) // 2)
    top, left = (side - height) // 2, (side - width) // 2
    expected[top : top + height, left : left + width] = np.asarray(crop)
    assert np.array_equal(np.asarray(crop_object(image, bbox)), expected)


def test_object_tasks_match_the_excerpts(genecis_root):
    for task in ("focus_object", "change_object"):
        entries = json.loads((genecis_root / "genecis" / f"{task}.json").read_text())
        bench = load_genecis(genecis_root, task)
        assert bench.name == f"genecis_{task}" and bench.query_galleries and len(bench.queries) == len(entries) == 12
        for index, (query, entry) in enumerate(zip(bench.queries, entries)):
            target = str(entry["target"]["val_image_id"])
            assert query.query_id == f"{task}-{index}" and query.caption == entry["condition"]
            assert query.reference == str(entry["reference"]["val_image_id"]) and query.target == target
            assert query.subset == (target, *(str(g["val_image_id"]) for g in entry["gallery"]))
            assert len(query.subset) == 15  # the target plus 14 distractors, target first
        image_id = bench.gallery[0]
        assert bench.image_path(image_id) == genecis_root / "coco" / "val2017" / f"{int(image_id):012d}.jpg"
        assert missing_images(bench) == [] and not bench.crops


def test_attribute_items_are_crops_of_visual_genome_images(genecis_root):
    bench = load_genecis(genecis_root, "focus_attribute")
    entry = json.loads((genecis_root / "genecis" / "focus_attribute.json").read_text())[0]
    target = entry["target"]
    image_id = f"{target['image_id']}:{','.join(str(v) for v in target['instance_bbox'])}"
    assert bench.queries[0].target == image_id and bench.crops[image_id] == tuple(target["instance_bbox"])
    assert bench.image_path(image_id) == genecis_root / "vg" / "images" / f"{target['image_id']}.jpg"
    with Image.open(bench.image_path(image_id)) as full:
        expected = crop_object(full.convert("RGB"), target["instance_bbox"])
    assert np.array_equal(np.asarray(bench.load_image(image_id)), np.asarray(expected))


def test_registry_loads_every_task_and_the_folders_can_move(genecis_root, tmp_path):
    assert [b.name for b in load_benchmarks("genecis", genecis_root, "val")] == [f"genecis_{t}" for t in GENECIS_TASKS]
    moved = tmp_path / "elsewhere"
    (genecis_root / "genecis").rename(moved)
    (bench,) = load_benchmarks("genecis", genecis_root, "val", tasks="change_object", annotations=moved,
                               coco_images=tmp_path / "coco", vg_images=tmp_path / "vg")
    assert bench.image_path(bench.gallery[0]).parent == tmp_path / "coco"


def test_wrong_root_shows_the_layout(tmp_path):
    with pytest.raises(BenchmarkLayoutError, match="focus_object.json") as caught:
        load_genecis(tmp_path, "focus_object")
    assert "coco/val2017/<val_image_id:012d>.jpg" in str(caught.value)


def test_bad_entries_are_named(genecis_root):
    path = genecis_root / "genecis" / "focus_attribute.json"
    entries = json.loads(path.read_text())
    entries[2]["gallery"][1]["instance_bbox"] = [1, 2, 3]
    path.write_text(json.dumps(entries))
    with pytest.raises(AnnotationError, match=r"focus_attribute\.json: entry 2: field 'gallery'\[1\]: field 'instance_bbox'"):
        load_genecis(genecis_root, "focus_attribute")
    with pytest.raises(ValueError, match="valid: focus_attribute"):
        load_genecis(genecis_root, "colour")
