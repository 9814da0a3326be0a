"""CIR metrics as the benchmarks define them, in percent, from each query's top-K gallery indices.

Inputs are rankings (from cir.retrieval.topk_search or rank_candidates), never
score matrices, and the metric classes keep one value per query, so states
from several DDP ranks concatenate ("cat") into exactly the single-process
result. With zero queries in total, the functions and compute() raise
ValueError rather than report a meaningless number.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    ks = tuple(ks)
    if not ks or any(isinstance(k, bool) or not isinstance(k, int) or k <= 0 for k in ks):
        raise ValueError(f"ks must be a non-empty sequence of positive ints, got {ks!r}")
    return ks


def _check_topk(topk: Tensor) -> None:
    if topk.dim() != 2 or topk.dtype.is_floating_point or topk.dtype == torch.bool:
        raise ValueError(f"topk must be an integer (Q, K) tensor of gallery indices, got {topk.dtype} of shape {tuple(topk.shape)}")


def target_rank(topk: Tensor, target: Tensor) -> Tensor:
    """0-based position of each query's target in its ranking, inf where it is absent (float, so states share one dtype)."""
    _check_topk(topk)
    if target.shape != topk.shape[:1]:
        raise ValueError(f"target must have shape ({topk.shape[0]},) to match topk, got {tuple(target.shape)}")
    target = target.to(topk.device)
    if (target < 0).any():
        raise ValueError("target holds -1 (unknown target): such queries cannot be scored")
    hits = topk == target[:, None]
    positions = torch.where(hits, torch.arange(topk.shape[1], device=topk.device, dtype=torch.float32), torch.inf)
    misses = torch.full((topk.shape[0], 1), torch.inf, device=topk.device)
    return torch.cat([positions, misses], dim=1).amin(dim=1)


def _has_repeats(indices: Tensor) -> bool:
    """Whether some row repeats a gallery index (-1 padding may repeat)."""
    ordered = indices.sort(dim=1).values
    return bool(((ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)).any())


def average_precision(topk: Tensor, positives: Tensor, ks: Sequence[int]) -> Tensor:
    """CIRCO AP@K per query and K, (Q, len(ks)): sum of precision@i at hits in the top K / min(K, #ground truths)."""
    ks = _check_ks(ks)
    _check_topk(topk)
    if positives.dim() != 2 or positives.shape[0] != topk.shape[0] or positives.dtype.is_floating_point:
        raise ValueError(f"positives must be an integer ({topk.shape[0]}, P) tensor of gallery indices (-1 = padding), got {positives.dtype} of shape {tuple(positives.shape)}")
    positives = positives.to(topk.device)
    valid = positives >= 0
    num_positives = valid.sum(dim=1)
    if (num_positives == 0).any():
        raise ValueError("some query has no ground truth in positives (all -1): its AP is undefined")
    for name, x in (("positives", positives), ("topk", topk)):
        if _has_repeats(x):
            raise ValueError(f"{name} lists the same gallery index twice for some query: it would count twice")
    hits = ((topk[:, :, None] == positives[:, None, :]) & valid[:, None, :] & (topk[:, :, None] >= 0)).any(dim=2).double()
    ranks = torch.arange(1, topk.shape[1] + 1, device=topk.device, dtype=torch.float64)
    precision_at_hits = hits.cumsum(dim=1) / ranks * hits
    return torch.stack([precision_at_hits[:, :k].sum(dim=1) / num_positives.clamp(max=k) for k in ks], dim=1)


def _cat(state: list[Tensor] | Tensor) -> Tensor:
    """A state as one tensor: a list before DDP sync (empty if this process saw no queries), a tensor after."""
    return dim_zero_cat(state) if isinstance(state, Tensor) or state else torch.empty(0)


def _percent(values: Tensor) -> float:
    if values.numel() == 0:
        raise ValueError("no queries to compute the metric on")
    return 100.0 * values.double().mean().item()


def recall_at_k(topk: Tensor, target: Tensor, ks: Sequence[int]) -> dict[int, float]:
    """Recall@K in percent: a hit if the target is among the first K of topk (all of it if K is larger)."""
    ks = _check_ks(ks)
    ranks = target_rank(topk, target)
    return {k: _percent(ranks < k) for k in ks}


def map_at_k(topk: Tensor, positives: Tensor, ks: Sequence[int]) -> dict[int, float]:
    """CIRCO mAP@K in percent (not torchmetrics' RetrievalMAP, whose normaliser is the number of hits)."""
    ks = _check_ks(ks)
    ap = average_precision(topk, positives, ks)
    return {k: _percent(ap[:, i]) for i, k in enumerate(ks)}


class RecallAtK(Metric):
    """Recall@K over all updates; keys '{prefix}@{k}', e.g. 'R@1', or 'Rsub@1' for CIRR Recall_subset."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, ks: Sequence[int] = (1, 5, 10, 50), prefix: str = "R", **kwargs) -> None:
        super().__init__(**kwargs)
        self.ks = _check_ks(ks)
        self.prefix = prefix
        self.add_state("target_rank", default=[], dist_reduce_fx="cat")

    def update(self, topk: Tensor, target: Tensor) -> None:
        self.target_rank.append(target_rank(topk, target).to(self.dtype))

    def compute(self) -> dict[str, float]:
        ranks = _cat(self.target_rank)
        return {f"{self.prefix}@{k}": _percent(ranks < k) for k in self.ks}


class MeanAveragePrecisionAtK(Metric):
    """CIRCO mAP@K over all updates; keys 'mAP@{k}'. One AP state per K keeps every state 1-D for DDP."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, ks: Sequence[int] = (5, 10, 25, 50), **kwargs) -> None:
        super().__init__(**kwargs)
        self.ks = _check_ks(ks)
        for k in self.ks:
            self.add_state(f"ap_at_{k}", default=[], dist_reduce_fx="cat")

    def update(self, topk: Tensor, positives: Tensor) -> None:
        ap = average_precision(topk, positives, self.ks).to(self.dtype)
        for i, k in enumerate(self.ks):
            getattr(self, f"ap_at_{k}").append(ap[:, i])

    def compute(self) -> dict[str, float]:
        return {f"mAP@{k}": _percent(_cat(getattr(self, f"ap_at_{k}"))) for k in self.ks}
