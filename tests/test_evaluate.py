"""End-to-end zero-shot evaluation on the official fixture layouts with a tiny random model."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cir import evaluate
from cir.config import run_cli
from cir.data.retrieval_benchmarks import load_benchmarks
from cir.evaluation.features import EvalIndex
from cir.models import Backbone

DEFAULTS = str(Path(__file__).resolve().parent / "configs" / "defaults.yaml")  # the config a command needs first

KEY = re.compile(r"^(cirr|circo|fashioniq_(dress|shirt|toptee|avg))/(val|test1?|train)/(image|text|sum|slerp_a[01]\.\d+)/"
                 r"(R@(1|5|10|50)|Rsub@[123]|mAP@(5|10|25|50))$")


def run(root: Path, out: Path, *extra: str) -> dict[str, float]:
    args = ["model.name=cir-tiny", "model.pretrained=none", f"data.root={root}", f"output_dir={out}",
            f"eval.cache_dir={out / 'cache'}", "data.num_workers=0", "trainer.accelerator=cpu",
            "trainer.enable_progress_bar=false", "eval.examples=2", *extra]
    evaluate.main(None, args)
    return json.loads((out / "metrics.json").read_text())


@pytest.fixture
def count_encodes(monkeypatch):
    """Rows encoded per modality, counted at the backbone."""
    counts = {"image": 0, "text": 0}
    image_fn, text_fn = Backbone.encode_image, Backbone.encode_text

    def image(self, x):
        counts["image"] += x.shape[0]
        return image_fn(self, x)

    def text(self, x):
        counts["text"] += x.shape[0]
        return text_fn(self, x)

    monkeypatch.setattr(Backbone, "encode_image", image)
    monkeypatch.setattr(Backbone, "encode_text", text)
    return counts


def brute_force_recall(index: EvalIndex, image: np.ndarray, text: np.ndarray, method: str, k: int) -> float:
    """Full score matrix in numpy over the whole gallery, reference removed."""
    v, w = image[index.ref_rows.numpy()], text[index.text_rows.numpy()]
    query = {"image": v, "text": w, "sum": v + w}[method]
    scores = query @ image[: index.n_gallery].T
    for row, excluded in enumerate(index.exclude.numpy()):
        if excluded >= 0:
            scores[row, excluded] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return 100.0 * np.mean([t in row for t, row in zip(index.target.numpy(), order)])


def test_cirr_end_to_end_keys_values_and_cache(cirr_root, tmp_path, count_encodes):
    metrics = run(cirr_root, tmp_path / "a")
    scores = {k: v for k, v in metrics.items() if not k.startswith("meta/")}
    assert scores and all(KEY.match(k) for k in scores), [k for k in scores if not KEY.match(k)]
    methods = {k.split("/")[2] for k in scores}
    assert methods == {"image", "text", "sum"} | {f"slerp_a{a / 10:.1f}" for a in range(11)}
    assert {k.split("/")[3] for k in scores} == {"R@1", "R@5", "R@10", "R@50", "Rsub@1", "Rsub@2", "Rsub@3"}
    assert all(0.0 <= v <= 100.0 for v in scores.values())
    assert metrics["meta/caption_mode"] == "relative" and metrics["meta/paper_method"] == "slerp_a0.9"
    assert metrics["meta/exclude_reference/cirr"] is True
    # each image and each distinct caption encoded exactly once for the whole 11-alpha sweep
    bench = load_benchmarks("cirr", cirr_root, "val")[0]
    index = EvalIndex.build(bench)
    assert count_encodes == {"image": len(index.image_ids), "text": len(index.texts)}
    assert (tmp_path / "a" / "alpha_sweep.png").stat().st_size > 0
    assert list((tmp_path / "a" / "tensorboard").glob("events.*"))
    # a second run reads the cache: no encoder call, identical numbers
    again = run(cirr_root, tmp_path / "a")
    assert count_encodes == {"image": len(index.image_ids), "text": len(index.texts)}
    assert again == metrics


def test_metrics_equal_numpy_over_the_whole_split_gallery(cirr_root, tmp_path):
    metrics = run(cirr_root, tmp_path)
    bench = load_benchmarks("cirr", cirr_root, "val")[0]
    index = EvalIndex.build(bench)
    split_file = json.loads((cirr_root / "cirr" / "image_splits" / "split.rc2.val.json").read_text())
    assert index.n_gallery == len(split_file)  # every image of the split, not only references / targets
    used = {q.reference for q in bench.queries} | {t for q in bench.queries for t in q.targets}
    assert len(split_file) > len(used)
    cache = torch.load(next((tmp_path / "cache").glob("*.pt")), weights_only=True)
    image, text = cache["image"].float().numpy(), cache["text"].float().numpy()
    for method in ("image", "text", "sum"):
        for k in (1, 5, 10, 50):
            expected = brute_force_recall(index, image, text, method, k)
            assert metrics[f"cirr/val/{method}/R@{k}"] == pytest.approx(expected, abs=1e-6), (method, k)


def test_circo_reports_map_and_records_caption_mode(circo_root, tmp_path):
    metrics = run(circo_root, tmp_path, "data.name=circo", "eval.alphas=[0.8]", "data.caption_mode=with_concept")
    assert metrics["meta/caption_mode"] == "with_concept" and metrics["meta/exclude_reference/circo"] is False
    assert {k.split("/")[3] for k in metrics if k.startswith("circo/")} >= {"mAP@5", "mAP@10", "mAP@25", "mAP@50", "R@1"}
    assert {k.split("/")[2] for k in metrics if k.startswith("circo/")} == {"image", "text", "sum", "slerp_a0.8"}


def test_fashioniq_per_category_and_average(fashioniq_root, tmp_path):
    metrics = run(fashioniq_root, tmp_path, "data.name=fashioniq", "eval.alphas=[0.8]")
    for cat in ("dress", "shirt", "toptee"):
        assert f"fashioniq_{cat}/val/slerp_a0.8/R@10" in metrics
    for k in ("R@10", "R@50"):
        per_cat = [metrics[f"fashioniq_{c}/val/sum/{k}"] for c in ("dress", "shirt", "toptee")]
        assert metrics[f"fashioniq_avg/val/sum/{k}"] == pytest.approx(sum(per_cat) / 3)


@pytest.mark.parametrize(
    "override, message",
    [
        ("eval.alpha=[0.5]", "eval.alpha"),
        ("eval.alphas=[1.5]", "eval.alphas[0]"),
        ("eval.methods=[slerpp]", "eval.methods[0]"),
        ("eval.exclude_reference=maybe", "eval.exclude_reference"),
        ("data.batch_size=0", "data.batch_size"),
        ("trainer.max_stepz=3", "trainer.max_stepz"),
        ("data.root=/nonexistent/cirr", "/nonexistent/cirr"),
    ],
)
def test_bad_config_is_one_line_naming_the_key(override, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(evaluate.main, [DEFAULTS, "model.name=cir-tiny", "model.pretrained=none", override])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_missing_image_files_are_named_before_encoding(cirr_root, tmp_path):
    victim = next((cirr_root / "dev").glob("*.png"))
    victim.unlink()
    with pytest.raises(FileNotFoundError, match=victim.name):
        run(cirr_root, tmp_path)


@pytest.mark.ddp
def test_two_process_ddp_equals_one_process(cirr_root, tmp_path):
    bench = load_benchmarks("cirr", cirr_root, "val")[0]
    assert len(EvalIndex.build(bench).image_ids) % 2 == 1 or len(bench.queries) % 2 == 1
    single = run(cirr_root, tmp_path / "one", "eval.alphas=[0.9]")
    cmd = [sys.executable, "-m", "cir.evaluate", DEFAULTS, "model.name=cir-tiny", "model.pretrained=none",
           f"data.root={cirr_root}", f"output_dir={tmp_path / 'two'}", f"eval.cache_dir={tmp_path / 'two' / 'cache'}",
           "data.num_workers=0", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp",
           "trainer.enable_progress_bar=false", "eval.alphas=[0.9]", "eval.examples=0"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    double = json.loads((tmp_path / "two" / "metrics.json").read_text())
    scores = {k: v for k, v in single.items() if not k.startswith("meta/")}
    assert {k: double[k] for k in scores} == pytest.approx(scores, abs=1e-9)
