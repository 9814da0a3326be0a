"""eval.save_features: the exported npz holds what was scored, readable by numpy alone, and recomputes metrics.json."""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from numpy_metrics import split_metrics

from cir import evaluate, submit
from cir.data.retrieval_benchmarks import load_benchmarks
from cir.slerp import parse_method_key

OUTPUTS_PAGE = Path(__file__).resolve().parents[2] / "docs" / "outputs.md"
BASE = ["model.name=cir-tiny", "model.pretrained=none", "data.num_workers=0", "trainer.accelerator=cpu",
        "trainer.enable_progress_bar=false", "eval.examples=0", "eval.save_features=true"]
BENCHMARKS = {"cirr": ("cirr_root", "val"), "circo": ("circo_root", "val"), "fashioniq": ("fashioniq_root", "val"),
              "genecis": ("genecis_root", "val")}


def run(root: Path, out: Path, *extra: str) -> dict:
    evaluate.main(None, [*BASE, f"data.root={root}", f"output_dir={out}", f"eval.cache_dir={out / 'cache'}", *extra])
    return json.loads((out / "metrics.json").read_text())


def check_schema(f, bench) -> None:
    """The arrays of docs/outputs.md's "Exported features", with the benchmark's own ids, captions and ground truth."""
    q, n = len(bench.queries), len(bench.gallery)
    dim = f["gallery"].shape[1]
    for key in ("gallery_ids", "query_ids", "reference_ids", "captions", "target_ids"):
        assert f[key].dtype.kind == "U" and f[key].shape == ((n,) if key == "gallery_ids" else (q,)), key
    for key, rows in (("gallery", n), ("query_image", q), ("query_text", q)):
        assert f[key].dtype == np.float32 and f[key].shape == (rows, dim), key
        assert np.allclose(np.linalg.norm(f[key], axis=1), 1.0, atol=2e-3), key  # unit, at fp16 precision
    assert list(f["gallery_ids"]) == bench.gallery
    assert list(f["query_ids"]) == [q.query_id for q in bench.queries]
    assert list(f["captions"]) == [q.caption for q in bench.queries]
    assert list(f["target_ids"]) == [q.target or "" for q in bench.queries]
    row = {image_id: i for i, image_id in enumerate(bench.gallery)}
    inside = [i for i, r in enumerate(f["reference_ids"]) if r in row]  # GeneCIS's references are outside it
    assert np.array_equal(f["query_image"][inside], f["gallery"][[row[f["reference_ids"][i]] for i in inside]])
    if bench.query_galleries:
        assert [tuple(m for m in ms if m) for ms in f["query_gallery_ids"]] == [q.subset for q in bench.queries]
    assert f["meta_query_galleries"].item() is bench.query_galleries
    assert f["meta_captions"].item() == (bench.info.get("captions") or bench.info.get("caption_mode") or "caption")
    if bench.name == "circo":
        assert [tuple(g for g in gts if g) for gts in f["gt_ids"]] == [q.targets for q in bench.queries]
    if bench.name == "cirr":
        assert [tuple(m for m in ms if m) for ms in f["subset_ids"]] == [q.subset for q in bench.queries]


@pytest.mark.parametrize("name", list(BENCHMARKS))
def test_exported_features_recompute_every_metric_with_numpy(name, request, tmp_path):
    fixture, split = BENCHMARKS[name]
    root = request.getfixturevalue(fixture)
    metrics = run(root, tmp_path, f"data.name={name}")
    benches = load_benchmarks(name, root, split)
    recomputed: dict[str, float] = {}
    for bench in benches:
        path = tmp_path / "features" / f"{bench.name}-{split}.npz"
        with np.load(path, allow_pickle=False) as f:
            check_schema(f, bench)
            exclude = metrics[f"meta/exclude_reference/{bench.name}"]
            methods = {k.split("/")[2] for k in metrics if k.startswith(f"{bench.name}/{split}/")}
            # the file says on its own what was scored
            assert f["meta_exclude_reference"].item() is exclude and set(f["meta_methods"]) == methods
            assert f["meta_paper_method"].item() == metrics["meta/paper_method"]
            assert f["meta_model"].item() == "cir-tiny"
            for method in methods:
                for metric, value in split_metrics(f, *parse_method_key(method), exclude).items():
                    recomputed[f"{bench.name}/{split}/{method}/{metric}"] = value
    averaged = {"fashioniq": ("dress", "shirt", "toptee"),
                "genecis": ("focus_attribute", "change_attribute", "focus_object", "change_object")}
    for family, parts in averaged.items():
        for key in [k for k in recomputed if k.startswith(f"{family}_{parts[0]}/")]:
            _, split_, method, metric = key.split("/")
            if family == "fashioniq" and metric not in ("R@10", "R@50"):
                continue
            recomputed[f"{family}_avg/{split_}/{method}/{metric}"] = np.mean(
                [recomputed[f"{family}_{p}/{split_}/{method}/{metric}"] for p in parts])
    scores = {k: v for k, v in metrics.items() if not k.startswith("meta/")}
    assert len(scores) > 50 and recomputed.keys() == scores.keys()
    assert recomputed == pytest.approx(scores, abs=1e-6)


def test_submit_exports_the_test_split_with_hidden_targets(circo_root, tmp_path):
    submit.main(None, [*BASE, "data.name=circo", f"data.root={circo_root}", f"output_dir={tmp_path}", "eval.cache_dir=null"])
    bench = load_benchmarks("circo", circo_root, "test")[0]
    with np.load(tmp_path / "features" / "circo-test.npz", allow_pickle=False) as f:
        check_schema(f, bench)
        assert set(f["target_ids"]) == {""} and f["gt_ids"].shape == (len(bench.queries), 0)


def docs_example() -> str:
    """The python block of docs/outputs.md's "Exported features" part."""
    section = OUTPUTS_PAGE.read_text(encoding="utf-8").split("## Exported features", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_docs_example_recomputes_slerp_r1(cirr_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    metrics = run(cirr_root, Path("outputs/eval_cirr"), "eval.alphas=[0.9]", "eval.methods=[slerp]")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(docs_example(), {})
    assert printed.getvalue().strip() == f"Slerp R@1 = {metrics['cirr/val/slerp_a0.9/R@1']:.2f}"
