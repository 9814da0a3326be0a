"""What a user reads after an evaluation: a printed table, the alpha-sweep plot, example grids."""

from __future__ import annotations

import math

import torch
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont
from torchvision.transforms.functional import pil_to_tensor
from torchvision.utils import make_grid

from cir.data.retrieval_benchmarks.benchmark import CIRBenchmark
from cir.slerp import parse_method_key

REFERENCE_COLOUR = (0.2, 0.4, 1.0)
TARGET_COLOUR = (0.0, 0.8, 0.0)
OTHER_COLOUR = (0.6, 0.6, 0.6)


def _split_key(key: str) -> tuple[str, str, str, str] | None:
    """A retrieval key's (dataset, split, method, metric); None for other entries such as modality_gap/gap."""
    parts = key.split("/")
    if len(parts) != 4:
        return None
    dataset, split, method, metric = parts
    return dataset, split, method, metric


def _method_order(method: str) -> tuple[int, float]:
    name, alpha = parse_method_key(method)
    return ({"image": 0, "text": 1, "sum": 2}.get(name, 3), alpha or 0.0)


def format_table(metrics: dict[str, float]) -> str:
    """One block per dataset/split: methods as rows, metrics as columns; other entries (the modality gap) after."""
    blocks: dict[tuple[str, str], dict[str, dict[str, float]]] = {}
    others: list[str] = []
    for key, value in metrics.items():
        parts = _split_key(key)
        if parts is None:
            others.append(f"{key}: {value:.4g}")
            continue
        dataset, split, method, metric = parts
        blocks.setdefault((dataset, split), {}).setdefault(method, {})[metric] = value
    lines: list[str] = []
    for (dataset, split), rows in blocks.items():
        columns = list(dict.fromkeys(m for row in rows.values() for m in row))
        width = max(len(m) for m in rows) + 2
        lines.append(f"{dataset} / {split}")
        lines.append("method".ljust(width) + "".join(c.rjust(9) for c in columns))
        for method in sorted(rows, key=_method_order):
            lines.append(method.ljust(width) + "".join(f"{rows[method].get(c, float('nan')):9.2f}" for c in columns))
        lines.append("")
    return "\n".join(lines + others)


def sweep_figure(metrics: dict[str, float], metric_names: tuple[str, ...] = ("R@1", "R@10", "mAP@5", "Rsub@1")):
    """Metric vs alpha for every dataset/split, with the image/text/sum baselines as horizontal lines."""
    curves: dict[str, list[tuple[float, float]]] = {}
    baselines: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        parts = _split_key(key)
        if parts is None or parts[3] not in metric_names:
            continue
        dataset, split, method, metric = parts
        name, alpha = parse_method_key(method)
        label = f"{dataset}/{split} {metric}"
        if name == "slerp":
            curves.setdefault(label, []).append((alpha, value))
        else:
            baselines.setdefault(label, {})[name] = value
    # A bare Figure (no pyplot): no global backend to set, nothing kept alive after the caller drops it.
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for label, points in sorted(curves.items()):
        points.sort()
        (line,) = ax.plot([a for a, _ in points], [v for _, v in points], marker="o", label=f"slerp {label}")
        for style, (name, value) in zip((":", "--", "-."), sorted(baselines.get(label, {}).items())):
            ax.axhline(value, color=line.get_color(), linestyle=style, linewidth=0.8, label=f"{name} {label}")
    ax.set_xlabel("alpha (weight of the text)")
    ax.set_ylabel("percent")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    fig.tight_layout()
    return fig


def framed_tile(image: Image.Image, colour: tuple[float, float, float], size: int = 96) -> torch.Tensor:
    """An image resized to size x size inside a 4-pixel frame of `colour` (RGB in [0, 1]), as a (3, H, W) tensor."""
    pixels = pil_to_tensor(image.convert("RGB").resize((size, size))).float() / 255
    framed = torch.tensor(colour).view(3, 1, 1).expand(3, size + 8, size + 8).clone()
    framed[:, 4:-4, 4:-4] = pixels
    return framed


def caption_strip(text: str, width: int, height: int = 20) -> torch.Tensor:
    """`text` in black on a white strip `width` pixels wide, cut with an ellipsis where it would not fit."""
    font = ImageFont.load_default(size=height - 7)
    if font.getlength(text) > width - 8:
        while text and font.getlength(text + "...") > width - 8:
            text = text[:-1]
        text += "..."
    strip = Image.new("RGB", (width, height), "white")
    ImageDraw.Draw(strip).text((4, height // 2), text, fill="black", font=font, anchor="lm")
    return pil_to_tensor(strip).float() / 255


def captioned_row(text: str, tiles: list[torch.Tensor], padding: int = 2) -> torch.Tensor:
    """Tiles side by side under a caption strip, so a row says what it shows."""
    row = make_grid(torch.stack(tiles), nrow=len(tiles), padding=padding)
    return torch.cat([caption_strip(text, row.shape[2]), row], dim=1)


def rank_text(rank: float, depth: int) -> str:
    """A 1-based target rank for a caption: 'target rank 3', or 'target not in the top 1000' past the ranked depth."""
    return f"target rank {int(rank)}" if math.isfinite(rank) else f"target not in the top {depth}"


def retrieval_grid(
    bench: CIRBenchmark, query_rows: list[int], top: torch.Tensor, ranks: torch.Tensor, depth: int, size: int = 96
) -> torch.Tensor:
    """Each row: the caption and the target's 1-based rank (`ranks`, inf past `depth`) above the reference and
    the top results; the reference framed blue, the target green, others grey."""
    rows = []
    for row, ranked, rank in zip(query_rows, top.tolist(), ranks.tolist()):
        query = bench.queries[row]
        tiles = [framed_tile(bench.load_image(query.reference), REFERENCE_COLOUR, size)]
        for gallery_row in (r for r in ranked if r >= 0):  # -1: past the end of a query's own gallery (GeneCIS)
            image_id = bench.gallery[gallery_row]
            colour = TARGET_COLOUR if image_id in query.targets else OTHER_COLOUR
            tiles.append(framed_tile(bench.load_image(image_id), colour, size))
        rows.append(captioned_row(f"{query.query_id}: {query.caption} ({rank_text(rank, depth)})", tiles))
    return torch.cat(rows, dim=1)
