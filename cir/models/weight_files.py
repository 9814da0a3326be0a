"""What a local weight file or folder says about the model it belongs to: its activation, its config, its preprocessing.

OpenAI's CLIP was trained with QuickGELU; open_clip's plain configs ("ViT-L-14")
use GELU and load such weights without complaint, giving wrong features. The
`openai` tag switches to the "-quickgelu" config; a file given as `pretrained`
carries no tag, so this module reads what the file (or what lies beside it) says.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import open_clip

# Open_clip's hub folder: what open_clip.push_to_hf_hub writes and `local-dir:` reads.
HUB_CONFIG = "open_clip_config.json"
HUB_WEIGHTS = "open_clip_model.safetensors"
RUN_RECORD = "run.json"


def hub_folder_config(folder: str | Path) -> dict[str, Any] | None:
    """The open_clip_config.json of a hub folder ({"model_cfg", "preprocess_cfg"}), None when `folder` is none."""
    path = Path(folder) / HUB_CONFIG
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: not a readable open_clip config ({err})") from None
    if not isinstance(config, dict) or not isinstance(config.get("model_cfg"), dict):
        raise ValueError(f"{path}: an open_clip hub config needs a `model_cfg` mapping")
    return config


def is_torchscript(path: Path) -> bool:
    """A TorchScript archive (OpenAI's released ViT-L-14.pt and friends are), told from its zip members."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") or "/code/" in name for name in archive.namelist())


def file_quick_gelu(path: str | Path) -> bool | None:
    """Whether the weights in `path` were trained with QuickGELU: True / False where the file tells, else None.

    Told by: OpenAI's release (a TorchScript archive: open_clip's own files never are) -> True; a run folder's
    run.json beside the file (our export: `export_model_name`) or a hub folder's open_clip_config.json -> their
    config's `quick_gelu`.
    """
    path = Path(path)
    if is_torchscript(path):
        return True
    hub = hub_folder_config(path.parent)
    if hub is not None:
        return bool(hub["model_cfg"].get("quick_gelu", False))
    record = path.parent / RUN_RECORD
    if record.is_file():
        try:
            name = json.loads(record.read_text(encoding="utf-8")).get("export_model_name")
        except (OSError, ValueError, AttributeError):
            return None
        if isinstance(name, str):
            config = open_clip.get_model_config(name)
            return None if config is None else bool(config.get("quick_gelu", False))
    return None
