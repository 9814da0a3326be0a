"""CIRR (annotation version rc2) in its official layout, as SEARLE / CLIP4Cir expect it.

    <root>/cirr/captions/cap.rc2.<split>.json
    <root>/cirr/image_splits/split.rc2.<split>.json   name -> image path relative to the image root
    <image root>/{train/<n>,dev,test1}/<name>.png      image root defaults to <root>
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

CIRR_SPLITS = ("train", "val", "test1")
CIRR_VERSION = "rc2"
_LABELLED_SPLITS = ("train", "val")

CIRR_LAYOUT = f"""\
<root>/
  cirr/
    captions/cap.{CIRR_VERSION}.{{train,val,test1}}.json
    image_splits/split.{CIRR_VERSION}.{{train,val,test1}}.json   (name -> path relative to the image root)
<image root (default <root>, e.g. img_raw/)>/
  train/<n>/<name>.png
  dev/<name>.png
  test1/<name>.png"""


def load_cirr(root: str | Path, split: str, *, image_root: str | Path | None = None) -> CIRBenchmark:
    """Load one CIRR split; the gallery is every image of the split file, not only references / targets.

    `image_root` lets the images live apart from the annotations (some keep them under img_raw/).
    """
    check_choice(split, CIRR_SPLITS, "CIRR split")
    root = Path(root).expanduser()
    image_root = root if image_root is None else Path(image_root).expanduser()
    split_path = root / "cirr" / "image_splits" / f"split.{CIRR_VERSION}.{split}.json"
    captions_path = root / "cirr" / "captions" / f"cap.{CIRR_VERSION}.{split}.json"

    split_files = read_json(split_path, root, CIRR_LAYOUT, dict)
    for name, relative in split_files.items():
        if not isinstance(relative, str):
            raise AnnotationError(f"{split_path}: image {name!r} should map to a path string, found {relative!r}")
    gallery = list(split_files)
    image_paths = {name: image_root / relative for name, relative in split_files.items()}

    entries = read_json(captions_path, root, CIRR_LAYOUT, list)
    queries = [
        _query(entry, f"{captions_path}: entry {index}", split, split_files, split_path)
        for index, entry in enumerate(entries)
    ]
    check_unique([query.query_id for query in queries], captions_path, "pairid")
    return CIRBenchmark(
        name="cirr",
        split=split,
        queries=queries,
        gallery=gallery,
        image_paths=image_paths,
        info={"version": CIRR_VERSION},
    )


def _query(entry: Any, where: str, split: str, split_files: dict[str, str], split_path: Path) -> CIRQuery:
    pairid = entry_field(entry, "pairid", int, where)
    reference = entry_field(entry, "reference", str, where)
    caption = entry_field(entry, "caption", str, where)
    img_set = entry_field(entry, "img_set", dict, where)
    members = entry_field(img_set, "members", list, f"{where}: field 'img_set'")
    target = None
    if split in _LABELLED_SPLITS or "target_hard" in entry:
        target = entry_field(entry, "target_hard", str, where)
    names = {"reference": reference, "target_hard": target}
    names.update((f"img_set.members[{i}]", member) for i, member in enumerate(members))
    for field, name in names.items():
        if name is None:
            continue
        if not isinstance(name, str):
            raise AnnotationError(f"{where}: field {field!r} should be an image name, found {name!r}")
        if name not in split_files:
            raise AnnotationError(f"{where}: field {field!r} names image {name!r}, which is not in {split_path}")
    return CIRQuery(
        query_id=str(pairid),
        reference=reference,
        caption=caption,
        targets=() if target is None else (target,),
        subset=tuple(members),
        target=target,
    )
