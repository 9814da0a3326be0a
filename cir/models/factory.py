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
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import open_clip

from cir.config import ConfigError
from cir.models.backbone import Backbone, is_path_like, wants_no_weights
from cir.models.blip import create_blip_backbone
from cir.models.clip_tokenizer import fast_tokenizer
from cir.models.hub_cache import fetch_pretrained
from cir.models.tokenizer import VOCABULARY_KEY, WordTokenizer
from cir.models.weight_files import (
    HUB_CONFIG,
    HUB_WEIGHTS,
    file_quick_gelu,
    hub_folder_config,
    is_torchscript,
)

log = logging.getLogger(__name__)

_REQUIRED_CONFIG_KEYS = ("embed_dim", "vision_cfg", "text_cfg")
_SCHEMAS = ("hf-hub:", "local-dir:")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode")  # create_model_and_transforms' image_* arguments


def create_backbone(name: str, pretrained: str | None = "none", *, cache_dir: str | None = None) -> Backbone:
    """Build a Backbone.

    name: an open_clip model name ("ViT-B-32"), "cir-tiny", or a path to a model
        config JSON (registered with open_clip under the file's stem).
    pretrained: "none" / "" / None for random init; a local checkpoint file
        (open_clip / our export: .pt, .bin, .safetensors, ...); or an open_clip
        pretrained tag such as "openai" (downloaded by open_clip into cache_dir).
        A folder open_clip's hub tooling wrote (open_clip_config.json and
        open_clip_model.safetensors, e.g. `python -m cir.publish`) gives its
        weights, activation and preprocessing; `name` must be its architecture.
    A tag trained with QuickGELU (OpenAI's) switches to the "<name>-quickgelu"
    config when one exists (else forces QuickGELU), so the features are right; so
    does a file that is recognisably OpenAI's (cir.models.weight_files), and a file
    that may be OpenAI's but does not say is refused, naming the "-quickgelu" name.
    A tag's weights come from the cache first (HF_HUB_OFFLINE=1 works with a
    filled cache); a missing entry is one line naming the command that fetches it.
    `Backbone.name` is the config actually used.
    A BLIP hub id ("Salesforce/blip-itm-large-coco") or save_pretrained folder
    gives a BlipBackbone (see cir.models.blip.create_blip_backbone for `pretrained`).
    """
    if _is_hugging_face_name(name):
        return create_blip_backbone(name, pretrained, cache_dir=cache_dir)
    resolved = _resolve_pretrained(_resolve_model_name(name), pretrained)
    model_name = resolved.model_name
    if resolved.tag_cfg:
        fetch_pretrained(model_name, str(pretrained), resolved.tag_cfg, cache_dir)
    with warnings.catch_warnings():
        if not resolved.weights_only:  # torch says how it reads a TorchScript archive, which is no fault of the user's
            warnings.filterwarnings("ignore", message=".*TorchScript archive|.*torch.jit.load.* is deprecated")
        model, preprocess_train, preprocess_val = open_clip.create_model_and_transforms(
            model_name, pretrained=resolved.weights, cache_dir=cache_dir, force_quick_gelu=resolved.force_quick_gelu,
            weights_only=resolved.weights_only,
            **{f"image_{key}": value for key, value in resolved.preprocess.items()},
        )
    config = open_clip.get_model_config(model_name)
    return Backbone(
        model=model,
        name=model_name,
        pretrained=resolved.weights,
        tokenizer=_tokenizer(model_name, cache_dir),
        preprocess_train=preprocess_train,
        preprocess_val=preprocess_val,
        embed_dim=int(config["embed_dim"]),
    )


