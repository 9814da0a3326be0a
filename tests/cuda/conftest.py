"""Correctness on CUDA (marker `cuda`), with ViT-B-32 and ViT-L-14 at random weights; skipped without a GPU.

`CIR_CUDA_SMOKE=cpu` runs the same test bodies on CPU with cir-tiny, so a machine
without a GPU checks the tests themselves: `CIR_CUDA_SMOKE=cpu python -m pytest tests/cuda`.
benchmarks/gpu.sh runs them on the GPU machine.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
import torch

SMOKE_ENV = "CIR_CUDA_SMOKE"


@dataclass(frozen=True)
class Target:
    """Where a test body runs: device, model and the per-device batch of its training steps."""

    device: str
    model: str
    batch_size: int

    @property
    def accelerator(self) -> str:
        return "gpu" if self.device == "cuda" else "cpu"

    def __str__(self) -> str:
        return f"{self.device}-{self.model}"


def targets() -> list[Target]:
    if os.environ.get(SMOKE_ENV) == "cpu":
        return [Target("cpu", "cir-tiny", 8)]
    return [Target("cuda", "ViT-B-32", 32), Target("cuda", "ViT-L-14", 32)]


def skip_reason() -> str | None:
    smoke = os.environ.get(SMOKE_ENV)
    if smoke not in (None, "", "cpu"):
        return f"{SMOKE_ENV}={smoke!r}: only 'cpu' (cir-tiny on CPU) is known"
    if smoke != "cpu" and not torch.cuda.is_available():
        return f"needs a CUDA device (or {SMOKE_ENV}=cpu to run these bodies with cir-tiny on CPU)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = os.path.dirname(__file__)
    reason = skip_reason()
    for item in items:
        if str(item.path).startswith(here):
            item.add_marker(pytest.mark.cuda)
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """`target`: every model of this run; `first`: the first only (ViT-B-32 on a GPU), for the costlier checks."""
    if "target" in metafunc.fixturenames:
        metafunc.parametrize("target", targets(), ids=str)
    if "first" in metafunc.fixturenames:
        metafunc.parametrize("first", targets()[:1], ids=str)


def _tat(target: Target, *overrides: str):
    from omegaconf import OmegaConf

    from cir.config import load_config
    from cir.schema import FitConfig
    from cir.tasks.tat import TextAnchoredTuning

    cfg = load_config(FitConfig, None, [f"model.name={target.model}", "model.pretrained=none",
                                        f"data.batch_size={target.batch_size}", "optim.warmup_steps=1", *overrides])
    torch.manual_seed(0)
    return TextAnchoredTuning(OmegaConf.to_container(cfg, resolve=True))


def _batches(module, target: Target, count: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """`count` TAT batches (random images at the model's size, tokenised captions, no skips), on CPU."""
    size = module.backbone.model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    generator = torch.Generator().manual_seed(1)
    captions = [f"a {c} cube on the left" for c in ("red", "green", "blue", "yellow")] * target.batch_size
    tokens = module.backbone.tokenize(captions[: target.batch_size])
    from cir.data.shards import SKIP_REASONS

    return [(torch.randn(target.batch_size, 3, size, size, generator=generator), tokens,
             torch.zeros(len(SKIP_REASONS), dtype=torch.long)) for _ in range(count)]


@pytest.fixture
def tat():
    """tat(target, *overrides): a seeded TAT module for the target's model (random weights)."""
    return _tat


@pytest.fixture
def tat_batches():
    """tat_batches(module, target, count): in-memory training batches."""
    return _batches
