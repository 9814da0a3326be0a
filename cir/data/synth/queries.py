"""CIR queries and galleries of the generated benchmark, before any image is drawn.

A split's gallery is every one-object scene (each exactly once) plus, for each
"add" query, its two-object target and four of that target's one-attribute
neighbours. Every target thus has hard distractors in the gallery, and the
reference's near-duplicates are there too, so neither the image alone (many
scenes one attribute away) nor the caption alone (it names one or two
attributes that many scenes share) finds the target; the reference with the
edit applied does, exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cir.data.synth.captions import Edit, apply_edit, relative_caption
from cir.data.synth.scenes import (
    ATTRIBUTE_VALUES,
    OBJECT_ATTRIBUTES,
    Scene,
    neighbours,
    random_object,
    shared_attributes,
    single_object_scenes,
)

SUBSET_SIZE = 6  # CIRR img_set: reference, target and four hard distractors
TWO_CHANGE_RATE = 0.3  # share of attribute edits that change two attributes
ADD_NEIGHBOURS = 4  # two-object neighbours of each added target put in the gallery
_EDITABLE = (*OBJECT_ATTRIBUTES, "background")
_MAX_TRIES = 1000


@dataclass(frozen=True)
class SceneQuery:
    reference: Scene
    edit: Edit
    target: Scene
    caption: str
    distractors: tuple[Scene, ...]


@dataclass(frozen=True)
class SceneSplit:
    gallery: list[Scene]
    queries: list[SceneQuery]


def build_split(rng: np.random.Generator, n_queries: int, multi_object_rate: float) -> SceneSplit:
    """`multi_object_rate` of the queries add or remove an object (half each); the rest change attributes."""
    if n_queries < 1:
        raise ValueError(f"a split needs at least one query, got {n_queries}")
    if not 0.0 <= multi_object_rate <= 1.0:
        raise ValueError(f"multi_object_rate must lie in [0, 1], got {multi_object_rate}")
    singles = single_object_scenes()
    gallery: dict[Scene, None] = dict.fromkeys(singles)
    n_multi = round(n_queries * multi_object_rate)
    n_add = (n_multi + 1) // 2
    seen: set[tuple[Scene, Scene]] = set()
    drafts: list[tuple[Scene, Edit, Scene]] = []

    def draft(make) -> None:
        for _ in range(_MAX_TRIES):
            reference, edit = make()
            target = apply_edit(reference, edit)
            if (reference, target) not in seen:
                seen.add((reference, target))
                drafts.append((reference, edit, target))
                return
        raise ValueError(f"could not draw {n_queries} distinct queries; ask for fewer")

    for _ in range(n_add):
        draft(lambda: _add_edit(rng, singles))
        target = drafts[-1][2]
        candidates = neighbours(target)
        for index in rng.choice(len(candidates), ADD_NEIGHBOURS, replace=False):
            gallery.setdefault(candidates[index])
        gallery.setdefault(target)
    added_targets = [target for _, _, target in drafts]
    for _ in range(n_multi - n_add):
        draft(lambda: _remove_edit(rng, added_targets))
    for _ in range(n_queries - n_multi):
        draft(lambda: _attribute_edit(rng, singles))

    queries = []
    for position in rng.permutation(len(drafts)):
        reference, edit, target = drafts[position]
        caption = relative_caption(reference, edit, rng)
        queries.append(SceneQuery(reference, edit, target, caption, _distractors(rng, reference, target, gallery)))
    return SceneSplit(gallery=list(gallery), queries=queries)


def _distractors(rng: np.random.Generator, reference: Scene, target: Scene, gallery: dict[Scene, None]) -> tuple[Scene, ...]:
    """Four hard distractors for img_set, half of each kind where possible: ones as close to the
    reference as the target (they ignore the caption: "make it blue" -> green, or the wrong object
    removed) and ones further from it (one-attribute neighbours of the target that follow the caption
    but change something else), so neither the image alone nor the caption alone wins the subset ranking.
    """
    wanted = SUBSET_SIZE - 2
    closeness = shared_attributes(target, reference)
    candidates = [n for n in neighbours(target) if n in gallery and n != reference]
    if target.count < reference.count:  # removing the other object is the natural mistake
        (kept,) = target.objects
        candidates += [Scene(reference.background, (obj,)) for obj in reference.objects if obj != kept]
    candidates = list(dict.fromkeys(candidates))  # the removed object's scene can also be a neighbour
    near = [n for n in candidates if shared_attributes(n, reference) >= closeness]
    far = [n for n in candidates if shared_attributes(n, reference) < closeness]
    n_near = min(len(near), max(wanted // 2, wanted - len(far)))
    if n_near + len(far) < wanted:
        raise ValueError(f"only {len(candidates)} hard distractors in the gallery for {target}")
    picks = [near[i] for i in rng.choice(len(near), n_near, replace=False)]
    picks += [far[i] for i in rng.choice(len(far), wanted - n_near, replace=False)]
    return tuple(picks)


def _attribute_edit(rng: np.random.Generator, singles: list[Scene]) -> tuple[Scene, Edit]:
    reference = singles[int(rng.integers(len(singles)))]
    count = 2 if rng.random() < TWO_CHANGE_RATE else 1
    attributes = [_EDITABLE[i] for i in rng.choice(len(_EDITABLE), count, replace=False)]
    current = {"background": reference.background, **reference.objects[0].to_dict()}
    changes = []
    for attribute in attributes:
        options = [v for v in ATTRIBUTE_VALUES[attribute] if v != current[attribute]]
        changes.append((attribute, options[int(rng.integers(len(options)))]))
    return reference, Edit(changes=tuple(changes))


def _add_edit(rng: np.random.Generator, singles: list[Scene]) -> tuple[Scene, Edit]:
    reference = singles[int(rng.integers(len(singles)))]
    added = random_object(rng, frozenset({reference.objects[0].position}))
    return reference, Edit(added=added)


def _remove_edit(rng: np.random.Generator, two_object_scenes: list[Scene]) -> tuple[Scene, Edit]:
    """The reference is an added target, so its near-duplicates are already in the gallery."""
    reference = two_object_scenes[int(rng.integers(len(two_object_scenes)))]
    return reference, Edit(removed=reference.objects[int(rng.integers(2))])
