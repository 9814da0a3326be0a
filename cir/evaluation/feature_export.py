"""What an evaluation scored, as one numpy file per benchmark split, for anyone to recompute the metrics.

`<output_dir>/features/<dataset>-<split>.npz` holds plain arrays only (strings as
numpy unicode, features as float32), so `np.load(path)` reads it without pickle
and without this package. The schema is in docs/outputs.md ("Exported features").
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cir.data.retrieval_benchmarks.benchmark import CIRBenchmark
from cir.evaluation.features import EvalIndex, Features
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
        "query_text": table(index.query_text(feats.text)),
        "target_ids": _strings([q.target or "" for q in queries]),
    }
    if bench.name == "circo":
        arrays["gt_ids"] = _padded([q.targets for q in queries])
    if bench.name == "cirr":
        arrays["subset_ids"] = _padded([q.subset for q in queries])
    if bench.query_galleries:
        arrays["query_gallery_ids"] = _padded([q.subset for q in queries])
    return arrays


def meta_arrays(bench: CIRBenchmark, index: EvalIndex, scored: dict[str, str | list[str]]) -> dict[str, np.ndarray]:
    """`meta_*` arrays, so the file says what was scored on its own: `scored` (model, methods, paper_method) plus
    the reference rule, the caption protocol (FashionIQ's eval.fashioniq_captions, CIRCO's caption_mode, else
    "caption") and whether each query ranks only its own gallery (GeneCIS)."""
    captions = bench.info.get("captions") or bench.info.get("caption_mode") or "caption"
    meta = {**scored, "exclude_reference": index.exclude_reference, "captions": captions,
            "query_galleries": index.query_galleries}
    return {f"meta_{key}": np.array(value, dtype=np.str_ if not isinstance(value, bool) else np.bool_)
            for key, value in meta.items()}


def save_features(
    out_dir: str | Path, bench: CIRBenchmark, index: EvalIndex, feats: Features, scored: dict[str, str | list[str]]
) -> Path:
    """Write the split's arrays and `meta_*` (meta_arrays) atomically (never a half-written file); returns the path."""
    path = feature_path(out_dir, bench)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **feature_arrays(bench, index, feats), **meta_arrays(bench, index, scored))
    return path
