"""Model FLOPs per training sample and the GPUs' dense bf16 peaks: the inputs of model FLOPs utilisation (MFU).

`ThroughputMonitor` (a Lightning ThroughputMonitor) gives every training run
`train/device/flops_per_sec` and, on a GPU in PEAK_BF16_FLOPS, `train/device/mfu`
in TensorBoard. FLOPs are counted by torch's FlopCounterMode on a meta-device
copy of the backbone (no memory, no compute, so ViT-L-14 costs what cir-tiny
does) through what TAT's step runs: both towers forward, backward where
gradients flow, without gradient checkpointing's recomputation (model FLOPs,
as MFU is defined in PaLM, arXiv 2204.02311, appendix B).
"""

from __future__ import annotations

import copy
import itertools
import logging
import warnings
from typing import Any

import lightning as L
import torch
from lightning.pytorch import callbacks
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from cir.models import Backbone

log = logging.getLogger(__name__)

# Dense (no structured sparsity) bf16 tensor-core peaks, FLOP/s, by a substring of torch.cuda.get_device_name(),
# first match wins. NVIDIA's datasheets print the sparse figure with a footnote; dense is half of it.
#   H200 SXM 989 / H200 NVL 835 (1,979 / 1,671 sparse): https://www.nvidia.com/en-us/data-center/h200/
#   H100 SXM 989 / PCIe 756 / NVL 835 (1,979 / 1,513 / 1,671 sparse): https://www.nvidia.com/en-us/data-center/h100/
#   A100 SXM and PCIe 312 (624 sparse): https://www.nvidia.com/en-us/data-center/a100/
#   L40S 362 (733 sparse): https://www.nvidia.com/en-us/data-center/l40s/
#   L4 121 (242 sparse): https://www.nvidia.com/en-us/data-center/l4/
# Lightning's own table (lightning.fabric.utilities.throughput) lists the H200 only as "h200 sxm1"/"nvl1" with
# the sparse figure, so a plain "NVIDIA H200" got no MFU and a warning.
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("h200 nvl", 835e12),
    ("h200", 989.4e12),
    ("h100 nvl", 835e12),
    ("h100 pcie", 756e12),
    ("h100", 989.4e12),
    ("a100", 312e12),
    ("l40s", 362e12),
    ("l4", 121e12),
)


def peak_bf16_flops(device_name: str) -> float | None:
    """The dense bf16 peak of the GPU named `device_name` (as torch.cuda.get_device_name gives it), or None."""
    name = device_name.lower()
    return next((flops for key, flops in PEAK_BF16_FLOPS if key in name), None)


def meta_copy(module: nn.Module) -> nn.Module:
    """A deep copy of `module` whose parameters and buffers live on the meta device (shapes only, no memory).

    Non-tensor attributes that are costly to copy and unused by a forward pass
    (tokenizer, transforms) are shared with the original.
    """
    memo: dict[int, Any] = {}
    for tensor in itertools.chain(module.parameters(), module.buffers()):
        meta = torch.empty_like(tensor, device="meta")
        memo[id(tensor)] = nn.Parameter(meta, requires_grad=tensor.requires_grad) if isinstance(tensor, nn.Parameter) else meta
    for name in ("tokenizer", "preprocess_train", "preprocess_val"):
        if hasattr(module, name):
            memo[id(getattr(module, name))] = getattr(module, name)
    return copy.deepcopy(module, memo)


def contrastive_flops_per_sample(backbone: Backbone, image: torch.Tensor, text: torch.Tensor) -> int:
    """FLOPs of one (image, caption) pair through a contrastive step: encode_image, encode_text (unless `text`
    is a cached embedding, floating point), and the backward pass to whatever requires grad.

    Only `image` and `text`'s shapes and dtypes are used (one sample each); the count runs on a meta copy, with
    gradient checkpointing off, so it is the model's FLOPs, not the hardware's. The loss's B x B logits are left
    out (2 B D FLOPs per sample, under 0.1 % of a ViT's).
    """
    model = meta_copy(backbone)
    model.set_grad_checkpointing(False)
    image = torch.empty_like(image[:1], device="meta")
    text = torch.empty_like(text[:1], device="meta")
    counter = FlopCounterMode(display=False)
    with counter:
        image_features = model.encode_image(image)
        text_features = text if text.is_floating_point() else model.encode_text(text)
        loss = (image_features * text_features).sum()
        if loss.requires_grad:
            loss.backward()
    return counter.get_total_flops()


def training_flops_per_batch(module: L.LightningModule, batch: Any) -> int | None:
    """FLOPs of one training step on `batch` for TAT-style modules (batch = images, texts, skip counts); None
    for any other module or a backbone the meta-device count cannot run (logged at debug level)."""
    backbone = getattr(module, "backbone", None)
    if not (isinstance(backbone, Backbone) and isinstance(batch, (tuple, list)) and len(batch) == 3
            and hasattr(module, "features") and batch[2].dtype == torch.long and batch[2].dim() == 1):
        log.debug("no FLOPs count for %s: not a TAT-style module and batch", type(module).__name__)
        return None
    images, texts = batch[0], batch[1]
    try:
        return contrastive_flops_per_sample(backbone, images, texts) * images.shape[0]
    except Exception as err:  # a backbone whose forward does not run on the meta device: throughput without FLOPs
        log.debug("no FLOPs count for %s: %s: %s", type(backbone).__name__, type(err).__name__, err)
        return None


class ThroughputMonitor(callbacks.ThroughputMonitor):
    """Lightning's ThroughputMonitor that counts the module's FLOPs per batch itself (on the first training batch)
    and takes its bf16 peak from PEAK_BF16_FLOPS, so TensorBoard shows flops_per_sec and MFU in every run."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(batch_size_fn=lambda batch: batch[0].shape[0], **kwargs)
        self._train_flops: int | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # Half-precision compute ("bf16-mixed", "16-mixed", "bf16-true", "16-true"): dense bf16 and fp16 peaks are equal.
        device = trainer.strategy.root_device
        half = str(trainer.precision).startswith(("bf16", "16"))
        peak = peak_bf16_flops(torch.cuda.get_device_name(device)) if device.type == "cuda" and half else None
        with warnings.catch_warnings():
            if peak is not None:
                warnings.filterwarnings("ignore", message="FLOPs not found")
            super().setup(trainer, pl_module, stage)
        if peak is not None:
            self.available_flops = int(peak)
            for throughput in self._throughputs.values():
                throughput.available_flops = self.available_flops
        pl_module.flops_per_batch = None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        if self._train_flops is None:
            self._train_flops = training_flops_per_batch(pl_module, batch) or 0
        pl_module.flops_per_batch = self._train_flops or None

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pl_module.flops_per_batch = None  # evaluation batches encode images or captions: another count
        super().on_validation_start(trainer, pl_module)
