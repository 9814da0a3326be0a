"""The one in-memory form every CIR benchmark loader produces.

Evaluation, submission and supervised training read only these types, so CIRR,
CIRCO, FashionIQ and the generated benchmark go through exactly the same code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from cir.data.images import load_rgb
from cir.data.retrieval_benchmarks.crops import crop_object


@dataclass(frozen=True)
class CIRQuery:
    """One query: a reference image id plus a relative caption.

    `targets` holds every ground truth (one for CIRR / FashionIQ, several for
    CIRCO) and is empty where the split hides them (test). `subset` holds the
    CIRR img_set members (empty elsewhere). `target` is the main target
    (CIRR target_hard, CIRCO target_img_id), None on test. `texts`: the texts
    whose normalised features are averaged into the query's text feature
    (FashionIQ's both caption orders); empty: the caption alone.
    """

    query_id: str
    reference: str
    caption: str
    targets: tuple[str, ...] = ()
    subset: tuple[str, ...] = ()
    target: str | None = None
    texts: tuple[str, ...] = ()


@dataclass
class CIRBenchmark:
    """One dataset split: its queries, its gallery (every image of the split) and where images live."""

    name: str
    split: str
    queries: list[CIRQuery]
    gallery: list[str]
    image_paths: dict[str, Path] = field(repr=False, default_factory=dict)
    info: dict[str, str] = field(default_factory=dict)
    # GeneCIS: each query ranks only its own gallery (its `subset`: target first, then the distractors)
    query_galleries: bool = False
    # Images that are an object crop of their file ([x, y, w, h] boxes, GeneCIS's attribute tasks): see load_image
    crops: dict[str, tuple[float, ...]] = field(repr=False, default_factory=dict)

    def image_path(self, image_id: str) -> Path:
        try:
            return self.image_paths[image_id]
        except KeyError:
            raise KeyError(f"{self.name}/{self.split}: no image path known for id {image_id!r}") from None

    def load_image(self, image_id: str) -> Image.Image:
        """The image as every reader sees it: the file as RGB, cropped and padded where `crops` has a box."""
        image = load_rgb(self.image_path(image_id))
        return crop_object(image, self.crops[image_id]) if image_id in self.crops else image

    @property
    def has_targets(self) -> bool:
        return any(q.targets for q in self.queries)
