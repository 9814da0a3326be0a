"""The uint8 training transform against open_clip's: same crops, pixels within a grey level, normalised alike."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from open_clip.transform import AugmentationCfg, PreprocessCfg, image_transform_v2
from PIL import Image

from cir.data.images import load_rgb
from cir.data.transforms import (
    Uint8RandomResizedCrop,
    decode_rgb,
    pil_to_uint8,
    stack_images,
    uint8_version,
)

SIZE = 64


def photo_like(seed: int, width: int, height: int) -> Image.Image:
    """Smooth colour fields with edges and noise: content on which resampling filters differ, as on photos."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (6, 6, 3)).astype(np.uint8)
    image = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC), dtype=np.float64)
    image[height // 3 : height // 2, :] = 255 - image[height // 3 : height // 2, :]
    image += rng.normal(0, 12, image.shape)
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))


def jpeg(image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95, **kwargs)
    return buffer.getvalue()


def open_clip_transform(**aug):
    return image_transform_v2(PreprocessCfg(size=SIZE), is_train=True, aug_cfg=AugmentationCfg(**aug))


def grey_levels(old: torch.Tensor, transform: Uint8RandomResizedCrop) -> torch.Tensor:
    """open_clip's normalised float output back to 0-255 grey levels."""
    mean = torch.tensor(transform.mean).view(-1, 1, 1)
    std = torch.tensor(transform.std).view(-1, 1, 1)
    return (old * std + mean) * 255


@pytest.mark.parametrize("aug", [{}, {"scale": (0.3, 1.0)}])
def test_same_crop_gives_open_clips_pixels_within_one_grey_level(aug):
    old_transform = open_clip_transform(**aug)
    new = uint8_version(old_transform)
    assert new.scale == tuple(aug.get("scale", (0.9, 1.0))) and new.size == (SIZE, SIZE) and new.interpolation == "bicubic"
    differences = []
    for seed in range(12):
        image = Image.open(io.BytesIO(jpeg(photo_like(seed, 70 + 3 * seed, 96 - 2 * seed))))
        torch.manual_seed(seed)
        old = old_transform(image)
        torch.manual_seed(seed)
        from_bytes = new(jpeg(photo_like(seed, 70 + 3 * seed, 96 - 2 * seed)))
        torch.manual_seed(seed)
        from_pil = new(image)
        assert from_bytes.dtype == torch.uint8 and from_bytes.shape == (3, SIZE, SIZE)
        assert torch.equal(from_bytes, from_pil)
        differences.append((grey_levels(old, new) - from_bytes.float()).abs().flatten())
        assert torch.allclose(new.to_float(from_bytes[None])[0], old, atol=2.01 / 255 / min(new.std), rtol=0)
    difference = torch.cat(differences)
    assert difference.max() <= 2.01  # torch and PIL round their first (horizontal) pass differently
    assert (difference > 1.01).float().mean() < 1e-4
    assert difference.mean() < 0.05


def test_to_float_is_open_clips_to_tensor_and_normalize_exactly():
    old_transform = image_transform_v2(PreprocessCfg(size=SIZE), is_train=False)
    new = uint8_version(open_clip_transform())
    image = photo_like(0, SIZE, SIZE)
    assert torch.equal(new.to_float(pil_to_uint8(image)[None])[0], old_transform(image))


@pytest.mark.filterwarnings("ignore:Unused augmentation cfg items")
def test_augmentations_it_does_not_cover_keep_open_clips_transform():
    assert uint8_version(open_clip_transform(color_jitter=(0.4, 0.4, 0.4, 0.1), color_jitter_prob=0.8)) is None
    assert uint8_version(open_clip_transform(gray_scale_prob=0.2)) is None
    assert uint8_version(image_transform_v2(PreprocessCfg(size=SIZE), is_train=False)) is None
    assert uint8_version(lambda image: image) is None


@pytest.mark.parametrize("mode", ["L", "CMYK", "RGBA-png"])
def test_other_images_decode_as_load_rgb_does(mode):
    image = photo_like(1, 40, 30)
    if mode == "RGBA-png":
        image = image.convert("RGBA")
        image.putalpha(128)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        data = buffer.getvalue()
    else:
        data = jpeg(image.convert(mode))
    expected = np.asarray(load_rgb(io.BytesIO(data)))
    assert np.array_equal(decode_rgb(data).permute(1, 2, 0).numpy(), expected)


def test_rgb_jpegs_decode_to_the_pixels_pil_gives():
    data = jpeg(photo_like(2, 57, 43))
    assert np.abs(decode_rgb(data).permute(1, 2, 0).numpy().astype(int) - np.asarray(load_rgb(io.BytesIO(data))).astype(int)).max() <= 1


def test_decompression_bombs_are_refused_before_decoding(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40 * 30 - 1)
    with pytest.raises(Image.DecompressionBombError):
        decode_rgb(jpeg(photo_like(3, 40, 30)))


def test_stack_keeps_channels_last_images_channels_last():
    transform = uint8_version(open_clip_transform())
    images = [transform(jpeg(photo_like(seed, 80, 70))) for seed in range(3)]
    batch = stack_images(images)
    assert torch.equal(batch, torch.stack(images))
    assert batch.is_contiguous(memory_format=torch.channels_last)
    floats = [torch.rand(3, 4, 4) for _ in range(2)]
    assert torch.equal(stack_images(floats), torch.stack(floats))


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_a_crop_resized_into_out_equals_the_one_resized_on_its_own(interpolation):
    """What a DataLoader worker writes in place into its batch (cir.data.samples) is what F.interpolate gives."""
    transform = uint8_version(open_clip_transform())
    transform = Uint8RandomResizedCrop(**{**transform.__dict__, "interpolation": interpolation})
    data = jpeg(photo_like(4, 90, 70))
    torch.manual_seed(3)
    alone = transform(data)
    batch = torch.zeros(2, SIZE, SIZE, 3, dtype=torch.uint8)
    torch.manual_seed(3)
    returned = transform(data, batch[1].permute(2, 0, 1))
    assert torch.equal(batch[1].permute(2, 0, 1), alone) and returned.data_ptr() == batch[1].data_ptr()
    assert not batch[0].any()
    assert transform.fills_out and not Uint8RandomResizedCrop(**{**transform.__dict__, "decode": "cuda"}).fills_out


def test_images_torchcodec_does_not_take_here_go_through_pil_and_are_counted_per_format():
    from cir.data import transforms

    transforms.PIL_DECODES.clear()
    png = io.BytesIO()
    photo_like(4, 30, 20).save(png, format="PNG")
    for data in (jpeg(photo_like(5, 30, 20)), png.getvalue(), png.getvalue(), jpeg(photo_like(6, 30, 20).convert("CMYK"))):
        decode_rgb(data)
    assert dict(transforms.PIL_DECODES) == {"PNG RGB": 2, "JPEG CMYK": 1}


def test_no_module_decodes_through_torchvision():
    """torchvision's image decoding is deprecated (0.29) in favour of TorchCodec."""
    import cir

    users = [path for path in Path(cir.__file__).parent.rglob("*.py") if "torchvision.io" in path.read_text()]
    assert users == []
