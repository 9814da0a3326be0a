"""Scene model and drawing of the generated benchmark.

A scene is a background plus one or two objects, each with a shape, color, size
and position; no two objects share a position, so a position names an object.
Scenes are frozen, canonically ordered values: a gallery can hold each scene
exactly once (a duplicate would cap R@1), and a hard distractor is a scene that
differs from the target in exactly one attribute (`neighbours`).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, replace
from itertools import permutations, product
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "cross")
COLORS = ("red", "green", "blue", "yellow", "purple", "orange")
SIZES = ("small", "large")
POSITIONS = ("left", "right", "top", "bottom")
BACKGROUNDS = ("gray", "black", "white")
OBJECT_ATTRIBUTES = ("shape", "color", "size", "position")
ATTRIBUTE_VALUES: dict[str, tuple[str, ...]] = {
    "shape": SHAPES,
    "color": COLORS,
    "size": SIZES,
    "position": POSITIONS,
    "background": BACKGROUNDS,
}
MAX_OBJECTS = 2

_RGB = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (50, 80, 225),
    "yellow": (235, 210, 40),
    "purple": (150, 60, 190),
    "orange": (245, 135, 25),
    "gray": (128, 128, 128),
    "black": (20, 20, 20),
    "white": (235, 235, 235),
}
# Centres and radii as fractions of the side. Adjacent positions (left / top) are
# 0.40 apart, more than two large radii plus the worst jitter, so objects never touch.
_CENTRES = {"left": (0.22, 0.5), "right": (0.78, 0.5), "top": (0.5, 0.22), "bottom": (0.5, 0.78)}
_RADII = {"small": 0.09, "large": 0.155}


@dataclass(frozen=True)
class SceneObject:
    shape: str
    color: str
    size: str
    position: str

    def __post_init__(self) -> None:
        for attribute in OBJECT_ATTRIBUTES:
            _check_value(attribute, getattr(self, attribute))

    def to_dict(self) -> dict[str, str]:
        return {attribute: getattr(self, attribute) for attribute in OBJECT_ATTRIBUTES}


@dataclass(frozen=True)
class Scene:
    """Objects are kept sorted by position so equal scenes compare and hash equal."""

    background: str
    objects: tuple[SceneObject, ...]

    def __post_init__(self) -> None:
        _check_value("background", self.background)
        if not 1 <= len(self.objects) <= MAX_OBJECTS:
            raise ValueError(f"a scene holds 1 to {MAX_OBJECTS} objects, got {len(self.objects)}")
        positions = [obj.position for obj in self.objects]
        if len(set(positions)) != len(positions):
            raise ValueError(f"two objects share a position: {positions}")
        object.__setattr__(self, "objects", tuple(sorted(self.objects, key=lambda o: POSITIONS.index(o.position))))

    @property
    def count(self) -> int:
        return len(self.objects)

    def to_dict(self) -> dict[str, Any]:
        return {
            "background": self.background,
            "count": self.count,
            "objects": [obj.to_dict() for obj in self.objects],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scene:
        return cls(data["background"], tuple(SceneObject(**obj) for obj in data["objects"]))


def _check_value(attribute: str, value: str) -> None:
    if value not in ATTRIBUTE_VALUES[attribute]:
        raise ValueError(f"unknown {attribute} {value!r}; valid: {', '.join(ATTRIBUTE_VALUES[attribute])}")


def single_object_scenes() -> list[Scene]:
    """Every one-object scene, in a fixed order: the core of every gallery."""
    return [
        Scene(background, (SceneObject(shape, color, size, position),))
        for background, shape, color, size, position in product(BACKGROUNDS, SHAPES, COLORS, SIZES, POSITIONS)
    ]


def neighbours(scene: Scene) -> list[Scene]:
    """Every scene that differs from `scene` in exactly one attribute (the hard distractors), in a fixed order."""
    result = [replace(scene, background=b) for b in BACKGROUNDS if b != scene.background]
    for index, obj in enumerate(scene.objects):
        taken = {other.position for other in scene.objects if other is not obj}
        for attribute in OBJECT_ATTRIBUTES:
            for value in ATTRIBUTE_VALUES[attribute]:
                if value == getattr(obj, attribute) or (attribute == "position" and value in taken):
                    continue
                objects = list(scene.objects)
                objects[index] = replace(obj, **{attribute: value})
                result.append(Scene(scene.background, tuple(objects)))
    return result


def shared_attributes(a: Scene, b: Scene) -> int:
    """Attributes two scenes have in common: the background plus the best pairing of their objects."""
    small, large = sorted((a.objects, b.objects), key=len)
    best = max(
        sum(getattr(x, attr) == getattr(y, attr) for x, y in zip(small, chosen) for attr in OBJECT_ATTRIBUTES)
        for chosen in permutations(large, len(small))
    )
    return best + (a.background == b.background)


def random_object(rng: np.random.Generator, taken: frozenset[str] = frozenset()) -> SceneObject:
    """A uniformly drawn object at a position not in `taken`."""
    free = [p for p in POSITIONS if p not in taken]
    return SceneObject(
        shape=SHAPES[rng.integers(len(SHAPES))],
        color=COLORS[rng.integers(len(COLORS))],
        size=SIZES[rng.integers(len(SIZES))],
        position=free[rng.integers(len(free))],
    )


def random_scene(rng: np.random.Generator, two_object_rate: float) -> Scene:
    first = random_object(rng)
    objects = [first]
    if rng.random() < two_object_rate:
        objects.append(random_object(rng, frozenset({first.position})))
    return Scene(BACKGROUNDS[rng.integers(len(BACKGROUNDS))], tuple(objects))


@dataclass(frozen=True)
class RenderStyle:
    """Nuisance variation: the same scene drawn twice differs in these, never in its attributes."""

    jitter: float = 0.02  # largest centre offset per axis, fraction of the side
    scale_jitter: float = 0.04  # largest relative change of the radius
    shade: float = 12.0  # largest per-channel color offset (0-255)
    noise: float = 6.0  # standard deviation of the pixel noise (0-255)


def render(scene: Scene, rng: np.random.Generator, image_size: int, style: RenderStyle) -> np.ndarray:
    """Draw at twice the output size and downscale (anti-aliasing), then add pixel noise; HxWx3 uint8."""
    side = 2 * image_size
    image = Image.new("RGB", (side, side), _shaded(scene.background, rng, style))
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        cx, cy = (c + rng.uniform(-style.jitter, style.jitter) for c in _CENTRES[obj.position])
        radius = _RADII[obj.size] * (1 + rng.uniform(-style.scale_jitter, style.scale_jitter))
        _draw_shape(draw, obj.shape, cx * side, cy * side, radius * side, _shaded(obj.color, rng, style))
    small = np.asarray(image.resize((image_size, image_size), Image.Resampling.BOX), dtype=np.float32)
    noisy = small + rng.normal(0.0, style.noise, small.shape)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def _shaded(name: str, rng: np.random.Generator, style: RenderStyle) -> tuple[int, int, int]:
    offsets = rng.uniform(-style.shade, style.shade, 3).tolist()
    return tuple(min(255, max(0, round(c + o))) for c, o in zip(_RGB[name], offsets))


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill: tuple[int, int, int]) -> None:
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "square":
        h = 0.85 * r  # about the circle's area, so size is not confused with shape
        draw.rectangle((cx - h, cy - h, cx + h, cy + h), fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx + 0.95 * r, cy + 0.75 * r), (cx - 0.95 * r, cy + 0.75 * r)], fill=fill)
    elif shape == "cross":
        t = 0.38 * r
        draw.rectangle((cx - r, cy - t, cx + r, cy + t), fill=fill)
        draw.rectangle((cx - t, cy - r, cx + t, cy + r), fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}; valid: {', '.join(SHAPES)}")


def encode_png(pixels: np.ndarray) -> bytes:
    """PNG bytes; zlib at a fixed level makes them identical for identical pixels (level 1: tiny images, speed first)."""
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
