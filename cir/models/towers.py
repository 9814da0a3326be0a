"""Which parameters of a backbone model belong to the image tower and which to the text tower.

In open_clip the image tower is always `.visual`. A CustomTextCLIP keeps its text
tower in `.text`, but a plain CLIP spreads it over top-level attributes
(transformer, token_embedding, positional_embedding, ln_final, text_projection,
attn_mask), so freezing and LoRA select by these root attribute names rather
than by one module. `logit_scale` / `logit_bias` belong to neither tower.
Hugging Face BLIP has `vision_model` + `vision_proj` and `text_encoder` +
`text_proj`; its `itm_head` belongs to neither.
"""

from __future__ import annotations

from torch import nn

TOWERS = ("image", "text")

_CLIP_TEXT_ROOTS = (
    "transformer",
    "token_embedding",
    "positional_embedding",
    "ln_final",
    "text_projection",
    "attn_mask",
)

_BLIP_ROOTS = {"image": ("vision_model", "vision_proj"), "text": ("text_encoder", "text_proj")}


def tower_roots(model: nn.Module, tower: str) -> tuple[str, ...]:
    """Top-level attribute names of `model` that make up `tower` ("image" or "text")."""
    if tower in _BLIP_ROOTS and all(isinstance(getattr(model, r, None), nn.Module) for r in _BLIP_ROOTS[tower]):
        return _BLIP_ROOTS[tower]
    if tower == "image":
        return ("visual",)
    if tower == "text":
        return ("text",) if isinstance(getattr(model, "text", None), nn.Module) else _CLIP_TEXT_ROOTS
    raise ValueError(f"unknown tower {tower!r}: expected one of {TOWERS}")


def in_tower(name: str, roots: tuple[str, ...]) -> bool:
    """Whether a dotted parameter / module name lies under one of `roots`."""
    return any(name == root or name.startswith(root + ".") for root in roots)


def tower_parameter_names(model: nn.Module, tower: str) -> list[str]:
    """Names (as in `model.named_parameters()`) of the parameters of one tower."""
    roots = tower_roots(model, tower)
    return [name for name, _ in model.named_parameters() if in_tower(name, roots)]
