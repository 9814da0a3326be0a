"""data.decode=cuda on the device: the same seed gives the CPU path's crops, and the pixels stay within a few grey
levels of the CPU path's (nvJPEG's IDCT and upsampling are not libjpeg-turbo's, and CUDA resizes in float32 where
the CPU has a uint8 kernel). Under CIR_CUDA_SMOKE=cpu the batch decodes on the CPU and must equal the CPU path."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import torch
from PIL import Image

from cir.data.device_decode import EncodedBatch
from cir.data.sample_rng import sample_seed, seeded
from cir.data.transforms import stack_images, uint8_version
from cir.models import create_backbone, train_transform

# Tolerances on the GPU, not measured yet: benchmarks/bench_device_decode.py (step 4 of benchmarks/gpu.sh) reports the
# largest and mean difference on photos; tighten these to what the first GPU run shows.
MAX_GREY_LEVELS = 12
MEAN_GREY_LEVELS = 1.0


def photos(count: int) -> list[bytes]:
    """Smooth colour fields with noise at 224-400 px, quality-90 JPEGs: content on which decoders' rounding shows."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(count):
        width, height = 224 + 11 * i, 400 - 9 * i
        coarse = Image.fromarray(rng.uniform(0, 255, (5, 5, 3)).astype(np.uint8)).resize((width, height), Image.Resampling.BICUBIC)
        noisy = np.clip(np.asarray(coarse, dtype=np.float64) + rng.normal(0, 10, (height, width, 3)), 0, 255)
        buffer = io.BytesIO()
        Image.fromarray(noisy.astype(np.uint8)).save(buffer, format="JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def test_the_device_decodes_the_cpu_paths_crops_within_a_few_grey_levels(first) -> None:
    cpu = uint8_version(train_transform(create_backbone(first.model, "none"), {"scale": [0.3, 1.0]}))
    device = dataclasses.replace(cpu, decode="cuda")
    made_on_cpu, shipped = [], []
    for place, data in enumerate(photos(16)):
        seed = sample_seed(0, 0, 0, 0, place)
        with seeded(seed, python=False):
            made_on_cpu.append(cpu(data))
        with seeded(seed, python=False):
            shipped.append(device(data))
    batch = stack_images(shipped)
    assert isinstance(batch, EncodedBatch) and len(batch.at) == 16
    decoded = batch.decode(cpu, first.device).cpu()
    expected = stack_images(made_on_cpu)
    difference = (decoded.int() - expected.int()).abs()
    if first.device == "cpu":
        assert torch.equal(decoded, expected)
    print(f"device decode vs CPU path: max {int(difference.max())} mean {float(difference.float().mean()):.3f} grey levels")
    assert int(difference.max()) <= MAX_GREY_LEVELS and float(difference.float().mean()) <= MEAN_GREY_LEVELS
