"""load_rgb: every image mode a real dataset holds comes out as 8-bit RGB; bombs and empty files are refused."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cir.data.errors import UnreadableImage
from cir.data.images import load_rgb


def rgb(path) -> np.ndarray:
    image = load_rgb(path)
    assert image.mode == "RGB"
    return np.asarray(image)


def test_16_bit_is_scaled_not_clipped(tmp_path):
    Image.fromarray(np.full((4, 4), 32768, dtype=np.uint16)).save(tmp_path / "a.png")
    assert Image.open(tmp_path / "a.png").mode.startswith("I;16")
    assert abs(int(rgb(tmp_path / "a.png")[0, 0, 0]) - 128) <= 1


@pytest.mark.parametrize(
    "mode, colour, expected, suffix",
    [
        ("CMYK", (0, 255, 0, 0), (255, 0, 255), "jpg"),
        ("L", 77, (77, 77, 77), "png"),
        ("RGBA", (10, 20, 30, 0), (255, 255, 255), "png"),
        ("RGBA", (10, 20, 30, 255), (10, 20, 30), "png"),
        ("LA", (50, 255), (50, 50, 50), "png"),
    ],
)
def test_modes(tmp_path, mode, colour, expected, suffix):
    path = tmp_path / f"x.{suffix}"
    Image.new(mode, (8, 8), colour).save(path)
    assert np.abs(rgb(path)[4, 4].astype(int) - expected).max() <= 3


def test_palette_with_transparency(tmp_path):
    image = Image.new("P", (4, 4), 1)
    image.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    image.save(tmp_path / "p.png", transparency=0)
    assert tuple(rgb(tmp_path / "p.png")[0, 0]) == (200, 10, 10)


def test_zero_byte_and_truncated_files_raise_naming_the_file(tmp_path):
    (tmp_path / "z.png").write_bytes(b"")
    with pytest.raises(UnreadableImage, match=f"^{tmp_path / 'z.png'}: cannot read the image"):
        load_rgb(tmp_path / "z.png")
    Image.new("RGB", (64, 64), (1, 2, 3)).save(tmp_path / "t.jpg")
    data = (tmp_path / "t.jpg").read_bytes()
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(UnreadableImage, match=f"^{tmp_path / 't.jpg'}: cannot read the image"):
        load_rgb(tmp_path / "t.jpg")


def test_decompression_bomb_is_refused(tmp_path, monkeypatch):
    Image.new("RGB", (64, 64)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)  # 4096 pixels: past the limit, under the 2x hard error
    with pytest.raises(UnreadableImage, match=f"^{tmp_path / 'big.png'}: cannot read the image \\(DecompressionBombWarning"):
        load_rgb(tmp_path / "big.png")
