"""BLIP (the paper's best backbone, ViT-L/16) through transformers' BlipForImageTextRetrieval.

Features are BLIP's image-text contrastive (ITC) embeddings, what the retrieval
model scores with `use_itm_head=False`: the [CLS] state of the vision tower
through `vision_proj` and of the text encoder (self-attention only, no image)
through `text_proj`, L2-normalised. `create_blip_backbone` takes a hub id
("Salesforce/blip-itm-large-coco") or a folder written by `save_pretrained`,
holding the weights with their BERT tokenizer and image processor.

The vision attention keeps q, k and v in one fused `qkv` Linear; `SplitQKV`
separates it (as cir.models.attention does for open_clip) so LoRA adapts the
query and value projections alone, and fuses it back after merging, so an
export is a plain BlipForImageTextRetrieval again.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from open_clip.transform import image_transform
from safetensors.torch import load_file
from torch import nn

from cir.models.backbone import Backbone, is_path_like, wants_no_weights

if TYPE_CHECKING:  # transformers' BLIP is imported where a BLIP model is built: a process without one saves its import
    from transformers import BlipConfig, BlipForImageTextRetrieval, BlipImageProcessor
    from transformers.models.blip.modeling_blip import BlipAttention

log = logging.getLogger(__name__)

ARCHITECTURE = "BlipForImageTextRetrieval"
# BLIP's retrieval code pads and truncates every caption to 35 tokens.
BLIP_CONTEXT_LENGTH = 35
_INTERPOLATIONS = {"BICUBIC": "bicubic", "BILINEAR": "bilinear"}
# Canonical LoRA target names -> module-name suffixes, per tower. The split vision attention already
# names q_proj / k_proj / v_proj; the BERT text tower names them query / key / value, and only its
# self-attention counts: the cross-attention to the image is not part of the ITC text embedding.
_LORA_TARGETS = {
    "image": {"out_proj": "self_attn.projection"},
    "text": {
        "q_proj": "attention.self.query",
        "k_proj": "attention.self.key",
        "v_proj": "attention.self.value",
        "out_proj": "attention.output.dense",
    },
}


class SplitQKV(nn.Module):
    """A fused (3E x E) qkv Linear as three E x E Linear layers whose concatenated outputs equal the fused one's."""

    def __init__(self, q_proj: nn.Linear, k_proj: nn.Linear, v_proj: nn.Linear) -> None:
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj = q_proj, k_proj, v_proj

    @classmethod
    def from_linear(cls, fused: nn.Linear) -> SplitQKV:
        """Copy the q, k and v rows of `fused` into separate layers (same outputs, same requires_grad)."""
        if fused.out_features % 3:
            raise ValueError(f"a fused qkv Linear has 3 x embed_dim outputs, got {fused.out_features}")
        biases = fused.bias.chunk(3) if fused.bias is not None else (None, None, None)
        return cls(*(_linear(w, b) for w, b in zip(fused.weight.chunk(3), biases)))

    def to_linear(self) -> nn.Linear:
        """The fused Linear again (the inverse of `from_linear`)."""
        projs = (self.q_proj, self.k_proj, self.v_proj)
        for proj in projs:
            if type(proj) is not nn.Linear:
                raise TypeError(
                    f"cannot fuse a {type(proj).__name__} projection: merge and unload the LoRA adapters first"
                )
        has_bias = self.q_proj.bias is not None
        return _linear(torch.cat([p.weight for p in projs]), torch.cat([p.bias for p in projs]) if has_bias else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.q_proj(x), self.k_proj(x), self.v_proj(x)], dim=-1)


def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    """An nn.Linear holding copies of `weight` / `bias` with their requires_grad."""
    out_features, in_features = weight.shape
    layer = nn.utils.skip_init(
        nn.Linear, in_features, out_features, bias=bias is not None, device=weight.device, dtype=weight.dtype
    )
    for param, value in ((layer.weight, weight), (layer.bias, bias)):
        if value is not None:
            with torch.no_grad():
                param.copy_(value)
            param.requires_grad_(value.requires_grad)
    return layer


class BlipTokenizer:
    """Captions -> (N, context_length) BERT token ids, padded and truncated like BLIP's retrieval code."""

    def __init__(self, tokenizer, context_length: int = BLIP_CONTEXT_LENGTH) -> None:
        if tokenizer.pad_token_id is None:
            raise ValueError(f"the BLIP tokenizer {type(tokenizer).__name__} has no pad token")
        self.tokenizer = tokenizer
        self.context_length = context_length

    @property
    def pad_token_id(self) -> int:
        return self.tokenizer.pad_token_id

    def __call__(self, texts: str | Sequence[str]) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else list(texts)
        encoded = self.tokenizer(
            texts, padding="max_length", truncation=True, max_length=self.context_length, return_tensors="pt"
        )
        return encoded["input_ids"]


