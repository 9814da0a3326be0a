"""The paper's findings on a smaller demo run (one pretraining of 150 steps, three TAT seeds): what holds reliably.

At this size the stand-in CLIP barely learns (Slerp R@1 1 % or less on 500
queries), and two runs of this test, when each seed still pretrained its own
model (seeds 0-2 with 2 torch threads, seeds 3-5 with 1), agreed on no "held"
verdict: TAT narrowed the modality gap by +0.032 [+0.017, +0.046] in one and
+0.019 [-0.005, +0.044] in the other; Slerp beat text only by +0.73 [+0.27, +1.27]
and +0.13 [-0.20, +0.47] points. What held in both is that neither claim was
reversed, so that is what is asserted, by each interval: a regression that widens
the gap after TAT, or puts text only above Slerp, fails it. Now the demo pretrains
once: the gap's t interval is over TAT's seeds against that one model, and Slerp
against text only, on the one pretrained model, has the bootstrap over queries
only. The full demo's verdicts are in docs/demo.md.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

from cir import fit
from cir.demo.results import collect, findings, grid_models
from cir.demo.stats import REVERSED
from cir.grid.plan import Grid

DEMO = Path(__file__).resolve().parents[2] / "experiments" / "demo.yaml"
SMALL = [
    "synth.pretrain_samples=2000", "synth.tune_samples=2000", "synth.train_queries=200", "synth.val_queries=500",
    "synth.test_queries=8", "stages.tat_image.enabled=false", "stages.tat_none.enabled=false", "axes.seed=[0,1,2]",
    "pretrain.trainer.max_steps=150", "pretrain.data.batch_size=64", "pretrain.optim.warmup_steps=15",
    "tat_text.trainer.max_steps=30", "tat_text.data.batch_size=64", "tat_text.optim.warmup_steps=3",
    "trainer.enable_progress_bar=false",
]


@pytest.mark.slow
def test_tat_narrows_the_gap_and_slerp_beats_text_only(tmp_path) -> None:
    args = [f"output_dir={tmp_path / 'demo'}", *SMALL]
    with contextlib.redirect_stdout(io.StringIO()):
        fit.main(str(DEMO), args)
    runs = grid_models(Grid(DEMO, args))
    assert [(r.name, r.seed, r.shared) for r in runs] == [("pretrain", 0, True)] + [
        ("tat_text", seed, False) for seed in (0, 1, 2)]
    slerp_wins, _, gap_narrows = findings(collect(runs))
    assert gap_narrows.verdict != REVERSED and "t interval over seeds, n=3" in gap_narrows.evidence, gap_narrows.evidence
    (queries,) = dict(slerp_wins.parts)["Slerp - text only"]
    assert queries.n == 500 and queries.verdict() != REVERSED, slerp_wins.evidence
