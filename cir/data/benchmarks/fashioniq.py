"""FashionIQ in its official layout, one benchmark per category (dress, shirt, toptee).

    <root>/captions/cap.<category>.<split>.json
    <root>/image_splits/split.<category>.<split>.json   list of image names
    <root>/images/<name>.png
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cir.data.benchmarks.annotations import (
    AnnotationError,
    check_choice,
    check_unique,
    entry_field,
    read_json,
)
from cir.data.benchmarks.base import CIRBenchmark, CIRQuery

FASHIONIQ_CATEGORIES = ("dress", "shirt", "toptee")
FASHIONIQ_SPLITS = ("train", "val", "test")
_LABELLED_SPLITS = ("train", "val")

FASHIONIQ_LAYOUT = """\
<root>/
  captions/cap.{dress,shirt,toptee}.{train,val,test}.json
  image_splits/split.{dress,shirt,toptee}.{train,val,test}.json   (list of image names)
  images/<name>.png"""


def join_captions(first: str, second: str) -> str:
    """The two relative captions as one text, the SEARLE / CLIP4Cir evaluation convention ("c1 and c2")."""
    return f"{first.strip('.?, ')} and {second.strip('.?, ')}"


def load_fashioniq(root: str | Path, category: str, split: str) -> CIRBenchmark:
    """Load one category's split; the gallery is the names in that category's split file.

    Every candidate and target gets a path even when it lies outside the gallery,
    so reference images can always be encoded. Query ids are "<category>-<index in the caption file>".
    """
    check_choice(category, FASHIONIQ_CATEGORIES, "FashionIQ category")
    check_choice(split, FASHIONIQ_SPLITS, "FashionIQ split")
    root = Path(root).expanduser()
    split_path = root / "image_splits" / f"split.{category}.{split}.json"
    captions_path = root / "captions" / f"cap.{category}.{split}.json"

    gallery = read_json(split_path, root, FASHIONIQ_LAYOUT, list)
    for index, name in enumerate(gallery):
        if not isinstance(name, str):
            raise AnnotationError(f"{split_path}: entry {index} should be an image name, found {name!r}")
    check_unique(gallery, split_path, "image name")

    entries = read_json(captions_path, root, FASHIONIQ_LAYOUT, list)
    queries = [
        _query(entry, f"{captions_path}: entry {index}", f"{category}-{index}", split)
        for index, entry in enumerate(entries)
    ]
    image_dir = root / "images"
    names = dict.fromkeys(gallery)
    for query in queries:
        names.update(dict.fromkeys((query.reference, *query.targets)))
    return CIRBenchmark(
        name=f"fashioniq_{category}",
        split=split,
        queries=queries,
        gallery=gallery,
        image_paths={name: image_dir / f"{name}.png" for name in names},
        info={"category": category},
    )


def _query(entry: Any, where: str, query_id: str, split: str) -> CIRQuery:
    reference = entry_field(entry, "candidate", str, where)
    captions = entry_field(entry, "captions", list, where)
    if len(captions) != 2 or not all(isinstance(caption, str) for caption in captions):
        raise AnnotationError(f"{where}: field 'captions' should hold two strings, found {captions!r}")
    target = None
    if split in _LABELLED_SPLITS or "target" in entry:
        target = entry_field(entry, "target", str, where)
    return CIRQuery(
        query_id=query_id,
        reference=reference,
        caption=join_captions(*captions),
        targets=() if target is None else (target,),
        target=target,
    )
