"""The modality gap of a demo model on held-out image-caption pairs: a benchmark split's images with captions.

Every model is measured on the same pairs: the split's gallery images (never
trained on) each with one caption drawn as in pretraining, from a fixed seed,
so the pairs favour the pretrained model rather than the TAT data.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from cir.data.benchmarks import load_benchmarks
from cir.data.images import load_rgb
from cir.data.synth.captions import pretrain_caption
from cir.data.synth.scenes import Scene
from cir.modality_gap import modality_gap
from cir.models import Backbone

ATTRIBUTES_FILE = "attributes.json"  # written by cir.data.synth next to the CIRR layout


def held_out_pairs(cirr_root: str | Path, split: str, seed: int = 0) -> list[tuple[Path, str]]:
    """(image path, caption) for every gallery image of `split`, the caption describing its scene."""
    cirr_root = Path(cirr_root)
    attributes_path = cirr_root / ATTRIBUTES_FILE
    if not attributes_path.is_file():
        raise FileNotFoundError(f"{attributes_path}: scene attributes missing; is {cirr_root} a cir.data.synth output?")
    attributes = json.loads(attributes_path.read_text(encoding="utf-8"))
    (bench,) = load_benchmarks("cirr", cirr_root, split)
    missing = [image_id for image_id in bench.gallery if image_id not in attributes]
    if missing:
        raise ValueError(f"{attributes_path}: no scene attributes for {len(missing)} {split} images, e.g. {missing[:3]}")
    rng = np.random.default_rng(seed)
    return [(bench.image_path(i), pretrain_caption(Scene.from_dict(attributes[i]), rng)) for i in bench.gallery]


@torch.no_grad()
def measure_gap(backbone: Backbone, pairs: list[tuple[Path, str]], batch_size: int = 256) -> dict[str, float]:
    """`cir.modality_gap` over all pairs, encoded in eval mode on the backbone's device."""
    backbone.eval()
    images, texts = [], []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        pixels = torch.stack([backbone.preprocess_val(load_rgb(path)) for path, _ in chunk]).to(backbone.device)
        tokens = backbone.tokenize([caption for _, caption in chunk]).to(backbone.device)
        images.append(backbone.encode_image(pixels))
        texts.append(backbone.encode_text(tokens))
    gap = modality_gap(torch.cat(images), torch.cat(texts))
    return {key: float(value) for key, value in gap.items()} | {"pairs": len(pairs)}
