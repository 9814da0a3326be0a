"""What the page computes, as plain functions over one gallery's cached features.

Composition is cir.slerp.compose, ranking cir.retrieval.topk_search (exact,
ties by lower gallery row) and per-query scores cir.metrics' target_rank and
average_precision, exactly as `cir.evaluate` scores a split; nothing here is a
second implementation of them. Ranks are 1-based; a target past the ranked
`depth` has rank inf.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image
from torch import Tensor

from cir.data.retrieval_benchmarks.benchmark import CIRBenchmark
from cir.evaluation.features import EvalIndex, Features
from cir.evaluation.scoring import MetricSpec, ranked_ids
from cir.metrics import average_precision, target_rank
from cir.models import Backbone
from cir.retrieval import rank_candidates, topk_search
from cir.slerp import METHODS, compose

SHOW = ("all", "found", "missed")  # query filter: every query, or those whose target is (not) in the top K


class QueryError(ValueError):
    """Input the page cannot compose a query from (empty caption, unknown method): a message, not a crash."""


@dataclass
class Gallery:
    """One model's features of one gallery (rows follow `index`), with the encoder for uploaded queries."""

    label: str
    bench: CIRBenchmark
    index: EvalIndex
    feats: Features
    backbone: Backbone | None = None

    @property
    def vectors(self) -> Tensor:
        return self.feats.image[: self.index.n_gallery]


@dataclass(frozen=True)
class Query:
    """Reference image and caption features; `exclude` the gallery row left out (-1: none); `row` the
    benchmark query it came from (None for an upload, which has no ground truth)."""

    image: Tensor
    text: Tensor
    caption: str
    exclude: int = -1
    row: int | None = None


@dataclass
class Result:
    """One model's answer to one query: the top-K gallery rows with their scores, the ground-truth rows, metrics."""

    rows: list[int]
    scores: list[float]
    targets: set[int]
    metrics: dict[str, float]


def slerp_alpha(method: str, alpha: float) -> float | None:
    """The alpha argument of compose: the slider's value for Slerp, None for the baselines."""
    if method not in METHODS:
        raise QueryError(f"unknown method {method!r}: choose one of {', '.join(METHODS)}")
    return float(alpha) if method == "slerp" else None


def benchmark_query(gallery: Gallery, row: int) -> Query:
    index = gallery.index
    caption = gallery.bench.queries[row].caption
    image, text = gallery.feats.image[index.ref_rows[row]], index.query_text(gallery.feats.text, [row])[0]
    return Query(image, text, caption, int(index.exclude[row]), row)


@torch.no_grad()
def upload_query(backbone: Backbone, image: Image.Image, caption: str, method: str) -> Query:
    """Encode an uploaded reference and a typed caption with `backbone` (each model encodes its own)."""
    if not caption.strip() and method != "image":
        raise QueryError(f"type a relative caption: method {method!r} uses the text (or choose method 'image')")
    pixels = backbone.preprocess_val(image.convert("RGB"))[None].to(backbone.device)
    tokens = backbone.tokenize(caption.strip()).to(backbone.device)
    return Query(backbone.encode_image(pixels)[0].float().cpu(), backbone.encode_text(tokens)[0].float().cpu(), caption)


def search(gallery: Gallery, query: Query, method: str, alpha: float, top_k: int, depth: int) -> Result:
    """Rank the gallery for one query; metrics are the benchmark's for a benchmark query with ground truth."""
    vector = compose(method, query.image[None], query.text[None], slerp_alpha(method, alpha))
    exclude = torch.tensor([query.exclude]) if query.exclude >= 0 else None
    if query.row is not None and gallery.index.query_galleries:  # GeneCIS: the query's own gallery only
        top = rank_candidates(vector, gallery.vectors, gallery.index.subset[query.row : query.row + 1], exclude)
        top = top[:, : int((top >= 0).sum())]
        scores = vector.float() @ gallery.vectors[top[0]].float().T
    else:
        scores, top = topk_search(vector, gallery.vectors, max(top_k, depth), exclude=exclude)
    targets: set[int] = set()
    metrics: dict[str, float] = {}
    if query.row is not None and gallery.bench.queries[query.row].targets:
        targets = {int(t) for t in gallery.index.positives[query.row] if 0 <= t < gallery.index.n_gallery}
        metrics = query_metrics(gallery, query.row, vector, top)
    return Result(top[0, :top_k].tolist(), scores[0, :top_k].tolist(), targets, metrics)


def query_metrics(gallery: Gallery, row: int, vector: Tensor, top: Tensor, spec: MetricSpec = MetricSpec()) -> dict[str, float]:
    """The target's rank, its rank within CIRR's img_set, and CIRCO's AP@K (in percent), as cir.evaluate scores them."""
    index = gallery.index
    target = index.target[row : row + 1]
    metrics = {"rank": float(target_rank(top, target)[0]) + 1}
    if index.subset.shape[1] > 0 and not index.query_galleries:
        reference = index.reference[row : row + 1]
        ranked = rank_candidates(vector, gallery.vectors, index.subset[row : row + 1], reference)
        metrics["subset rank"] = float(target_rank(ranked, target)[0]) + 1
    if index.positives.shape[1] > 1:
        ap = average_precision(top, index.positives[row : row + 1], spec.map)[0]
        metrics.update({f"AP@{k}": 100.0 * float(v) for k, v in zip(spec.map, ap)})
    return metrics


def target_ranks(gallery: Gallery, method: str, alpha: float, depth: int) -> Tensor:
    """Every benchmark query's target rank (inf past `depth`, and for queries without ground truth)."""
    index = gallery.index
    if not gallery.bench.queries:
        return torch.empty(0)
    top = ranked_ids(index, gallery.feats, method, slerp_alpha(method, alpha), depth)
    return target_rank(top, index.target) + 1


def disagreements(ranks_a: Tensor, ranks_b: Tensor, depth: int, limit: int) -> list[tuple[int, float, float]]:
    """(query row, rank under A, rank under B) where the two differ most, by |log(rank A / rank B)|.

    The log ratio makes a target moving from 1 to 50 count more than one moving
    from 500 to 1000; ranks past `depth` count as depth + 1, and queries whose
    target neither model ranks are left out.
    """
    a, b = ranks_a.clamp(max=depth + 1), ranks_b.clamp(max=depth + 1)
    change = (a.log() - b.log()).abs()
    order = torch.argsort(change, descending=True, stable=True)
    return [(int(r), float(ranks_a[r]), float(ranks_b[r])) for r in order[:limit] if change[r] > 0]


def find_queries(bench: CIRBenchmark, text: str, ranks: Tensor, show: str, top_k: int, limit: int) -> list[int]:
    """Query rows whose caption, id or reference contains `text` (any case), filtered by `show` (see SHOW)."""
    if show not in SHOW:
        raise QueryError(f"unknown filter {show!r}: choose one of {', '.join(SHOW)}")
    needle = text.strip().lower()
    rows = [
        i for i, q in enumerate(bench.queries)
        if needle in q.caption.lower() or needle in q.query_id.lower() or needle in q.reference.lower()
    ]
    if show == "found":
        rows = [i for i in rows if ranks[i] <= top_k]
    elif show == "missed":
        rows = [i for i in rows if ranks[i] > top_k]
    return rows[:limit]
