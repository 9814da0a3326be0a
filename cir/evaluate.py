"""`python -m cir.evaluate CONFIG [key=value ...] [--debug]`: zero-shot Slerp evaluation with an alpha sweep.

Writes <output_dir>/metrics.json (keys `<dataset>/<split>/<method>/<metric>`, percent),
alpha_sweep.png, resolved config and a TensorBoard run; prints the table.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch.distributed as dist
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig

from cir.atomic import atomic_write_text
from cir.config import check_kwargs, load_config, require, run_cli, to_yaml
from cir.data.benchmark import CIRBenchmark
from cir.data.benchmarks import load_benchmarks, missing_images
from cir.evaluation import BenchmarkEvaluator
from cir.features import FeatureCache
from cir.models import Backbone, create_backbone
from cir.reporting import (
    format_table,
    retrieval_grid,
    sweep_figure,
    write_json,
)
from cir.schema import PAPER_ALPHA, BenchmarkConfig, EvaluateConfig
from cir.scoring import ranked_ids
from cir.slerp import METHODS, method_key
from cir.tasks.zero_shot import ZeroShotEvaluation

log = logging.getLogger(__name__)


def paper_alpha(cfg: DictConfig) -> float:
    return cfg.eval.paper_alpha if cfg.eval.paper_alpha is not None else PAPER_ALPHA[cfg.data.name]


def check_eval_config(cfg: DictConfig) -> None:
    """Impossible values fail here, before any model is built or image read."""
    require(cfg.data.name in PAPER_ALPHA, "data.name", f"one of {sorted(PAPER_ALPHA)}", cfg.data.name)
    for i, alpha in enumerate(cfg.eval.alphas):
        require(0.0 <= alpha <= 1.0, f"eval.alphas[{i}]", "a value in [0, 1]", alpha)
    require(0.0 <= paper_alpha(cfg) <= 1.0, "eval.paper_alpha", "a value in [0, 1]", cfg.eval.paper_alpha)
    for i, method in enumerate(cfg.eval.methods):
        require(method in METHODS, f"eval.methods[{i}]", f"one of {list(METHODS)}", method)
    require(cfg.eval.block_size > 0, "eval.block_size", "a positive integer", cfg.eval.block_size)
    require(cfg.eval.examples >= 0, "eval.examples", "0 or more", cfg.eval.examples)
    require(cfg.data.batch_size > 0, "data.batch_size", "a positive integer", cfg.data.batch_size)
    require(cfg.data.num_workers >= 0, "data.num_workers", "0 or more", cfg.data.num_workers)


def benchmark_splits(bench_cfg: BenchmarkConfig | DictConfig, split: str | None = None) -> list[CIRBenchmark]:
    """Load a configured benchmark and check, before encoding, that every image file is there."""
    options = {
        "cirr": {"image_root": bench_cfg.image_root},
        "circo": {"caption_mode": bench_cfg.caption_mode},
        "fashioniq": {"categories": list(bench_cfg.categories)},
    }.get(bench_cfg.name, {})
    benches = load_benchmarks(bench_cfg.name, bench_cfg.root, split or bench_cfg.split, **options)
    for bench in benches:
        missing = missing_images(bench)
        if missing:
            shown = ", ".join(str(bench.image_path(m)) for m in missing[:3])
            raise FileNotFoundError(
                f"{bench.name}/{bench.split}: {len(missing)} image file(s) missing under data.root={bench_cfg.root}"
                f" (e.g. {shown})"
            )
    return benches


def encode(evaluator: BenchmarkEvaluator, backbone: Backbone, trainer_kwargs: dict) -> None:
    """Encode the uncached splits with a Lightning validation loop (DDP over any number of devices)."""
    loaders = evaluator.dataloaders(backbone)
    if not loaders:
        return
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_model_summary=False, **trainer_kwargs)
    trainer.validate(ZeroShotEvaluation(backbone, evaluator), dataloaders=loaders, verbose=False)


def prepare(cfg: DictConfig, split: str | None = None) -> tuple[Backbone, BenchmarkEvaluator, dict, list[float]]:
    """Shared by evaluate and submit: validated config -> backbone, evaluator, trainer kwargs, alphas."""
    check_eval_config(cfg)
    trainer_kwargs = check_kwargs(cfg.trainer, L.Trainer, "trainer")
    L.seed_everything(cfg.seed, verbose=False)
    benches = benchmark_splits(cfg.data, split)
    backbone = create_backbone(cfg.model.name, cfg.model.pretrained, cache_dir=cfg.model.cache_dir)
    backbone.eval()
    alphas = sorted({*cfg.eval.alphas, paper_alpha(cfg)})
    evaluator = BenchmarkEvaluator(
        benches,
        methods=list(cfg.eval.methods),
        alphas=alphas,
        cache=FeatureCache(cfg.eval.cache_dir),
        batch_size=cfg.data.batch_size,
        num_workers=cfg.data.num_workers,
    )
    return backbone, evaluator, trainer_kwargs, alphas


def log_examples(logger: TensorBoardLogger, evaluator: BenchmarkEvaluator, cfg: DictConfig) -> None:
    """A grid of queries with their top-5 results at the paper's alpha (target framed green)."""
    if cfg.eval.examples == 0 or "slerp" not in cfg.eval.methods:
        return
    for bench, index, feats in evaluator.features():
        rows = list(range(min(cfg.eval.examples, len(bench.queries))))
        top = ranked_ids(index, feats, "slerp", paper_alpha(cfg), 5, cfg.eval.block_size)[rows]
        grid = retrieval_grid(bench, rows, top)
        logger.experiment.add_image(f"examples/{bench.name}/{bench.split}", grid, 0)


def main(path: str | None, overrides: list[str]) -> dict[str, float]:
    """usage: python -m cir.evaluate CONFIG [key=value ...] [--debug]"""
    cfg = load_config(EvaluateConfig, path, overrides)
    backbone, evaluator, trainer_kwargs, _ = prepare(cfg)
    encode(evaluator, backbone, trainer_kwargs)
    metrics = evaluator.score(backbone.device)
    if not _is_global_zero():
        return metrics
    out = Path(cfg.output_dir)
    write_json(out / "metrics.json", {**run_info(cfg, backbone), **metrics})
    atomic_write_text(out / "config.yaml", to_yaml(cfg))
    logger = TensorBoardLogger(str(out), name="tensorboard", version="")
    logger.log_metrics(metrics, step=0)
    figure = sweep_figure(metrics)
    figure.savefig(out / "alpha_sweep.png", dpi=120)
    logger.experiment.add_figure("alpha_sweep", figure, 0)
    log_examples(logger, evaluator, cfg)
    logger.finalize("success")
    print(format_table(metrics))
    print(f"metrics: {out / 'metrics.json'}\nplot: {out / 'alpha_sweep.png'}\ntensorboard: tensorboard --logdir {out}")
    return metrics


def run_info(cfg: DictConfig, backbone: Backbone) -> dict[str, str]:
    """`meta/...` entries of metrics.json: what produced the numbers, so they stay comparable."""
    return {
        "meta/model": cfg.model.name,
        "meta/pretrained": cfg.model.pretrained,
        "meta/fingerprint": backbone.fingerprint(),
        "meta/caption_mode": cfg.data.caption_mode,
        "meta/paper_method": method_key("slerp", paper_alpha(cfg)),
    }


def _is_global_zero() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    run_cli(main)
