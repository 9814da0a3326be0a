"""FLOPs per training sample (hand-counted toy, cir-tiny against a real count) and the ThroughputMonitor in a TAT run."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from cir import training
from cir.config import load_config
from cir.models import Backbone
from cir.schema import FitConfig
from cir.tasks.tat import TextAnchoredTuning
from cir.throughput import (
    ThroughputMonitor,
    contrastive_flops_per_sample,
    peak_bf16_flops,
    training_flops_per_batch,
)


class Toy(nn.Module):
    """Image tower: 12 -> 8 -> 4 linear maps; text tower: 6 -> 4. No biases, so every FLOP is a matmul's."""

    def __init__(self, item_in_forward: bool = False) -> None:
        super().__init__()
        self.visual = nn.Sequential(nn.Flatten(), nn.Linear(12, 8, bias=False), nn.Linear(8, 4, bias=False))
        self.text = nn.Linear(6, 4, bias=False)
        self.item_in_forward = item_in_forward

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        if self.item_in_forward:
            images = images * images.sum().item()  # what BLIP's forward does somewhere: no meta-device count
        return self.visual(images)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.text(tokens.float())

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        pass


def toy_backbone(trainable: str | None, item_in_forward: bool = False) -> Backbone:
    model = Toy(item_in_forward).requires_grad_(False)
    if trainable:
        model.get_submodule(trainable).requires_grad_(True)
    return Backbone(model, "toy", None, None, None, None, 4)


IMAGE, TOKENS, CACHED = torch.randn(5, 3, 2, 2), torch.zeros(5, 6, dtype=torch.long), torch.randn(5, 4)


@pytest.mark.parametrize("trainable, text, expected", [
    # forward: image 2*12*8 + 2*8*4 = 256, text 2*6*4 = 48
    (None, TOKENS, 256 + 48),
    # backward: the gradient through the frozen 8 -> 4 map to its input (2*8*4) and the 12 -> 8 weight's (2*12*8)
    ("visual.1", TOKENS, 256 + 48 + 64 + 192),
    ("visual.1", CACHED, 256 + 64 + 192),
    # only the last map trains: its weight gradient (2*8*4), nothing flows further back
    ("visual.2", CACHED, 256 + 64),
])
def test_flops_per_sample_equal_a_hand_count(trainable, text, expected) -> None:
    assert contrastive_flops_per_sample(toy_backbone(trainable), IMAGE, text) == expected


def test_a_backbone_the_meta_device_cannot_run_gets_no_flops_quietly(caplog) -> None:
    module = nn.Module()
    module.backbone = toy_backbone("visual.1", item_in_forward=True)
    module.features = None
    batch = (IMAGE, TOKENS, torch.zeros(6, dtype=torch.long))
    with caplog.at_level(logging.DEBUG, logger="cir.throughput"), warnings.catch_warnings():
        warnings.simplefilter("error")
        assert training_flops_per_batch(module, batch) is None
    assert "no FLOPs count for Backbone" in caplog.text
    module.backbone = toy_backbone("visual.1")
    assert training_flops_per_batch(module, batch) == 5 * (256 + 48 + 64 + 192)


def tiny_tat() -> TextAnchoredTuning:
    cfg = load_config(FitConfig, None, ["model.name=cir-tiny", "model.pretrained=none", "data.batch_size=8",
                                        "optim.warmup_steps=1", "model.lora.dropout=0.0"])
    torch.manual_seed(0)
    return TextAnchoredTuning(OmegaConf.to_container(cfg, resolve=True))


def test_meta_count_equals_a_real_count_of_the_tat_step() -> None:
    module = tiny_tat()
    images, tokens = torch.randn(1, 3, 32, 32), module.backbone.tokenize(["a red cube"])
    counter = FlopCounterMode(display=False)
    with sdpa_kernel(SDPBackend.MATH), counter:  # CPU's fused attention kernel is not counted; its math form is
        image, text = module.features(images, tokens)
        (image * text).sum().backward()
    assert contrastive_flops_per_sample(module.backbone, images, tokens) == counter.get_total_flops() > 0


def test_peaks_by_device_name() -> None:
    assert peak_bf16_flops("NVIDIA H200") == peak_bf16_flops("NVIDIA H100 80GB HBM3") == 989.4e12
    assert peak_bf16_flops("NVIDIA H200 NVL") == 835e12
    assert peak_bf16_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_bf16_flops("NVIDIA A100-SXM4-80GB") == peak_bf16_flops("NVIDIA A100 80GB PCIe") == 312e12
    assert peak_bf16_flops("NVIDIA L40S") == 362e12
    assert peak_bf16_flops("NVIDIA L4") == 121e12
    assert peak_bf16_flops("Tesla T4") is None


def test_fit_uses_the_flops_monitor() -> None:
    assert any(isinstance(c, ThroughputMonitor) for c in training.callbacks(load_config(FitConfig, None, []), Path(".")))


def test_a_tat_run_logs_flops_per_second_without_lightnings_warning(tmp_path) -> None:
    module = tiny_tat()
    batch = (torch.randn(8, 3, 32, 32), module.backbone.tokenize(["a red cube"] * 8), torch.zeros(6, dtype=torch.long))
    monitor = ThroughputMonitor(window_size=2)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=4, log_every_n_steps=1, callbacks=[monitor],
                        logger=TensorBoardLogger(str(tmp_path), name="tb", version=""), enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(module, train_dataloaders=DataLoader([batch] * 4, batch_size=None))
    assert not [w for w in caught if "flops" in str(w.message).lower()]
    assert module.flops_per_batch == 8 * contrastive_flops_per_sample(module.backbone, *batch[:2]) > 0
    events = EventAccumulator(str(tmp_path / "tb")).Reload()
    assert [e.value for e in events.Scalars("train/device/flops_per_sec")][-1] > 0


def test_an_h200_gets_its_dense_peak_without_lightnings_warning(monkeypatch) -> None:
    """Lightning's table knows the H200 only as "h200 sxm1" (sparse figure), so a plain "NVIDIA H200" got no MFU."""
    from types import SimpleNamespace

    from lightning.pytorch.plugins.precision import MixedPrecision
    from lightning.pytorch.trainer.states import RunningStage

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *_: "NVIDIA H200")
    trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cuda", 0)), enable_validation=False,
                              precision_plugin=MixedPrecision("bf16-mixed", "cuda"), precision="bf16-mixed", world_size=1,
                              state=SimpleNamespace(stage=RunningStage.TRAINING))
    monitor = ThroughputMonitor()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        monitor.setup(trainer, nn.Module(), "fit")
    assert monitor.available_flops == int(989.4e12)
    assert monitor._throughputs[RunningStage.TRAINING].available_flops == int(989.4e12)
