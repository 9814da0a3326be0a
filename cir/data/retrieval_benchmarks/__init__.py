"""The benchmark registry: evaluation and supervised training pick a benchmark by name through `load_benchmarks`.

Every loader (cirr, circo, fashioniq, genecis) produces the same `CIRBenchmark`, so all
benchmarks go through exactly the same evaluation code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cir.data.retrieval_benchmarks.annotations import (
    AnnotationError,
    BenchmarkLayoutError,
    check_choice,
)
from cir.data.retrieval_benchmarks.benchmark import CIRBenchmark, CIRQuery
from cir.data.retrieval_benchmarks.circo import load_circo
from cir.data.retrieval_benchmarks.cirr import load_cirr
from cir.data.retrieval_benchmarks.fashioniq import FASHIONIQ_CATEGORIES, load_fashioniq
from cir.data.retrieval_benchmarks.genecis import GENECIS_TASKS, load_genecis

BENCHMARK_NAMES = ("cirr", "circo", "fashioniq", "genecis")

__all__ = [
    "BENCHMARK_NAMES",
    "AnnotationError",
    "BenchmarkLayoutError",
    "CIRBenchmark",
    "CIRQuery",
    "load_benchmarks",
    "missing_images",
]


def missing_images(benchmark: CIRBenchmark) -> list[str]:
    """Ids of gallery and reference images with no path, no file or an empty file (a failed download), so
    evaluation can name them before encoding instead of failing on them midway.

    Loaders never stat images (a 123k-image gallery must load in seconds); this does, on demand.
    """
    needed = dict.fromkeys(benchmark.gallery)
    needed.update(dict.fromkeys(query.reference for query in benchmark.queries))
    paths = benchmark.image_paths
    return [image_id for image_id in needed if image_id not in paths or not _nonempty_file(paths[image_id])]


def _nonempty_file(path: Path) -> bool:
    try:
        return path.stat().st_size > 0 and path.is_file()
    except OSError:
        return False


def load_benchmarks(name: str, root: str | Path, split: str, **options: Any) -> list[CIRBenchmark]:
    """Load a benchmark by name: one CIRBenchmark for CIRR / CIRCO, one per category for FashionIQ, one per task
    for GeneCIS.

    Options go to the loader: `image_root` (cirr), `caption_mode` (circo),
    `categories` (fashioniq: a name or a list; default all three) and `captions` (fashioniq's caption protocol),
    `tasks` (genecis: a name or a list; default all four) and `annotations` / `coco_images` / `vg_images` (genecis).
    """
    check_choice(name, BENCHMARK_NAMES, "benchmark")
    if name == "cirr":
        return [load_cirr(root, split, **options)]
    if name == "circo":
        return [load_circo(root, split, **options)]
    loader, parts = {"fashioniq": (load_fashioniq, "categories"), "genecis": (load_genecis, "tasks")}[name]
    chosen = options.pop(parts, FASHIONIQ_CATEGORIES if name == "fashioniq" else GENECIS_TASKS)
    if isinstance(chosen, str):
        chosen = (chosen,)
    return [loader(root, part, split, **options) for part in chosen]
