"""What an evaluation scored, as one numpy file per benchmark split, for anyone to recompute the metrics.

`<output_dir>/features/<dataset>-<split>.npz` holds plain arrays only (strings as
numpy unicode, features as float32), so `np.load(path)` reads it without pickle
and without this package. The schema is in README ("Exported features").
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cir.data.benchmarks.base import CIRBenchmark
from cir.eval.features import EvalIndex, Features
from cir.io import atomic_path


def feature_path(out_dir: str | Path, bench: CIRBenchmark) -> Path:
    """`<out_dir>/features/<dataset>-<split>.npz`, the dataset named as in metrics.json keys."""
    return Path(out_dir) / "features" / f"{bench.name}-{bench.split}.npz"


def _strings(values: Sequence[str]) -> np.ndarray:
    return np.array(list(values), dtype=np.str_).reshape(len(values))


def _padded(rows: Sequence[Sequence[str]]) -> np.ndarray:
    """A (Q, M) unicode array, each row padded with empty strings to the longest."""
    width = max((len(r) for r in rows), default=0)
    return np.array([list(r) + [""] * (width - len(r)) for r in rows], dtype=np.str_).reshape(len(rows), width)


def feature_arrays(bench: CIRBenchmark, index: EvalIndex, feats: Features) -> dict[str, np.ndarray]:
    """The exported arrays: gallery, per-query ids, captions and features, and each split's ground truth."""
    queries = bench.queries

    def table(rows) -> np.ndarray:
        return rows.detach().float().cpu().numpy().astype(np.float32)

    arrays = {
        "gallery_ids": _strings(bench.gallery),
        "gallery": table(feats.image[: index.n_gallery]),
        "query_ids": _strings([q.query_id for q in queries]),
        "reference_ids": _strings([q.reference for q in queries]),
        "captions": _strings([q.caption for q in queries]),
        "query_image": table(feats.image[index.ref_rows]),
        "query_text": table(feats.text[index.text_rows]),
        "target_ids": _strings([q.target or "" for q in queries]),
    }
    if bench.name == "circo":
        arrays["gt_ids"] = _padded([q.targets for q in queries])
    if bench.name == "cirr":
        arrays["subset_ids"] = _padded([q.subset for q in queries])
    return arrays


def save_features(out_dir: str | Path, bench: CIRBenchmark, index: EvalIndex, feats: Features) -> Path:
    """Write the split's arrays atomically (never a half-written file); returns the path."""
    path = feature_path(out_dir, bench)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **feature_arrays(bench, index, feats))
    return path
