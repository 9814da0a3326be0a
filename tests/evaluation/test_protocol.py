"""The reference image per benchmark, as its official code treats it: CIRR removes it, CIRCO and FashionIQ rank it.

Runs on benchmarks built from the real annotation excerpts (tests/fixtures) with
the tiny random model; numpy_metrics is the independent reference.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from numpy_metrics import scores, split_metrics, target_ranks

from cir import evaluate
from cir.config import load_config
from cir.data.retrieval_benchmarks import load_benchmarks
from cir.evaluation import run as eval_run
from cir.evaluation.feature_export import feature_arrays
from cir.evaluation.features import EvalIndex, excludes_reference
from cir.evaluation.scoring import method_list, ranked_ids, score_methods
from cir.schema import EvaluateConfig, FitConfig
from cir.slerp import parse_method_key

BASE = ["model.name=cir-tiny", "model.pretrained=none", "data.num_workers=0", "trainer.accelerator=cpu",
        "trainer.enable_progress_bar=false", "eval.examples=0"]
FIXTURES = {"cirr": "cirr_root", "circo": "circo_root", "fashioniq": "fashioniq_root"}
OFFICIAL = {"cirr": True, "circo": False, "fashioniq": False}


@pytest.mark.parametrize("name", list(FIXTURES))
def test_official_rule_per_benchmark_and_the_override(name, request):
    root = request.getfixturevalue(FIXTURES[name])
    for bench in load_benchmarks(name, root, "val"):
        assert EvalIndex.build(bench).exclude_reference is OFFICIAL[name]
        for override in (True, False):
            index = EvalIndex.build(bench, override)
            assert index.exclude_reference is override and excludes_reference(bench.name, override) is override
            assert torch.equal(index.exclude, index.reference if override else torch.full_like(index.reference, -1))
    # cir.fit's periodic evaluation reads the same key
    benchmarks = f"eval.benchmarks=[{{name: {name}, root: '{root}', split: val}}]"
    for override, expected in (("null", OFFICIAL[name]), ("true", True), ("false", False)):
        cfg = load_config(FitConfig, None, [benchmarks, f"eval.exclude_reference={override}"])
        assert set(eval_run.validation_evaluator(cfg).excludes_reference().values()) == {expected}


def numpy_effect(f, method: str, alpha: float | None) -> dict[str, float]:
    """R@K with the reference removed minus R@K with it, from the inclusive ranking alone:
    removing the reference moves the target up one place exactly where the reference ranked above it."""
    inclusive = scores(f, method, alpha, False)
    ranked = f["gallery_ids"][np.argsort(-inclusive, axis=1, kind="stable")]
    target = target_ranks(ranked, f["target_ids"], inclusive.shape[1])
    reference = target_ranks(ranked, f["reference_ids"], inclusive.shape[1])
    without = target - (reference < target)
    return {f"R@{k}": 100.0 * (np.mean(without < k) - np.mean(target < k)) for k in (1, 5, 10, 50)}


@pytest.mark.parametrize("name", list(FIXTURES))
def test_image_only_ranks_the_reference_first_unless_excluded_and_metrics_shift_by_its_rank(name, request):
    root = request.getfixturevalue(FIXTURES[name])
    cfg = load_config(EvaluateConfig, None, [*BASE, f"data.name={name}", f"data.root={root}", "eval.cache_dir=null"])
    backbone, evaluator, trainer_kwargs, _ = eval_run.prepare(cfg)
    eval_run.encode(evaluator, backbone, trainer_kwargs)
    methods = method_list(["image", "sum", "slerp"], [0.8])
    for bench, official, feats in evaluator.features():
        assert official.exclude_reference is OFFICIAL[name] and (official.reference >= 0).all()
        # cosine 1 with itself: the reference is the best-scoring gallery image for image only
        cosine = feats.image[official.ref_rows] @ feats.image[: official.n_gallery].T
        assert torch.equal(cosine.argmax(dim=1), official.reference)
        assert torch.allclose(cosine.max(dim=1).values, torch.ones(len(bench.queries)), atol=2e-3)
        metrics = {}
        for exclude in (True, False):
            index = EvalIndex.build(bench, exclude)
            top = ranked_ids(index, feats, "image", None, 5)
            first_is_reference = top[:, 0] == index.reference
            assert not first_is_reference.any() if exclude else first_is_reference.all(), (bench.name, exclude)
            metrics[exclude] = score_methods(index, feats, methods)
            f = feature_arrays(bench, index, feats)
            for key, values in metrics[exclude].items():
                assert values == pytest.approx(split_metrics(f, *parse_method_key(key), exclude), abs=1e-6), key
        assert metrics[False]["image"]["R@1"] == 0.0  # the reference, never a target, takes the first place
        for key in metrics[True]:
            shift = numpy_effect(f, *parse_method_key(key))
            for metric, delta in shift.items():
                assert metrics[True][key][metric] - metrics[False][key][metric] == pytest.approx(delta, abs=1e-6)
            for metric in (m for m in metrics[True][key] if m.startswith("Rsub")):  # CIRR's subset never has it
                assert metrics[True][key][metric] == metrics[False][key][metric]


def test_override_is_recorded_in_meta_and_printed(circo_root, tmp_path, capsys):
    evaluate.main(None, [*BASE, "data.name=circo", f"data.root={circo_root}", f"output_dir={tmp_path}",
                         "eval.cache_dir=null", "eval.alphas=[0.8]", "eval.exclude_reference=true"])
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["meta/exclude_reference/circo"] is True
    assert "reference image: circo excluded (eval.exclude_reference, not the official rule)" in capsys.readouterr().out
