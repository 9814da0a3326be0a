import json
import time
from pathlib import Path

import pytest

from cir.data.retrieval_benchmarks import AnnotationError, BenchmarkLayoutError, missing_images
from cir.data.retrieval_benchmarks.circo import compose_circo_caption, load_circo

FULL_GALLERY_SIZE = 123_403


def _read(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def _write(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")


def _image_info(root: Path) -> Path:
    return root / "COCO2017_unlabeled" / "annotations" / "image_info_unlabeled2017.json"


@pytest.mark.parametrize("split", ["val", "test"])
def test_fixture_split_matches_files(circo_root, split):
    benchmark = load_circo(circo_root, split)
    entries = _read(circo_root / "annotations" / f"{split}.json")
    images = _read(_image_info(circo_root))["images"]
    assert (benchmark.name, benchmark.split) == ("circo", split)
    assert benchmark.info["caption_mode"] == "relative"
    assert benchmark.gallery == [str(image["id"]) for image in images]
    image_dir = circo_root / "COCO2017_unlabeled" / "unlabeled2017"
    for image in images:
        assert benchmark.image_path(str(image["id"])) == image_dir / image["file_name"]
    assert [q.query_id for q in benchmark.queries] == [str(entry["id"]) for entry in entries]
    assert [q.reference for q in benchmark.queries] == [str(entry["reference_img_id"]) for entry in entries]
    assert [q.caption for q in benchmark.queries] == [entry["relative_caption"] for entry in entries]
    assert missing_images(benchmark) == []


def test_val_targets_are_gt_ids(circo_root):
    benchmark = load_circo(circo_root, "val")
    first = benchmark.queries[0]
    assert (first.query_id, first.reference, first.target) == ("0", "271520", "355099")
    assert first.targets == ("355099", "528417", "534704")
    for query, entry in zip(benchmark.queries, _read(circo_root / "annotations" / "val.json")):
        assert query.targets == tuple(str(i) for i in entry["gt_img_ids"])
        assert query.target == str(entry["target_img_id"])


def test_test_split_has_no_targets(circo_root):
    benchmark = load_circo(circo_root, "test")
    assert not benchmark.has_targets
    assert all(query.target is None for query in benchmark.queries)


def test_with_concept_caption_mode(circo_root):
    benchmark = load_circo(circo_root, "val", caption_mode="with_concept")
    assert benchmark.info["caption_mode"] == "with_concept"
    assert benchmark.queries[0].caption == (
        "shows two people and has a more colorful background, a girl with a traditional Chinese umbrella"
    )


def test_compose_circo_caption_drops_trailing_period_and_spaces():
    assert compose_circo_caption(" is red. ", " a car ") == "is red, a car"


def test_unknown_caption_mode_and_split(circo_root):
    with pytest.raises(ValueError, match="relative, with_concept"):
        load_circo(circo_root, "val", caption_mode="concept")
    with pytest.raises(ValueError, match="val, test"):
        load_circo(circo_root, "train")


def test_full_scale_gallery_builds_in_seconds(tmp_path):
    ids = list(range(1, 2 * FULL_GALLERY_SIZE, 2))[:FULL_GALLERY_SIZE]
    _write(_image_info(tmp_path), {"images": [{"id": i, "file_name": f"{i:012d}.jpg"} for i in ids]})
    _write(
        tmp_path / "annotations" / "val.json",
        [{"id": 0, "reference_img_id": ids[0], "target_img_id": ids[-1], "relative_caption": "is blue",
          "shared_concept": "a car", "gt_img_ids": [ids[-1], ids[7]], "semantic_aspects": []}],
    )
    start = time.perf_counter()
    benchmark = load_circo(tmp_path, "val")
    elapsed = time.perf_counter() - start
    assert len(benchmark.gallery) == FULL_GALLERY_SIZE
    assert benchmark.gallery[-1] == str(ids[-1])
    assert benchmark.image_path(str(ids[-1])).name == f"{ids[-1]:012d}.jpg"
    assert benchmark.queries[0].targets == (str(ids[-1]), str(ids[7]))
    assert elapsed < 10.0


def test_wrong_root_names_missing_file_and_layout(tmp_path):
    with pytest.raises(BenchmarkLayoutError) as caught:
        load_circo(tmp_path, "val")
    assert "image_info_unlabeled2017.json" in str(caught.value)
    assert "annotations/{val,test}.json" in str(caught.value)


def test_missing_annotation_file_is_named(circo_root):
    (circo_root / "annotations" / "test.json").unlink()
    with pytest.raises(BenchmarkLayoutError, match=r"annotations/test\.json"):
        load_circo(circo_root, "test")


@pytest.mark.parametrize("field", ["id", "reference_img_id", "relative_caption", "target_img_id", "gt_img_ids"])
def test_missing_field_names_file_entry_and_field(circo_root, field):
    path = circo_root / "annotations" / "val.json"
    entries = _read(path)
    del entries[4][field]
    _write(path, entries)
    with pytest.raises(AnnotationError, match=rf"val\.json: entry 4: missing field '{field}'"):
        load_circo(circo_root, "val")


def test_malformed_image_info_entry_is_named(circo_root):
    path = _image_info(circo_root)
    info = _read(path)
    del info["images"][9]["file_name"]
    _write(path, info)
    expected = r"image_info_unlabeled2017\.json: images\[9\]: missing field 'file_name'"
    with pytest.raises(AnnotationError, match=expected):
        load_circo(circo_root, "test")


def test_gt_id_outside_gallery_is_an_error(circo_root):
    path = circo_root / "annotations" / "val.json"
    entries = _read(path)
    entries[1]["gt_img_ids"].append(999_999_999)
    _write(path, entries)
    with pytest.raises(AnnotationError, match="entry 1: field 'gt_img_ids' names image 999999999"):
        load_circo(circo_root, "val")
