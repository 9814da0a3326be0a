"""`python -m cir.browse`: start-up problems are one line naming the cause, before any server starts."""

from __future__ import annotations

import importlib.util

import pytest

from cir.browse.__main__ import main
from cir.config import ConfigError


@pytest.mark.skipif(importlib.util.find_spec("gradio") is None, reason='the app extra is not installed: pip install -e ".[app]"')
def test_a_folder_without_images_stops_the_start_with_its_path(tmp_path):
    with pytest.raises(ConfigError, match=f"gallery folder {tmp_path}: no images"):
        main(None, ["model.name=cir-tiny", "model.pretrained=none", f"browse.folder={tmp_path}", "eval.cache_dir=null"])


def test_a_mistyped_browse_key_is_named():
    with pytest.raises(ConfigError, match="browse.topk"):
        main(None, ["browse.topk=5"])
