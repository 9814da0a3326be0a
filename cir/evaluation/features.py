"""Encoding a benchmark once: which images and texts to encode, DDP gathering, and the on-disk cache.

A benchmark split is encoded into two tables, image features (the whole gallery,
plus any reference that is not in it) and text features (each distinct query
caption once). Every scoring method (image only, text only, sum, Slerp at any
alpha) then reads these tables, so an alpha sweep never re-encodes anything.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from cir import completion
from cir.data.images import ImageDataset
from cir.data.retrieval_benchmarks.benchmark import CIRBenchmark
from cir.distributed import gather_cat
from cir.io import atomic_path

CACHE_FORMAT = 3  # 2: entries carry a checksum of their tables; 3: the key covers image sizes and times
log = logging.getLogger(__name__)

# Whether each benchmark's official protocol removes the query's reference image from the candidates.
# CIRR: yes. SEARLE src/validate.py cirr_compute_val_metrics and src/generate_test_submission.py
#   cirr_generate_test_dicts mask the reference name out of the sorted gallery ("Delete the reference image
#   from the results"); the generated benchmark is CIRR-layout, loaded as `cirr`, and follows it.
# CIRCO: no. SEARLE src/validate.py circo_compute_val_metrics and src/generate_test_submission.py
#   circo_generate_test_dict take the top 50 of the whole COCO unlabeled gallery; CIRCO's own
#   src/evaluation.py compute_metrics scores the submitted list as it is.
# FashionIQ: no. SEARLE src/validate.py fiq_compute_val_metrics ranks the category's whole val gallery.
# GeneCIS: no. facebookresearch/genecis eval/eval_functions.py validate ranks [target] + gallery unmasked
#   (the reference is not among them by construction).
OFFICIAL_EXCLUDE_REFERENCE = {"cirr": True, "circo": False, "fashioniq": False, "genecis": False}


def excludes_reference(bench_name: str, override: bool | None = None) -> bool:
    """`override` where set (eval.exclude_reference), else the benchmark's official choice."""
    if override is not None:
        return bool(override)
    family = bench_name.split("_")[0]  # fashioniq_dress -> fashioniq, genecis_focus_object -> genecis
    if family not in OFFICIAL_EXCLUDE_REFERENCE:
        raise ValueError(f"no official reference-image rule known for benchmark {bench_name!r}")
    return OFFICIAL_EXCLUDE_REFERENCE[family]


