"""What made a run: recorded beside every checkpoint and inside it, so a number can be traced to its data."""

from __future__ import annotations

import functools
import platform
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("cir", "torch", "torchvision", "lightning", "open_clip_torch", "peft", "torchmetrics", "webdataset", "omegaconf")


@functools.lru_cache(maxsize=1)
def source_commit() -> str:
    """The git commit of the cir source that runs ("<hash>-dirty" with uncommitted changes to tracked files), or
    "unknown" outside a git checkout (an installed wheel): a published model names the code that trained it."""
    folder = str(Path(__file__).resolve().parent)
    try:
        head = subprocess.run(["git", "-C", folder, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "-C", folder, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return head.stdout.strip() + ("-dirty" if dirty else "")


def package_versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0], "platform": platform.platform(), "cir_commit": source_commit()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def run_record(config: dict[str, Any], initial_fingerprint: str, samples_seen: int, global_step: int,
               config_changes: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Backbone and weights, training data, how much of it was seen, the resolved config, versions.

    `config_changes`: keys changed on resume, each with the global step it took effect at (cir.resume),
    so `config` (the latest) never stands for settings the earlier steps were trained with.
    """
    return {
        "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "task": config.get("task"),
        "backbone": {
            "name": config["model"]["name"],
            "pretrained": config["model"]["pretrained"],
            "initial_fingerprint": initial_fingerprint,
        },
        "init_from": config.get("init_from"),
        "train_data": config.get("data", {}),
        "samples_seen": samples_seen,
        "global_step": global_step,
        "config": config,
        "config_changes": config_changes or [],
        "versions": package_versions(),
    }
