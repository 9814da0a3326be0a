"""The one in-memory form every CIR benchmark loader produces.

Evaluation, submission and supervised training read only these types, so CIRR,
CIRCO, FashionIQ and the generated benchmark go through exactly the same code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class CIRQuery:
    """One query: a reference image id plus a relative caption.

    `targets` holds every ground truth (one for CIRR / FashionIQ, several for
    CIRCO) and is empty where the split hides them (test). `subset` holds the
    CIRR img_set members (empty elsewhere). `target` is the main target
    (CIRR target_hard, CIRCO target_img_id), None on test.
    """

    query_id: str
    reference: str
    caption: str
    targets: tuple[str, ...] = ()
    subset: tuple[str, ...] = ()
    target: str | None = None


@dataclass
class CIRBenchmark:
    """One dataset split: its queries, its gallery (every image of the split) and where images live."""

    name: str
    split: str
    queries: list[CIRQuery]
    gallery: list[str]
    image_paths: dict[str, Path] = field(repr=False, default_factory=dict)
    info: dict[str, str] = field(default_factory=dict)

    def image_path(self, image_id: str) -> Path:
        try:
            return self.image_paths[image_id]
        except KeyError:
            raise KeyError(f"{self.name}/{self.split}: no image path known for id {image_id!r}") from None

    @property
    def has_targets(self) -> bool:
        return any(q.targets for q in self.queries)
