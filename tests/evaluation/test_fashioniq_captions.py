"""FashionIQ's caption protocol (eval.fashioniq_captions): SEARLE's both orders averaged by default, CLIP4Cir's one
order on request, checked against a numpy re-implementation of SEARLE src/validate.py fiq_generate_val_predictions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cir import evaluate
from cir.config import ConfigError, load_config
from cir.data.retrieval_benchmarks import load_benchmarks
from cir.evaluation.features import EvalIndex
from cir.schema import EvaluateConfig

BASE = ["model.name=cir-tiny", "model.pretrained=none", "data.num_workers=0", "trainer.accelerator=cpu",
        "trainer.enable_progress_bar=false", "eval.examples=0", "data.name=fashioniq", "data.categories=[dress]",
        "eval.alphas=[0.8]", "eval.save_features=true"]


def strip(caption: str) -> str:
    return caption.strip(".?, ")


def searle_text(vectors: dict[str, np.ndarray], first: str, second: str) -> np.ndarray:
    """normalize((normalize(f("c1 and c2")) + normalize(f("c2 and c1"))) / 2), in float64."""
    def unit(x):
        return x / np.linalg.norm(x)
    forward, reverse = f"{strip(first)} and {strip(second)}", f"{strip(second)} and {strip(first)}"
    return unit((unit(vectors[forward]) + unit(vectors[reverse])) / 2)


def raw_captions(root: Path, category: str) -> list[list[str]]:
    return [entry["captions"] for entry in json.loads((root / "captions" / f"cap.{category}.val.json").read_text())]


def test_default_protocol_is_searle_both_orders_averaged(fashioniq_root):
    assert load_config(EvaluateConfig, None, []).eval.fashioniq_captions == "both_orders"
    bench = load_benchmarks("fashioniq", fashioniq_root, "val", categories="dress")[0]
    index = EvalIndex.build(bench)
    generator = torch.Generator().manual_seed(0)
    table = torch.randn(len(index.texts), 16, generator=generator) * 3  # unnormalised: the averaging normalises
    vectors = {text: table[row].double().numpy() for row, text in enumerate(index.texts)}
    expected = np.stack([searle_text(vectors, *pair) for pair in raw_captions(fashioniq_root, "dress")])
    assert np.allclose(index.query_text(table).double().numpy(), expected, atol=1e-6)
    assert index.text_rows.shape == (len(bench.queries), 2)


def test_one_order_is_clip4cir_first_caption_capitalised(fashioniq_root):
    bench = load_benchmarks("fashioniq", fashioniq_root, "val", categories="shirt", captions="one_order")[0]
    expected = [f"{strip(a).capitalize()} and {strip(b)}" for a, b in raw_captions(fashioniq_root, "shirt")]
    index = EvalIndex.build(bench)
    assert [q.caption for q in bench.queries] == expected and index.text_rows.dim() == 1
    table = torch.randn(len(index.texts), 8)
    assert torch.equal(index.query_text(table), table[[index.texts.index(c) for c in expected]])


def run(root: Path, out: Path, *extra: str) -> dict:
    evaluate.main(None, [*BASE, f"data.root={root}", f"output_dir={out}", f"eval.cache_dir={out.parent / 'cache'}",
                         *extra])
    return json.loads((out / "metrics.json").read_text())


def test_both_protocols_are_recorded_and_cached_apart(fashioniq_root, tmp_path):
    both = run(fashioniq_root, tmp_path / "both")
    one = run(fashioniq_root, tmp_path / "one", "eval.fashioniq_captions=one_order")
    assert (both["meta/fashioniq_captions"], one["meta/fashioniq_captions"]) == ("both_orders", "one_order")
    assert len(list((tmp_path / "cache").glob("fashioniq_dress-val-*.pt"))) == 2  # one cache entry per protocol
    with np.load(tmp_path / "both" / "features" / "fashioniq_dress-val.npz") as f, \
            np.load(tmp_path / "one" / "features" / "fashioniq_dress-val.npz") as g:
        assert (f["meta_captions"].item(), g["meta_captions"].item()) == ("both_orders", "one_order")
        assert np.array_equal(f["gallery"], g["gallery"]) and not np.allclose(f["query_text"], g["query_text"])


def test_unknown_protocol_is_refused_by_key(fashioniq_root, tmp_path):
    with pytest.raises(ConfigError, match="eval.fashioniq_captions"):
        run(fashioniq_root, tmp_path / "bad", "eval.fashioniq_captions=reversed")


def test_jpg_images_load_and_neither_extension_is_named(fashioniq_root, tmp_path):
    for path in sorted((fashioniq_root / "images").glob("*.png")):
        path.rename(path.with_suffix(".jpg"))
    bench = load_benchmarks("fashioniq", fashioniq_root, "val", categories="dress")[0]
    assert bench.image_path(bench.gallery[0]).suffix == ".jpg" and bench.info["images"] == "<name>.jpg"
    for path in sorted((fashioniq_root / "images").glob("*.jpg")):
        path.unlink()
    with pytest.raises(FileNotFoundError, match=r"neither <name>\.png \(CLIP4Cir\) nor <name>\.jpg \(SEARLE\)"):
        run(fashioniq_root, tmp_path / "none")
