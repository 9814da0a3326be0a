"""One evaluation run from a validated config: the backbone, the evaluator, the DDP encoding and the outputs.

`cir.evaluate` and `cir.submit` are thin command lines over `prepare` / `encode`;
`evaluate` writes what `cir.evaluate` promises (metrics.json, alpha_sweep.png,
config.yaml, a TensorBoard run; with eval.gap_pairs the model's modality gap
among the metrics) and returns the metrics.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig

from cir import completion
from cir.config import check_kwargs, require, to_yaml
from cir.config_checks import check_eval_config
from cir.data.inputs import watch_inputs
from cir.data.retrieval_benchmarks.configured import SKIPPED_IMAGES, SKIPPED_QUERIES
from cir.distributed import is_global_zero
from cir.evaluation.encoding import ZeroShotEvaluation
from cir.evaluation.evaluator import BenchmarkEvaluator
from cir.evaluation.feature_export import save_features
from cir.evaluation.features import FeatureCache, excludes_reference
from cir.evaluation.gap import METRIC_PREFIX, gap_metrics, measure_gap, read_pairs
from cir.evaluation.presentation import retrieval_grid, sweep_figure
from cir.evaluation.scoring import ranked_ids
from cir.evaluation.splits import benchmark_splits, paper_alpha
from cir.io import atomic_path, atomic_write_text, write_json
from cir.metrics import target_rank
from cir.models import Backbone, create_backbone
from cir.schema import PAPER_ALPHA
from cir.slerp import method_key
from cir.workers import resolve_workers

EXAMPLE_RANK_DEPTH = 1000  # the example grid names the target's rank down to this depth





def encode(evaluator: BenchmarkEvaluator, backbone: Backbone, trainer_kwargs: dict) -> torch.device | None:
    """Encode the uncached splits with a Lightning validation loop (DDP over any number of devices); returns the
    device it encoded on (Lightning hands the model back on the CPU), None when every split was cached."""
    loaders = evaluator.dataloaders(backbone)
    if not loaders:
        return None
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_model_summary=False, **trainer_kwargs)
    trainer.validate(ZeroShotEvaluation(backbone, evaluator), dataloaders=loaders, verbose=False)
    return trainer.strategy.root_device


def prepare(cfg: DictConfig, split: str | None = None, missing_policy: str = "error"
            ) -> tuple[Backbone, BenchmarkEvaluator, dict, list[float]]:
    """Shared by evaluate and submit: validated config -> backbone, evaluator, trainer kwargs, alphas.
    `missing_policy`: eval.missing_images for an evaluation; a test-server file needs every query ("error").
    The config has passed its command's checks (cir.config_checks)."""
    trainer_kwargs = check_kwargs(cfg.trainer, L.Trainer, "trainer")
    L.seed_everything(cfg.seed, verbose=False)
    benches = benchmark_splits(cfg.data, split, cfg.eval.fashioniq_captions, missing_policy)
    if split is None:  # an evaluation (cir.submit names its split): scores need targets, which a test split hides
        hidden = [f"{b.name}/{b.split}" for b in benches if not b.has_targets]
        require(not hidden, "data.split", "a split with targets (a test split's targets are hidden: python -m "
                f"cir.submit writes its server files); {', '.join(hidden)} has none", cfg.data.split)
    backbone = create_backbone(cfg.model.name, cfg.model.pretrained, cache_dir=cfg.model.cache_dir)
    backbone.eval()
    alphas = sorted({*cfg.eval.alphas, paper_alpha(cfg)})
    evaluator = BenchmarkEvaluator(
        benches,
        methods=list(cfg.eval.methods),
        alphas=alphas,
        cache=FeatureCache(cfg.eval.cache_dir),
        batch_size=cfg.data.batch_size,
        num_workers=resolve_workers(cfg.data.num_workers, "data.num_workers"),
        exclude_reference=cfg.eval.exclude_reference,
    )
    return backbone, evaluator, trainer_kwargs, alphas


