"""Export a (LoRA-tuned) Backbone in its library's own format, so a TAT model can be shared without cir or peft.

An open_clip backbone becomes a checkpoint file that loads with
`open_clip.create_model_and_transforms(backbone.name, pretrained=path)`
(strictly) and with `create_backbone(backbone.name, path)`; a BLIP backbone a
save_pretrained folder that `BlipForImageTextRetrieval.from_pretrained` and
`create_backbone(folder)` load. `export_backbone` picks the format;
`export_model_name` says which model name loads it.
"""

from __future__ import annotations

import copy
from pathlib import Path

import open_clip
import torch
from safetensors.torch import save_file

from cir.io import atomic_folder, atomic_path, write_json
from cir.models.backbone import Backbone
from cir.models.blip import BlipBackbone
from cir.models.lora import has_lora, merge_lora


def merged_copy(backbone: Backbone) -> Backbone:
    """`backbone` with its adapters merged: a deep copy when it has any, so training can go on with the original."""
    if has_lora(backbone.model):
        backbone = copy.deepcopy(backbone)
        merge_lora(backbone)
    return backbone


def merged_state_dict(backbone: Backbone) -> dict[str, torch.Tensor]:
    """The model state_dict of `backbone` with adapters merged, on CPU; `backbone` is left untouched."""
    state = merged_copy(backbone).model.state_dict()
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}


def export_backbone(backbone: Backbone, out_dir: str | Path, stem: str = "export") -> Path:
    """The merged backbone under `out_dir` in its own format; returns where.

    open_clip: `<out_dir>/<stem>.pt` (export_open_clip); BLIP: the folder
    `<out_dir>/<stem>` (export_pretrained).
    """
    out_dir = Path(out_dir)
    if isinstance(backbone, BlipBackbone):
        return export_pretrained(backbone, out_dir / stem)
    return export_open_clip(backbone, out_dir / f"{stem}.pt")


def export_pretrained(backbone: BlipBackbone, folder: str | Path) -> Path:
    """Write the merged model, tokenizer and image processor as a save_pretrained folder; returns the folder.

    Written beside `folder` and renamed into place, so a kill never leaves a
    half-written export; an existing export there is replaced whole.
    """
    merged = merged_copy(backbone)
    with atomic_folder(folder) as tmp:
        merged.save_pretrained(tmp)
    return Path(folder)


def export_open_clip(backbone: Backbone, path: str | Path) -> Path:
    """Write the merged state_dict to `path` atomically (.safetensors or torch.save otherwise); returns the path.

    Works on a deep copy, so training can go on with `backbone` afterwards. A BLIP
    backbone's file loads with `create_backbone(backbone.name, path)`; its shareable
    export is export_backbone's folder.
    """
    state = merged_state_dict(backbone)
    with atomic_path(path) as tmp:
        if Path(path).suffix == ".safetensors":
            save_file(state, tmp)
        else:
            torch.save(state, tmp)
    return Path(path)


def export_model_name(backbone: Backbone, configured: str, out_dir: str | Path) -> str:
    """The model name to load the export with, in any process.

    A model given as a config JSON (`model.name=PATH.json`) is known to open_clip by
    the file's stem only in the process that registered it: its config is copied
    beside the export as `<stem>.json` and the name is that copy's absolute path,
    which every command resolves (and a later edit of the original cannot change).
    Any other model keeps the backbone's own name (e.g. ViT-L-14-quickgelu for
    OpenAI weights).
    """
    if not configured.endswith(".json"):
        return backbone.name
    path = Path(out_dir).resolve() / f"{Path(configured).stem}.json"
    write_json(path, open_clip.get_model_config(backbone.name))
    return str(path)
