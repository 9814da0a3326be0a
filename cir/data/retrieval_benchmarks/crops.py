"""GeneCIS's object crops: the box dilated, clipped to the image, then padded to a black square.

Follows facebookresearch/genecis datasets/vaw_dataset.py (VAWDataset.load_cropped_image with DILATION = 0.7 and
PAD_CROP = True, and its expand2square) exactly, asymmetry included: left/top move out by 0.7 of the box's
width/height and are clipped at 0; right/bottom are the *clipped* left/top plus 1.7 of it, clipped to the image.
"""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image

DILATION = 0.7  # vaw_dataset.py DILATION


def dilated_box(bbox: Sequence[float], image_size: tuple[int, int]) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) to crop for an `instance_bbox` [x, y, w, h] in an image of (width, height)."""
    x, y, width, height = bbox
    image_width, image_height = image_size
    left, top = max(0, x - DILATION * width), max(0, y - DILATION * height)
    right = min(image_width, left + (1 + DILATION) * width)
    bottom = min(image_height, top + (1 + DILATION) * height)
    return left, top, right, bottom


def pad_to_square(image: Image.Image) -> Image.Image:
    """The image centred on a black square as wide as its longer side (vaw_dataset.py expand2square)."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    square = Image.new(image.mode, (side, side), (0,) * len(image.getbands()))
    square.paste(image, ((side - width) // 2, (side - height) // 2))
    return square


def crop_object(image: Image.Image, bbox: Sequence[float]) -> Image.Image:
    """GeneCIS's view of one object: PIL's crop of the dilated box (PIL rounds the float corners), padded square."""
    return pad_to_square(image.crop(dilated_box(bbox, image.size)))