def validation_evaluator(cfg: DictConfig) -> BenchmarkEvaluator | None:
    """Zero-shot evaluation as a training run's validation (no feature cache: the weights change every step)."""
    if not cfg.eval.benchmarks:
        return None

    benches = [b for bench_cfg in cfg.eval.benchmarks for b in benchmark_splits(bench_cfg, None, cfg.eval.fashioniq_captions)]
    alphas = sorted({*cfg.eval.alphas, *(PAPER_ALPHA[b.name] for b in cfg.eval.benchmarks)})
    return BenchmarkEvaluator(
        benches,
        list(cfg.eval.methods),
        alphas,
        None,
        cfg.eval.batch_size,
        cfg.eval.num_workers,
        exclude_reference=cfg.eval.exclude_reference,
    )


def evaluate(cfg: DictConfig) -> tuple[dict[str, float], BenchmarkEvaluator]:
    """Encode, score every method, and (on rank 0) write metrics.json, the plot, config.yaml, TensorBoard
    and, with eval.save_features, the exported features; returns the metrics and the evaluator that scored them.
    With eval.gap_pairs every rank measures the modality gap on its share of the pairs (read first, so a bad file
    fails before any model is built; not in check_eval_config, since a grid checks configs before an earlier
    stage writes the file).

    The completion record (cir.completion) says "running" before anything is read and "done" once every output
    is written, so a folder it calls done holds every output of this very config and inputs."""
    check_eval_config(cfg)
    made_by = completion.fingerprint(cfg)
    if is_global_zero():
        completion.start(cfg.output_dir, made_by)
    with watch_inputs() as inputs:
        pairs = read_pairs(cfg.eval.gap_pairs) if cfg.eval.gap_pairs is not None else None
        backbone, evaluator, trainer_kwargs, _ = prepare(cfg, missing_policy=cfg.eval.missing_images)
    device = encode(evaluator, backbone, trainer_kwargs)
    metrics = evaluator.score(backbone.device)
    if pairs is not None:
        backbone.to(device or backbone.device)
        metrics |= gap_metrics(measure_gap(backbone, pairs, cfg.data.batch_size))
    if is_global_zero():
        written = write_outputs(cfg, backbone, evaluator, metrics) + export_features(cfg, evaluator)
        completion.finish(cfg.output_dir, made_by, written, inputs, encoded_images(evaluator))
    return metrics, evaluator


def encoded_images(evaluator: BenchmarkEvaluator) -> set[Path]:
    """Every benchmark image the evaluator encoded (a completion record names them)."""
    return {e.bench.image_path(i) for e in evaluator.entries for i in e.index.image_ids}


def export_features(cfg: DictConfig, evaluator: BenchmarkEvaluator) -> list[Path]:
    """With eval.save_features: each split's scored features and ids as `<output_dir>/features/*.npz`."""
    if not cfg.eval.save_features:
        return []
    scored = {"model": cfg.model.name, "pretrained": cfg.model.pretrained,
              "methods": [method_key(method, alpha) for method, alpha in evaluator.methods],
              "paper_method": method_key("slerp", paper_alpha(cfg))}
    return [save_features(cfg.output_dir, bench, index, feats, scored) for bench, index, feats in evaluator.features()]


def skipped_images(evaluator: BenchmarkEvaluator) -> dict[str, int]:
    """metrics.json `meta/missing_images/...` entries of the splits evaluated with eval.missing_images=skip."""
    return {f"meta/{key}/{e.bench.name}/{e.bench.split}": int(e.bench.info[key])
            for e in evaluator.entries for key in (SKIPPED_IMAGES, SKIPPED_QUERIES) if key in e.bench.info}


def skipped_summary(evaluator: BenchmarkEvaluator) -> str | None:
    """One line on what eval.missing_images=skip left out, None when nothing was."""
    parts = [f"{e.bench.name}/{e.bench.split} {e.bench.info[SKIPPED_IMAGES]} gallery image(s) removed, "
             f"{e.bench.info[SKIPPED_QUERIES]} query(ies) dropped" for e in evaluator.entries if SKIPPED_IMAGES in e.bench.info]
    if not parts:
        return None
    return "missing images skipped (eval.missing_images=skip; not comparable with published numbers): " + "; ".join(parts)


