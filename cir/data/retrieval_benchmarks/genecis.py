"""GeneCIS (Vaze et al., CVPR 2023; facebookresearch/genecis) in its official layout, one benchmark per task.

    <root>/genecis/{focus_attribute,change_attribute,focus_object,change_object}.json
    <root>/coco/val2017/<val_image_id:012d>.jpg   (object tasks; official config.py coco_root)
    <root>/vg/images/<image_id>.jpg                (attribute tasks: Visual Genome 1.2's two folders merged,
                                                    official config.py visual_genome_images, VG_100K_all)

Each query `{"reference", "target", "gallery", "condition"}` ranks only its own gallery, the target plus its
distractors (eval/eval_functions.py validate: target at index 0 by construction). Every query of the JSON files
counts (the latest loaders; an older version dropped queries whose gallery length differed from the most common).
An attribute-task item is an object crop, `{"image_id", "instance_bbox": [x, y, w, h]}`, cut as
datasets/vaw_dataset.py load_cropped_image does (cir.data.retrieval_benchmarks.crops); its id is "<image_id>:<x>,<y>,<w>,<h>".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cir.data.retrieval_benchmarks.annotations import AnnotationError, check_choice, entry_field, read_json
from cir.data.retrieval_benchmarks.benchmark import CIRBenchmark, CIRQuery

GENECIS_TASKS = ("focus_attribute", "change_attribute", "focus_object", "change_object")
GENECIS_SPLITS = ("val",)  # one evaluation set per task

GENECIS_LAYOUT = """\
<root>/
  genecis/{focus_attribute,change_attribute,focus_object,change_object}.json   (data.genecis.annotations)
  coco/val2017/<val_image_id:012d>.jpg                                          (data.genecis.coco_images)
  vg/images/<image_id>.jpg   (Visual Genome 1.2, VG_100K + VG_100K_2 merged)    (data.genecis.vg_images)"""


class _Items:
    """Turns a task's items into ids, remembering each id's file and (attribute tasks) crop box."""

    def __init__(self, task: str, coco_images: Path, vg_images: Path) -> None:
        self.objects = task.endswith("_object")
        self.coco_images, self.vg_images = coco_images, vg_images
        self.paths: dict[str, Path] = {}
        self.crops: dict[str, tuple[float, ...]] = {}

    def id(self, item: Any, where: str) -> str:
        if self.objects:
            image_id = entry_field(item, "val_image_id", int, where)
            self.paths.setdefault(str(image_id), self.coco_images / f"{image_id:012d}.jpg")
            return str(image_id)
        image_id = entry_field(item, "image_id", int, where)
        box = entry_field(item, "instance_bbox", list, where)
        if len(box) != 4 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box):
            raise AnnotationError(f"{where}: field 'instance_bbox' should be [x, y, w, h], found {box!r}")
        key = f"{image_id}:{','.join(repr(v) for v in box)}"
        self.paths.setdefault(key, self.vg_images / f"{image_id}.jpg")
        self.crops.setdefault(key, tuple(box))
        return key


def load_genecis(
    root: str | Path,
    task: str,
    split: str = "val",
    *,
    annotations: str | Path | None = None,
    coco_images: str | Path | None = None,
    vg_images: str | Path | None = None,
) -> CIRBenchmark:
    """Load one task; the benchmark's gallery is every item of every query, each query ranks its `subset` only.

    A distractor equal to the target (or to another distractor) is one candidate, listed once.
    """
    check_choice(task, GENECIS_TASKS, "GeneCIS task")
    check_choice(split, GENECIS_SPLITS, "GeneCIS split")
    root = Path(root).expanduser()
    folder = Path(annotations).expanduser() if annotations else root / "genecis"
    items = _Items(
        task,
        Path(coco_images).expanduser() if coco_images else root / "coco" / "val2017",
        Path(vg_images).expanduser() if vg_images else root / "vg" / "images",
    )
    path = folder / f"{task}.json"
    entries = read_json(path, root, GENECIS_LAYOUT, list)
    queries = [_query(entry, f"{path}: entry {index}", f"{task}-{index}", items) for index, entry in enumerate(entries)]
    gallery = list(dict.fromkeys(image_id for query in queries for image_id in query.subset))
    return CIRBenchmark(
        name=f"genecis_{task}",
        split=split,
        queries=queries,
        gallery=gallery,
        image_paths=items.paths,
        info={"task": task},
        query_galleries=True,
        crops=items.crops,
    )


def _query(entry: Any, where: str, query_id: str, items: _Items) -> CIRQuery:
    reference = items.id(entry_field(entry, "reference", dict, where), f"{where}: field 'reference'")
    target = items.id(entry_field(entry, "target", dict, where), f"{where}: field 'target'")
    distractors = entry_field(entry, "gallery", list, where)
    gallery = [items.id(item, f"{where}: field 'gallery'[{i}]") for i, item in enumerate(distractors)]
    return CIRQuery(
        query_id=query_id,
        reference=reference,
        caption=entry_field(entry, "condition", str, where),
        targets=(target,),
        subset=tuple(dict.fromkeys([target, *gallery])),
        target=target,
    )
