"""cir.progress: the bar counts to trainer.max_steps (not the epoch); the summary has no FLOPs column saying 0."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from cir import fit
from cir.config import run_cli
from cir.progress import RunProgressBar, StepModelSummary, display_callbacks

DEFAULTS = str(Path(__file__).resolve().parent / "configs" / "defaults.yaml")  # the config a command needs first

TINY = ["model.name=cir-tiny", "model.pretrained=none", "data.num_workers=0", "data.batch_size=4",
        "trainer.accelerator=cpu", "trainer.devices=1", "trainer.max_epochs=-1", "optim.warmup_steps=1",
        "trainer.log_every_n_steps=1"]


def test_display_callbacks_follow_the_trainer_switches() -> None:
    assert [type(c) for c in display_callbacks({})] == [RunProgressBar, StepModelSummary]
    assert display_callbacks({"enable_progress_bar": False, "enable_model_summary": False}) == []


@pytest.mark.slow
def test_a_short_run_counts_to_max_steps_and_shows_no_zero_flops(tmp_path, image_text_shards, caplog, monkeypatch) -> None:
    seen: list[tuple[float, float]] = []
    original = RunProgressBar._update

    def record(self, bar_id, current, visible=True, hard=False) -> None:
        if bar_id is not None and bar_id == self.train_progress_bar_id:
            seen.append((current, self.progress.tasks[bar_id].total))
        original(self, bar_id, current, visible, hard)

    monkeypatch.setattr(RunProgressBar, "_update", record)
    with caplog.at_level(logging.INFO):
        run_cli(fit.main, [DEFAULTS, *TINY, f"data.train_shards={image_text_shards}", f"output_dir={tmp_path}",
                           "trainer.max_steps=3"])
    assert seen and seen[-1] == (3, 3) and {total for _, total in seen} == {3}
    summary = "\n".join(r.getMessage() for r in caplog.records if "Trainable params" in r.getMessage())
    assert "Total params" in summary and "FLOPs" not in summary and "Flops" not in summary
