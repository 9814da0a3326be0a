"""What the demo shows: the paper's table on the generated benchmark over training seeds, the modality gap, and
which findings held, each judged by a 95 % interval (cir.demo.stats).

Slerp's alpha for every model and seed is the best R@1 of the sweep on the
benchmark's train split (queries zero-shot models never see), and every number
is reported on val, so the comparison does not pick alphas on the numbers it
reports. Per-query hits come from the val evaluation's exported features,
the modality gap from the val evaluation's `modality_gap/...` entries.

`grid_report` is the demo grid's `report: demo`: its cells are training seeds,
its models the stages of MODELS, each evaluated by `<stage>_val` and `<stage>_train`.
A model whose stages are shared (the demo pretrains once) is one result that
stands beside every seed of the models it is compared with.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from cir.demo.hits import load_features, query_hits
from cir.demo.stats import (
    HELD,
    NOISE,
    REVERSED,
    Interval,
    mean_spread,
    paired_bootstrap,
    seed_interval,
    verdict,
)
from cir.evaluation.presentation import sweep_figure
from cir.grid.plan import Grid
from cir.io import atomic_write_text
from cir.slerp import method_key, parse_method_key

COLUMNS = ("R@1", "R@5", "R@10", "Rsub@1")
BASELINES = ("image", "text", "sum")
BASELINE_LABELS = {"image": "image only", "text": "text only", "sum": "sum", "slerp": "Slerp"}
PRETRAINED, TAT, IMAGE_ANCHOR, NO_ANCHOR = "pretrain", "tat_text", "tat_image", "tat_none"
NOT_JUDGED = "not judged"
ANCHOR_CLAIM = "Text anchoring beats image anchoring and no anchoring"
# the demo's ablation stages are off by default (experiments/demo.yaml), so its default run stays within budget
ANCHOR_KEYS = f"stages.{IMAGE_ANCHOR}.enabled=true stages.{NO_ANCHOR}.enabled=true"
# The demo grid's trained stages, in report order, and what the table calls them.
MODELS = {PRETRAINED: "pretrained CLIP", TAT: "TAT (text anchor)", IMAGE_ANCHOR: "image anchor",
          NO_ANCHOR: "no anchor", "sup_from_tat": "supervised from TAT", "sup_from_pretrain": "supervised from pretrained"}
FEATURES = "features/cirr-val.npz"  # eval.save_features=true: what per-query hits are recomputed from
GAP = "modality_gap/"  # the val evaluation's eval.gap_pairs entries


@dataclass(frozen=True)
class ModelRun:
    """One model of one training seed: its name (the grid stage), label, evaluation folders (the val one holds the
    modality gap), and the val evaluation's exported features (per-query hits)."""

    name: str
    label: str
    val_dir: Path
    train_dir: Path
    seed: int = 0
    features: Path | None = None
    shared: bool = False  # trained once for every seed (a shared grid stage): no spread, paired with each seed


@dataclass(frozen=True)
class SeedResult:
    """One model at one seed: Slerp's alpha (chosen on train), val metrics per method, gap record, val R@1 hits."""

    run: ModelRun
    alpha: float
    val: dict[str, dict[str, float]]
    gap: dict[str, float]
    hits: dict[str, np.ndarray]


@dataclass(frozen=True)
class Finding:
    """One of the paper's claims: each comparison (paper's side minus the alternative) with its intervals
    (none: not judged; two: queries and seeds, judged by both, cir.demo.stats.verdict)."""

    claim: str
    parts: tuple[tuple[str, tuple[Interval, ...]], ...]
    details: str = ""

    @property
    def verdict(self) -> str:
        """'held' if every comparison held, 'reversed' if any reversed, else 'within noise' (or not judged)."""
        verdicts = [verdict(intervals) if intervals else NOT_JUDGED for _, intervals in self.parts]
        if NOT_JUDGED in verdicts:
            return NOT_JUDGED
        if REVERSED in verdicts:
            return REVERSED
        return HELD if all(v == HELD for v in verdicts) else NOISE

    @property
    def held(self) -> bool:
        return self.verdict == HELD

    @property
    def evidence(self) -> str:
        def one(what: str, intervals: tuple[Interval, ...]) -> str:
            if not intervals:
                return f"{what}: needs 2 seeds for an interval"
            digits = 3 if "gap" in what else 2
            return f"{what} " + " and ".join(f"{i.text(digits)} ({i.method}, n={i.n})" for i in intervals)

        return "; ".join(one(*part) for part in self.parts) + (f"; {self.details}" if self.details else "")


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


