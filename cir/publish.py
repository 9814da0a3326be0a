"""`python -m cir.publish RUN_DIR|CKPT --out DIR`: a trained model as the folder open_clip's hub tooling writes.

Written so a later `cir export` subcommand can call `main` (or `publish`) as is.

The folder holds what open_clip.push_to_hf_hub uploads: open_clip_config.json
(the model config and preprocessing, written by open_clip's save_config_for_hf),
open_clip_model.safetensors (the merged weights) and README.md, a model card made
with open_clip's generate_readme whose every number comes from the run's own
records (run.json or the checkpoint's copy of it, and the metrics.json of the
evaluations of these very weights, matched by their fingerprint). It loads with
`open_clip.create_model_and_transforms("local-dir:DIR")`, with `model.pretrained=DIR`
in every cir command, and uploads with `hf upload ORG/NAME DIR .`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import open_clip
import torch
from omegaconf import OmegaConf
from open_clip.push_to_hf_hub import generate_readme, save_config_for_hf
from open_clip.transformer import QuickGELU

from cir.config import ConfigError, run_cli
from cir.io import atomic_folder
from cir.models.backbone import Backbone
from cir.models.blip import BlipBackbone
from cir.models.card import model_card
from cir.models.export import export_open_clip
from cir.models.factory import create_backbone
from cir.models.weight_files import HUB_CONFIG, HUB_WEIGHTS, RUN_RECORD
from cir.tasks.supervised import _load_lightning_checkpoint  # any TAT / pretraining checkpoint, LoRA merged

CKPT_SUFFIX = ".ckpt"


def load_trained(source: Path) -> tuple[Backbone, dict[str, Any]]:
    """The trained backbone (LoRA merged) and its run record, from a cir.fit run folder or one of its checkpoints."""
    if source.is_dir():
        record_path = source / RUN_RECORD
        if not record_path.is_file():
            raise FileNotFoundError(f"{record_path} not found: publish a finished cir.fit run folder or a checkpoint .ckpt")
        record = json.loads(record_path.read_text(encoding="utf-8"))
        export = Path(record["export"])
        export = export if export.is_absolute() or export.exists() else source / export.name
        if not export.is_file():
            raise FileNotFoundError(f"{export} not found: run.json names it as this run's export")
        return create_backbone(record["export_model_name"], str(export)), record
    if source.suffix != CKPT_SUFFIX or not source.is_file():
        raise FileNotFoundError(f"{source}: expected a cir.fit run folder (with run.json) or a checkpoint .ckpt")
    record = torch.load(source, map_location="cpu", weights_only=False, mmap=True).get("cir_run") or {}
    if not record:
        raise ConfigError(f"{source} holds no run record (cir_run): not a checkpoint written by cir.fit")
    cfg = OmegaConf.create({"model": {"name": record["backbone"]["name"]}})
    return _load_lightning_checkpoint(source, cfg), record


def evaluations(fingerprint: str, roots: list[Path]) -> list[tuple[Path, dict[str, Any]]]:
    """The metrics.json files under `roots` whose meta/fingerprint is these weights' (evaluations of this export)."""
    found = []
    for root in roots:
        for path in sorted(root.rglob("metrics.json")):
            try:
                metrics = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if isinstance(metrics, dict) and metrics.get("meta/fingerprint") == fingerprint:
                found.append((path, metrics))
    return found


def publish(source: str | Path, out: str | Path, eval_roots: list[str | Path] | None = None) -> Path:
    """Write the hub folder for `source` (run folder or checkpoint) at `out`, replacing one there; returns `out`.

    Evaluations are looked for under `eval_roots` (default: the folder that holds the run folder, where a grid
    puts its evaluation stages). The folder is written beside `out` and renamed into place.
    """
    source, out = Path(source), Path(out)
    backbone, record = load_trained(source)
    if isinstance(backbone, BlipBackbone):
        raise ConfigError(f"{source}: a BLIP run's export/ folder is already transformers' hub format: upload it as is")
    run_dir = source if source.is_dir() else source.parent.parent
    roots = [Path(r) for r in eval_roots] if eval_roots else [run_dir.parent]
    fingerprint = backbone.fingerprint()
    model_cfg = dict(open_clip.get_model_config(backbone.name))
    if any(isinstance(module, QuickGELU) for module in backbone.model.modules()):
        model_cfg["quick_gelu"] = True  # a forced QuickGELU (no -quickgelu config) must survive the trip
    card = model_card(backbone.name, record, evaluations(fingerprint, roots), fingerprint)
    with atomic_folder(out) as tmp:
        export_open_clip(backbone, tmp / HUB_WEIGHTS)
        save_config_for_hf(backbone.model, tmp / HUB_CONFIG, model_config=model_cfg)
        (tmp / "README.md").write_text(generate_readme(card, out.name), encoding="utf-8")
    return out


def main(path: str | None, args: list[str]) -> Path:
    """usage: python -m cir.publish RUN_DIR|CKPT --out DIR [--evals DIR ...] [--debug]

    Writes DIR as open_clip's hub tooling does (open_clip_config.json, open_clip_model.safetensors, README.md).
    Evaluations of the same weights (metrics.json with their fingerprint) are looked for under --evals
    (default: the folder holding the run folder)."""
    parser = argparse.ArgumentParser(prog="python -m cir.publish")
    parser.add_argument("source")
    parser.add_argument("--out", required=True)
    parser.add_argument("--evals", nargs="*", default=None)
    parsed = parser.parse_args([a for a in (path, *args) if a is not None])
    out = publish(parsed.source, parsed.out, parsed.evals)
    print(f"wrote {out}: {HUB_CONFIG}, {HUB_WEIGHTS}, README.md")
    print(f"load: open_clip.create_model_and_transforms('local-dir:{out}'), or model.pretrained={out} in cir")
    print(f"upload: hf upload ORG/NAME {out} .")
    return out


if __name__ == "__main__":
    run_cli(main, passthrough=True)  # the command parses its own flags
