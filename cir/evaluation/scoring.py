"""Scoring every method of an evaluation from one set of features.

Each rank scores a strided slice of the queries and the torchmetrics objects
concatenate per-query results across ranks, so DDP evaluation equals the
1-process result whatever the query count (no padded duplicates are counted).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from cir.distributed import rank_slice
from cir.evaluation.features import EvalIndex, Features
from cir.metrics import MeanAveragePrecisionAtK, RecallAtK
from cir.retrieval import rank_candidates, topk_search
from cir.slerp import compose, method_key


@dataclass(frozen=True)
class MetricSpec:
    """Which cut-offs to report; the paper's lists are the defaults."""

    recall: tuple[int, ...] = (1, 5, 10, 50)
    subset_recall: tuple[int, ...] = (1, 2, 3)
    map: tuple[int, ...] = (5, 10, 25, 50)
    # GeneCIS, within each query's own gallery (facebookresearch/genecis eval/evaluate.py: validate(topk=(1, 2, 3)))
    query_gallery_recall: tuple[int, ...] = (1, 2, 3)


def method_list(methods: Sequence[str], alphas: Sequence[float]) -> list[tuple[str, float | None]]:
    """Expand `slerp` into one entry per alpha of the sweep; the baselines take no alpha."""
    out: list[tuple[str, float | None]] = []
    for method in methods:
        if method == "slerp":
            out.extend(("slerp", float(a)) for a in sorted(set(alphas)))
        else:
            out.append((method, None))
    return out


def compose_queries(index: EvalIndex, feats: Features, method: str, alpha: float | None, rows: slice) -> torch.Tensor:
    """Query vectors of one method; a query with several texts (FashionIQ both_orders) composes with their
    normalised mean (index.query_text), so Slerp interpolates towards the averaged text feature."""
    return compose(method, feats.image[index.ref_rows[rows]], index.query_text(feats.text, rows), alpha)


def score_methods(
    index: EvalIndex,
    feats: Features,
    methods: Sequence[tuple[str, float | None]],
    spec: MetricSpec = MetricSpec(),
    block_size: int = 1024,
) -> dict[str, dict[str, float]]:
    """{method key: {"R@1": ..., "Rsub@1": ..., "mAP@5": ...}} in percent, synced over DDP ranks."""
    composers = {
        method_key(method, alpha): functools.partial(compose_queries, index, feats, method, alpha)
        for method, alpha in methods
    }
    return _score_compositions(index, feats, composers, spec, block_size)


def score_fusion(
    index: EvalIndex,
    feats: Features,
    fuse: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    spec: MetricSpec = MetricSpec(),
    block_size: int = 1024,
) -> dict[str, float]:
    """Metrics of a learned composition `fuse(image feats, text feats)` (e.g. a trained combiner), as score_methods."""

    @torch.no_grad()
    def queries(rows: slice) -> torch.Tensor:
        return fuse(feats.image[index.ref_rows[rows]], index.query_text(feats.text, rows))

    return _score_compositions(index, feats, {"fusion": queries}, spec, block_size)["fusion"]


def _score_compositions(
    index: EvalIndex,
    feats: Features,
    composers: dict[str, Callable[[slice], torch.Tensor]],
    spec: MetricSpec,
    block_size: int,
) -> dict[str, dict[str, float]]:
    """Score each named query composer (rows slice -> query vectors) on this rank's slice of the queries."""
    rows = rank_slice(len(index.ref_rows))
    device = feats.image.device
    gallery = feats.image[: index.n_gallery]
    excluded = index.excluded()
    exclude = excluded[rows].to(device) if excluded is not None else None
    reference, target = index.reference[rows].to(device), index.target[rows].to(device)
    has_targets = bool((index.target < index.n_gallery).any())
    has_subset = index.subset.shape[1] > 0 and has_targets
    has_positives = index.positives.shape[1] > 1
    kmax = max(spec.recall + (spec.map if has_positives else ()))
    results: dict[str, dict[str, float]] = {}
    for name, composer in composers.items():
        queries = composer(rows)
        if index.query_galleries:
            results[name] = _query_gallery_recall(queries, gallery, index.subset[rows].to(device), exclude, target, spec)
            continue
        _, top = topk_search(queries, gallery, kmax, exclude=exclude, query_block=block_size)
        recall = RecallAtK(spec.recall, prefix="R").to(device)
        recall.update(top, target)
        values = dict(recall.compute())
        if has_subset:
            subset_recall = RecallAtK(spec.subset_recall, prefix="Rsub").to(device)
            ranked = rank_candidates(queries, gallery, index.subset[rows].to(device), reference)
            subset_recall.update(ranked, target)
            values.update(subset_recall.compute())
        if has_positives:
            mean_ap = MeanAveragePrecisionAtK(spec.map).to(device)
            mean_ap.update(top, index.positives[rows].to(device))
            values.update(mean_ap.compute())
        results[name] = {k: float(v) for k, v in values.items()}
    return results


def _query_gallery_recall(
    queries: torch.Tensor,
    gallery: torch.Tensor,
    candidates: torch.Tensor,
    exclude: torch.Tensor | None,
    target: torch.Tensor,
    spec: MetricSpec,
) -> dict[str, float]:
    """GeneCIS's Recall@K: the target's rank among the query's own candidates (eval/eval_functions.py validate sorts
    the [target] + gallery similarities, utils/metric_utils.py get_recall counts the target in the top K); ties go
    to the earlier gallery row (the official sort leaves them to torch)."""
    recall = RecallAtK(spec.query_gallery_recall, prefix="R").to(queries.device)
    recall.update(rank_candidates(queries, gallery, candidates, exclude), target)
    return {k: float(v) for k, v in recall.compute().items()}


def ranked_ids(
    index: EvalIndex, feats: Features, method: str, alpha: float | None, k: int, block_size: int = 1024
) -> torch.Tensor:
    """Every query's top-k gallery rows (reference excluded where index.exclude_reference), on this process:
    for submissions and examples. With query galleries (GeneCIS), its own gallery ranked (-1 past its end)."""
    queries = compose_queries(index, feats, method, alpha, slice(None))
    gallery = feats.image[: index.n_gallery]
    excluded = index.excluded()
    exclude = excluded.to(gallery.device) if excluded is not None else None
    if index.query_galleries:
        return rank_candidates(queries, gallery, index.subset.to(gallery.device), exclude)[:, :k]
    _, top = topk_search(queries, gallery, k, exclude=exclude, query_block=block_size)
    return top


def ranked_subset_ids(index: EvalIndex, feats: Features, method: str, alpha: float | None) -> torch.Tensor:
    """Every query's img_set members ranked (reference always removed, as CIRR's Recall_subset; -1 padding at the end)."""
    queries = compose_queries(index, feats, method, alpha, slice(None))
    gallery = feats.image[: index.n_gallery]
    return rank_candidates(queries, gallery, index.subset.to(gallery.device), index.reference.to(gallery.device))
