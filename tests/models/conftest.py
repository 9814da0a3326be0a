"""Tiny random CLIPs and inputs shared by the model tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

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


def _train_steps(backbone: Backbone, images: torch.Tensor, tokens: torch.Tensor, steps: int = 3) -> None:
    """A few AdamW steps of the symmetric contrastive loss at temperature 0.07, on whatever requires grad."""
    optimizer = torch.optim.AdamW([p for p in backbone.parameters() if p.requires_grad], lr=1e-2)
    backbone.train()
    labels = torch.arange(len(images))
    for _ in range(steps):
        logits = backbone.encode_image(images) @ backbone.encode_text(tokens).T / 0.07
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    backbone.eval()


@pytest.fixture
def train_steps():
    """train_steps(backbone, images, tokens, steps=3): a few contrastive steps, then eval mode."""
    return _train_steps
