"""Per-query hits from an evaluation's exported features, ranked by the framework's own retrieval and metrics.

metrics.json holds only each method's averages; the demo's intervals need every
query's hit. They come from `eval.save_features=true`'s npz (cir.evaluation.feature_export,
docs/outputs.md "Exported features"): the same features the evaluation scored, composed
by cir.slerp.compose, searched by cir.retrieval.topk_search and read by
cir.metrics.target_rank, so the mean of the hits is metrics.json's R@K.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cir.metrics import target_rank
from cir.retrieval import topk_search
from cir.slerp import compose


def load_features(path: str | Path) -> dict[str, np.ndarray]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; the demo's evaluation writes it with eval.save_features=true")
    with np.load(path) as arrays:
        return {name: arrays[name] for name in arrays.files}


def gallery_rows(ids: np.ndarray, gallery_ids: np.ndarray, missing: int) -> torch.Tensor:
    """Each id's gallery row, `missing` where it is not in the gallery."""
    row = {image_id: i for i, image_id in enumerate(gallery_ids.tolist())}
    return torch.tensor([row.get(image_id, missing) for image_id in ids.tolist()], dtype=torch.long)


def query_hits(features: dict[str, np.ndarray], method: str, alpha: float | None = None, k: int = 1,
               exclude_reference: bool = True) -> np.ndarray:
    """Whether each query's target is among its first `k` (bool, one per query), as R@k counts it.

    `exclude_reference`: the reference image is no candidate (CIRR and the generated benchmark; see
    cir.evaluation.features.OFFICIAL_EXCLUDE_REFERENCE). A target outside the gallery is a miss.
    """
    gallery = torch.from_numpy(features["gallery"])
    queries = compose(method, torch.from_numpy(features["query_image"]), torch.from_numpy(features["query_text"]), alpha)
    exclude = gallery_rows(features["reference_ids"], features["gallery_ids"], -1) if exclude_reference else None
    _, top = topk_search(queries, gallery, k, exclude=exclude)
    target = gallery_rows(features["target_ids"], features["gallery_ids"], len(gallery))
    return (target_rank(top, target) < k).numpy()
