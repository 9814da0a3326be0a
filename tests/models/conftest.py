"""Tiny random CLIPs and inputs shared by the model tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cir.models import Backbone, create_backbone

# ViT-B-32's layout (QuickGELU, patch 32, head width 64, 77 tokens) shrunk to two narrow layers.
VIT_B32_MINI = {
    "embed_dim": 96,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 128, "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 128, "heads": 2, "layers": 2},
}


@pytest.fixture(scope="session")
def vit_b32_mini_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("configs") / "vit-b-32-mini.json"
    path.write_text(json.dumps(VIT_B32_MINI))
    return path


def _build(name: str = "cir-tiny", seed: int = 0, pretrained: str | None = "none") -> Backbone:
    torch.manual_seed(seed)
    return create_backbone(name, pretrained).eval()


def _images(backbone: Backbone, n: int = 4, seed: int = 1) -> torch.Tensor:
    height, width = backbone.model.visual.image_size
    return torch.randn(n, 3, height, width, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def captions() -> list[str]:
    return ["a dog on a sofa", "two cats", "a red car parked outside", "make it blue"]


@pytest.fixture
def build():
    """build(name="cir-tiny", seed=0, pretrained="none"): a seeded random backbone in eval mode."""
    return _build


@pytest.fixture
def images():
    """images(backbone, n=4, seed=1): random inputs at the backbone's image size."""
    return _images