@dataclass
class EvalIndex:
    """Rows of the feature tables that each query needs, as gallery / table indices.

    Targets not in the gallery point at `n_gallery`, an index retrieval never
    returns, so they count as misses instead of vanishing from the denominator.
    `reference` is each query's reference as a gallery row (-1 if not in the
    gallery); `exclude` is the same where the protocol removes the reference
    from the candidates (`exclude_reference`), else all -1. CIRR's img_set
    ranking always drops the reference (the official subset is the other members).
    With `query_galleries` (GeneCIS) each query ranks only its `subset` row
    (its own gallery), not the whole gallery.
    `text_rows` is (Q,), or (Q, T) (-1 padding) where a query averages several
    texts (FashionIQ's both caption orders): see `query_text`.
    """

    image_ids: list[str]
    n_gallery: int
    texts: list[str]
    ref_rows: torch.Tensor
    text_rows: torch.Tensor
    reference: torch.Tensor
    exclude_reference: bool
    exclude: torch.Tensor
    target: torch.Tensor
    positives: torch.Tensor
    subset: torch.Tensor
    query_galleries: bool = False

    def query_text(self, text: torch.Tensor, rows: slice | list[int] = slice(None)) -> torch.Tensor:
        """Each query's text feature from the text table: its row, or where it has several texts the mean of their
        normalised features, normalised (SEARLE src/validate.py fiq_generate_val_predictions:
        F.normalize((F.normalize(text_features) + F.normalize(text_features_reversed)) / 2))."""
        text_rows = self.text_rows[rows].to(text.device)
        if text_rows.dim() == 1:
            return text[text_rows]
        valid = (text_rows >= 0).unsqueeze(-1)
        total = (F.normalize(text[text_rows.clamp_min(0)], dim=-1) * valid).sum(dim=1)
        return F.normalize(total / valid.sum(dim=1), dim=-1)

    def excluded(self) -> torch.Tensor | None:
        """The `exclude` argument of topk_search: None where nothing is excluded, so all G candidates count."""
        return self.exclude if self.exclude_reference else None

    @classmethod
    def build(cls, bench: CIRBenchmark, exclude_reference: bool | None = None) -> EvalIndex:
        """`exclude_reference`: None for the benchmark's official choice (see OFFICIAL_EXCLUDE_REFERENCE)."""
        gallery_row = {image_id: row for row, image_id in enumerate(bench.gallery)}
        if len(gallery_row) != len(bench.gallery):
            raise ValueError(f"{bench.name}/{bench.split}: the gallery lists an image id twice")
        image_ids = list(bench.gallery)
        image_row = dict(gallery_row)
        for query in bench.queries:
            if query.reference not in image_row:
                image_row[query.reference] = len(image_ids)
                image_ids.append(query.reference)
        text_row: dict[str, int] = {}
        for query in bench.queries:
            for text in query.texts or (query.caption,):
                text_row.setdefault(text, len(text_row))
        missing = len(bench.gallery)

        def gallery_index(image_id: str | None) -> int:
            return gallery_row.get(image_id, missing) if image_id is not None else missing

        def padded(rows: list[list[int]]) -> torch.Tensor:
            width = max((len(r) for r in rows), default=0)
            return torch.tensor([r + [-1] * (width - len(r)) for r in rows], dtype=torch.long).reshape(len(rows), width)

        queries = bench.queries
        exclude = excludes_reference(bench.name, exclude_reference)
        reference = torch.tensor([gallery_row.get(q.reference, -1) for q in queries], dtype=torch.long)
        return cls(
            image_ids=image_ids,
            n_gallery=len(bench.gallery),
            texts=list(text_row),
            ref_rows=torch.tensor([image_row[q.reference] for q in queries], dtype=torch.long),
            text_rows=(padded([[text_row[t] for t in q.texts or (q.caption,)] for q in queries])
                       if any(q.texts for q in queries) else torch.tensor([text_row[q.caption] for q in queries])),
            reference=reference,
            exclude_reference=exclude,
            exclude=reference if exclude else torch.full_like(reference, -1),
            target=torch.tensor([gallery_index(q.target or (q.targets[0] if q.targets else None)) for q in queries]),
            positives=padded([[gallery_index(t) for t in q.targets] for q in queries]),
            subset=padded([[gallery_row[m] for m in dict.fromkeys(q.subset) if m in gallery_row] for q in queries]),
            query_galleries=bench.query_galleries,
        )


@dataclass
class Features:
    """L2-normalised features of one benchmark split; rows follow EvalIndex.image_ids / texts.

    Kept at fp16 precision (the cache's storage type) whether fresh or cached,
    so a rerun from the cache reproduces the first run's metrics exactly.
    """

    image: torch.Tensor
    text: torch.Tensor

    def __post_init__(self) -> None:
        self.image = self.image.half().float()
        self.text = self.text.half().float()


class TextDataset(Dataset):
    """Captions tokenised in the loader workers, returned with their row so gathers keep order."""

    def __init__(self, texts: list[str], tokenize) -> None:
        self.texts = texts
        self.tokenize = tokenize

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor]:
        return index, self.tokenize([self.texts[index]])[0]


class BenchmarkImages(ImageDataset):
    """A benchmark's images as CIRBenchmark.load_image reads them (GeneCIS's object crops)."""

    def __init__(self, bench: CIRBenchmark, ids: list[str], paths: list[Path], transform) -> None:
        super().__init__(ids, paths, transform)
        self.bench = bench

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor]:
        return index, self.transform(self.bench.load_image(self.ids[index]))


def encoding_loaders(
    bench: CIRBenchmark, index: EvalIndex, image_transform, tokenize, batch_size: int, num_workers: int
) -> tuple[DataLoader, DataLoader]:
    """(images, texts) loaders; under DDP Lightning adds a sampler and rows make duplicates harmless."""
    paths = [bench.image_path(i) for i in index.image_ids]
    images = (BenchmarkImages(bench, index.image_ids, paths, image_transform) if bench.crops
              else ImageDataset(index.image_ids, paths, image_transform))
    texts = TextDataset(index.texts, tokenize)
    options = dict(batch_size=batch_size, num_workers=num_workers, shuffle=False, persistent_workers=False)
    return DataLoader(images, **options), DataLoader(texts, **options)


