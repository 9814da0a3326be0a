"""Building a Backbone from a model name and a `pretrained` value: open_clip names, config JSONs, BLIP ids.

The one place that resolves names (QuickGELU variants, registered configs, hub ids)
and weights (random, a local checkpoint, an open_clip tag); backbone.py and blip.py
below it only wrap a built model.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path

import open_clip

from cir.models.backbone import Backbone, is_path_like, wants_no_weights
from cir.models.blip import create_blip_backbone
from cir.models.tokenizer import VOCABULARY_KEY, WordTokenizer

log = logging.getLogger(__name__)

_REQUIRED_CONFIG_KEYS = ("embed_dim", "vision_cfg", "text_cfg")
_SCHEMAS = ("hf-hub:", "local-dir:")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def create_backbone(name: str, pretrained: str | None = "none", *, cache_dir: str | None = None) -> Backbone:
    """Build a Backbone.

    name: an open_clip model name ("ViT-B-32"), "cir-tiny", or a path to a model
        config JSON (registered with open_clip under the file's stem).
    pretrained: "none" / "" / None for random init; a local checkpoint file
        (open_clip / our export: .pt, .bin, .safetensors, ...); or an open_clip
        pretrained tag such as "openai" (downloaded by open_clip into cache_dir).
    A tag trained with QuickGELU (OpenAI's) switches to the "<name>-quickgelu"
    config when one exists (else forces QuickGELU), so the features are right;
    `Backbone.name` is the config actually used.
    A BLIP hub id ("Salesforce/blip-itm-large-coco") or save_pretrained folder
    gives a BlipBackbone (see cir.models.blip.create_blip_backbone for `pretrained`).
    """
    if _is_hugging_face_name(name):
        return create_blip_backbone(name, pretrained, cache_dir=cache_dir)
    model_name = _resolve_model_name(name)
    weights, force_quick_gelu, model_name = _resolve_pretrained(model_name, pretrained)
    model, preprocess_train, preprocess_val = open_clip.create_model_and_transforms(
        model_name, pretrained=weights, cache_dir=cache_dir, force_quick_gelu=force_quick_gelu
    )
    config = open_clip.get_model_config(model_name)
    return Backbone(
        model=model,
        name=model_name,
        pretrained=weights,
        tokenizer=_tokenizer(model_name, cache_dir),
        preprocess_train=preprocess_train,
        preprocess_val=preprocess_val,
        embed_dim=int(config["embed_dim"]),
    )


def _tokenizer(model_name: str, cache_dir: str | None) -> Callable:
    """open_clip's tokenizer for a model, shared between backbones because building the BPE vocabulary is slow.

    A config whose text_cfg.tokenizer_kwargs lists a `vocabulary` gets a WordTokenizer instead (cir.models.tokenizer).

    The key includes the text config, so a config re-registered under the same name gets a fresh tokenizer.
    """
    text_cfg = json.dumps((open_clip.get_model_config(model_name) or {}).get("text_cfg"), sort_keys=True)
    return _cached_tokenizer(model_name, cache_dir, text_cfg)


@functools.lru_cache(maxsize=16)
def _cached_tokenizer(model_name: str, cache_dir: str | None, text_cfg: str) -> Callable:
    cfg = json.loads(text_cfg) or {}
    kwargs = cfg.get("tokenizer_kwargs") or {}
    if VOCABULARY_KEY not in kwargs:
        return open_clip.get_tokenizer(model_name, cache_dir=cache_dir)
    tokenizer = WordTokenizer(context_length=cfg.get("context_length", 77), **kwargs)
    if cfg.get("vocab_size") != tokenizer.vocab_size:
        raise ValueError(
            f"model config {model_name!r}: text_cfg.vocab_size is {cfg.get('vocab_size')} but its "
            f"{len(tokenizer.words)}-word vocabulary needs {tokenizer.vocab_size} (words + pad, start, end)"
        )
    return tokenizer


def register_model_config(path: str | Path) -> str:
    """Register a model config JSON with open_clip; returns the model name (the file stem)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model config JSON not found: {path}")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"model config {path} is not valid JSON: {e}") from e
    missing = [k for k in _REQUIRED_CONFIG_KEYS if not isinstance(config, dict) or k not in config]
    if missing:
        raise ValueError(
            f"model config {path} lacks {missing}: an open_clip config needs {list(_REQUIRED_CONFIG_KEYS)}"
        )
    if open_clip.get_model_config(path.stem) != config:
        open_clip.add_model_config(path)
    return path.stem


def _is_hugging_face_name(name: str) -> bool:
    """A folder (save_pretrained output) or an "owner/repo" hub id that is no open_clip model name."""
    if name.endswith(".json") or name.startswith(_SCHEMAS) or name.replace("/", "-") in open_clip.list_models():
        return False
    return os.path.isdir(name) or bool(_HUB_ID.fullmatch(name))


def _resolve_model_name(name: str) -> str:
    if name.endswith(".json"):
        return register_model_config(name)
    if name.startswith(_SCHEMAS):
        return name
    cleaned = name.replace("/", "-")
    if cleaned not in open_clip.list_models():
        raise ValueError(
            f"unknown model {name!r}: use a name from open_clip.list_models() (e.g. 'ViT-B-32', 'ViT-L-14'), "
            "'cir-tiny', a path to a model config JSON, or a BLIP hub id ('Salesforce/blip-itm-large-coco') "
            "or existing save_pretrained folder"
        )
    return cleaned


def _resolve_pretrained(model_name: str, pretrained: str | None) -> tuple[str | None, bool, str]:
    """(weights for open_clip, force_quick_gelu, model name) for a `pretrained` argument."""
    if wants_no_weights(pretrained):
        return None, False, model_name
    pretrained = str(pretrained)
    if os.path.isfile(pretrained):
        return pretrained, False, model_name
    if is_path_like(pretrained):
        raise FileNotFoundError(f"pretrained checkpoint not found: {pretrained}")
    if model_name.startswith(_SCHEMAS):
        raise ValueError(f"model {model_name!r} brings its own weights: pass pretrained='none'")
    tags = open_clip.list_pretrained_tags_by_model(model_name)
    tag_cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
    if not tag_cfg:
        raise ValueError(
            f"unknown pretrained tag {pretrained!r} for model {model_name!r}: known tags {tags}; "
            "or pass 'none' for random init or a path to a checkpoint file"
        )
    if tag_cfg.get("quick_gelu") and not open_clip.get_model_config(model_name).get("quick_gelu"):
        variant = f"{model_name}-quickgelu"
        if open_clip.get_pretrained_cfg(variant, pretrained):
            log.info("pretrained %r was trained with QuickGELU: using model config %s", pretrained, variant)
            return pretrained, False, variant
        return pretrained, True, model_name
    return pretrained, False, model_name
