import json
import shutil
from pathlib import Path

import pytest

from cir.data.retrieval_benchmarks import AnnotationError, BenchmarkLayoutError, missing_images
from cir.data.retrieval_benchmarks.cirr import load_cirr


def _read(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def _write(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")


def _captions(root: Path, split: str) -> Path:
    return root / "cirr" / "captions" / f"cap.rc2.{split}.json"


def _split(root: Path, split: str) -> Path:
    return root / "cirr" / "image_splits" / f"split.rc2.{split}.json"


@pytest.mark.parametrize("split", ["val", "test1"])
def test_fixture_split_matches_files(cirr_root, split):
    benchmark = load_cirr(cirr_root, split)
    entries = _read(_captions(cirr_root, split))
    split_files = _read(_split(cirr_root, split))
    assert (benchmark.name, benchmark.split) == ("cirr", split)
    assert len(benchmark.queries) == len(entries)
    assert benchmark.gallery == list(split_files)
    assert {name: benchmark.image_path(name) for name in split_files} == {
        name: cirr_root / relative for name, relative in split_files.items()
    }
    for query, entry in zip(benchmark.queries, entries):
        assert query.query_id == str(entry["pairid"])
        assert query.reference == entry["reference"]
        assert query.caption == entry["caption"]
        assert query.subset == tuple(entry["img_set"]["members"])
    assert missing_images(benchmark) == []


def test_val_targets_are_target_hard(cirr_root):
    benchmark = load_cirr(cirr_root, "val")
    first = benchmark.queries[0]
    assert (first.query_id, first.reference, first.target) == ("12060", "dev-244-0-img0", "dev-1028-1-img1")
    for query, entry in zip(benchmark.queries, _read(_captions(cirr_root, "val"))):
        assert query.targets == (entry["target_hard"],)
        assert query.target == entry["target_hard"]
    assert benchmark.has_targets


def test_gallery_includes_images_that_are_neither_reference_nor_target(cirr_root):
    benchmark = load_cirr(cirr_root, "val")
    used = {name for query in benchmark.queries for name in (query.reference, *query.targets)}
    assert set(benchmark.gallery) > used


def test_test1_has_no_targets(cirr_root):
    benchmark = load_cirr(cirr_root, "test1")
    assert not benchmark.has_targets
    assert all(query.target is None and query.targets == () for query in benchmark.queries)
    assert all(len(query.subset) == 6 for query in benchmark.queries)


def test_image_root_override(cirr_root, tmp_path):
    image_root = tmp_path / "img_raw"
    image_root.mkdir()
    for folder in ("dev", "test1"):
        shutil.move(cirr_root / folder, image_root / folder)
    benchmark = load_cirr(cirr_root, "val", image_root=image_root)
    assert benchmark.image_path("dev-244-0-img0") == image_root / "dev" / "dev-244-0-img0.png"
    assert missing_images(benchmark) == []
    assert missing_images(load_cirr(cirr_root, "val")) == benchmark.gallery


def test_train_split_triplets(tmp_path):
    _write(_split(tmp_path, "train"), {f"train-{i}-img0": f"./train/{i % 2}/train-{i}-img0.png" for i in range(4)})
    members = [f"train-{i}-img0" for i in range(4)]
    _write(
        _captions(tmp_path, "train"),
        [
            {"pairid": 7, "reference": "train-0-img0", "target_hard": "train-3-img0", "caption": "add a cat",
             "img_set": {"id": 0, "members": members}},
            {"pairid": 8, "reference": "train-1-img0", "target_hard": "train-2-img0", "caption": "remove it",
             "img_set": {"id": 0, "members": members}},
        ],
    )
    benchmark = load_cirr(tmp_path, "train")
    assert [(q.query_id, q.reference, q.targets, q.caption) for q in benchmark.queries] == [
        ("7", "train-0-img0", ("train-3-img0",), "add a cat"),
        ("8", "train-1-img0", ("train-2-img0",), "remove it"),
    ]
    assert benchmark.image_path("train-1-img0") == tmp_path / "train" / "1" / "train-1-img0.png"


def test_wrong_root_names_missing_file_and_layout(tmp_path):
    with pytest.raises(BenchmarkLayoutError) as caught:
        load_cirr(tmp_path / "elsewhere", "val")
    message = str(caught.value)
    assert "split.rc2.val.json" in message
    assert "captions/cap.rc2.{train,val,test1}.json" in message
    assert isinstance(caught.value, FileNotFoundError)


def test_missing_captions_file_is_named(cirr_root):
    _captions(cirr_root, "val").unlink()
    with pytest.raises(BenchmarkLayoutError, match="cap.rc2.val.json"):
        load_cirr(cirr_root, "val")


def test_unknown_split_lists_valid_ones(cirr_root):
    with pytest.raises(ValueError, match="train, val, test1"):
        load_cirr(cirr_root, "test")


@pytest.mark.parametrize("field", ["pairid", "reference", "caption", "img_set", "target_hard"])
def test_missing_field_names_file_entry_and_field(cirr_root, field):
    path = _captions(cirr_root, "val")
    entries = _read(path)
    del entries[3][field]
    _write(path, entries)
    with pytest.raises(AnnotationError, match=rf"cap\.rc2\.val\.json: entry 3: missing field '{field}'"):
        load_cirr(cirr_root, "val")


def test_reference_outside_split_is_an_error(cirr_root):
    path = _captions(cirr_root, "val")
    entries = _read(path)
    entries[5]["reference"] = "dev-unknown"
    _write(path, entries)
    with pytest.raises(AnnotationError, match=r"entry 5: field 'reference' names image 'dev-unknown'"):
        load_cirr(cirr_root, "val")


def test_duplicate_pairid_is_an_error(cirr_root):
    path = _captions(cirr_root, "val")
    entries = _read(path)
    entries[2]["pairid"] = entries[0]["pairid"]
    _write(path, entries)
    with pytest.raises(AnnotationError, match="entry 2: duplicate pairid"):
        load_cirr(cirr_root, "val")


def test_missing_images_names_absent_files(cirr_root):
    benchmark = load_cirr(cirr_root, "val")
    benchmark.image_path("dev-244-0-img0").unlink()
    benchmark.image_path(benchmark.gallery[-1]).unlink()
    assert missing_images(benchmark) == sorted(
        ["dev-244-0-img0", benchmark.gallery[-1]], key=benchmark.gallery.index
    )