def _load(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; rerun the demo with rerun=[<cell>/<the stage that writes it>]")
    return json.loads(path.read_text(encoding="utf-8"))


def collect(models: Sequence[ModelRun]) -> dict[str, list[SeedResult]]:
    """Every model's results, seed by seed (model name -> one SeedResult per seed, in run order)."""
    results: dict[str, list[SeedResult]] = {}
    for run in models:
        metrics = _load(run.val_dir / "metrics.json")
        gap = {key.removeprefix(GAP): value for key, value in metrics.items() if key.startswith(GAP)}
        if not gap:
            raise FileNotFoundError(f"{run.val_dir / 'metrics.json'}: no modality gap; the val evaluation needs "
                                    "eval.gap_pairs")
        val = split_metrics(metrics)
        alpha = best_alpha(split_metrics(_load(run.train_dir / "metrics.json")))
        hits: dict[str, np.ndarray] = {}
        if run.features is not None:
            features = load_features(run.features)
            hits = {m: query_hits(features, m, alpha if m == "slerp" else None) for m in reported_methods(run.name)}
        results.setdefault(run.name, []).append(SeedResult(run, alpha, val, gap, hits))
    return results


def reported_methods(name: str) -> list[str]:
    """The baselines on the pretrained model, Slerp on every model."""
    return [*BASELINES, "slerp"] if name == PRETRAINED else ["slerp"]


def method_metrics(result: SeedResult, method: str) -> dict[str, float]:
    return result.val[method_key("slerp", result.alpha) if method == "slerp" else method]


def r1(result: SeedResult, method: str = "slerp") -> float:
    return method_metrics(result, method)["R@1"]


def stacked(results: list[SeedResult], method: str) -> np.ndarray | None:
    """(seeds, queries) hits of `method`, None where the features were not read."""
    if any(method not in r.hits for r in results):
        return None
    return np.stack([r.hits[method] for r in results])


def paired(ours: list[SeedResult], theirs: list[SeedResult]) -> list[SeedResult]:
    """`theirs` seed by seed beside `ours`: a model trained once (shared) stands beside every seed."""
    if len(theirs) == 1 and theirs[0].run.shared:
        return theirs * len(ours)
    if [r.run.seed for r in ours] != [r.run.seed for r in theirs]:
        raise ValueError("the two models were trained with different seeds: no paired difference")
    return theirs


def training_interval(ours: list[SeedResult], theirs: list[SeedResult], value: Callable[[SeedResult], float],
                      paired_hits: bool = True) -> tuple[Interval, ...]:
    """A difference between trained models: t interval over the seeds' paired differences (against a model trained
    once, over `ours`' seeds only: its own training noise is not measured); with one seed, the paired bootstrap
    over queries (query noise only) where hits exist, else none."""
    theirs = paired(ours, theirs)
    if len(ours) >= 2:
        return (seed_interval(np.array([value(a) - value(b) for a, b in zip(ours, theirs)])),)
    a, b = stacked(ours, "slerp"), stacked(theirs, "slerp")
    if not paired_hits or a is None or b is None:
        return ()
    interval = paired_bootstrap(a, b)
    return (Interval(interval.estimate, interval.low, interval.high,
                     "paired bootstrap over queries, one seed: training noise not measured", interval.n),)


def method_intervals(results: list[SeedResult], method: str, baseline: str) -> tuple[Interval, ...]:
    """Two methods on the same models: the paired bootstrap over queries and, with 2 seeds or more, the t interval
    over the seeds' R@1 differences (the models themselves came out of training)."""
    queries = paired_bootstrap(stacked(results, method), stacked(results, baseline))
    if len(results) < 2:
        return (queries,)
    return queries, seed_interval(np.array([r1(r, method) - r1(r, baseline) for r in results]))


def per_seed(values: Sequence[float], digits: int = 2) -> str:
    return ", ".join(f"{v:+.{digits}f}" for v in values)


def findings(results: dict[str, list[SeedResult]]) -> list[Finding]:
    """The paper's four claims on val R@1, for the models present (a claim whose models are missing is left out)."""
    found: list[Finding] = []
    pre = results[PRETRAINED]
    if stacked(pre, "slerp") is not None:
        parts = tuple((f"Slerp - {BASELINE_LABELS[b]}", method_intervals(pre, "slerp", b)) for b in BASELINES)
        found.append(Finding("Slerp beats image only, text only and sum (pretrained model)", parts))
    if TAT in results:
        tat = results[TAT]
        diffs = [r1(a) - r1(b) for a, b in zip(tat, paired(tat, pre))]
        found.append(Finding("TAT raises Slerp R@1 over the pretrained model",
                             (("TAT - pretrained", training_interval(tat, pre, r1)),), f"per seed {per_seed(diffs)}"))
    if {TAT, IMAGE_ANCHOR, NO_ANCHOR} <= set(results):
        parts = tuple((f"text - {other}", training_interval(results[TAT], results[name], r1))
                      for name, other in ((IMAGE_ANCHOR, "image anchor"), (NO_ANCHOR, "no anchor")))
        found.append(Finding(ANCHOR_CLAIM, parts))
    if TAT in results:
        def gap(result: SeedResult) -> float:
            return -result.gap["gap"]  # narrowing is the paper's side: pretrained gap - TAT gap > 0

        found.append(Finding("TAT narrows the modality gap",
                             (("gap narrowed by", training_interval(results[TAT], pre, gap, paired_hits=False)),),
                             "gap " + " -> ".join(f"{np.mean([r.gap['gap'] for r in rs]):.3f}" for rs in (pre, results[TAT]))))
    return found


def machine() -> str:
    """The CPU, cores and torch threads the numbers were measured with (another CPU takes other float paths)."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")]
        cpu = names[0] if names else cpu
    threads = torch.get_num_threads()
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} with {threads} thread{'s' * (threads != 1)} "
            f"and {torch.backends.cpu.get_cpu_capability()} kernels, {platform.system()} {platform.release()}")


def cell(values: Sequence[float], digits: int = 2) -> str:
    mean, spread = mean_spread(np.array(values))
    return f"{mean:.{digits}f}" if len(values) == 1 else f"{mean:.{digits}f} ± {spread:.{digits}f}"


def seeds_text(results: dict[str, list[SeedResult]]) -> list[str]:
    """What the table's spread is over: the seeds, and which models were trained once for all of them."""
    seeds = sorted({r.run.seed for rs in results.values() for r in rs if not r.run.shared})
    once = [f"{rs[0].run.label} (seed {rs[0].run.seed})" for rs in results.values() if rs[0].run.shared]
    if not once:
        return [f"(percent), mean ± standard deviation over the training seeds {', '.join(map(str, seeds))}: each seed",
                "pretrains, tunes and fine-tunes its own models on the same benchmark (one seed: no spread)."]
    return [f"(percent), mean ± standard deviation over the training seeds {', '.join(map(str, seeds))} of the models",
            f"tuned from {', '.join(once)}, which is trained once: its rows have no spread, and the intervals",
            "cover the tuning seeds' training noise, not its own (one seed: no spread)."]


def results_markdown(results: dict[str, list[SeedResult]], found: list[Finding], wall_s: float, cpu_s: float) -> str:
    lines = [
        "# Embedded demo: Slerp + TAT on the generated compositional benchmark",
        "",
        "CIRR-layout val split of the generated benchmark (cir.data.synth); a tiny CLIP pretrained from scratch stands",
        "in for OpenAI CLIP. Slerp's alpha: the best R@1 of the sweep on the train split, per seed; all numbers on val",
        *seeds_text(results),
        "",
        "| model | method | alpha per seed | " + " | ".join(COLUMNS) + " |",
        "|---|---|---|" + "---|" * len(COLUMNS),
    ]
    for rs in results.values():
        for method in reported_methods(rs[0].run.name):
            alphas = ", ".join(str(r.alpha) for r in rs) if method == "slerp" else ""
            cells = " | ".join(cell([method_metrics(r, method).get(c, float("nan")) for r in rs]) for c in COLUMNS)
            lines.append(f"| {rs[0].run.label} | {BASELINE_LABELS[method]} | {alphas} | {cells} |")
    lines += ["", "Modality gap (distance between the mean image and mean caption embedding; held-out pairs):", "",
              "| model | gap | pair cosine |", "|---|---|---|"]
    for rs in results.values():
        lines.append(f"| {rs[0].run.label} | {cell([r.gap['gap'] for r in rs], 3)} | "
                     f"{cell([r.gap['pair_cosine'] for r in rs], 3)} |")
    if found:
        lines += ["", "## The paper's findings here", "",
                  "Each comparison: the paper's side minus the alternative, with its 95 % intervals. Between methods on",
                  "the same models: a paired bootstrap over queries (hits averaged over seeds) and, where the models",
                  "have seeds, a t interval over the seeds' differences, judged by both. Between trained models: the t",
                  "interval over the seeds' paired differences (training noise included; a model trained once is",
                  "paired with every seed). held: every interval of the comparison excludes zero on the paper's side;",
                  "reversed: every one on the other side; else within noise.", ""]
        lines += [f"- **{f.verdict}**: {f.claim}: {f.evidence}" for f in found]
        if TAT in results and not {IMAGE_ANCHOR, NO_ANCHOR} <= set(results):
            lines.append(f"- **not run**: {ANCHOR_CLAIM}: the anchor ablations are off by default (`{ANCHOR_KEYS}`)")
    lines += ["", f"Measured on: {machine()}.",
              (f"Wall time of this run: {wall_s / 60:.1f} min; CPU time (user + sys, this process and its workers): "
               f"{cpu_s / 60:.1f} min (stages skipped as done before take no time)."), ""]
    return "\n".join(lines)


def mean_sweeps(results: dict[str, list[SeedResult]]) -> dict[str, float]:
    """Every model's val metrics averaged over seeds, flat as `<label>/val/<method>/<metric>` for sweep_figure."""
    flat: dict[str, float] = {}
    for rs in results.values():
        for method, row in rs[0].val.items():
            if rs[0].run.name == PRETRAINED or method.startswith("slerp"):
                for metric in row:
                    flat[f"{rs[0].run.label}/val/{method}/{metric}"] = float(np.mean([r.val[method][metric] for r in rs]))
    return flat


def write_report(root: Path, models: Sequence[ModelRun], wall_s: float, echo: Callable[[str], None] = print,
                 cpu_s: float = 0.0) -> Path:
    """results.md, alpha_sweep.png and a TensorBoard summary under `root`; prints the table and where they are."""
    results = collect(models)
    text = results_markdown(results, findings(results), wall_s, cpu_s)
    atomic_write_text(root / "results.md", text)
    flat = mean_sweeps(results)
    figure = sweep_figure(flat, metric_names=("R@1",))
    figure.axes[0].set_title("val R@1 against Slerp alpha (mean over seeds)")
    figure.tight_layout()
    figure.savefig(root / "alpha_sweep.png", dpi=120)
    logger = TensorBoardLogger(str(root), name="tensorboard", version="summary", default_hp_metric=False)
    logger.experiment.add_text("results", text, 0)
    logger.experiment.add_figure("alpha_sweep", figure, 0)
    logger.log_metrics({f"{name}/{method}/{metric}": value for name, rs in results.items()
                        for method in reported_methods(name) for metric in COLUMNS
                        if not np.isnan(value := float(np.mean([method_metrics(r, method).get(metric, np.nan) for r in rs])))},
                       step=0)
    logger.finalize("success")
    echo("\n" + text)
    echo(f"results: {root / 'results.md'}\nplot: {root / 'alpha_sweep.png'}\ntensorboard: tensorboard --logdir {root}")
    return root


def grid_models(grid: Grid) -> list[ModelRun]:
    """Every cell's models (the enabled stages of MODELS; a shared one once), with the training seed their run.json
    records."""
    models = []
    for number, cell in enumerate(grid.cells):
        for name, label in MODELS.items():
            stages = (name, f"{name}_val", f"{name}_train")
            if not all(s in cell.enabled and cell.enabled[s] for s in stages):
                continue
            shared = name in grid.shared
            if shared and number > 0:
                continue
            val = grid.folder(cell, stages[1])
            seed = _load(grid.folder(cell, name) / "run.json")["config"]["seed"]
            models.append(ModelRun(name, label, val, grid.folder(cell, stages[2]), seed, val / FEATURES, shared))
    if not any(m.name == PRETRAINED for m in models):
        raise FileNotFoundError(f"{grid.path}: `report: demo` needs the stages {PRETRAINED}, {PRETRAINED}_val and "
                                f"{PRETRAINED}_train (the models it compares: {', '.join(MODELS)})")
    return models


def grid_report(grid: Grid, wall_s: float, cpu_s: float, echo: Callable[[str], None] = print) -> Path:
    """`report: demo` of a grid whose cells are training seeds (experiments/demo.yaml)."""
    return write_report(grid.root, grid_models(grid), wall_s, echo, cpu_s)
