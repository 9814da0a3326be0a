"""GeneCIS through cir.evaluate with experiments/eval_genecis.yaml: per-task R@1/2/3 and their average, the tasks
key refused by name. (Metrics against the numpy reference: test_feature_export.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cir import evaluate
from cir.config import ConfigError
from cir.data.retrieval_benchmarks.genecis import GENECIS_TASKS

CONFIG = str(Path(__file__).resolve().parents[2] / "experiments" / "eval_genecis.yaml")
BASE = ["model.name=cir-tiny", "model.pretrained=none", "data.num_workers=0", "trainer.accelerator=cpu",
        "trainer.enable_progress_bar=false", "eval.alphas=[0.8]", "eval.examples=2"]


def test_experiment_config_scores_every_task_and_their_average(genecis_root, tmp_path):
    evaluate.main(CONFIG, [*BASE, f"data.root={genecis_root}", f"output_dir={tmp_path}", "eval.cache_dir=null"])
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for method in ("image", "text", "sum", "slerp_a0.8"):
        per_task = [[metrics[f"genecis_{t}/val/{method}/R@{k}"] for k in (1, 2, 3)] for t in GENECIS_TASKS]
        average = [metrics[f"genecis_avg/val/{method}/R@{k}"] for k in (1, 2, 3)]
        assert average == pytest.approx([sum(col) / 4 for col in zip(*per_task)])
    assert not [k for k in metrics if k.endswith(("R@5", "R@10", "Rsub@1", "mAP@5"))]  # own galleries only
    assert {metrics[f"meta/exclude_reference/genecis_{t}"] for t in GENECIS_TASKS} == {False}


def test_unknown_task_is_refused_by_key(genecis_root, tmp_path):
    with pytest.raises(ConfigError, match=r"data\.genecis\.tasks\[1\]"):
        evaluate.main(CONFIG, [*BASE, f"data.root={genecis_root}", f"output_dir={tmp_path}",
                               "data.genecis.tasks=[focus_object,colour]"])
