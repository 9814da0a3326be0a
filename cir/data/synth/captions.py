"""Captions of the generated benchmark: scene descriptions and relative (edit) captions.

Three caption sources, one small vocabulary:
- pretraining: 60% full / 40% partial descriptions, wrapped in prefixes that
  carry the relative-caption verbs ("make it", "change it to", "add", "remove
  all but"), so those words get trained embeddings before any CIR query;
- tuning (TAT): another distribution, like LAION against CLIP's data: mostly
  full descriptions in three styles (sentence, background first, keywords), no
  verb prefixes;
- relative captions: one or two attribute changes, adding or removing one
  object; they name only what changes, never the whole target.
Captions are lowercase words separated by single spaces (no punctuation), so a
word-level tokenizer over `vocabulary()` covers them exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from cir.data.synth.scenes import (
    ATTRIBUTE_VALUES,
    OBJECT_ATTRIBUTES,
    Scene,
    SceneObject,
)

FULL_RATE_PRETRAIN = 0.6
FULL_RATE_TUNE = 0.8
KEEP_RATE = 0.6  # chance that a partial description keeps an attribute
COMPARATIVE_RATE = 0.5  # chance that the second object's differing size is said as "smaller" / "bigger"

POSITION_PHRASES = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom"}
COMPARATIVES = {"small": ("smaller",), "large": ("bigger", "larger")}
PRETRAIN_WRAPPERS = (
    "{}",
    "a photo of {}",
    "an image of {}",
    "a picture of {}",
    "there is {}",
    "it is {}",
    "make it {}",
    "change it to {}",
    "turn it into {}",
    "replace it with {}",
    "move it to {}",
    "add {}",
    "remove all but {}",
)
TUNE_STYLES = ("sentence", "background first", "keywords")
BACKGROUND_SENTENCE = "{} on a {} background"
BACKGROUND_ONLY = "a {} background"
BACKGROUND_FIRST = "a {} background with {}"
BACKGROUND_KEYWORDS = "{} background"
EDIT_TEMPLATES: dict[str, tuple[str, ...]] = {
    "color": ("make it {}", "turn it {}", "change it to {}"),
    "shape": ("change it to a {}", "make it a {}", "turn it into a {}", "replace it with a {}"),
    "large": ("make it bigger", "make it larger"),
    "small": ("make it smaller",),
    "position": ("move it to the {}",),
    "background": ("change the background to {}", "make the background {}"),
    "add": ("add {}",),
    "remove shape": ("remove the {}",),
    "remove color": ("remove the {} one",),
    "remove size": ("remove the {} one",),
    "remove position": ("remove the one {}",),
}
# Words the description grammar uses besides attribute values and the phrases above.
_GRAMMAR_WORDS = ("a", "an", "and", "one", "shape")


@dataclass(frozen=True)
class Edit:
    """What a relative caption asks for: attribute changes, or adding / removing one object.

    Object attribute changes need a one-object scene ("it" must be unambiguous);
    a background change works on any scene.
    """

    changes: tuple[tuple[str, str], ...] = ()
    added: SceneObject | None = None
    removed: SceneObject | None = None

    def __post_init__(self) -> None:
        kinds = sum((bool(self.changes), self.added is not None, self.removed is not None))
        if kinds != 1:
            raise ValueError("an Edit holds exactly one of: changes, added, removed")
        attributes = [attribute for attribute, _ in self.changes]
        if len(set(attributes)) != len(attributes):
            raise ValueError(f"an attribute changes at most once per edit, got {attributes}")
        for attribute, value in self.changes:
            if attribute not in ATTRIBUTE_VALUES or value not in ATTRIBUTE_VALUES[attribute]:
                raise ValueError(f"unknown change {attribute}={value!r}; attributes: {', '.join(ATTRIBUTE_VALUES)}")


def apply_edit(scene: Scene, edit: Edit) -> Scene:
    """The target the edit turns `scene` into; an edit that changes nothing or is ambiguous is an error."""
    if edit.added is not None:
        return Scene(scene.background, (*scene.objects, edit.added))
    if edit.removed is not None:
        if edit.removed not in scene.objects or scene.count == 1:
            raise ValueError(f"cannot remove {edit.removed} from a scene with objects {scene.objects}")
        return Scene(scene.background, tuple(obj for obj in scene.objects if obj != edit.removed))
    result = scene
    for attribute, value in edit.changes:
        if attribute == "background":
            current = scene.background
            result = replace(result, background=value)
        else:
            if scene.count != 1:
                raise ValueError(f"changing {attribute} needs a one-object scene, this one has {scene.count}")
            current = getattr(scene.objects[0], attribute)
            result = replace(result, objects=(replace(result.objects[0], **{attribute: value}),))
        if value == current:
            raise ValueError(f"edit sets {attribute} to {value!r}, which it already is")
    return result


def relative_caption(scene: Scene, edit: Edit, rng: np.random.Generator) -> str:
    """A caption naming only what `edit` changes in `scene`."""
    if edit.added is not None:
        return _pick(rng, EDIT_TEMPLATES["add"]).format(_object_phrase(edit.added, set(OBJECT_ATTRIBUTES)))
    if edit.removed is not None:
        (other,) = [obj for obj in scene.objects if obj != edit.removed]
        telling = [a for a in OBJECT_ATTRIBUTES if getattr(edit.removed, a) != getattr(other, a)]
        attribute = _pick(rng, telling)  # position always tells them apart
        value = getattr(edit.removed, attribute)
        word = POSITION_PHRASES[value] if attribute == "position" else value
        return _pick(rng, EDIT_TEMPLATES[f"remove {attribute}"]).format(word)
    clauses = []
    for attribute, value in edit.changes:
        key = value if attribute == "size" else attribute
        clauses.append(_pick(rng, EDIT_TEMPLATES[key]).format(value))
    return " and ".join(clauses)


def pretrain_caption(scene: Scene, rng: np.random.Generator) -> str:
    full = rng.random() < FULL_RATE_PRETRAIN
    return _pick(rng, PRETRAIN_WRAPPERS).format(_sentence(scene, rng, full))


def tune_caption(scene: Scene, rng: np.random.Generator) -> str:
    full = rng.random() < FULL_RATE_TUNE
    style = _pick(rng, TUNE_STYLES)
    if style == "sentence":
        return _sentence(scene, rng, full)
    objects, background = _kept(scene, rng, full)
    if style == "keywords":
        text = " and ".join(" ".join(_keywords(obj, keep)) for obj, keep in objects)
        return " ".join(filter(None, (text, BACKGROUND_KEYWORDS.format(scene.background) if background else "")))
    text = " and ".join(_object_phrase(obj, keep) for obj, keep in objects)
    if not background:
        return text
    return BACKGROUND_FIRST.format(scene.background, text) if text else BACKGROUND_ONLY.format(scene.background)


def vocabulary() -> list[str]:
    """Every word any pretraining, tuning or relative caption can contain, sorted."""
    texts = [
        *PRETRAIN_WRAPPERS,
        BACKGROUND_SENTENCE,
        BACKGROUND_ONLY,
        BACKGROUND_FIRST,
        BACKGROUND_KEYWORDS,
        *POSITION_PHRASES.values(),
        *(w for words in COMPARATIVES.values() for w in words),
        *(t for templates in EDIT_TEMPLATES.values() for t in templates),
        *_GRAMMAR_WORDS,
        *(v for values in ATTRIBUTE_VALUES.values() for v in values),
    ]
    words = {w for text in texts for w in text.replace("{}", " ").split()}
    return sorted(words)


def _pick(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _kept(scene: Scene, rng: np.random.Generator, full: bool) -> tuple[list[tuple[SceneObject, set[str]]], bool]:
    """Which attributes a description mentions: all, or each with KEEP_RATE (at least one overall).

    Objects come in random order and an object with nothing kept is left out.
    """
    order = rng.permutation(scene.count)
    objects = [scene.objects[i] for i in order]
    if full:
        return [(obj, set(OBJECT_ATTRIBUTES)) for obj in objects], True
    keeps = [{a for a in OBJECT_ATTRIBUTES if rng.random() < KEEP_RATE} for _ in objects]
    background = bool(rng.random() < KEEP_RATE)
    if not background and not any(keeps):
        slot = int(rng.integers(len(objects) * len(OBJECT_ATTRIBUTES) + 1))
        if slot == len(objects) * len(OBJECT_ATTRIBUTES):
            background = True
        else:
            keeps[slot // len(OBJECT_ATTRIBUTES)].add(OBJECT_ATTRIBUTES[slot % len(OBJECT_ATTRIBUTES)])
    return [(obj, keep) for obj, keep in zip(objects, keeps) if keep], background


def _sentence(scene: Scene, rng: np.random.Generator, full: bool) -> str:
    """'a large red circle on the left and a smaller blue square at the top on a gray background'."""
    objects, background = _kept(scene, rng, full)
    phrases = []
    for index, (obj, keep) in enumerate(objects):
        size_word = None
        if index == 1 and "size" in keep and "size" in objects[0][1] and obj.size != objects[0][0].size:
            if rng.random() < COMPARATIVE_RATE:
                size_word = _pick(rng, COMPARATIVES[obj.size])
        phrases.append(_object_phrase(obj, keep, size_word))
    text = " and ".join(phrases)
    if not background:
        return text
    return BACKGROUND_SENTENCE.format(text, scene.background) if text else BACKGROUND_ONLY.format(scene.background)


def _object_phrase(obj: SceneObject, keep: set[str], size_word: str | None = None) -> str:
    adjectives = []
    if "size" in keep:
        adjectives.append(size_word or obj.size)
    if "color" in keep:
        adjectives.append(obj.color)
    noun = obj.shape if "shape" in keep else ("one" if adjectives else "shape")
    words = [*adjectives, noun]
    phrase = f"{'an' if words[0][0] in 'aeiou' else 'a'} {' '.join(words)}"
    if "position" in keep:
        phrase += " " + POSITION_PHRASES[obj.position]
    return phrase


def _keywords(obj: SceneObject, keep: set[str]) -> list[str]:
    return [getattr(obj, a) for a in ("size", "color", "shape", "position") if a in keep]

