"""A configured benchmark as loaded splits, and the paper's Slerp alpha for it."""

from __future__ import annotations

from omegaconf import DictConfig

from cir.data.benchmarks import CIRBenchmark, load_benchmarks, missing_images
from cir.schema import PAPER_ALPHA, BenchmarkConfig


def paper_alpha(cfg: DictConfig) -> float:
    """`eval.paper_alpha` where set, else the paper's value for `data.name`."""
    return cfg.eval.paper_alpha if cfg.eval.paper_alpha is not None else PAPER_ALPHA[cfg.data.name]


def benchmark_splits(
    bench_cfg: BenchmarkConfig | DictConfig, split: str | None = None, fashioniq_captions: str = "both_orders"
) -> list[CIRBenchmark]:
    """Load a configured benchmark and check, before encoding, that every image file is there.
    `fashioniq_captions`: FashionIQ's caption protocol (eval.fashioniq_captions)."""
    genecis = bench_cfg.genecis
    options = {
        "cirr": {"image_root": bench_cfg.image_root},
        "circo": {"caption_mode": bench_cfg.caption_mode},
        "fashioniq": {"categories": list(bench_cfg.categories), "captions": fashioniq_captions},
        "genecis": {"tasks": list(genecis.tasks), "annotations": genecis.annotations,
                    "coco_images": genecis.coco_images, "vg_images": genecis.vg_images},
    }.get(bench_cfg.name, {})
    benches = load_benchmarks(bench_cfg.name, bench_cfg.root, split or bench_cfg.split, **options)
    for bench in benches:
        missing = missing_images(bench)
        if missing:
            shown = ", ".join(str(bench.image_path(m)) for m in missing[:3])
            raise FileNotFoundError(
                f"{bench.name}/{bench.split}: {len(missing)} image file(s) missing or empty under data.root={bench_cfg.root}"
                f" (e.g. {shown}){'; ' + bench.info['images'] if 'images' in bench.info else ''}"
            )
    return benches
