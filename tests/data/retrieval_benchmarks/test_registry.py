import json
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from cir.data.images import ImageDataset
from cir.data.retrieval_benchmarks import (
    BENCHMARK_NAMES,
    AnnotationError,
    load_benchmarks,
    missing_images,
)
from cir.data.retrieval_benchmarks.annotations import check_unique, entry_field, read_json
from cir.data.retrieval_benchmarks.benchmark import CIRBenchmark, CIRQuery


def test_fashioniq_gives_one_benchmark_per_category(fashioniq_root):
    benchmarks = load_benchmarks("fashioniq", fashioniq_root, "val")
    assert [b.name for b in benchmarks] == ["fashioniq_dress", "fashioniq_shirt", "fashioniq_toptee"]
    captions = [fashioniq_root / "captions" / f"cap.{c}.val.json" for c in ("dress", "shirt", "toptee")]
    assert [len(b.queries) for b in benchmarks] == [len(json.loads(path.read_text())) for path in captions]


@pytest.mark.parametrize("categories", [["shirt"], "shirt"])
def test_fashioniq_categories_option(fashioniq_root, categories):
    benchmarks = load_benchmarks("fashioniq", fashioniq_root, "val", categories=categories)
    assert [b.name for b in benchmarks] == ["fashioniq_shirt"]


def test_options_reach_the_loaders(cirr_root, circo_root):
    (cirr,) = load_benchmarks("cirr", cirr_root, "val", image_root=cirr_root / "img_raw")
    assert cirr.image_path(cirr.gallery[0]).is_relative_to(cirr_root / "img_raw")
    (circo,) = load_benchmarks("circo", circo_root, "val", caption_mode="with_concept")
    assert circo.info["caption_mode"] == "with_concept"


def test_unknown_name_lists_valid_ones(tmp_path):
    with pytest.raises(ValueError, match="cirr, circo, fashioniq, genecis"):
        load_benchmarks("cirr_rc1", tmp_path, "val")
    assert BENCHMARK_NAMES == ("cirr", "circo", "fashioniq", "genecis")


def test_unknown_split_names_valid_ones(circo_root):
    with pytest.raises(ValueError, match="valid: val, test"):
        load_benchmarks("circo", circo_root, "train")


@pytest.mark.parametrize(
    ("name", "root_fixture", "split"),
    [("cirr", "cirr_root", "val"), ("circo", "circo_root", "val"), ("fashioniq", "fashioniq_root", "val")],
)
def test_image_dataset_over_placeholder_images(request, color_of, name, root_fixture, split):
    benchmark = load_benchmarks(name, request.getfixturevalue(root_fixture), split)[0]
    ids = benchmark.gallery[:5]
    transform = v2.Compose([v2.ToImage(), v2.Resize((4, 4)), v2.ToDtype(torch.float32, scale=True)])
    dataset = ImageDataset(ids, [benchmark.image_path(i) for i in ids], transform)
    indices, images = next(iter(DataLoader(dataset, batch_size=len(ids))))
    assert indices.tolist() == list(range(len(ids)))
    assert images.shape == (len(ids), 3, 4, 4)
    expected = torch.tensor([color_of(i) for i in ids], dtype=torch.float32) / 255
    # CIRCO placeholders are JPEGs, whose solid colours come back within a few levels.
    torch.testing.assert_close(images.mean(dim=(2, 3)), expected, atol=4 / 255, rtol=0)


def test_missing_images_reports_ids_without_path_or_file_or_with_an_empty_file(tmp_path):
    present = tmp_path / "a.png"
    present.write_bytes(b"\x89PNG")
    empty = tmp_path / "d.png"
    empty.write_bytes(b"")
    benchmark = CIRBenchmark(
        name="toy",
        split="val",
        queries=[CIRQuery("q0", reference="ref", caption="c", targets=("a",))],
        gallery=["a", "b", "c", "d"],
        image_paths={"a": present, "b": tmp_path / "b.png", "d": empty, "ref": tmp_path / "ref.png"},
    )
    assert missing_images(benchmark) == ["b", "c", "d", "ref"]


def test_read_json_rejects_invalid_json_and_wrong_top_level(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text("[{", encoding="utf-8")
    with pytest.raises(AnnotationError, match="broken.json: not valid JSON"):
        read_json(broken, tmp_path, "<layout>", list)
    mapping = tmp_path / "mapping.json"
    mapping.write_text("{}", encoding="utf-8")
    with pytest.raises(AnnotationError, match="mapping.json: top level should be a JSON array, found object"):
        read_json(mapping, tmp_path, "<layout>", list)


def test_entry_field_checks_presence_and_type():
    assert entry_field({"id": 3}, "id", int, "f.json: entry 0") == 3
    with pytest.raises(AnnotationError, match=r"f.json: entry 0: field 'id' should be a JSON integer, found '3'"):
        entry_field({"id": "3"}, "id", int, "f.json: entry 0")
    with pytest.raises(AnnotationError, match="should be a JSON integer, found True"):
        entry_field({"id": True}, "id", int, "f.json: entry 0")
    with pytest.raises(AnnotationError, match="entry 1: should be a JSON object, found array"):
        entry_field([], "id", int, "f.json: entry 1")


def test_check_unique_names_first_duplicate():
    check_unique(["a", "b"], Path("x.json"), "image id")
    with pytest.raises(AnnotationError, match="x.json: entry 2: duplicate image id 'a'"):
        check_unique(["a", "b", "a"], Path("x.json"), "image id")
