"""Every metric of metrics.json recomputed with plain numpy from an exported features file, independent of cir.

Float64 scores over the whole gallery, a stable argsort (ties to the lower gallery
index, as cir.retrieval), the reference removed from the candidates only where
`exclude_reference`; CIRR's Recall_subset ranks the img_set members other than the reference; GeneCIS ranks
each query's own gallery (`query_gallery_ids`).
"""

from __future__ import annotations

import numpy as np

RECALL_KS, SUBSET_KS, MAP_KS, GENECIS_KS = (1, 5, 10, 50), (1, 2, 3), (5, 10, 25, 50), (1, 2, 3)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def compose(method: str, alpha: float | None, image: np.ndarray, text: np.ndarray) -> np.ndarray:
    """The query vectors of cir.slerp.compose, in float64."""
    v, w = _unit(image.astype(np.float64)), _unit(text.astype(np.float64))
    if method == "image":
        return v
    if method == "text":
        return w
    if method == "sum":
        return _unit(v + w)
    cos = np.clip((v * w).sum(axis=1, keepdims=True), -1.0, 1.0)
    parallel = np.abs(cos) > 0.9995
    theta = np.arccos(np.where(parallel, 0.0, cos))
    spherical = (np.sin((1 - alpha) * theta) * v + np.sin(alpha * theta) * w) / np.where(parallel, 1.0, np.sin(theta))
    return _unit(np.where(parallel, (1 - alpha) * v + alpha * w, spherical))


def scores(f, method: str, alpha: float | None, exclude_reference: bool) -> np.ndarray:
    """(Q, N) query-gallery scores, -inf at each query's reference where it is excluded."""
    s = compose(method, alpha, f["query_image"], f["query_text"]) @ f["gallery"].astype(np.float64).T
    if exclude_reference:
        s[f["reference_ids"][:, None] == f["gallery_ids"][None, :]] = -np.inf
    return s


def ranked_ids(s: np.ndarray, gallery_ids: np.ndarray) -> np.ndarray:
    """Gallery ids, best first, per query (excluded entries last)."""
    return gallery_ids[np.argsort(-s, axis=1, kind="stable")]


def target_ranks(ranked: np.ndarray, targets: np.ndarray, n_candidates: np.ndarray | int) -> np.ndarray:
    """0-based rank of each target; inf where it is not among the candidates."""
    hit = ranked == targets[:, None]
    rank = np.where(hit.any(axis=1), hit.argmax(axis=1), np.inf).astype(np.float64)
    return np.where(rank < n_candidates, rank, np.inf)


def query_gallery_metrics(f, method: str, alpha: float | None) -> dict[str, float]:
    """GeneCIS (eval/eval_functions.py validate, utils/metric_utils.py get_recall): each query scores only
    [target] + its gallery, sorted by similarity (stable: ties to the earlier item); a hit if the target is in the
    first K."""
    query = compose(method, alpha, f["query_image"], f["query_text"])
    row = {image_id: i for i, image_id in enumerate(f["gallery_ids"])}
    gallery = f["gallery"].astype(np.float64)
    ranks = []
    for vector, items, target in zip(query, f["query_gallery_ids"], f["target_ids"]):
        items = [item for item in items if item]
        assert items[0] == target  # target at index 0 by construction
        similarity = gallery[[row[item] for item in items]] @ vector
        ranks.append(int(np.flatnonzero(np.argsort(-similarity, kind="stable") == 0)[0]))
    return {f"R@{k}": 100.0 * np.mean(np.array(ranks) < k) for k in GENECIS_KS}


def split_metrics(f, method: str, alpha: float | None, exclude_reference: bool) -> dict[str, float]:
    """{"R@1": ..., "Rsub@1": ..., "mAP@5": ...} in percent for one method, as metrics.json reports them."""
    if "query_gallery_ids" in f:
        return query_gallery_metrics(f, method, alpha)
    s = scores(f, method, alpha, exclude_reference)
    ranked = ranked_ids(s, f["gallery_ids"])
    n_candidates = np.isfinite(s).sum(axis=1)
    out = {}
    ranks = target_ranks(ranked, f["target_ids"], n_candidates)
    out.update({f"R@{k}": 100.0 * np.mean(ranks < k) for k in RECALL_KS})
    if "subset_ids" in f:
        members = f["subset_ids"]
        candidate = (members != "") & (members != f["reference_ids"][:, None])
        order = [[m for m in row if m in set(members[i][candidate[i]])] for i, row in enumerate(ranked)]
        sub_ranks = np.array([row.index(t) if t in row else np.inf for row, t in zip(order, f["target_ids"])])
        out.update({f"Rsub@{k}": 100.0 * np.mean(sub_ranks < k) for k in SUBSET_KS})
    if "gt_ids" in f:
        aps = {k: [] for k in MAP_KS}
        for row, gts, valid in zip(ranked, f["gt_ids"], n_candidates):
            gts = gts[gts != ""]
            hits = np.isin(row[: min(max(MAP_KS), valid)], gts)
            precision = np.cumsum(hits) / np.arange(1, len(hits) + 1) * hits
            for k in MAP_KS:
                aps[k].append(precision[:k].sum() / min(k, len(gts)))
        out.update({f"mAP@{k}": 100.0 * np.mean(aps[k]) for k in MAP_KS})
    return out
