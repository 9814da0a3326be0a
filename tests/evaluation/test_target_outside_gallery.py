"""What README says of a query whose target is not in the gallery: CIRR and CIRCO refuse the annotation, naming
both files; FashionIQ (whose targets the loader does not check against the split file) ranks it as a miss that
stays in the denominator."""

from __future__ import annotations

import json

import pytest
import torch

from cir.data.retrieval_benchmarks import load_benchmarks
from cir.data.retrieval_benchmarks.annotations import AnnotationError
from cir.evaluation.features import EvalIndex
from cir.metrics import recall_at_k


def test_a_cirr_target_outside_the_split_file_is_refused_naming_both_files(cirr_root):
    captions = cirr_root / "cirr" / "captions" / "cap.rc2.val.json"
    entries = json.loads(captions.read_text())
    entries[0]["target_hard"] = "not-in-the-split"
    captions.write_text(json.dumps(entries))
    split = cirr_root / "cirr" / "image_splits" / "split.rc2.val.json"
    with pytest.raises(AnnotationError, match=rf"^{captions}: entry 0: field 'target_hard' names image "
                                              rf"'not-in-the-split', which is not in {split}$"):
        load_benchmarks("cirr", cirr_root, "val")


def test_a_fashioniq_target_outside_the_split_file_is_a_miss_in_the_denominator(fashioniq_root):
    split = fashioniq_root / "image_splits" / "split.dress.val.json"
    captions = json.loads((fashioniq_root / "captions" / "cap.dress.val.json").read_text())
    split.write_text(json.dumps([n for n in json.loads(split.read_text()) if n != captions[0]["target"]]))
    bench = load_benchmarks("fashioniq", fashioniq_root, "val", categories="dress")[0]
    index = EvalIndex.build(bench)
    assert index.target[0] == index.n_gallery and (index.target[1:] < index.n_gallery).all()
    everything = torch.arange(index.n_gallery).expand(len(bench.queries), -1)  # every gallery image retrieved
    assert recall_at_k(everything, index.target, [index.n_gallery])[index.n_gallery] == pytest.approx(
        100 * (len(bench.queries) - 1) / len(bench.queries))


def test_a_circo_target_outside_the_gallery_is_refused_naming_both_files(circo_root):
    annotations = circo_root / "annotations" / "val.json"
    entries = json.loads(annotations.read_text())
    entries[0]["target_img_id"] = 999999999999
    annotations.write_text(json.dumps(entries))
    info = circo_root / "COCO2017_unlabeled" / "annotations" / "image_info_unlabeled2017.json"
    with pytest.raises(AnnotationError, match=rf"^{annotations}: entry 0: field 'target_img_id' names image "
                                              rf"999999999999, which is not in {info}$"):
        load_benchmarks("circo", circo_root, "val")
