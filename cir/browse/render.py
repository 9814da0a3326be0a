"""Results as the page shows them (HTML with inline thumbnails) and as an exported panel (PNG).

The PNG is drawn with the same framed tiles and caption strips as the
TensorBoard example grid (cir.evaluation.presentation), so a figure taken from the page
and one taken from a run look alike.
"""

from __future__ import annotations

import base64
import functools
import html
import io
import math
from pathlib import Path

import torch
from PIL import Image
from torchvision.utils import save_image

from cir.browse.session import Gallery, Result
from cir.data.images import load_rgb
from cir.data.retrieval_benchmarks.crops import crop_object
from cir.evaluation.presentation import (
    OTHER_COLOUR,
    REFERENCE_COLOUR,
    TARGET_COLOUR,
    captioned_row,
    framed_tile,
)

THUMBNAIL = 160


@functools.lru_cache(maxsize=4096)
def thumbnail(path: Path, box: tuple[float, ...] | None = None) -> str:
    """A JPEG data URI of the image (the object crop of `box`, GeneCIS), THUMBNAIL pixels on its longer side
    (cached: a slider move reuses them)."""
    image = load_rgb(path)
    return data_uri(crop_object(image, box) if box is not None else image)


def data_uri(image: Image.Image) -> str:
    image = image.convert("RGB")
    image.thumbnail((THUMBNAIL, THUMBNAIL))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def rank_label(rank: float, depth: int) -> str:
    return str(int(rank)) if math.isfinite(rank) else f">{depth}"


def metrics_text(metrics: dict[str, float], depth: int) -> str:
    """'target rank 3 · subset rank 1 · AP@5 20.0 ...' for a header or a caption strip."""
    parts = []
    for name, value in metrics.items():
        if name.endswith("rank"):
            parts.append(f"{'target ' if name == 'rank' else ''}{name} {rank_label(value, depth)}")
        else:
            parts.append(f"{name} {value:.1f}")
    return " · ".join(parts)


def model_html(gallery: Gallery, result: Result, heading: str, depth: int) -> str:
    """One model's row: its name, the query's metrics, then the top-K tiles (ground truth framed)."""
    tiles = []
    for position, (row, score) in enumerate(zip(result.rows, result.scores), start=1):
        image_id = gallery.bench.gallery[row]
        target = row in result.targets
        tiles.append(
            f'<figure class="cir-tile{" cir-target" if target else ""}" data-id="{html.escape(image_id)}">'
            f'<img src="{thumbnail(gallery.bench.image_path(image_id), gallery.bench.crops.get(image_id))}" '
            f'alt="{html.escape(image_id)}">'
            f"<figcaption>#{position} · {score:.3f}{' · target' if target else ''}</figcaption></figure>"
        )
    summary = metrics_text(result.metrics, depth) or "no ground truth for this query"
    return (
        f'<section class="cir-model"><h3>{html.escape(heading)}</h3>'
        f'<p class="cir-metrics">{html.escape(summary)}</p><div class="cir-row">{"".join(tiles)}</div></section>'
    )


def panel_html(reference: str, caption: str, rows: list[str]) -> str:
    """The query (reference thumbnail and caption) above each model's row."""
    return (
        '<div class="cir-panel"><section class="cir-query">'
        f'<figure class="cir-tile cir-reference"><img src="{reference}" alt="reference"><figcaption>reference</figcaption></figure>'
        f'<p class="cir-caption">{html.escape(caption) or "<em>(no caption)</em>"}</p></section>'
        f'{"".join(rows)}</div>'
    )


def message_html(text: str) -> str:
    return f'<div class="cir-message">{html.escape(text)}</div>'


def panel_png(path: Path, reference: Image.Image, caption: str, answers: list[tuple[Gallery, Result, str]], depth: int) -> Path:
    """The shown panel as one PNG: per model a strip naming it, the caption and the metrics over the
    reference (blue) and the top-K results (ground truth green)."""
    rows = []
    for gallery, result, heading in answers:
        tiles = [framed_tile(reference, REFERENCE_COLOUR)]
        for row in result.rows:
            image = gallery.bench.load_image(gallery.bench.gallery[row])
            tiles.append(framed_tile(image, TARGET_COLOUR if row in result.targets else OTHER_COLOUR))
        text = " · ".join(part for part in (heading, f'"{caption}"', metrics_text(result.metrics, depth)) if part)
        rows.append(captioned_row(text, tiles))
    width = max(r.shape[2] for r in rows)
    panel = torch.cat([torch.nn.functional.pad(r, (0, width - r.shape[2]), value=1.0) for r in rows], dim=1)
    save_image(panel, path)
    return path
