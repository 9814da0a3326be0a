"""What a user reads after an evaluation: a printed table, the alpha-sweep plot, example grids."""

from __future__ import annotations

import torch
from matplotlib.figure import Figure
from torchvision.transforms.functional import pil_to_tensor
from torchvision.utils import make_grid

from cir.data.benchmarks.base import CIRBenchmark
from cir.data.images import load_rgb
from cir.slerp import parse_method_key


def _split_key(key: str) -> tuple[str, str, str, str]:
    dataset, split, method, metric = key.split("/")
    return dataset, split, method, metric


def _method_order(method: str) -> tuple[int, float]:
    name, alpha = parse_method_key(method)
    return ({"image": 0, "text": 1, "sum": 2}.get(name, 3), alpha or 0.0)


def format_table(metrics: dict[str, float]) -> str:
    """One block per dataset/split: methods as rows, metrics as columns."""
    blocks: dict[tuple[str, str], dict[str, dict[str, float]]] = {}
    for key, value in metrics.items():
        dataset, split, method, metric = _split_key(key)
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
    return "\n".join(lines)


def sweep_figure(metrics: dict[str, float], metric_names: tuple[str, ...] = ("R@1", "R@10", "mAP@5", "Rsub@1")):
    """Metric vs alpha for every dataset/split, with the image/text/sum baselines as horizontal lines."""
    curves: dict[str, list[tuple[float, float]]] = {}
    baselines: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        dataset, split, method, metric = _split_key(key)
        if metric not in metric_names:
            continue
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


def retrieval_grid(bench: CIRBenchmark, query_rows: list[int], top: torch.Tensor, size: int = 96) -> torch.Tensor:
    """Each row: the reference, then the top results; the target framed green, others grey."""
    def tile(image_id: str, colour: tuple[float, float, float]) -> torch.Tensor:
        image = load_rgb(bench.image_path(image_id)).resize((size, size))
        pixels = pil_to_tensor(image).float() / 255
        framed = torch.tensor(colour).view(3, 1, 1).expand(3, size + 8, size + 8).clone()
        framed[:, 4:-4, 4:-4] = pixels
        return framed

    tiles = []
    for row, ranked in zip(query_rows, top.tolist()):
        query = bench.queries[row]
        tiles.append(tile(query.reference, (0.2, 0.4, 1.0)))
        for gallery_row in ranked:
            image_id = bench.gallery[gallery_row]
            tiles.append(tile(image_id, (0.0, 0.8, 0.0) if image_id in query.targets else (0.6, 0.6, 0.6)))
    return make_grid(torch.stack(tiles), nrow=1 + top.shape[1], padding=2)
