"""FashionIQ in its official layout, one benchmark per category (dress, shirt, toptee).

    <root>/captions/cap.<category>.<split>.json
    <root>/image_splits/split.<category>.<split>.json   list of image names
    <root>/images/<name>.png   or <name>.jpg (CLIP4Cir reads .png, SEARLE .jpg: one extension per root)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cir.data.retrieval_benchmarks.annotations import (
    AnnotationError,
    check_choice,
    check_unique,
    entry_field,
    read_json,
)
from cir.data.retrieval_benchmarks.benchmark import CIRBenchmark, CIRQuery

FASHIONIQ_CATEGORIES = ("dress", "shirt", "toptee")
FASHIONIQ_SPLITS = ("train", "val", "test")
# How a query's two relative captions become its text (eval.fashioniq_captions):
# both_orders: SEARLE's zero-shot protocol (src/validate.py fiq_generate_val_predictions): "c1 and c2" and
#   "c2 and c1" are encoded, each feature normalised, the two averaged and normalised again.
# one_order: CLIP4Cir (src/validate.py generate_fiq_val_predictions): "C1 and c2", the first caption capitalised.
FASHIONIQ_CAPTIONS = ("both_orders", "one_order")
IMAGE_EXTENSIONS = (".png", ".jpg")  # CLIP4Cir's and SEARLE's FashionIQ readers
_LABELLED_SPLITS = ("train", "val")

FASHIONIQ_LAYOUT = """\
<root>/
  captions/cap.{dress,shirt,toptee}.{train,val,test}.json
  image_splits/split.{dress,shirt,toptee}.{train,val,test}.json   (list of image names)
  images/<name>.png or images/<name>.jpg (one extension for the whole root)"""


def join_captions(first: str, second: str) -> str:
    """The two relative captions as one text, SEARLE's convention ("c1 and c2", each stripped of '.?, ')."""
    return f"{first.strip('.?, ')} and {second.strip('.?, ')}"


def query_texts(first: str, second: str, protocol: str) -> tuple[str, tuple[str, ...]]:
    """(the query's caption, the texts whose normalised features are averaged into its text feature; empty: the
    caption alone) under a caption protocol of FASHIONIQ_CAPTIONS."""
    if protocol == "both_orders":
        return join_captions(first, second), (join_captions(first, second), join_captions(second, first))
    return f"{first.strip('.?, ').capitalize()} and {second.strip('.?, ')}", ()


def image_extension(image_dir: Path, names: list[str]) -> str | None:
    """The extension the root's images have, from the first name found with either (None: none found)."""
    for name in names:
        for extension in IMAGE_EXTENSIONS:
            if (image_dir / f"{name}{extension}").is_file():
                return extension
    return None


def load_fashioniq(root: str | Path, category: str, split: str, *, captions: str = "both_orders") -> CIRBenchmark:
    """Load one category's split; the gallery is the names in that category's split file.

    Every candidate and target gets a path even when it lies outside the gallery,
    so reference images can always be encoded. Query ids are "<category>-<index in the caption file>".
    `captions`: the caption protocol (FASHIONIQ_CAPTIONS). Images are `<name>.png` or `<name>.jpg`, whichever the
    first image found has; where none is found, `.png` paths and info["images"] saying neither was there.
    """
    check_choice(category, FASHIONIQ_CATEGORIES, "FashionIQ category")
    check_choice(split, FASHIONIQ_SPLITS, "FashionIQ split")
    check_choice(captions, FASHIONIQ_CAPTIONS, "FashionIQ caption protocol")
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
        _query(entry, f"{captions_path}: entry {index}", f"{category}-{index}", split, captions)
        for index, entry in enumerate(entries)
    ]
    image_dir = root / "images"
    names = dict.fromkeys(gallery)
    for query in queries:
        names.update(dict.fromkeys((query.reference, *query.targets)))
    extension = image_extension(image_dir, list(names))
    info = {"category": category, "captions": captions, "images": f"<name>{extension}" if extension else
            f"neither <name>.png (CLIP4Cir) nor <name>.jpg (SEARLE) found under {image_dir}"}
    return CIRBenchmark(
        name=f"fashioniq_{category}",
        split=split,
        queries=queries,
        gallery=gallery,
        image_paths={name: image_dir / f"{name}{extension or '.png'}" for name in names},
        info=info,
    )


def _query(entry: Any, where: str, query_id: str, split: str, protocol: str) -> CIRQuery:
    reference = entry_field(entry, "candidate", str, where)
    captions = entry_field(entry, "captions", list, where)
    if len(captions) != 2 or not all(isinstance(caption, str) for caption in captions):
        raise AnnotationError(f"{where}: field 'captions' should hold two strings, found {captions!r}")
    target = None
    if split in _LABELLED_SPLITS or "target" in entry:
        target = entry_field(entry, "target", str, where)
    caption, texts = query_texts(*captions, protocol)
    return CIRQuery(
        query_id=query_id,
        reference=reference,
        caption=caption,
        texts=texts,
        targets=() if target is None else (target,),
        target=target,
    )
