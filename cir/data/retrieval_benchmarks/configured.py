"""A benchmark as a config names it: loaded with its options, and reduced to the images that are there when asked.

Evaluation (cir.evaluation.splits) and the data check (cir.data.check) load a configured
benchmark through `load_configured`, so both read the same files the same way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from typing import Any

from cir.data.retrieval_benchmarks import CIRBenchmark, load_benchmarks

# metrics.json meta keys of a split evaluated with eval.missing_images=skip: `<key>/<dataset>/<split>`
SKIPPED_IMAGES = "missing_images/gallery_removed"
SKIPPED_QUERIES = "missing_images/queries_dropped"


def load_configured(bench_cfg: Any, split: str | None = None, fashioniq_captions: str = "both_orders") -> list[CIRBenchmark]:
    """The splits a BenchmarkConfig names (one per FashionIQ category / GeneCIS task); images are not checked here.
    `fashioniq_captions`: FashionIQ's caption protocol (eval.fashioniq_captions)."""
    genecis = bench_cfg.genecis
    options = {
        "cirr": {"image_root": bench_cfg.image_root},
        "circo": {"caption_mode": bench_cfg.caption_mode},
        "fashioniq": {"categories": list(bench_cfg.categories), "captions": fashioniq_captions},
        "genecis": {"tasks": list(genecis.tasks), "annotations": genecis.annotations,
                    "coco_images": genecis.coco_images, "vg_images": genecis.vg_images},
    }.get(bench_cfg.name, {})
    return load_benchmarks(bench_cfg.name, bench_cfg.root, split or bench_cfg.split, **options)


def without_images(bench: CIRBenchmark, missing: Collection[str]) -> CIRBenchmark:
    """`bench` with the `missing` images out of the gallery and every query that needs one of them dropped (its
    reference, a ground truth, or a member of the set it is ranked within: CIRR's img_set, GeneCIS's gallery).

    Scores on what is left are not comparable with published ones; the counts are in `info` (SKIPPED_*).
    """
    missing = set(missing)
    queries = [q for q in bench.queries
               if missing.isdisjoint((q.reference, *q.targets, *q.subset, *((q.target,) if q.target else ())))]
    gallery = [image_id for image_id in bench.gallery if image_id not in missing]
    info = {**bench.info, SKIPPED_IMAGES: str(len(bench.gallery) - len(gallery)),
            SKIPPED_QUERIES: str(len(bench.queries) - len(queries))}
    return dataclasses.replace(bench, queries=queries, gallery=gallery, info=info)
