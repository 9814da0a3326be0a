"""What TensorBoard shows of a run: evaluation example rows that name their caption and target rank, and the
hparams view of evaluation and training runs."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

from cir import evaluate
from cir.config import load_config
from cir.data.retrieval_benchmarks import load_benchmarks
from cir.evaluation.presentation import caption_strip, rank_text, retrieval_grid
from cir.schema import FitConfig
from cir.training import final_metrics, run_hparams


def hparams_of(logdir: Path) -> tuple[dict[str, object], list[str]]:
    """(settings, metric names) of the hparams summary in a TensorBoard run folder."""
    events = EventAccumulator(str(logdir))
    events.Reload()
    content = events.PluginTagToContent("hparams")
    start = HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    experiment = HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    settings = {name: value.WhichOneof("kind") and getattr(value, value.WhichOneof("kind")) for name, value in start.hparams.items()}
    return settings, [info.name.tag for info in experiment.metric_infos]


def test_caption_strip_draws_text_and_cuts_long_captions():
    strip = caption_strip("make it red", 200)
    assert strip.shape == (3, 20, 200) and strip.min() < 0.5  # dark text on white
    assert strip[:, :, 150:].min() == 1.0  # a short caption leaves the right side blank
    long = caption_strip("make it red " * 40, 200)
    assert long[:, :, 150:190].min() < 0.5  # cut to the width, not left off
    assert rank_text(3.0, 1000) == "target rank 3" and rank_text(float("inf"), 50) == "target not in the top 50"


def test_grid_rows_carry_a_caption_strip(cirr_root):
    bench = load_benchmarks("cirr", cirr_root, "val")[0]
    top = torch.arange(10).view(2, 5)
    grid = retrieval_grid(bench, [0, 1], top, torch.tensor([2.0, float("inf")]), depth=5, size=32)
    row_height = 20 + (32 + 8) + 2 * 2  # strip, framed tile, make_grid padding
    assert grid.shape[1] == 2 * row_height
    assert grid[:, :20].min() < 0.5 and grid[:, row_height : row_height + 20].min() < 0.5


def test_evaluation_logs_its_settings_and_headline_metrics_to_the_hparams_view(cirr_root, tmp_path):
    evaluate.main(None, ["model.name=cir-tiny", "model.pretrained=none", f"data.root={cirr_root}", f"output_dir={tmp_path}",
                         "eval.cache_dir=null", "data.num_workers=0", "trainer.accelerator=cpu",
                         "trainer.enable_progress_bar=false", "eval.examples=2", "eval.alphas=[0.5,0.9]"])
    settings, metrics = hparams_of(tmp_path / "tensorboard")
    assert settings["meta/model"] == "cir-tiny" and settings["meta/paper_method"] == "slerp_a0.9"
    assert "cirr/val/slerp_a0.9/R@1" in metrics and "cirr/val/sum/R@10" in metrics
    assert not any("slerp_a0.5" in m for m in metrics)  # the sweep stays in the scalars, not as hparams columns
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    (image,) = events.Images("examples/cirr/val")
    assert image.height == 2 * (20 + 96 + 8 + 4)  # two rows, each under its caption strip


def test_fit_settings_and_final_metrics_reach_the_hparams_view(tmp_path):
    cfg = load_config(FitConfig, None, ["model.name=cir-tiny", "optim.lr=0.003", "seed=7"])
    trainer = SimpleNamespace(callback_metrics={"val/cirr/val/R@1": torch.tensor(12.5), "train/loss": torch.tensor(0.7)})
    logger = TensorBoardLogger(str(tmp_path), name="tensorboard", version="", default_hp_metric=False)
    logger.log_hyperparams(run_hparams(cfg), final_metrics(trainer))
    logger.finalize("success")
    settings, metrics = hparams_of(tmp_path / "tensorboard")
    assert settings["model.name"] == "cir-tiny" and settings["optim.lr"] == 0.003 and settings["seed"] == 7
    assert sorted(metrics) == ["final/train/loss", "final/val/cirr/val/R@1"]
