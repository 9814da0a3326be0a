"""Zero-shot evaluation of a backbone on CIR benchmarks, shared by `cir.evaluate` and TAT validation.

The evaluator owns the benchmarks, their feature cache and the per-rank feature
collection; a LightningModule only forwards its validation batches here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader

from cir.data.retrieval_benchmarks.benchmark import CIRBenchmark
from cir.distributed import is_global_zero
from cir.evaluation.features import (
    EvalIndex,
    FeatureCache,
    FeatureCollector,
    Features,
    cache_key,
    encoding_loaders,
)
from cir.evaluation.scoring import MetricSpec, method_list, score_fusion, score_methods
from cir.models import Backbone

log = logging.getLogger(__name__)

# Benchmarks scored in parts whose headline is the parts' average: FashionIQ's categories (R@10 / R@50) and
# GeneCIS's four tasks (R@1 / R@2 / R@3; facebookresearch/genecis reports each task and their mean).
AVERAGED_METRICS = {"fashioniq": ("R@10", "R@50"), "genecis": ("R@1", "R@2", "R@3")}


@dataclass
class _Entry:
    bench: CIRBenchmark
    index: EvalIndex
    key: str = ""
    feats: Features | None = None


class BenchmarkEvaluator:
    """Encode each benchmark split once (reusing cached features), then score every method."""

    def __init__(
        self,
        benchmarks: Sequence[CIRBenchmark],
        methods: Sequence[str],
        alphas: Sequence[float],
        cache: FeatureCache | None = None,
        batch_size: int = 64,
        num_workers: int = 0,
        spec: MetricSpec = MetricSpec(),
        exclude_reference: bool | None = None,
    ) -> None:
        """`exclude_reference`: None for each benchmark's official rule, True / False to force one for all."""
        self.entries = [_Entry(b, EvalIndex.build(b, exclude_reference)) for b in benchmarks]
        self.methods = method_list(methods, alphas)
        self.cache = cache or FeatureCache(None)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.spec = spec
        self.loader_map: list[tuple[int, str]] = []
        self.collectors: dict[int, FeatureCollector] = {}

    def dataloaders(self, backbone: Backbone) -> list[DataLoader]:
        """Loaders for the splits whose features are not cached; each call re-checks the cache."""
        fingerprint = backbone.fingerprint()
        preprocess = repr(backbone.preprocess_val)
        loaders: list[DataLoader] = []
        self.loader_map = []
        self.collectors = {}
        for i, entry in enumerate(self.entries):
            entry.key = cache_key(fingerprint, entry.bench, entry.index, preprocess)
            entry.feats = self.cache.load(entry.bench, entry.key, (len(entry.index.image_ids), len(entry.index.texts)))
            if entry.feats is not None:
                log.info("%s/%s: features from cache %s", entry.bench.name, entry.bench.split, self.cache.path(entry.bench, entry.key))
                continue
            images, texts = encoding_loaders(
                entry.bench, entry.index, backbone.preprocess_val, backbone.tokenize, self.batch_size, self.num_workers
            )
            loaders += [images, texts]
            self.loader_map += [(i, "image"), (i, "text")]
            self.collectors[i] = FeatureCollector({"image": len(entry.index.image_ids), "text": len(entry.index.texts)})
        return loaders

    def encode_batch(self, backbone: Backbone, batch: tuple[torch.Tensor, torch.Tensor], dataloader_idx: int) -> None:
        rows, inputs = batch
        i, kind = self.loader_map[dataloader_idx]
        feats = backbone.encode_image(inputs) if kind == "image" else backbone.encode_text(inputs)
        self.collectors[i].add(kind, rows, feats)

    def finish_encoding(self, device: torch.device) -> None:
        """Gather every rank's rows into full tables on every rank; rank 0 writes the cache."""
        for i, collector in list(self.collectors.items()):
            entry = self.entries[i]
            dim = next(f.shape[1] for parts in collector.parts.values() for _, f in parts)
            entry.feats = Features(collector.assemble("image", dim, device), collector.assemble("text", dim, device))
            if is_global_zero():
                self.cache.save(entry.bench, entry.key, entry.feats)
            self.collectors[i] = FeatureCollector(collector.sizes)  # ready for the next validation run

    def excludes_reference(self) -> dict[str, bool]:
        """{benchmark name: whether its reference images are removed from the candidates}."""
        return {e.bench.name: e.index.exclude_reference for e in self.entries}

    def features(self) -> list[tuple[CIRBenchmark, EvalIndex, Features]]:
        missing = [e.bench.name for e in self.entries if e.feats is None]
        if missing:
            raise RuntimeError(f"features not computed for {missing}: run the encoding loaders first")
        return [(e.bench, e.index, e.feats) for e in self.entries]

    def score(self, device: torch.device | None = None) -> dict[str, float]:
        """Flat `<dataset>/<split>/<method>/<metric>` dict in percent, FashionIQ / GeneCIS averages included."""
        return self._flat(device, lambda index, feats: score_methods(index, feats, self.methods, self.spec))

    def score_fusion(
        self, name: str, fuse: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], device: torch.device | None = None
    ) -> dict[str, float]:
        """Like `score`, for one learned composition (a trained Slerp alpha or combiner) reported as method `name`."""
        return self._flat(device, lambda index, feats: {name: score_fusion(index, feats, fuse, self.spec)})

    def _flat(
        self, device: torch.device | None, score_split: Callable[[EvalIndex, Features], dict[str, dict[str, float]]]
    ) -> dict[str, float]:
        flat: dict[str, float] = {}
        for bench, index, feats in self.features():
            if not bench.has_targets:
                raise ValueError(f"{bench.name}/{bench.split} has no ground truth: use `python -m cir.submit` for it")
            if device is not None:
                feats = Features(feats.image.to(device), feats.text.to(device))
            for method, metrics in score_split(index, feats).items():
                for metric, value in metrics.items():
                    flat[f"{bench.name}/{bench.split}/{method}/{metric}"] = value
        flat.update(part_averages(flat))
        return flat


def part_averages(flat: dict[str, float]) -> dict[str, float]:
    """`<family>_avg/...`: each AVERAGED_METRICS metric averaged over the family's parts evaluated."""
    groups: dict[tuple[str, str, str, str], list[float]] = {}
    for key, value in flat.items():
        dataset, split, method, metric = key.split("/")
        family, _, part = dataset.partition("_")
        if part and part != "avg" and metric in AVERAGED_METRICS.get(family, ()):
            groups.setdefault((family, split, method, metric), []).append(value)
    return {f"{f}_avg/{s}/{m}/{k}": sum(v) / len(v) for (f, s, m, k), v in groups.items()}
