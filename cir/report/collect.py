"""Find evaluation results under run, grid or evaluation folders and label each: backbone, method, cell, split.

A grid cell's cell.json gives the labels (`labels.backbone`, `labels.method`,
its axes); otherwise they come from metrics.json's `meta/` entries and, for a
fine-tuned model, the run.json next to the export it evaluated.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CELL_FILE = "cell.json"  # written by cir.grid in each cell's folder
ANCHOR_METHODS = {"text": "Slerp + TAT", "image": "TAT, image anchor", "none": "TAT, no anchor"}


@dataclass
class Result:
    """One row of the report: a model x method on one split, with its metrics per benchmark."""

    backbone: str
    method: str
    cell: str
    split: str
    axes: dict[str, str] = field(default_factory=dict)
    metrics: dict[tuple[str, str], float] = field(default_factory=dict)  # (benchmark, metric) -> value
    sources: list[str] = field(default_factory=list)

    @property
    def key(self) -> tuple[str, str, str, str]:
        return self.backbone, self.method, self.cell, self.split


def backbone_label(model: str) -> str:
    """The paper's name for a backbone (open_clip names, their -quickgelu variants, BLIP hub ids)."""
    name = model.rsplit("/", 1)[-1] if "blip" not in model.lower() else model
    if "blip" in name.lower():
        return "BLIP ViT-L/16"
    for arch in ("ViT-B-32", "ViT-B-16", "ViT-L-14", "ViT-H-14"):
        if name.startswith(arch):
            return arch[:5] + "/" + arch[6:]
    return name


def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def method_label(pretrained: str) -> str:
    """Slerp on the weights as published, or what the fine-tuning run that wrote the export says it was."""
    export = Path(pretrained)
    record = export.parent / "run.json"  # cir.fit writes export.pt (or the BLIP export/ folder) beside run.json
    if not (export.exists() and record.is_file()):
        return "Slerp"
    run = _read(record)
    if run.get("task") == "supervised":
        return "supervised"
    return ANCHOR_METHODS.get(run.get("config", {}).get("model", {}).get("anchor", ""), "Slerp + TAT")


def cell_record(folder: Path, roots: list[Path]) -> dict[str, Any] | None:
    """The cell.json of the grid cell holding `folder`, if any (looked for up to the folders given)."""
    for parent in [folder, *folder.parents]:
        if (parent / CELL_FILE).is_file():
            return _read(parent / CELL_FILE)
        if parent in roots:
            break
    return None


def paper_method_metrics(metrics: dict[str, Any]) -> dict[tuple[str, str, str], float]:
    """(benchmark, split, metric) -> value at the paper's Slerp alpha (meta/paper_method) or a learned method."""
    method = metrics.get("meta/paper_method")
    found: dict[tuple[str, str, str], float] = {}
    for key, value in metrics.items():
        parts = key.split("/")
        if key.startswith("meta/") or len(parts) != 4 or not isinstance(value, (int, float)):
            continue
        benchmark, split, name, metric = parts
        if name == method or name == "slerp_learned":
            found[(benchmark, split, metric)] = float(value)
    return found


def collect(folders: list[Path]) -> list[Result]:
    """Every metrics.json under `folders`, merged into rows (one per backbone x method x cell x split), sorted."""
    roots = [f.resolve() for f in folders]
    rows: dict[tuple[str, str, str, str], Result] = {}
    files = sorted({p.resolve() for folder in roots for p in ([folder] if folder.is_file() else folder.rglob("metrics.json"))})
    for path in files:
        metrics = _read(path)
        cell = cell_record(path.parent, roots)
        labels = (cell or {}).get("labels", {})
        backbone = labels.get("backbone") or backbone_label(str(metrics.get("meta/model", "?")))
        method = labels.get("method") or method_label(str(metrics.get("meta/pretrained", "")))
        for (benchmark, split, metric), value in paper_method_metrics(metrics).items():
            name = cell["cell"] if cell else ""
            row = rows.setdefault((backbone, method, name, split),
                                  Result(backbone, method, name, split, dict((cell or {}).get("axes", {}))))
            row.metrics[(benchmark, metric)] = value
            if str(path) not in row.sources:
                row.sources.append(str(path))
    return [rows[key] for key in sorted(rows)]
