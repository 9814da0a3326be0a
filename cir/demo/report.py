"""What the demo shows: the paper's table on the generated benchmark, the modality gap, and which findings held.

Slerp's alpha for every model is the best R@1 of the sweep on the benchmark's
train split (queries zero-shot models never see), and every number is reported
on val, so the comparison does not pick alphas on the numbers it reports.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lightning.pytorch.loggers import TensorBoardLogger

from cir.eval.report import sweep_figure
from cir.io import atomic_write_text
from cir.slerp import method_key, parse_method_key

COLUMNS = ("R@1", "R@5", "R@10", "Rsub@1")
BASELINES = ("image", "text", "sum")
BASELINE_LABELS = {"image": "image only", "text": "text only", "sum": "sum", "slerp": "Slerp"}
PRETRAINED, TAT, IMAGE_ANCHOR, NO_ANCHOR = "pretrain", "tat_text", "tat_image", "tat_none"


@dataclass(frozen=True)
class ModelRun:
    """One model of the comparison: its stage name, label, evaluation folders (metrics.json) and gap file."""

    name: str
    label: str
    val_dir: Path
    train_dir: Path
    gap_file: Path


@dataclass(frozen=True)
class Row:
    """One line of the table: a model, a method and its val metrics (alpha: Slerp's, chosen on train)."""

    run: ModelRun
    method: str
    alpha: float | None
    metrics: dict[str, float]


@dataclass(frozen=True)
class Finding:
    claim: str
    held: bool
    evidence: str


def split_metrics(metrics: dict[str, float]) -> dict[str, dict[str, float]]:
    """metrics.json's flat `<dataset>/<split>/<method>/<metric>` entries as method -> metric -> value."""
    table: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        parts = key.split("/")
        if len(parts) == 4 and not key.startswith("meta/"):
            table.setdefault(parts[2], {})[parts[3]] = value
    return table


def best_alpha(table: dict[str, dict[str, float]], metric: str = "R@1") -> float:
    """The Slerp alpha with the best `metric` (ties: the better R@5, then the smaller alpha)."""
    sweep = [(alpha, row) for method, row in table.items() for name, alpha in [parse_method_key(method)] if name == "slerp"]
    if not sweep:
        raise ValueError("no Slerp results in the metrics: the evaluation needs method slerp and a list of alphas")
    return max(sweep, key=lambda item: (item[1][metric], item[1].get("R@5", 0.0), -item[0]))[0]


def findings(slerp: dict[str, dict[str, float]], baselines: dict[str, dict[str, float]], gaps: dict[str, float]) -> list[Finding]:
    """The paper's four claims on val R@1: `slerp` maps model -> metrics at its chosen alpha, `baselines`
    the pretrained model's image / text / sum rows, `gaps` model -> modality gap."""
    def r1(row: dict[str, float]) -> str:
        return f"{row['R@1']:.2f}"

    pre, tat, img, none = (slerp[m] for m in (PRETRAINED, TAT, IMAGE_ANCHOR, NO_ANCHOR))
    best_baseline = max(BASELINES, key=lambda b: baselines[b]["R@1"])
    return [
        Finding("Slerp beats image only, text only and sum (pretrained model)",
                all(pre["R@1"] > baselines[b]["R@1"] for b in BASELINES),
                f"Slerp {r1(pre)} vs " + ", ".join(f"{BASELINE_LABELS[b]} {r1(baselines[b])}" for b in BASELINES)
                + f" (best baseline: {BASELINE_LABELS[best_baseline]})"),
        Finding("TAT raises Slerp R@1 over the pretrained model", tat["R@1"] > pre["R@1"],
                f"TAT {r1(tat)} vs pretrained {r1(pre)}"),
        Finding("Text anchoring beats image anchoring and no anchoring", tat["R@1"] > max(img["R@1"], none["R@1"]),
                f"text {r1(tat)} vs image {r1(img)}, none {r1(none)}"),
        Finding("TAT narrows the modality gap", gaps[TAT] < gaps[PRETRAINED],
                f"gap {gaps[PRETRAINED]:.3f} -> {gaps[TAT]:.3f}"),
    ]


def _load(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; rerun the demo with demo.rerun=[<the stage that writes it>]")
    return json.loads(path.read_text(encoding="utf-8"))


def collect(models: list[ModelRun]) -> tuple[list[Row], dict[str, dict[str, dict[str, float]]], dict[str, dict]]:
    """The table's rows, every model's val metrics per method (label -> method -> metric), and the gap records."""
    rows: list[Row] = []
    sweeps, gaps = {}, {}
    for run in models:
        val = split_metrics(_load(run.val_dir / "metrics.json"))
        alpha = best_alpha(split_metrics(_load(run.train_dir / "metrics.json")))
        if run.name == PRETRAINED:
            rows += [Row(run, b, None, val[b]) for b in BASELINES]
        rows.append(Row(run, "slerp", alpha, val[method_key("slerp", alpha)]))
        sweeps[run.label] = {m: v for m, v in val.items() if run.name == PRETRAINED or m.startswith("slerp")}
        gaps[run.name] = _load(run.gap_file)
    return rows, sweeps, gaps


def results_markdown(rows: list[Row], gaps: dict[str, dict], models: list[ModelRun], found: list[Finding] | None,
                     wall_s: float) -> str:
    lines = [
        "# Embedded demo: Slerp + TAT on the generated compositional benchmark",
        "",
        "CIRR-layout val split of the generated benchmark (cir.data.synth); a tiny CLIP pretrained from scratch stands",
        "in for OpenAI CLIP. Slerp's alpha: the best R@1 of the sweep on the train split; all numbers on val (percent).",
        "Supervised rows: Slerp with the fine-tuned weights (their alpha, too, from train: their own training split).",
        "",
        "| model | method | alpha | " + " | ".join(COLUMNS) + " |",
        "|---|---|---|" + "---|" * len(COLUMNS),
    ]
    for row in rows:
        cells = " | ".join(f"{row.metrics.get(c, float('nan')):.2f}" for c in COLUMNS)
        alpha = "" if row.alpha is None else row.alpha
        lines.append(f"| {row.run.label} | {BASELINE_LABELS[row.method]} | {alpha} | {cells} |")
    lines += ["", "Modality gap (distance between the mean image and mean caption embedding; held-out pairs):", "",
              "| model | gap | pair cosine |", "|---|---|---|"]
    for run in models:
        gap = gaps[run.name]
        lines.append(f"| {run.label} | {gap['gap']:.3f} | {gap['pair_cosine']:.3f} |")
    if found is not None:
        lines += ["", "## The paper's findings here", ""]
        lines += [f"- {'held' if f.held else 'did NOT hold'}: {f.claim} ({f.evidence})" for f in found]
        if not all(f.held for f in found):
            lines += ["", "What was tried to make them hold, with its numbers: README.md, section \"The embedded demo\"."]
    lines += ["", f"Wall time of this run: {wall_s / 60:.1f} min (stages skipped as done before take no time).", ""]
    return "\n".join(lines)


def write_report(root: Path, models: list[ModelRun], wall_s: float, echo: Callable[[str], None] = print) -> Path:
    """results.md, alpha_sweep.png and a TensorBoard summary under `root`; prints the table and where they are."""
    rows, sweeps, gap_records = collect(models)
    names = {run.name for run in models}
    found = None
    if {PRETRAINED, TAT, IMAGE_ANCHOR, NO_ANCHOR} <= names:
        slerp = {row.run.name: row.metrics for row in rows if row.method == "slerp"}
        baselines = {row.method: row.metrics for row in rows if row.run.name == PRETRAINED and row.method != "slerp"}
        found = findings(slerp, baselines, {name: record["gap"] for name, record in gap_records.items()})
    text = results_markdown(rows, gap_records, models, found, wall_s)
    atomic_write_text(root / "results.md", text)
    flat = {f"{label}/val/{method}/{metric}": value
            for label, table in sweeps.items() for method, row in table.items() for metric, value in row.items()}
    figure = sweep_figure(flat, metric_names=("R@1",))
    figure.axes[0].set_title("val R@1 against Slerp alpha")
    figure.tight_layout()
    figure.savefig(root / "alpha_sweep.png", dpi=120)
    logger = TensorBoardLogger(str(root), name="tensorboard", version="summary", default_hp_metric=False)
    logger.experiment.add_text("results", text, 0)
    logger.experiment.add_figure("alpha_sweep", figure, 0)
    logger.log_metrics({f"{row.run.name}/{row.method}/{metric}": value for row in rows
                        for metric, value in row.metrics.items() if metric in COLUMNS}, step=0)
    logger.finalize("success")
    echo("\n" + text)
    echo(f"results: {root / 'results.md'}\nplot: {root / 'alpha_sweep.png'}\ntensorboard: tensorboard --logdir {root}")
    return root
