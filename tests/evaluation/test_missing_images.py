"""eval.missing_images: missing or empty images stop an evaluation in one line, or with `skip` leave the gallery
and take their queries with them; the metrics then equal numpy's on the reduced gallery."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from numpy_metrics import split_metrics

from cir import evaluate
from cir.config import run_cli
from cir.data.retrieval_benchmarks import load_benchmarks
from cir.report.collect import split_label

DEFAULTS = str(Path(__file__).resolve().parents[1] / "configs" / "defaults.yaml")  # the config a command needs first

BASE = ["model.name=cir-tiny", "model.pretrained=none", "data.num_workers=0", "trainer.accelerator=cpu",
        "trainer.enable_progress_bar=false", "eval.examples=0", "eval.cache_dir=null"]
FIXTURES = {"cirr": "cirr_root", "circo": "circo_root"}
OFFICIAL_EXCLUDE = {"cirr": True, "circo": False}


def _remove(bench) -> set[str]:
    """Query 0's target deleted, query 1's reference emptied (a failed download), and the last gallery image
    deleted: what a partial download leaves."""
    missing = {bench.queries[0].target, bench.queries[1].reference, bench.gallery[-1]}
    bench.image_path(bench.queries[0].target).unlink()
    bench.image_path(bench.queries[1].reference).write_bytes(b"")
    if bench.image_path(bench.gallery[-1]).exists():
        bench.image_path(bench.gallery[-1]).unlink()
    return missing


def _reduced(features: dict[str, np.ndarray], missing: set[str]) -> dict[str, np.ndarray]:
    """The exported arrays of the full split, cut as the issue states it: missing images out of the gallery,
    queries whose reference, target(s) or ranked set hold one out of the split."""
    keep_gallery = ~np.isin(features["gallery_ids"], list(missing))
    needs = [features["reference_ids"][:, None], features["target_ids"][:, None]]
    needs += [features[k] for k in ("gt_ids", "subset_ids") if k in features]
    keep_query = ~np.isin(np.concatenate(needs, axis=1), list(missing)).any(axis=1)
    out = {}
    for key, value in features.items():
        if key in ("gallery_ids", "gallery"):
            out[key] = value[keep_gallery]
        elif value.ndim and len(value) == len(keep_query):
            out[key] = value[keep_query]
    return out


@pytest.mark.parametrize("name", list(FIXTURES))
def test_skip_scores_the_reduced_gallery_as_numpy_does(name, request, tmp_path, capsys):
    root = request.getfixturevalue(FIXTURES[name])
    args = [*BASE, f"data.name={name}", f"data.root={root}", "eval.save_features=true"]
    evaluate.main(None, [*args, f"output_dir={tmp_path / 'full'}"])
    features = dict(np.load(tmp_path / "full" / "features" / f"{name}-val.npz"))
    (bench,) = load_benchmarks(name, root, "val")
    missing = _remove(bench)
    capsys.readouterr()
    run_cli(evaluate.main, [DEFAULTS, *args, f"output_dir={tmp_path / 'skip'}", "eval.missing_images=skip"])
    metrics = json.loads((tmp_path / "skip" / "metrics.json").read_text())
    reduced = _reduced(features, missing)
    removed, dropped = len(features["gallery_ids"]) - len(reduced["gallery_ids"]), len(features["query_ids"]) - len(reduced["query_ids"])
    assert removed == 3 and dropped >= 2
    assert metrics[f"meta/missing_images/gallery_removed/{name}/val"] == removed
    assert metrics[f"meta/missing_images/queries_dropped/{name}/val"] == dropped
    assert (f"missing images skipped (eval.missing_images=skip; not comparable with published numbers): {name}/val "
            f"{removed} gallery image(s) removed, {dropped} query(ies) dropped") in capsys.readouterr().out
    for method, alpha in (("image", None), ("sum", None), ("slerp", 0.9 if name == "cirr" else 0.8)):
        key = method if alpha is None else f"slerp_a{alpha}"
        expected = split_metrics(reduced, method, alpha, OFFICIAL_EXCLUDE[name])
        ours = {metric: metrics[f"{name}/val/{key}/{metric}"] for metric in expected}
        assert ours == pytest.approx(expected, abs=1e-4), key
    assert split_label(metrics, "val") == f"val, {removed} images and {dropped} queries skipped (not comparable)"


def test_by_default_missing_images_stop_in_one_line_naming_the_count_and_the_check(cirr_root, tmp_path, capsys):
    (bench,) = load_benchmarks("cirr", cirr_root, "val")
    _remove(bench)
    with pytest.raises(SystemExit):
        run_cli(evaluate.main, [DEFAULTS, *BASE, f"data.root={cirr_root}", f"output_dir={tmp_path}"])
    error = capsys.readouterr().err.splitlines()[0]
    assert error.startswith("error: cirr/val: 3 image file(s) missing or empty under data.root=")
    assert error.endswith("see all with `python -m cir.data.check CONFIG`, or leave them out with eval.missing_images=skip")


def test_a_bad_policy_is_refused_by_key(cirr_root, tmp_path, capsys):
    with pytest.raises(SystemExit):
        run_cli(evaluate.main, [DEFAULTS, *BASE, f"data.root={cirr_root}", f"output_dir={tmp_path}", "eval.missing_images=ignore"])
    assert "config key `eval.missing_images`: expected one of ['error', 'skip'], got 'ignore'" in capsys.readouterr().err
