"""The evaluated model's modality gap on held-out image-caption pairs (`eval.gap_pairs`).

The pairs are a JSONL file, one `{"image": path relative to the file's folder,
"caption": text}` per line, as cir.data.synth writes <out>/cirr/gap_pairs/<split>.jsonl.
Under DDP every rank encodes a contiguous share and cir.modality_gap.ModalityGap
sums the ranks' states, so every rank returns the value one process would get on
all pairs, without rank 0 encoding them alone.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from cir.data.images import load_rgb
from cir.data.retrieval_benchmarks.annotations import AnnotationError, entry_field
from cir.distributed import rank, world_size
from cir.modality_gap import ModalityGap
from cir.models import Backbone

METRIC_PREFIX = "modality_gap"  # metrics.json keys: modality_gap/gap, modality_gap/pair_cosine, modality_gap/pairs


def read_pairs(path: str | Path) -> list[tuple[Path, str]]:
    """(image path, caption) per line; a bad file fails here naming the file and line, before any encoding."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: image-caption pairs file not found (config key `eval.gap_pairs`)")
    pairs = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}: line {number}"
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as error:
            raise AnnotationError(f"{where}: not valid JSON ({error})") from None
        image = path.parent / entry_field(entry, "image", str, where)
        caption = entry_field(entry, "caption", str, where)
        if not image.is_file():
            raise FileNotFoundError(f"{where}: image {image} not found")
        pairs.append((image, caption))
    if not pairs:
        raise AnnotationError(f"{path}: no image-caption pairs")
    return pairs


@torch.no_grad()
def measure_gap(backbone: Backbone, pairs: Sequence[tuple[Path, str]], batch_size: int = 256) -> dict[str, float | int]:
    """`cir.modality_gap` over all pairs, encoded in eval mode on the backbone's device; under DDP every rank
    must call it with the same pairs, and encodes its share (cir.modality_gap.ModalityGap sums the ranks')."""
    backbone.eval()
    metric = ModalityGap(backbone.embed_dim).to(backbone.device)
    share = pairs[_share(len(pairs))]
    empty = torch.zeros(0, backbone.embed_dim, device=backbone.device)
    metric.update(empty, empty)  # a rank whose share is empty (fewer pairs than ranks) still takes part in the sync
    for start in range(0, len(share), batch_size):
        chunk = share[start : start + batch_size]
        pixels = torch.stack([backbone.preprocess_val(load_rgb(path)) for path, _ in chunk]).to(backbone.device)
        tokens = backbone.tokenize([caption for _, caption in chunk]).to(backbone.device)
        metric.update(backbone.encode_image(pixels), backbone.encode_text(tokens))
    gap = metric.compute()  # no pairs at all: ValueError
    return {key: float(value) for key, value in gap.items()} | {"pairs": len(pairs)}


def gap_metrics(gap: dict[str, float | int]) -> dict[str, float | int]:
    """`measure_gap`'s result as metrics.json entries."""
    return {f"{METRIC_PREFIX}/{key}": value for key, value in gap.items()}


def _share(n: int) -> slice:
    """This rank's contiguous share of n items (shares differ by at most one; empty where n < world size)."""
    return slice(n * rank() // world_size(), n * (rank() + 1) // world_size())
