import json
from pathlib import Path

import pytest

from cir.data.retrieval_benchmarks import AnnotationError, BenchmarkLayoutError, missing_images
from cir.data.retrieval_benchmarks.fashioniq import join_captions, load_fashioniq

CATEGORIES = ["dress", "shirt", "toptee"]


def _read(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def _write(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")


def _captions(root: Path, category: str, split: str) -> Path:
    return root / "captions" / f"cap.{category}.{split}.json"


def _split(root: Path, category: str, split: str) -> Path:
    return root / "image_splits" / f"split.{category}.{split}.json"


@pytest.mark.parametrize("category", CATEGORIES)
def test_fixture_split_matches_files(fashioniq_root, category):
    benchmark = load_fashioniq(fashioniq_root, category, "val")
    entries = _read(_captions(fashioniq_root, category, "val"))
    names = _read(_split(fashioniq_root, category, "val"))
    assert (benchmark.name, benchmark.split) == (f"fashioniq_{category}", "val")
    assert benchmark.gallery == names
    assert [q.query_id for q in benchmark.queries] == [f"{category}-{i}" for i in range(len(entries))]
    for query, entry in zip(benchmark.queries, entries):
        assert query.reference == entry["candidate"]
        assert query.targets == (entry["target"],)
        assert query.target == entry["target"]
    assert benchmark.image_path(names[0]) == fashioniq_root / "images" / f"{names[0]}.png"
    assert missing_images(benchmark) == []


def test_caption_join_follows_searle_convention(fashioniq_root):
    dress = load_fashioniq(fashioniq_root, "dress", "val")
    # Raw pairs: ["is a plain white feminine t shirt", "is a tan shirt."]
    # and ["is gold and strapless", " button front longer sleeves"].
    assert dress.queries[3].caption == "is a plain white feminine t shirt and is a tan shirt"
    assert dress.queries[6].caption == "is gold and strapless and button front longer sleeves"


def test_join_captions_strips_punctuation_at_both_ends():
    assert join_captions("Is red.", " ,has stripes?") == "Is red and has stripes"


def test_reference_outside_gallery_still_has_a_path(fashioniq_root):
    path = _captions(fashioniq_root, "shirt", "val")
    entries = _read(path)
    entries[0]["candidate"] = "B0NOTINSPLIT"
    _write(path, entries)
    benchmark = load_fashioniq(fashioniq_root, "shirt", "val")
    assert "B0NOTINSPLIT" not in benchmark.gallery
    assert benchmark.image_path("B0NOTINSPLIT") == fashioniq_root / "images" / "B0NOTINSPLIT.png"
    assert missing_images(benchmark) == ["B0NOTINSPLIT"]


def test_train_split_triplets(tmp_path):
    _write(_split(tmp_path, "toptee", "train"), ["A1", "A2", "A3"])
    _write(
        _captions(tmp_path, "toptee", "train"),
        [
            {"candidate": "A1", "target": "A2", "captions": ["is red", "has sleeves."]},
            {"candidate": "A3", "target": "A1", "captions": ["is blue", "is shorter"]},
        ],
    )
    benchmark = load_fashioniq(tmp_path, "toptee", "train")
    assert [(q.query_id, q.reference, q.targets, q.caption) for q in benchmark.queries] == [
        ("toptee-0", "A1", ("A2",), "is red and has sleeves"),
        ("toptee-1", "A3", ("A1",), "is blue and is shorter"),
    ]


def test_test_split_without_targets(tmp_path):
    _write(_split(tmp_path, "dress", "test"), ["A1", "A2"])
    _write(_captions(tmp_path, "dress", "test"), [{"candidate": "A1", "captions": ["is red", "is long"]}])
    benchmark = load_fashioniq(tmp_path, "dress", "test")
    assert not benchmark.has_targets
    assert benchmark.queries[0].target is None


def test_wrong_root_names_missing_file_and_layout(tmp_path):
    with pytest.raises(BenchmarkLayoutError) as caught:
        load_fashioniq(tmp_path, "dress", "val")
    assert "split.dress.val.json" in str(caught.value)
    assert "images/<name>.png" in str(caught.value)


def test_missing_captions_file_is_named(fashioniq_root):
    _write(_split(fashioniq_root, "dress", "train"), ["A1"])
    with pytest.raises(BenchmarkLayoutError, match=r"cap\.dress\.train\.json"):
        load_fashioniq(fashioniq_root, "dress", "train")


def test_unknown_category_and_split(fashioniq_root):
    with pytest.raises(ValueError, match="dress, shirt, toptee"):
        load_fashioniq(fashioniq_root, "shoes", "val")
    with pytest.raises(ValueError, match="train, val, test"):
        load_fashioniq(fashioniq_root, "dress", "dev")


@pytest.mark.parametrize("field", ["candidate", "captions", "target"])
def test_missing_field_names_file_entry_and_field(fashioniq_root, field):
    path = _captions(fashioniq_root, "toptee", "val")
    entries = _read(path)
    del entries[2][field]
    _write(path, entries)
    with pytest.raises(AnnotationError, match=rf"cap\.toptee\.val\.json: entry 2: missing field '{field}'"):
        load_fashioniq(fashioniq_root, "toptee", "val")


def test_single_caption_is_an_error(fashioniq_root):
    path = _captions(fashioniq_root, "dress", "val")
    entries = _read(path)
    entries[1]["captions"] = ["only one"]
    _write(path, entries)
    with pytest.raises(AnnotationError, match="entry 1: field 'captions' should hold two strings"):
        load_fashioniq(fashioniq_root, "dress", "val")
