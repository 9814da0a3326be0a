"""The paper's findings on a smaller demo run (three seeds of 100 pretraining steps): what holds there reliably.

Asserted, each by its 95 % interval: TAT narrows the modality gap (t interval
over the three seeds), and Slerp beats text only (paired bootstrap over the
queries). The full demo also shows Slerp beating image only and sum, but a run
this small finds few targets and those intervals straddle zero, so they are not
asserted; TAT raising Slerp R@1 and text anchoring winning are within noise or
reversed in the full demo (README "The embedded demo"), so this run trains the
text anchor only.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

from cir import fit
from cir.demo.pipeline import FEATURES
from cir.demo.report import ModelRun, collect, findings
from cir.demo.stats import HELD

DEMO = Path(__file__).resolve().parents[2] / "experiments" / "demo.yaml"
SEEDS = (0, 1, 2)
SMALL = [
    "synth.pretrain_samples=2000", "synth.tune_samples=2000", "synth.train_queries=200", "synth.val_queries=500",
    "synth.test_queries=8", "demo.supervised=false", "demo.anchors=[text]", f"demo.seeds={list(SEEDS)}",
    "pretrain.trainer.max_steps=150", "pretrain.data.batch_size=64", "pretrain.optim.warmup_steps=15",
    "tat.trainer.max_steps=30", "tat.data.batch_size=64", "tat.optim.warmup_steps=3",
    "pretrain.trainer.enable_progress_bar=false", "tat.trainer.enable_progress_bar=false",
]


@pytest.mark.slow
def test_tat_narrows_the_gap_and_slerp_beats_text_only(tmp_path) -> None:
    out = tmp_path / "demo"
    with contextlib.redirect_stdout(io.StringIO()):
        fit.main(str(DEMO), [f"output_dir={out}", *SMALL])
    runs = [ModelRun(name, name, folder / "val", folder / "train", folder / "gap.json", seed, folder / "val" / FEATURES)
            for seed in SEEDS for name in ("pretrain", "tat_text") for folder in [out / f"eval_{name}_s{seed}"]]
    slerp_wins, _, gap_narrows = findings(collect(runs))
    assert gap_narrows.verdict == HELD and "t interval over seeds, n=3" in gap_narrows.evidence, gap_narrows.evidence
    over_text = dict(slerp_wins.parts)["Slerp - text only"]
    assert over_text.verdict() == HELD and over_text.n == 500, slerp_wins.evidence
