"""Find evaluation results under run, grid or evaluation folders and label each: backbone, method, cell, split.

A grid cell's cell.json gives the labels (`labels.backbone`, `labels.method`,
its axes); otherwise they come from metrics.json's `meta/` entries and, for a
fine-tuned model, the run.json next to the export it evaluated.

Evaluations with the same labels merge into one row where they report different numbers (CIRR in one folder,
CIRCO in another). Where two report the same number, no run is dropped: the row splits by the weights
(`run` = "weights <fingerprint>"), and where the same weights were scored twice, by the run folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CELL_FILE = "cell.json"  # written by cir.grid in each cell's folder
ANCHOR_METHODS = {"text": "Slerp + TAT", "image": "TAT, image anchor", "none": "TAT, no anchor"}
# What an export's run.json `task` made, for tasks other than tat (whose label is its anchor's)
TASK_METHODS = {"supervised": "supervised", "pretrain": "contrastive pretraining"}


@dataclass
class Result:
    """One row of the report: a model x method on one split, with its metrics per benchmark."""

    backbone: str
    method: str
    cell: str
    split: str
    axes: dict[str, str] = field(default_factory=dict)
    metrics: dict[tuple[str, str], float | bool] = field(default_factory=dict)  # (benchmark, metric) -> value
    sources: list[str] = field(default_factory=list)
    run: str = ""  # what tells this row from another with the same labels (weights or folder); empty if none does

    @property
    def key(self) -> tuple[str, str, str, str, str]:
        return self.backbone, self.method, self.cell, self.split, self.run


class ReportError(ValueError):
    """A metrics.json the report cannot read: the message names the file."""


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
    """A JSON object from `path`; anything else (truncated, not JSON, `[]`) is one line naming the file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ReportError(f"{path}: cannot be read as JSON ({err})") from None
    if not isinstance(data, dict):
        raise ReportError(f"{path}: should hold a JSON object of results, found {type(data).__name__}")
    return data


def method_label(pretrained: str) -> str:
    """Slerp on the weights as published, or what the fine-tuning run that wrote the export says it was."""
    export = Path(pretrained)
    record = export.parent / "run.json"  # cir.fit writes export.pt (or the BLIP export/ folder) beside run.json
    if not (export.exists() and record.is_file()):
        return "Slerp"
    run = _read(record)
    task = run.get("task")
    if task != "tat":
        return TASK_METHODS.get(task, str(task))
    anchor = run.get("config", {}).get("model", {}).get("anchor", "text")  # FitConfig's default
    return ANCHOR_METHODS.get(anchor, f"TAT, anchor {anchor}")


def cell_record(folder: Path, roots: list[Path]) -> dict[str, Any] | None:
    """The cell.json of the grid cell holding `folder`, if any (looked for up to the folders given)."""
    for parent in [folder, *folder.parents]:
        if (parent / CELL_FILE).is_file():
            return _read(parent / CELL_FILE)
        if parent in roots:
            break
    return None


def paper_method_metrics(metrics: dict[str, Any]) -> dict[tuple[str, str, str], float | bool]:
    """(benchmark, split, metric) -> value at the paper's Slerp alpha (meta/paper_method) or a learned method;
    a boolean stays a boolean (the table shows it as true / false, not 1.00)."""
    method = metrics.get("meta/paper_method")
    found: dict[tuple[str, str, str], float | bool] = {}
    for key, value in metrics.items():
        parts = key.split("/")
        if key.startswith("meta/") or len(parts) != 4 or not isinstance(value, (int, float)):
            continue
        benchmark, split, name, metric = parts
        if name == method or name == "slerp_learned":
            found[(benchmark, split, metric)] = value if isinstance(value, bool) else float(value)
    return found


def split_label(metrics: dict[str, Any], split: str) -> str:
    """The split, marked where eval.missing_images=skip left images out (meta/missing_images/...): such numbers are
    not comparable with published ones, and a split label no paper has keeps them out of the paper comparison."""
    counts = {kind: sum(int(v) for k, v in metrics.items() if k.startswith(f"meta/missing_images/{kind}/")
                        and k.endswith(f"/{split}")) for kind in ("gallery_removed", "queries_dropped")}
    if not any(counts.values()):
        return split
    return f"{split}, {counts['gallery_removed']} images and {counts['queries_dropped']} queries skipped (not comparable)"


@dataclass
class _Evaluation:
    """One metrics.json with its labels, before rows are formed."""

    path: Path
    labels: tuple[str, str, str, str]  # backbone, method, cell, split
    axes: dict[str, str]
    fingerprint: str
    metrics: dict[tuple[str, str], float | bool]


def _evaluations(path: Path, roots: list[Path]) -> list[_Evaluation]:
    metrics = _read(path)
    cell = cell_record(path.parent, roots)
    labels = (cell or {}).get("labels", {})
    backbone = labels.get("backbone") or backbone_label(str(metrics.get("meta/model", "?")))
    method = labels.get("method") or method_label(str(metrics.get("meta/pretrained", "")))
    by_split: dict[str, dict[tuple[str, str], float | bool]] = {}
    for (benchmark, split, metric), value in paper_method_metrics(metrics).items():
        by_split.setdefault(split_label(metrics, split), {})[(benchmark, metric)] = value
    name = cell["cell"] if cell else ""
    return [_Evaluation(path, (backbone, method, name, split), dict((cell or {}).get("axes", {})),
                        str(metrics.get("meta/fingerprint", "")), values) for split, values in by_split.items()]


def _overlap(group: list[_Evaluation]) -> bool:
    """Whether two evaluations of `group` report the same (benchmark, metric): merging would drop one."""
    seen: set[tuple[str, str]] = set()
    for evaluation in group:
        if seen & evaluation.metrics.keys():
            return True
        seen |= evaluation.metrics.keys()
    return False


def _run_labels(group: list[_Evaluation], roots: list[Path]) -> list[str]:
    """Per evaluation of one label group: "" where they merge cleanly, else the weights, else the folder."""
    if not _overlap(group):
        return [""] * len(group)
    weights = {}
    for evaluation in group:
        weights.setdefault(evaluation.fingerprint, []).append(evaluation)
    if len(weights) > 1 and not any(_overlap(same) for same in weights.values()):
        return [f"weights {e.fingerprint[:12]}" if e.fingerprint else "weights unrecorded" for e in group]
    return [_folder(e.path.parent, roots) for e in group]


def _folder(folder: Path, roots: list[Path]) -> str:
    for root in roots:
        if folder.is_relative_to(root):
            return (root.name / folder.relative_to(root)).as_posix() if folder != root else root.name
    return str(folder)


def collect(folders: list[Path]) -> list[Result]:
    """Every metrics.json under `folders` as rows (one per backbone x method x cell x split, split further where
    two runs would otherwise hide one another), sorted."""
    roots = [f.resolve() for f in folders]
    files = sorted({p.resolve() for folder in roots for p in ([folder] if folder.is_file() else folder.rglob("metrics.json"))})
    groups: dict[tuple[str, str, str, str], list[_Evaluation]] = {}
    for path in files:
        for evaluation in _evaluations(path, roots):
            groups.setdefault(evaluation.labels, []).append(evaluation)
    rows: dict[tuple[str, str, str, str, str], Result] = {}
    for labels, group in groups.items():
        for evaluation, run in zip(group, _run_labels(group, roots)):
            row = rows.setdefault((*labels, run), Result(*labels, dict(evaluation.axes), run=run))
            row.metrics.update(evaluation.metrics)
            if str(evaluation.path) not in row.sources:
                row.sources.append(str(evaluation.path))
    return [rows[key] for key in sorted(rows)]
