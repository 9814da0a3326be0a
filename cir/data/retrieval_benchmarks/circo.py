"""CIRCO in its official layout: queries over the whole COCO 2017 unlabeled set (123,403 images).

    <root>/annotations/{val,test}.json
    <root>/COCO2017_unlabeled/annotations/image_info_unlabeled2017.json   {"images": [{"id", "file_name"}]}
    <root>/COCO2017_unlabeled/unlabeled2017/<file_name>

Integer COCO ids become strings (str(int)) like every other benchmark id.
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

CIRCO_SPLITS = ("val", "test")
CIRCO_CAPTION_MODES = ("relative", "with_concept")
_LABELLED_SPLITS = ("val",)

CIRCO_LAYOUT = """\
<root>/
  annotations/{val,test}.json
  COCO2017_unlabeled/
    annotations/image_info_unlabeled2017.json   ({"images": [{"id", "file_name"}, ...]})
    unlabeled2017/<file_name>"""


def compose_circo_caption(relative_caption: str, shared_concept: str) -> str:
    """Relative caption first, shared concept after a comma.

    Keeping the relative caption first keeps prompt templates such as
    "a photo of $ that {caption}" grammatical in both caption modes.
    """
    return f"{relative_caption.strip().rstrip('.')}, {shared_concept.strip()}"


def load_circo(root: str | Path, split: str, *, caption_mode: str = "relative") -> CIRBenchmark:
    """Load one CIRCO split; the gallery is every image listed in image_info_unlabeled2017.json.

    caption_mode "relative" uses the relative caption alone (paper, SEARLE);
    "with_concept" appends the shared concept (see `compose_circo_caption`).
    Image files are not checked here (see `missing_images`), so the full gallery loads in about a second.
    """
    check_choice(split, CIRCO_SPLITS, "CIRCO split")
    check_choice(caption_mode, CIRCO_CAPTION_MODES, "CIRCO caption_mode")
    root = Path(root).expanduser()
    coco = root / "COCO2017_unlabeled"
    info_path = coco / "annotations" / "image_info_unlabeled2017.json"
    annotations_path = root / "annotations" / f"{split}.json"

    gallery, image_paths = _gallery(read_json(info_path, root, CIRCO_LAYOUT, dict), info_path, coco / "unlabeled2017")
    entries = read_json(annotations_path, root, CIRCO_LAYOUT, list)
    queries = [
        _query(entry, f"{annotations_path}: entry {index}", split, caption_mode, image_paths, info_path)
        for index, entry in enumerate(entries)
    ]
    check_unique([query.query_id for query in queries], annotations_path, "query id")
    return CIRBenchmark(
        name="circo",
        split=split,
        queries=queries,
        gallery=gallery,
        image_paths=image_paths,
        info={"caption_mode": caption_mode},
    )


def _gallery(image_info: dict, info_path: Path, image_dir: Path) -> tuple[list[str], dict[str, Path]]:
    images = entry_field(image_info, "images", list, str(info_path))
    gallery: list[str] = []
    for index, image in enumerate(images):
        # A cheap test keeps the 123k-entry loop fast; entry_field only runs to explain a failure.
        if not (isinstance(image, dict) and type(image.get("id")) is int and type(image.get("file_name")) is str):
            where = f"{info_path}: images[{index}]"
            entry_field(image, "id", int, where)
            entry_field(image, "file_name", str, where)
        gallery.append(str(image["id"]))
    check_unique(gallery, info_path, "image id")
    image_paths = {image_id: image_dir / image["file_name"] for image_id, image in zip(gallery, images)}
    return gallery, image_paths


def _query(
    entry: Any, where: str, split: str, caption_mode: str, image_paths: dict[str, Path], info_path: Path
) -> CIRQuery:
    query_id = entry_field(entry, "id", int, where)
    reference = str(entry_field(entry, "reference_img_id", int, where))
    caption = entry_field(entry, "relative_caption", str, where)
    if caption_mode == "with_concept":
        caption = compose_circo_caption(caption, entry_field(entry, "shared_concept", str, where))
    target = None
    targets: tuple[str, ...] = ()
    if split in _LABELLED_SPLITS or "gt_img_ids" in entry:
        target = str(entry_field(entry, "target_img_id", int, where))
        gt_ids = entry_field(entry, "gt_img_ids", list, where)
        for position, gt_id in enumerate(gt_ids):
            if type(gt_id) is not int:
                raise AnnotationError(f"{where}: field 'gt_img_ids'[{position}] should be an integer, found {gt_id!r}")
        targets = tuple(str(gt_id) for gt_id in gt_ids)
    named = [("reference_img_id", reference), ("target_img_id", target), *(("gt_img_ids", t) for t in targets)]
    for field, image_id in named:
        if image_id is not None and image_id not in image_paths:
            raise AnnotationError(f"{where}: field {field!r} names image {image_id}, which is not in {info_path}")
    return CIRQuery(
        query_id=str(query_id),
        reference=reference,
        caption=caption,
        targets=targets,
        target=target,
    )
