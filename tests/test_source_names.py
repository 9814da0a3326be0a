"""cir.source_names: the names read from a package's source are those of the imported class."""

from __future__ import annotations

import dataclasses
import inspect

import lightning as L
from open_clip.transform import AugmentationCfg

from cir.models.backbone import AUGMENTATION_FIELDS
from cir.source_names import dataclass_fields, init_arguments


def test_the_trainer_arguments_are_those_inspect_finds() -> None:
    assert init_arguments("lightning.pytorch.trainer.trainer", "Trainer") == (
        set(inspect.signature(L.Trainer).parameters) - {"self"})


def test_the_augmentation_fields_are_the_dataclass_fields() -> None:
    fields = dataclass_fields("open_clip.transform", "AugmentationCfg")
    assert fields == {f.name for f in dataclasses.fields(AugmentationCfg)} == AUGMENTATION_FIELDS
