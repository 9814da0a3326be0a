"""A configured benchmark as loaded splits, and the paper's Slerp alpha for it."""

from __future__ import annotations

from omegaconf import DictConfig

from cir.data.retrieval_benchmarks import CIRBenchmark, missing_images
from cir.data.retrieval_benchmarks.configured import load_configured, without_images
from cir.schema import PAPER_ALPHA, BenchmarkConfig


def paper_alpha(cfg: DictConfig) -> float:
    """`eval.paper_alpha` where set, else the paper's value for `data.name`."""
    return cfg.eval.paper_alpha if cfg.eval.paper_alpha is not None else PAPER_ALPHA[cfg.data.name]


def benchmark_splits(
    bench_cfg: BenchmarkConfig | DictConfig, split: str | None = None, fashioniq_captions: str = "both_orders",
    missing_policy: str = "error",
) -> list[CIRBenchmark]:
    """Load a configured benchmark and check, before encoding, that every image file is there.
    `fashioniq_captions`: FashionIQ's caption protocol (eval.fashioniq_captions). `missing_policy`
    (eval.missing_images): "error" stops at missing or empty images, naming them; "skip" leaves them out
    (cir.data.retrieval_benchmarks.configured.without_images)."""
    benches = load_configured(bench_cfg, split, fashioniq_captions)
    for i, bench in enumerate(benches):
        missing = missing_images(bench)
        if missing and missing_policy == "skip":
            benches[i] = without_images(bench, missing)
        elif missing:
            shown = ", ".join(str(bench.image_path(m)) for m in missing[:3])
            raise FileNotFoundError(
                f"{bench.name}/{bench.split}: {len(missing)} image file(s) missing or empty under data.root={bench_cfg.root}"
                f" (e.g. {shown}){'; ' + bench.info['images'] if 'images' in bench.info else ''}; see all with "
                "`python -m cir.data.check CONFIG`, or leave them out with eval.missing_images=skip"
            )
    return benches
