"""Pretrained tags on offline nodes: open_clip's weights from the Hugging Face cache, or one line saying how to fetch them.

Compute nodes often have no internet: weights are fetched on a login node into the
cache (`model.cache_dir`, else huggingface_hub's default) and read there with
HF_HUB_OFFLINE=1. open_clip resolves a tag through its pretrained config: an
`hf_hub` entry ("org/repo/" or "org/repo/file") goes through hf_hub_download
(open_clip.pretrained.download_pretrained), a bare `url` into cache_dir.
"""

from __future__ import annotations

import os
import shlex
from typing import Any

from huggingface_hub import constants
from open_clip.constants import HF_WEIGHTS_NAME
from open_clip.pretrained import download_pretrained


def fetch_command(model_name: str, tag: str, tag_cfg: dict[str, Any], cache_dir: str | None) -> str:
    """The command that puts a tag's weights where open_clip looks for them, for a machine with internet."""
    if tag_cfg.get("hf_hub"):
        repo, filename = os.path.split(tag_cfg["hf_hub"])
        cache = f" --cache-dir {shlex.quote(cache_dir)}" if cache_dir else ""
        return f"hf download {repo} {filename or HF_WEIGHTS_NAME}{cache}"
    cache = f", cache_dir={cache_dir!r}" if cache_dir else ""
    return f"python -c \"import open_clip; open_clip.create_model({model_name!r}, pretrained={tag!r}{cache})\""


def fetch_pretrained(model_name: str, tag: str, tag_cfg: dict[str, Any], cache_dir: str | None) -> str:
    """The local file of a pretrained tag: from the cache (downloading it first when online).

    Fails in one line naming the model, the tag, the cache and the command that fetches the weights.
    """
    try:
        return download_pretrained(tag_cfg, cache_dir=cache_dir)
    except Exception as err:  # open_clip wraps every hub or url failure differently; the fix is the same
        where = cache_dir or (constants.HF_HUB_CACHE if tag_cfg.get("hf_hub") else "open_clip's cache")
        offline = " (HF_HUB_OFFLINE is set)" if constants.is_offline_mode() else ""
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise FileNotFoundError(
            f"pretrained weights {model_name} / {tag} are not in the cache {where}{offline} and could not be fetched "
            f"({reason[:200]}): on a machine with internet run `{fetch_command(model_name, tag, tag_cfg, cache_dir)}`, "
            "then run here with model.cache_dir set to that cache"
        ) from err
