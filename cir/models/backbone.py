"""The CLIP backbone every other part of cir uses, built by open_clip.

`create_backbone` accepts an open_clip model name, our shipped "cir-tiny" config
or a path to a model config JSON, and as weights either nothing (random init),
a local checkpoint file (our exports included) or an open_clip pretrained tag.
A Hugging Face BLIP hub id or save_pretrained folder builds a BlipBackbone
(cir.models.blip), a subclass with the same interface.
"""

from __future__ import annotations

import hashlib
import logging
import os
import zlib
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
import torch.nn.functional as F
from open_clip.transform import AugmentationCfg, PreprocessCfg, image_transform_v2
from torch import nn

from cir.models import attention
from cir.models.towers import in_tower, tower_roots

log = logging.getLogger(__name__)

NO_WEIGHTS = ("", "none")
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
AUGMENTATION_FIELDS = frozenset(AugmentationCfg.__dataclass_fields__)


class Backbone(nn.Module):
    """An open_clip CLIP with the tokenizer and transforms that belong to it.

    Features from `encode_image` / `encode_text` are L2-normalised. The image and
    text towers are named by `image_tower` / `text_tower` (root attribute names of
    `model`, see cir.models.towers) because a plain CLIP has no single text module.

    The base of every backbone: cir.models.blip.BlipBackbone overrides the
    model-specific methods (encoders, checkpointing, attention split / fuse and
    LoRA target names), so the rest of cir never asks which model it holds.
    """

    def __init__(
        self,
        model: nn.Module,
        name: str,
        pretrained: str | None,
        tokenizer: Callable,
        preprocess_train: Callable,
        preprocess_val: Callable,
        embed_dim: int,
    ) -> None:
        super().__init__()
        self.model = model
        self.name = name
        self.pretrained = pretrained
        self.tokenizer = tokenizer
        self.preprocess_train = preprocess_train
        self.preprocess_val = preprocess_val
        self.embed_dim = embed_dim

    @property
    def image_tower(self) -> tuple[str, ...]:
        return tower_roots(self.model, "image")

    @property
    def text_tower(self) -> tuple[str, ...]:
        return tower_roots(self.model, "text")

    def tower_parameters(self, tower: str) -> list[tuple[str, nn.Parameter]]:
        """(name, parameter) pairs of one tower ("image" or "text"), names relative to `model`."""
        roots = tower_roots(self.model, tower)
        return [(n, p) for n, p in self.model.named_parameters() if in_tower(n, roots)]

    def set_trainable(self, tower: str, trainable: bool) -> None:
        """Freeze or unfreeze every parameter of one tower (e.g. the text anchor)."""
        for _, param in self.tower_parameters(tower):
            param.requires_grad_(trainable)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) preprocessed images -> (N, embed_dim) unit vectors.

        Images are cast to the patch embedding's dtype, so a half / bf16 model
        takes the float32 output of `preprocess_val` as is.
        """
        weight = self.model.visual.conv1.weight if hasattr(self.model.visual, "conv1") else None
        if weight is not None and images.is_floating_point():
            images = images.to(weight.dtype)
        return F.normalize(self.model.encode_image(images), dim=-1)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """(N, context_length) token ids from `tokenize` -> (N, embed_dim) unit vectors."""
        return F.normalize(self.model.encode_text(tokens), dim=-1)

    def tokenize(self, texts: str | Sequence[str]) -> torch.Tensor:
        """Token ids (LongTensor, N x context_length) from open_clip's tokenizer for this model."""
        return self.tokenizer([texts] if isinstance(texts, str) else list(texts))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute activations in the backward pass: memory for compute, for large batches."""
        self.model.set_grad_checkpointing(enable)

    def split_attention(self, towers: Sequence[str]) -> None:
        """Give the attention of `towers` separate q/k/v nn.Linear layers, so LoRA can adapt q and v alone."""
        roots = [tower_roots(self.model, tower) for tower in towers]
        attention.split_attention(self.model, lambda name: any(in_tower(name, r) for r in roots))

    def fuse_attention(self) -> None:
        """Undo `split_attention` (after merging LoRA): the model is a plain open_clip model again."""
        attention.fuse_attention(self.model)

    def lora_target(self, tower: str, target: str) -> str:
        """The module-name suffix that LoRA target `target` (e.g. "q_proj") names in `tower`."""
        return target

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def fingerprint(self) -> str:
        """Short hex digest of every parameter and buffer (names, shapes, dtypes, bytes): a feature-cache key."""
        return weights_fingerprint(self.model)


def weights_fingerprint(module: nn.Module) -> str:
    """16-hex-digit digest over all named parameters and buffers of `module`.

    Each tensor's bytes get a CRC-32 (fast, and it catches any change confined
    to 32 bits, e.g. one edited element) in a thread pool (zlib releases the
    GIL); the per-tensor CRCs, names, shapes and dtypes are then hashed together.
    """
    tensors = [*module.named_parameters(), *module.named_buffers()]

    def digest(tensor: torch.Tensor) -> bytes:
        data = tensor.detach().reshape(-1).contiguous().view(torch.uint8).cpu().numpy()
        return zlib.crc32(data).to_bytes(4, "little")

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        digests = list(pool.map(digest, (t for _, t in tensors)))
    total = hashlib.blake2b(digest_size=8)
    for (name, tensor), tensor_digest in zip(tensors, digests):
        total.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
        total.update(tensor_digest)
    return total.hexdigest()


def train_transform(backbone: Backbone, aug_cfg: Mapping[str, Any] | None) -> Callable:
    """The training image transform: the backbone's own, or open_clip's with other augmentation settings.

    aug_cfg holds open_clip AugmentationCfg fields; e.g. scale=[1, 1] keeps the whole
    image, where the default random crop (scale 0.9-1) costs a 32 px image real detail.
    """
    if not aug_cfg:
        return backbone.preprocess_train
    preprocess_cfg = getattr(getattr(backbone.model, "visual", None), "preprocess_cfg", None)
    if not preprocess_cfg:
        raise ValueError(f"{backbone.name} is not an open_clip model: its training transform has no augmentation settings")
    unknown = set(aug_cfg) - AUGMENTATION_FIELDS
    if unknown:
        raise ValueError(f"unknown augmentation settings {sorted(unknown)}; open_clip's are {sorted(AUGMENTATION_FIELDS)}")
    return image_transform_v2(PreprocessCfg(**preprocess_cfg), is_train=True, aug_cfg=AugmentationCfg(**aug_cfg))


def is_path_like(value: str) -> bool:
    """A `pretrained` value meant as a file: a missing one is an error, never a hub tag."""
    return "/" in value or os.sep in value or value.lower().endswith(CHECKPOINT_SUFFIXES)


def wants_no_weights(pretrained: str | None) -> bool:
    """`pretrained` asks for random init: None, "" or "none"."""
    return pretrained is None or str(pretrained).strip().lower() in NO_WEIGHTS
