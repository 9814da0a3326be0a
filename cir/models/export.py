"""Export a (LoRA-tuned) Backbone as a plain open_clip checkpoint.

The file loads with `open_clip.create_model_and_transforms(backbone.name,
pretrained=path)` (strictly) and with `create_backbone(backbone.name, path)`,
so a TAT model can be shared without cir or peft.
"""

from __future__ import annotations

import copy
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from cir.models.backbone import Backbone
from cir.models.lora import has_lora, merge_lora


def merged_state_dict(backbone: Backbone) -> dict[str, torch.Tensor]:
    """The open_clip state_dict of `backbone` with adapters merged, on CPU; `backbone` is left untouched."""
    if has_lora(backbone.model):
        backbone = copy.deepcopy(backbone)
        merge_lora(backbone)
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in backbone.model.state_dict().items()}


def export_open_clip(backbone: Backbone, path: str | Path) -> Path:
    """Write the merged state_dict to `path` atomically (.safetensors or torch.save otherwise); returns the path.

    Works on a deep copy, so training can go on with `backbone` afterwards.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = merged_state_dict(backbone)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        if path.suffix == ".safetensors":
            save_file(state, tmp)
        else:
            torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