def blip_transforms(processor: BlipImageProcessor) -> tuple[Callable, Callable]:
    """(train, val) image transforms with the image processor's size, resampling and normalisation.

    val squashes the image to the processor's height x width (BLIP resizes without
    cropping); train is open_clip's RandomResizedCrop recipe at that size, the one
    every CLIP backbone trains TAT with.
    """
    from transformers.image_utils import PILImageResampling

    size = processor.size
    height, width = getattr(size, "height", None), getattr(size, "width", None)
    if not (processor.do_resize and height and width):
        raise ValueError(f"BLIP image processor: expected do_resize with size {{height, width}}, got {size}")
    if not processor.do_rescale or abs(processor.rescale_factor - 1 / 255) > 1e-9 or not processor.do_normalize:
        raise ValueError("BLIP image processor: expected do_rescale (1/255) and do_normalize, as BLIP checkpoints use")
    resample = PILImageResampling(processor.resample).name
    if resample not in _INTERPOLATIONS:
        raise ValueError(f"BLIP image processor: resample {resample} is not one of {list(_INTERPOLATIONS)}")
    options = {
        "mean": tuple(processor.image_mean),
        "std": tuple(processor.image_std),
        "resize_mode": "squash",
        "interpolation": _INTERPOLATIONS[resample],
    }
    return image_transform((height, width), True, **options), image_transform((height, width), False, **options)


class BlipBackbone(Backbone):
    """A BlipForImageTextRetrieval behind the Backbone interface (ITC features, BERT tokens, BLIP preprocessing)."""

    def __init__(
        self,
        model: BlipForImageTextRetrieval,
        name: str,
        pretrained: str | None,
        tokenizer: BlipTokenizer,
        image_processor: BlipImageProcessor,
    ) -> None:
        preprocess_train, preprocess_val = blip_transforms(image_processor)
        super().__init__(
            model, name, pretrained, tokenizer, preprocess_train, preprocess_val,
            embed_dim=int(model.config.image_text_hidden_size),
        )
        self.image_processor = image_processor

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) preprocessed images -> (N, embed_dim) unit vectors (cast to the patch embedding's dtype)."""
        weight = self.model.vision_model.embeddings.patch_embedding.weight
        if images.is_floating_point():
            images = images.to(weight.dtype)
        hidden = self.model.vision_model(pixel_values=images).last_hidden_state
        return F.normalize(self.model.vision_proj(hidden[:, 0]), dim=-1)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """(N, context_length) ids from `tokenize` -> (N, embed_dim) unit vectors; padding is masked out."""
        mask = tokens.ne(self.tokenizer.pad_token_id).long()
        hidden = self.model.text_encoder(input_ids=tokens, attention_mask=mask).last_hidden_state
        return F.normalize(self.model.text_proj(hidden[:, 0]), dim=-1)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each layer's activations in the backward pass (non-reentrant, so frozen inputs still work)."""
        if enable:
            self.model.activation_checkpointing_enable({"use_reentrant": False})
            # transformers also hooks the input embeddings to require grad, which only reentrant checkpointing
            # needs, and which breaks BLIP's in-place position-embedding sum in the text tower.
            self.model.disable_input_require_grads()
        else:
            self.model.activation_checkpointing_disable()

    def split_attention(self, towers: Sequence[str]) -> None:
        """Split each vision attention's fused qkv; the BERT text tower already has separate projections."""
        if "image" in towers:
            for attention in self._vision_attention():
                if type(attention.qkv) is nn.Linear:
                    attention.qkv = SplitQKV.from_linear(attention.qkv)

    def fuse_attention(self) -> None:
        for attention in self._vision_attention():
            if isinstance(attention.qkv, SplitQKV):
                attention.qkv = attention.qkv.to_linear()

    def lora_target(self, tower: str, target: str) -> str:
        return _LORA_TARGETS[tower].get(target, target)

    def save_pretrained(self, folder: str | Path) -> None:
        """Weights, tokenizer and image processor into `folder`, as `create_blip_backbone(folder)` reads them."""
        self.model.save_pretrained(folder)
        self.tokenizer.tokenizer.save_pretrained(folder)
        self.image_processor.save_pretrained(folder)

    def _vision_attention(self) -> list[BlipAttention]:
        from transformers.models.blip.modeling_blip import BlipAttention

        return [m for m in self.model.vision_model.modules() if isinstance(m, BlipAttention)]


def load_blip_config(name: str, cache_dir: str | None = None) -> BlipConfig:
    """The BlipConfig of a hub id or save_pretrained folder; a clear error for anything else."""
    from transformers import AutoConfig, BlipConfig

    try:
        config = AutoConfig.from_pretrained(name, cache_dir=cache_dir)
    except (OSError, ValueError) as err:
        raise ValueError(
            f"model {name!r}: not an open_clip model, and no Hugging Face config loads from it ({err}); expected an "
            "open_clip name, a model config JSON, a BLIP hub id such as 'Salesforce/blip-itm-large-coco' or a folder "
            "written by save_pretrained"
        ) from None
    if not isinstance(config, BlipConfig):
        raise ValueError(
            f"model {name!r} is a Hugging Face {config.model_type!r} model: only BLIP ('blip') is supported"
        )
    if config.architectures and ARCHITECTURE not in config.architectures:
        raise ValueError(
            f"model {name!r} is a {config.architectures} checkpoint: BLIP backbones need {ARCHITECTURE} weights "
            "(e.g. 'Salesforce/blip-itm-large-coco')"
        )
    return config


def create_blip_backbone(
    name: str,
    pretrained: str | None = "none",
    *,
    cache_dir: str | None = None,
    context_length: int = BLIP_CONTEXT_LENGTH,
) -> BlipBackbone:
    """Build a BlipBackbone.

    name: a hub id ("Salesforce/blip-itm-large-coco") or a save_pretrained folder;
        its config, tokenizer and image processor define the backbone.
    pretrained: "none" / "" / None for the weights that come with `name` (like
        open_clip's hf-hub: models); or a local weights file (.safetensors, or a
        torch-saved state_dict) or save_pretrained folder, e.g. a TAT export, loaded
        into `name`'s architecture. Missing or mis-shaped weights are an error.
    """
    from transformers import AutoTokenizer, BlipForImageTextRetrieval

    config = load_blip_config(name, cache_dir)
    max_length = config.text_config.max_position_embeddings
    if not 2 <= context_length <= max_length:
        raise ValueError(f"context_length must be in [2, {max_length}] for {name!r}, got {context_length}")
    weights = _resolve_weights(name, pretrained)
    state = _read_state_dict(weights) if weights is not None and os.path.isfile(weights) else None
    source = None if state is not None else (weights or name)
    model, info = BlipForImageTextRetrieval.from_pretrained(
        source, config=config, cache_dir=cache_dir, state_dict=state, output_loading_info=True
    )
    _check_loading(weights or name, info)
    model.train()  # from_pretrained returns eval mode; open_clip builds in train mode, which Lightning keeps
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, cache_dir=cache_dir)
    except (OSError, ValueError) as err:
        raise ValueError(f"model {name!r}: no tokenizer loads from it ({err}); save BLIP's BERT tokenizer there") from None
    processor = _image_processor(name, config, cache_dir)
    return BlipBackbone(model, name, weights, BlipTokenizer(tokenizer, context_length), processor)


