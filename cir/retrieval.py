"""Exact, deterministic top-K search by inner product, without ever holding a query x gallery matrix.

Scores are computed block by block in float32 and each (score, gallery index)
pair is packed into one int64 key whose order is "higher score first, then
lower gallery index first". Keys are unique, so torch.topk on them is exact and
deterministic on any device, ties break like a stable sort, and the running
top-K merge across gallery blocks is a plain topk over concatenated keys. Only
each block's K best float scores are packed (the whole row only where a tie
straddles the K-th place), which keeps the search as fast as the matmul allows.
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


def _finite(block: Tensor) -> bool:
    """torch.isfinite(block).all() for a float32 block, in one fast pass where it holds.

    The sum is finite unless the block holds a NaN or an infinity, or finite
    values overflow it; only then is the (several times slower) element-wise
    test run, to tell the two apart.
    """
    return bool(torch.isfinite(block.sum())) or bool(torch.isfinite(block).all())


def _all_finite(x: Tensor, rows: int = 65536) -> bool:
    """Whether every element of x is finite, checked a float32 block of rows at a time (no full-size copies)."""
    return all(_finite(x[i : i + rows].float()) for i in range(0, x.shape[0], rows))


def _not_finite(name: str) -> ValueError:
    return ValueError(f"{name} holds NaN or infinite values")


def _check_features(queries: Tensor, gallery: Tensor, *, check_gallery_values: bool = True) -> None:
    for name, x in (("queries", queries), ("gallery", gallery)):
        if x.dim() != 2 or not x.is_floating_point():
            raise ValueError(f"{name} must be a floating (N, D) tensor, got {x.dtype} of shape {tuple(x.shape)}")
        if (name == "queries" or check_gallery_values) and not _all_finite(x):
            raise _not_finite(name)
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


_GROUP = 128


def _top_values(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The k largest values per row and their columns, like scores.topk(k) up to the order of tied values.

    torch.topk costs several times the matmul's time per score on CPU; on wide
    rows it runs on the k groups of _GROUP columns with the largest maxima
    instead. Any value outside those groups is at most the smallest of their
    maxima, so at most tied with the k-th best: the k values are the same multiset.
    """
    rows, width = scores.shape
    groups = width // _GROUP
    if width % _GROUP or groups < 4 * k:
        return scores.topk(k, dim=1)
    grouped = scores.view(rows, groups, _GROUP)
    best_groups = grouped.amax(dim=2).topk(k, dim=1).indices
    candidates = grouped.gather(1, best_groups[:, :, None].expand(-1, -1, _GROUP)).reshape(rows, k * _GROUP)
    values, where = candidates.topk(k, dim=1)
    return values, best_groups.gather(1, where // _GROUP) * _GROUP + where % _GROUP


def _block_keys(scores: Tensor, offset: int, k: int, excluded: Tensor | None) -> Tensor:
    """Keys of each row's best k (or fewer) items of one score block; excluded[i] is a column to drop or -1.

    Packing every score into a key costs more than the matmul, so only the
    k + 1 best float scores per row are looked at: when the k-th and the
    (k+1)-th differ, the top k is one set whatever the tie-breaking and only
    those k are packed. Rows with a tie (or a NaN) at that boundary fall back
    to packing the whole row, which breaks the tie by index exactly.
    """
    rows, width = scores.shape
    if excluded is not None:
        hit = excluded >= 0
        scores[hit.nonzero().squeeze(1), excluded[hit]] = -torch.inf
    positions = torch.arange(offset, offset + width, device=scores.device)
    if width <= k:
        suspect = torch.ones(rows, dtype=torch.bool, device=scores.device)
        keys = torch.empty(rows, width, dtype=torch.int64, device=scores.device)
    else:
        values, columns = _top_values(scores, k + 1)
        suspect = (values[:, k - 1] == values[:, k]) | values.isnan().any(dim=1)
        keys = _score_keys(values[:, :k], columns[:, :k] + offset)
    if suspect.any():
        full = _score_keys(scores[suspect], positions)
        if excluded is not None:
            full.masked_fill_(excluded[suspect, None] == positions - offset, _INVALID_KEY)
        keys[suspect] = full.topk(min(k, width), dim=1).values
    return keys


def topk_search(
    queries: Tensor,
    gallery: Tensor,
    k: int,
    *,
    exclude: Tensor | None = None,
    query_block: int = 1024,
    gallery_block: int = 32768,
) -> tuple[Tensor, Tensor]:
    """Top-k gallery items per query by inner product, best first: (float32 scores, int64 indices), each (Q, k').

    k' = min(k, G - 1) when `exclude` is given (exclude[i] is the gallery index
    dropped from query i's ranking, its own reference image, or -1 for none),
    else min(k, G). Results equal a float32 brute-force ranking with ties
    broken by lower gallery index. Each gallery block is cast to float32 once;
    peak memory beyond the inputs is about gallery_block x (D + query_block) x 4
    bytes (224 MiB for D = 768 at the defaults) plus Q x (4 D + 20 k) bytes for
    the float32 queries and the results.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
        raise ValueError(f"k must be a positive int, got {k!r}")
    if query_block <= 0 or gallery_block <= 0:
        raise ValueError(f"query_block and gallery_block must be positive, got {query_block} and {gallery_block}")
    _check_features(queries, gallery, check_gallery_values=False)
    num_queries, num_gallery = queries.shape[0], gallery.shape[0]
    if exclude is not None:
        exclude = _check_indices("exclude", exclude.to(queries.device), (num_queries,), num_gallery)
    k_out = max(0, min(k, num_gallery - 1 if exclude is not None else num_gallery))
    device = queries.device
    if k_out == 0:
        if not _all_finite(gallery):
            raise _not_finite("gallery")
        return torch.empty(num_queries, 0, device=device), torch.empty(num_queries, 0, dtype=torch.int64, device=device)
    best = torch.full((num_queries, k_out), _INVALID_KEY, dtype=torch.int64, device=device)
    queries = queries.float()
    for g_start in range(0, num_gallery, gallery_block):
        block = gallery[g_start : g_start + gallery_block].float()
        if not _finite(block):
            raise _not_finite("gallery")
        for q_start in range(0, num_queries, query_block):
            rows = slice(q_start, q_start + query_block)
            excluded = None
            if exclude is not None:
                local = exclude[rows] - g_start
                excluded = torch.where((local >= 0) & (local < block.shape[0]), local, -1)
            keys = _block_keys(queries[rows] @ block.T, g_start, k_out, excluded)
            best[rows] = torch.cat([best[rows], keys], dim=1).topk(k_out, dim=1).values
    return _decode_keys(best)


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
