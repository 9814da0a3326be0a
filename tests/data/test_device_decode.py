"""data.decode=cuda, as far as a CPU checks it: the workers' EncodedCrops hold the boxes the CPU path draws for the
same sample seed, and decoding the batch (here on the CPU) gives the CPU path's pixels exactly; the key is refused
in one line where it cannot run. tests/cuda/test_device_decode.py compares the GPU's pixels."""

from __future__ import annotations

import dataclasses
import io
from types import SimpleNamespace

import pytest
import torch
from PIL import Image
from test_transforms import jpeg, open_clip_transform, photo_like

from cir.config import ConfigError
from cir.data.device_decode import EncodedBatch, EncodedCrop
from cir.data.image_text import decode_on, device_decoding
from cir.data.sample_rng import sample_seed, seeded
from cir.data.samples import ImageTextBatch
from cir.data.transforms import NormaliseOnDevice, stack_images, uint8_version


def mixed_images() -> list[bytes]:
    """RGB JPEGs of several sizes, and what the device path leaves to the workers: a PNG and a grayscale JPEG."""
    images = [jpeg(photo_like(seed, 60 + 7 * seed, 90 - 5 * seed)) for seed in range(6)]
    png = io.BytesIO()
    photo_like(9, 50, 40).save(png, format="PNG")
    images.insert(2, png.getvalue())
    images.insert(5, jpeg(photo_like(10, 45, 52).convert("L")))
    return images


def both_paths(images: list[bytes], scale=(0.3, 1.0)):
    cpu = uint8_version(open_clip_transform(scale=scale))
    device = dataclasses.replace(cpu, decode="cuda")
    seeds = [sample_seed(0, 1, 0, 0, place) for place in range(len(images))]
    made_on_cpu, made_for_device = [], []
    for seed, data in zip(seeds, images):
        with seeded(seed, python=False):
            made_on_cpu.append(cpu(data))
        with seeded(seed, python=False):
            made_for_device.append(device(data))
    return cpu, made_on_cpu, made_for_device


def test_the_workers_ship_rgb_jpegs_with_the_cpu_paths_boxes_and_decode_the_rest():
    images = mixed_images()
    cpu, _, shipped = both_paths(images)
    kinds = [isinstance(item, EncodedCrop) for item in shipped]
    assert kinds == [True, True, False, True, True, False, True, True]
    for data, item in zip(images, shipped):
        if isinstance(item, EncodedCrop):
            assert bytes(item.data.numpy()) == data
            width, height = Image.open(io.BytesIO(data)).size
            top, left, h, w = item.box.tolist()
            assert 0 <= top and top + h <= height and 0 <= left and left + w <= width


def test_a_decoded_batch_equals_the_cpu_paths_batch_exactly_on_the_cpu():
    cpu, made_on_cpu, shipped = both_paths(mixed_images())
    batch = stack_images(shipped)
    assert isinstance(batch, EncodedBatch)
    assert torch.equal(batch.decode(cpu, "cpu"), stack_images(made_on_cpu))


def test_the_datamodule_decodes_before_the_transfer_and_normalises_after():
    cpu, made_on_cpu, shipped = both_paths(mixed_images())
    module = NormaliseOnDevice()
    module.image_transform = cpu
    module.trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cpu")))
    batch = ImageTextBatch(stack_images(shipped), torch.zeros(8, 4), torch.zeros(6, dtype=torch.long))
    decoded = module.on_before_batch_transfer(batch, 0)
    assert torch.equal(decoded.images, stack_images(made_on_cpu))
    normalised = module.on_after_batch_transfer(decoded, 0)
    assert torch.equal(normalised.images, cpu.to_float(stack_images(made_on_cpu)))


def test_the_key_is_refused_in_one_line_where_it_cannot_run(monkeypatch):
    with pytest.raises(ConfigError, match=r"^config key `data.decode`: cpu or cuda, got 'gpu'$"):
        decode_on("gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"^config key `data.decode`: cuda decodes JPEGs on a CUDA GPU and this machine has none"):
        decode_on("cuda")
    with pytest.raises(ConfigError, match=r"^config key `data.decode`: cuda covers open_clip's plain random resized crop only"):
        device_decoding(lambda image: image)
    assert decode_on("cpu") == "cpu"
