"""Backbones (open_clip CLIPs, transformers BLIP), LoRA adapters (peft) and export back to their own formats.

Importing this package registers the shipped model configs (e.g. "cir-tiny",
a 2-layer random CLIP for tests and smoke runs) with open_clip.
"""

from pathlib import Path

import open_clip

from cir.models.attention import SplitAttention, fuse_attention, split_attention
from cir.models.backbone import Backbone, train_transform, weights_fingerprint
from cir.models.blip import BlipBackbone, create_blip_backbone
from cir.models.export import (
    export_backbone,
    export_open_clip,
    export_pretrained,
    merged_state_dict,
)
from cir.models.factory import create_backbone, register_model_config
from cir.models.lora import apply_lora, count_parameters, has_lora, merge_lora
from cir.models.towers import TOWERS, tower_parameter_names, tower_roots

CONFIG_DIR = Path(__file__).parent / "configs"
open_clip.add_model_config(CONFIG_DIR)

__all__ = [
    "CONFIG_DIR",
    "TOWERS",
    "Backbone",
    "BlipBackbone",
    "SplitAttention",
    "apply_lora",
    "count_parameters",
    "create_backbone",
    "create_blip_backbone",
    "export_backbone",
    "export_open_clip",
    "export_pretrained",
    "fuse_attention",
    "has_lora",
    "merge_lora",
    "merged_state_dict",
    "register_model_config",
    "split_attention",
    "tower_parameter_names",
    "tower_roots",
    "train_transform",
    "weights_fingerprint",
]
