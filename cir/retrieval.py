"""Exact, deterministic top-K search by inner product, without ever holding a query x gallery matrix.

Scores are computed block by block in float32 and each (score, gallery index)
pair is packed into one int64 key whose order is "higher score first, then
lower gallery index first". Keys are unique, so torch.topk on them is exact and
deterministic on any device, ties break like a stable sort, and the running
top-K merge across gallery blocks is a plain topk over concatenated keys.
"""

from __future__ import annotations

import torch
from torch import Tensor

_INDEX_BITS = 32
_INDEX_MASK = (1 << _INDEX_BITS) - 1
_INT32_LOW_BITS = 0x7FFFFFFF
_INVALID_KEY = torch.iinfo(torch.int64).min


def _score_keys(scores: Tensor, indices: Tensor) -> Tensor:
    """Pack float32 scores and gallery indices into int64 keys ordered by (score desc, index asc).

    A float32's bit pattern, read as int32, is monotonic for positive floats and
    reversed for negative ones; flipping the 31 low bits of negatives makes it
    monotonic throughout. `+ 0.0` maps -0.0 to +0.0 so the two tie as floats do.
    """
    bits = (scores.float() + 0.0).view(torch.int32)
    ordered = torch.where(bits < 0, bits ^ _INT32_LOW_BITS, bits).to(torch.int64)
    return ordered * (1 << _INDEX_BITS) + (_INDEX_MASK - indices)


def _decode_keys(keys: Tensor) -> tuple[Tensor, Tensor]:
    """Inverse of _score_keys: (float32 scores, int64 gallery indices)."""
    ordered = torch.div(keys, 1 << _INDEX_BITS, rounding_mode="floor").to(torch.int32)
    bits = torch.where(ordered < 0, ordered ^ _INT32_LOW_BITS, ordered)
    return bits.view(torch.float32), _INDEX_MASK - (keys & _INDEX_MASK)


def _check_features(queries: Tensor, gallery: Tensor) -> None:
    for name, x in (("queries", queries), ("gallery", gallery)):
        if x.dim() != 2 or not x.is_floating_point():
            raise ValueError(f"{name} must be a floating (N, D) tensor, got {x.dtype} of shape {tuple(x.shape)}")
        if not torch.isfinite(x).all():
            raise ValueError(f"{name} holds NaN or infinite values")
    if queries.shape[1] != gallery.shape[1]:
        raise ValueError(f"queries and gallery differ in feature size: {queries.shape[1]} vs {gallery.shape[1]}")
    if queries.device != gallery.device:
        raise ValueError(f"queries are on {queries.device} but the gallery is on {gallery.device}")
    if gallery.shape[0] > _INDEX_MASK:
        raise ValueError(f"gallery of {gallery.shape[0]} items exceeds the supported {_INDEX_MASK}")


def _check_indices(name: str, x: Tensor, shape: tuple[int, ...], num_gallery: int) -> Tensor:
    """Gallery indices, -1 meaning none; anything else outside [0, G) is an error."""
    if x.shape != shape or x.dtype.is_floating_point or x.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor of shape {shape}, got {x.dtype} of shape {tuple(x.shape)}")
    if x.numel() and (x.min() < -1 or x.max() >= num_gallery):
        raise ValueError(f"{name} holds indices outside [-1, {num_gallery}) (gallery size {num_gallery}, -1 = none)")
    return x.long()


def topk_search(
    queries: Tensor,
    gallery: Tensor,
    k: int,
    *,
    exclude: Tensor | None = None,
    query_block: int = 1024,
    gallery_block: int = 65536,
) -> tuple[Tensor, Tensor]:
    """Top-k gallery items per query by inner product, best first: (float32 scores, int64 indices), each (Q, k').

    k' = min(k, G - 1) when `exclude` is given (exclude[i] is the gallery index
    dropped from query i's ranking, its own reference image, or -1 for none),
    else min(k, G). Results equal a float32 brute-force ranking with ties
    broken by lower gallery index. Peak memory is about
    query_block x (gallery_block x 12 + k x 16) bytes beyond the inputs.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
        raise ValueError(f"k must be a positive int, got {k!r}")
    if query_block <= 0 or gallery_block <= 0:
        raise ValueError(f"query_block and gallery_block must be positive, got {query_block} and {gallery_block}")
    _check_features(queries, gallery)
    num_queries, num_gallery = queries.shape[0], gallery.shape[0]
    if exclude is not None:
        exclude = _check_indices("exclude", exclude.to(queries.device), (num_queries,), num_gallery)
    k_out = max(0, min(k, num_gallery - 1 if exclude is not None else num_gallery))
    device = queries.device
    all_scores = torch.empty(num_queries, k_out, dtype=torch.float32, device=device)
    all_indices = torch.empty(num_queries, k_out, dtype=torch.int64, device=device)
    if k_out == 0:
        return all_scores, all_indices
    for q_start in range(0, num_queries, query_block):
        q_rows = slice(q_start, q_start + query_block)
        q = queries[q_rows].float()
        best = torch.empty(q.shape[0], 0, dtype=torch.int64, device=device)
        for g_start in range(0, num_gallery, gallery_block):
            block = gallery[g_start : g_start + gallery_block].float()
            positions = torch.arange(g_start, g_start + block.shape[0], device=device)
            keys = _score_keys(q @ block.T, positions)
            if exclude is not None:
                keys.masked_fill_(exclude[q_rows, None] == positions, _INVALID_KEY)
            keys = keys.topk(min(k_out, keys.shape[1]), dim=1).values
            best = torch.cat([best, keys], dim=1).topk(min(k_out, best.shape[1] + keys.shape[1]), dim=1).values
        all_scores[q_rows], all_indices[q_rows] = _decode_keys(best)
    return all_scores, all_indices


def rank_candidates(
    queries: Tensor,
    gallery: Tensor,
    candidates: Tensor,
    exclude: Tensor | None = None,
    *,
    query_block: int = 1024,
) -> Tensor:
    """Each query's candidate gallery indices sorted best first (CIRR Recall_subset).

    candidates[i] lists gallery indices (-1 = padding); the excluded index of
    each query (its reference) and the padding move to the end as -1. A
    candidate listed twice in one row is an error, since it would count twice.
    Same scores and tie-breaking as topk_search.
    """
    _check_features(queries, gallery)
    num_queries, num_gallery = queries.shape[0], gallery.shape[0]
    if candidates.dim() != 2:
        raise ValueError(f"candidates must be a (Q, M) tensor of gallery indices, got shape {tuple(candidates.shape)}")
    candidates = _check_indices("candidates", candidates.to(queries.device), (num_queries, candidates.shape[1]), num_gallery)
    if exclude is not None:
        exclude = _check_indices("exclude", exclude.to(queries.device), (num_queries,), num_gallery)
    ordered = candidates.sort(dim=1).values
    if ((ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)).any():
        raise ValueError("candidates list the same gallery index twice for some query")
    ranked = torch.empty_like(candidates)
    for q_start in range(0, num_queries, query_block):
        rows = slice(q_start, q_start + query_block)
        cand = candidates[rows]
        valid = cand >= 0
        if exclude is not None:
            valid &= cand != exclude[rows, None]
        safe = cand.clamp_min(0)
        scores = torch.einsum("qd,qmd->qm", queries[rows].float(), gallery[safe].float())
        keys = _score_keys(scores, safe).masked_fill_(~valid, _INVALID_KEY).sort(dim=1, descending=True).values
        ranked[rows] = torch.where(keys == _INVALID_KEY, -1, _decode_keys(keys)[1])
    return ranked