class FeatureCollector:
    """Collects (rows, features) batches on each rank and assembles full tables on every rank."""

    def __init__(self, sizes: dict[str, int]) -> None:
        self.sizes = sizes
        self.parts: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {name: [] for name in sizes}

    def add(self, name: str, rows: torch.Tensor, feats: torch.Tensor) -> None:
        self.parts[name].append((rows.detach(), feats.detach()))

    def assemble(self, name: str, dim: int, device: torch.device) -> torch.Tensor:
        parts = self.parts[name]
        rows = torch.cat([r for r, _ in parts]) if parts else torch.empty(0, dtype=torch.long, device=device)
        feats = torch.cat([f.float() for _, f in parts]) if parts else torch.empty(0, dim, device=device)
        rows, feats = rows.to(device), feats.to(device)
        rows, feats = gather_cat(rows), gather_cat(feats)
        table = torch.full((self.sizes[name], dim), float("nan"), device=device)
        table[rows] = feats
        if torch.isnan(table).any():
            raise RuntimeError(f"feature table {name!r}: some rows were never encoded")
        return table


def cache_key(fingerprint: str, bench: CIRBenchmark, index: EvalIndex, preprocess: str) -> str:
    """Weights + preprocessing + dataset + split + exactly which images (path, size, modification time) and texts:
    any change gives a new entry, so images regenerated or replaced in place are encoded again. docs/guarantees.md,
    "Feature cache", says when size and mtime cannot be trusted."""
    h = hashlib.sha256()
    for part in (CACHE_FORMAT, fingerprint, preprocess, bench.name, bench.split, json.dumps(bench.info, sort_keys=True)):
        h.update(str(part).encode() + b"\0")
    h.update("\n".join(index.image_ids).encode() + b"\0")
    paths = [bench.image_path(i) for i in index.image_ids]
    h.update("\n".join(f"{path}\t{completion.stamp(path)}" for path in paths).encode() + b"\0")
    h.update("\n".join(index.texts).encode())
    return h.hexdigest()[:24]


def table_digest(image: torch.Tensor, text: torch.Tensor) -> str:
    """sha256 of both fp16 tables' bytes: overwritten bytes in a cache file change it."""
    h = hashlib.sha256()
    for table in (image, text):
        h.update(str(tuple(table.shape)).encode())
        h.update(table.contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class FeatureCache:
    """Features on disk under `root/<name>-<split>-<key>.pt`, reused across runs.

    An entry carries its tables' shapes and checksum; one that does not open, does not match
    them, or has other row counts than the split needs is logged with its path and re-encoded.
    A failed save (a full disk) is a warning: the evaluation goes on with the features in memory.
    """

    def __init__(self, root: str | Path | None) -> None:
        self.root = Path(root).expanduser() if root else None

    def path(self, bench: CIRBenchmark, key: str) -> Path | None:
        return self.root / f"{bench.name}-{bench.split}-{key}.pt" if self.root else None

    def load(self, bench: CIRBenchmark, key: str, rows: tuple[int, int] | None = None) -> Features | None:
        """The cached tables, or None; `rows`: the (image, text) row counts the split needs."""
        path = self.path(bench, key)
        if path is None or not path.is_file():
            return None
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
            image, text = data["image"], data["text"]
            problem = (
                "it holds another entry" if data["key"] != key
                else "its tables do not match their checksum" if data["sha256"] != table_digest(image, text)
                else f"it has {image.shape[0]} image / {text.shape[0]} text rows, the split needs {rows[0]} / {rows[1]}"
                if rows is not None and (image.shape[0], text.shape[0]) != tuple(rows) else None
            )
        except Exception as err:  # noqa: BLE001 - a truncated or foreign file raises whatever its reader raises
            problem = f"it does not load ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
        if problem is not None:
            log.warning("feature cache %s is damaged (%s): encoding again", path, problem)
            return None
        return Features(image=image.float(), text=text.float())

    def save(self, bench: CIRBenchmark, key: str, feats: Features) -> None:
        path = self.path(bench, key)
        if path is None:
            return
        image, text = feats.image.half().cpu(), feats.text.half().cpu()
        try:
            with atomic_path(path) as tmp:
                torch.save({"key": key, "image": image, "text": text, "sha256": table_digest(image, text)}, tmp)
        except OSError as err:
            log.warning("could not write the feature cache %s (%s): going on with the features in memory", path,
                        err.strerror or err)
