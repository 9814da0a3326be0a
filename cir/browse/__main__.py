"""`python -m cir.browse CONFIG [key=value ...] [--debug]`: a local page to query a gallery and compare two models.

CONFIG is an evaluation config (model, benchmark root and split, feature cache);
`browse.compare.name=...` adds a second model, `browse.folder=DIR` shows a folder
of images instead of the split. Needs the app extra: pip install -e ".[app]".
"""

from __future__ import annotations

import importlib.util

from cir.config import ConfigError, load_config, run_cli
from cir.schema import BrowseConfig


def main(path: str | None, overrides: list[str]) -> None:
    """usage: python -m cir.browse CONFIG [key=value ...] [--debug]"""
    cfg = load_config(BrowseConfig, path, overrides)
    if importlib.util.find_spec("gradio") is None:
        raise ConfigError('the page needs Gradio: pip install -e ".[app]"')
    from cir.browse.app import launch
    from cir.browse.browser import open_browser
    from cir.browse.gallery import GalleryError

    try:
        browser = open_browser(cfg)
    except GalleryError as err:  # at start there is no page yet to show it on: one line, as config errors
        raise ConfigError(str(err)) from err
    launch(browser, cfg.browse.host, cfg.browse.port)


if __name__ == "__main__":
    run_cli(main)