def _resolve_weights(name: str, pretrained: str | None) -> str | None:
    if wants_no_weights(pretrained):
        return None
    pretrained = str(pretrained)
    if os.path.exists(pretrained):
        return pretrained
    if is_path_like(pretrained):
        raise FileNotFoundError(f"pretrained weights not found: {pretrained}")
    raise ValueError(
        f"model {name!r} (Hugging Face BLIP) brings its own weights: pass pretrained='none', or a local weights "
        f"file or save_pretrained folder to load instead, not {pretrained!r}"
    )


def _read_state_dict(path: str) -> dict[str, torch.Tensor]:
    if path.endswith(".safetensors"):
        return load_file(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"pretrained {path}: expected a state_dict (parameter name -> tensor) of {ARCHITECTURE}")
    return state


def _check_loading(source: str, info: dict) -> None:
    """Refuse weights that would leave parameters at random init; unused extra keys are only logged."""
    problems = {kind: sorted(info.get(kind) or ()) for kind in ("missing_keys", "mismatched_keys")}
    problems = {kind: keys for kind, keys in problems.items() if keys}
    if problems:
        shown = "; ".join(f"{len(keys)} {kind} (e.g. {keys[:3]})" for kind, keys in problems.items())
        raise ValueError(f"weights from {source} do not fit {ARCHITECTURE}: {shown}")
    if info.get("unexpected_keys"):
        log.warning("weights from %s: ignored %d unused keys (e.g. %s)", source, len(info["unexpected_keys"]),
                    sorted(info["unexpected_keys"])[:3])


def _image_processor(name: str, config: BlipConfig, cache_dir: str | None) -> BlipImageProcessor:
    """The saved image processor, or BLIP's defaults at the vision config's image size when none was saved."""
    from transformers import BlipImageProcessor

    size = config.vision_config.image_size
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    try:
        processor = BlipImageProcessor.from_pretrained(name, cache_dir=cache_dir)
    except OSError:
        log.warning("model %r has no preprocessor_config.json: BLIP's default processing at %dx%d", name, height, width)
        return BlipImageProcessor(size={"height": height, "width": width})
    if (processor.size.height, processor.size.width) != (height, width):
        raise ValueError(
            f"model {name!r}: the image processor resizes to {processor.size.height}x{processor.size.width} "
            f"but vision_config.image_size is {height}x{width}"
        )
    return processor