def reference_summary(evaluator: BenchmarkEvaluator) -> str:
    """One line saying, per benchmark, whether the reference image was a candidate (and if that is the official rule)."""
    parts = []
    for name, excluded in evaluator.excludes_reference().items():
        rule = "official" if excluded == excludes_reference(name) else "eval.exclude_reference, not the official rule"
        parts.append(f"{name} {'excluded' if excluded else 'kept in the gallery'} ({rule})")
    return "reference image: " + "; ".join(parts)


def write_outputs(cfg: DictConfig, backbone: Backbone, evaluator: BenchmarkEvaluator,
                  metrics: dict[str, float]) -> list[Path]:
    """metrics.json, config.yaml, the plot and the TensorBoard run (with the examples); returns the files."""
    out = Path(cfg.output_dir)
    write_json(out / "metrics.json", {**run_info(cfg, backbone, evaluator), **metrics})
    atomic_write_text(out / "config.yaml", to_yaml(cfg))
    logger = TensorBoardLogger(str(out), name="tensorboard", version="")
    logger.log_metrics(metrics, step=0)
    figure = sweep_figure(metrics)
    with atomic_path(out / "alpha_sweep.png") as tmp:  # a full disk is then one line naming the file
        figure.savefig(tmp, dpi=120, format="png")
    logger.experiment.add_figure("alpha_sweep", figure, 0)
    log_examples(logger, evaluator, cfg)
    logger.log_hyperparams(run_info(cfg, backbone, evaluator), hparam_metrics(metrics, paper_alpha(cfg)))
    logger.finalize("success")
    return [out / "metrics.json", out / "config.yaml", out / "alpha_sweep.png", *completion.files(out / "tensorboard")]


def hparam_metrics(metrics: dict[str, float], alpha: float) -> dict[str, float]:
    """The columns of TensorBoard's hparams view: the baselines and Slerp at the paper's alpha (not the whole sweep),
    and the modality gap when measured."""
    shown = {"image", "text", "sum", method_key("slerp", alpha)}
    return {
        key: value for key, value in metrics.items()
        if key.startswith(f"{METRIC_PREFIX}/") or (len(key.split("/")) == 4 and key.split("/")[2] in shown)
    }


def log_examples(logger: TensorBoardLogger, evaluator: BenchmarkEvaluator, cfg: DictConfig) -> None:
    """A grid of queries at the paper's alpha: each row's caption and target rank, the reference, the top 5
    (target framed green)."""
    if cfg.eval.examples == 0 or "slerp" not in cfg.eval.methods:
        return
    for bench, index, feats in evaluator.features():
        rows = list(range(min(cfg.eval.examples, len(bench.queries))))
        depth = min(EXAMPLE_RANK_DEPTH, index.n_gallery)
        top = ranked_ids(index, feats, "slerp", paper_alpha(cfg), depth, cfg.eval.block_size)[rows]
        ranks = target_rank(top, index.target[rows]) + 1
        grid = retrieval_grid(bench, rows, top[:, :5], ranks, depth)
        logger.experiment.add_image(f"examples/{bench.name}/{bench.split}", grid, 0)


def run_info(cfg: DictConfig, backbone: Backbone, evaluator: BenchmarkEvaluator) -> dict[str, str | bool]:
    """`meta/...` entries of metrics.json: what produced the numbers, so they stay comparable."""
    return {
        "meta/model": cfg.model.name,
        "meta/pretrained": cfg.model.pretrained,
        "meta/fingerprint": backbone.fingerprint(),
        "meta/caption_mode": cfg.data.caption_mode,
        **({"meta/fashioniq_captions": cfg.eval.fashioniq_captions} if cfg.data.name == "fashioniq" else {}),
        "meta/paper_method": method_key("slerp", paper_alpha(cfg)),
        **{f"meta/exclude_reference/{name}": excluded for name, excluded in evaluator.excludes_reference().items()},
        **skipped_images(evaluator),
    }