def _tokenizer(model_name: str, cache_dir: str | None) -> Callable:
    """open_clip's tokenizer for a model, shared between backbones because building the BPE vocabulary is slow.

    CLIP's BPE tokenizer comes as cir.models.clip_tokenizer.ClipBPETokenizer: the same ids, faster.

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
        return fast_tokenizer(open_clip.get_tokenizer(model_name, cache_dir=cache_dir))
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


class ResolvedWeights(NamedTuple):
    """What open_clip gets for a `pretrained` value: weights (tag or file), activation, config name, preprocessing."""

    weights: str | None
    force_quick_gelu: bool
    model_name: str
    preprocess: dict[str, Any] = {}
    tag_cfg: dict[str, Any] = {}
    # torch.load refuses TorchScript archives (OpenAI's release) with weights_only; torch.jit.load reads them, and
    # runs no pickled Python code
    weights_only: bool = True


def _resolve_pretrained(model_name: str, pretrained: str | None) -> ResolvedWeights:
    """The weights, activation and config name for a `pretrained` argument (see create_backbone)."""
    if wants_no_weights(pretrained):
        return ResolvedWeights(None, False, model_name)
    pretrained = str(pretrained)
    if os.path.isdir(pretrained) and not model_name.startswith(_SCHEMAS):
        return _hub_folder(model_name, Path(pretrained))
    if os.path.isfile(pretrained):
        return _weight_file(model_name, pretrained)
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
    if tag_cfg.get("quick_gelu"):
        force, variant = _quick_gelu(model_name, pretrained)
        if variant != model_name:
            log.info("pretrained %r was trained with QuickGELU: using model config %s", pretrained, variant)
        return ResolvedWeights(pretrained, force, variant, tag_cfg=open_clip.get_pretrained_cfg(variant, pretrained))
    return ResolvedWeights(pretrained, False, model_name, tag_cfg=tag_cfg)


def _quick_gelu(model_name: str, tag: str | None = None) -> tuple[bool, str]:
    """(force_quick_gelu, config name) for QuickGELU weights: the "-quickgelu" config where open_clip has one
    (for `tag`, when given), else the config itself with QuickGELU forced."""
    config = open_clip.get_model_config(model_name) or {}
    if config.get("quick_gelu"):
        return False, model_name
    variant = f"{model_name}-quickgelu"
    known = open_clip.get_pretrained_cfg(variant, tag) if tag else variant in open_clip.list_models()
    return (False, variant) if known else (True, model_name)


def _weight_file(model_name: str, path: str) -> ResolvedWeights:
    """A local checkpoint: QuickGELU when the file says it is OpenAI's (or its run / hub folder says so); refused when
    the model has OpenAI weights (an `openai` tag) and nothing tells which activation the file was trained with."""
    weights_only = not is_torchscript(Path(path))
    if model_name.startswith(_SCHEMAS) or (open_clip.get_model_config(model_name) or {}).get("quick_gelu"):
        return ResolvedWeights(path, False, model_name, weights_only=weights_only)
    quick = file_quick_gelu(path)
    if quick is None and "openai" in open_clip.list_pretrained_tags_by_model(model_name):
        raise ConfigError(
            f"config key `model.pretrained`: cannot tell whether {path} holds OpenAI's {model_name} weights (QuickGELU) "
            f"or GELU-trained ones: for OpenAI's use model.name={model_name}-quickgelu; for others load them by their "
            "open_clip tag or from a folder with open_clip_config.json (python -m cir.publish writes one)"
        )
    if not quick:
        return ResolvedWeights(path, False, model_name)
    force, variant = _quick_gelu(model_name)
    log.info("%s holds QuickGELU weights: using model config %s", path, variant)
    return ResolvedWeights(path, force, variant, weights_only=weights_only)


def _hub_folder(model_name: str, folder: Path) -> ResolvedWeights:
    """An open_clip hub folder (open_clip_config.json + open_clip_model.safetensors) as `pretrained`: its weights,
    activation and preprocessing, for a `model.name` whose config is the folder's architecture."""
    hub = hub_folder_config(folder)
    weights = folder / HUB_WEIGHTS
    if hub is None or not weights.is_file():
        raise FileNotFoundError(
            f"pretrained folder {folder} is no open_clip hub folder: it needs {HUB_CONFIG} and {HUB_WEIGHTS} "
            "(python -m cir.publish writes one)"
        )
    folder_cfg = dict(hub["model_cfg"])
    quick = bool(folder_cfg.pop("quick_gelu", False))
    named = dict(open_clip.get_model_config(model_name) or {})
    named.pop("quick_gelu", None)
    if named != folder_cfg:
        raise ConfigError(
            f"config key `model.name`: {model_name!r} is not the architecture of {folder / HUB_CONFIG} (its model_cfg "
            "differs); set model.name to the model the folder was exported from"
        )
    force, name = _quick_gelu(model_name) if quick else (False, model_name)
    # JSON gives lists; tuples, as open_clip's own defaults are, keep the transform (and its feature-cache key) the same
    preprocess = {k: tuple(v) if isinstance(v, list) else v
                  for k, v in (hub.get("preprocess_cfg") or {}).items() if k in _PREPROCESS_KEYS}
    return ResolvedWeights(str(weights), force, name, preprocess)
