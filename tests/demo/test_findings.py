"""The paper's findings on a smaller demo run (150 pretraining steps): what holds there reliably.

Asserted: TAT narrows the modality gap, and Slerp beats text only. The full
demo also shows Slerp beating image only and sum, but on a run this small the
pretrained model finds a few targets in 500 queries and Slerp against image
only is a coin flip, so it is not asserted; TAT raising Slerp R@1 and text
anchoring beating the other anchors did not hold in the full demo
(results.md reports all four with their numbers).
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

from cir import fit
from cir.demo.report import ModelRun, collect, findings

DEMO = Path(__file__).resolve().parents[2] / "experiments" / "demo.yaml"
SMALL = [
    "synth.pretrain_samples=2000", "synth.tune_samples=2000", "synth.train_queries=200", "synth.val_queries=500",
    "synth.test_queries=8", "demo.supervised=false",
    "pretrain.trainer.max_steps=150", "pretrain.data.batch_size=64", "pretrain.optim.warmup_steps=15",
    "tat.trainer.max_steps=60", "tat.data.batch_size=64", "tat.optim.warmup_steps=6",
    "pretrain.trainer.enable_progress_bar=false", "tat.trainer.enable_progress_bar=false",
]


@pytest.mark.slow
def test_tat_narrows_the_gap_and_slerp_beats_text_only(tmp_path) -> None:
    out = tmp_path / "demo"
    with contextlib.redirect_stdout(io.StringIO()):
        fit.main(str(DEMO), [f"output_dir={out}", *SMALL])
    runs = [ModelRun(name, name, out / f"eval_{name}" / "val", out / f"eval_{name}" / "train",
                     out / f"eval_{name}" / "gap.json") for name in ("pretrain", "tat_text", "tat_image", "tat_none")]
    rows, _, gaps = collect(runs)
    slerp = {row.run.name: row.metrics for row in rows if row.method == "slerp"}
    baselines = {row.method: row.metrics for row in rows if row.method != "slerp"}
    slerp_wins, _, _, gap_narrows = findings(slerp, baselines, {name: g["gap"] for name, g in gaps.items()})
    assert gap_narrows.held, gap_narrows.evidence
    assert slerp["pretrain"]["R@1"] > baselines["text"]["R@1"], slerp_wins.evidence
