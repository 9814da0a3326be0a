"""Validation loaders for a training DataModule: periodic zero-shot evaluation during fit."""

from __future__ import annotations

from collections.abc import Callable

from torch.utils.data import DataLoader


class ZeroShotValidationData:
    """Mixin for a LightningDataModule: its validation loaders are the ones a given function makes.

    Lightning reads validation loaders from the DataModule once one is given, so
    the DataModule (which owns all data) hands them out; the task only encodes.
    The function (the evaluator's `dataloaders`, bound to the backbone) is called
    at every validation, so it can re-check its cache; data/ needs nothing from evaluation/.
    """

    make_val_loaders: Callable[[], list[DataLoader]] | None = None

    def attach_validation(self, make_loaders: Callable[[], list[DataLoader]] | None) -> None:
        self.make_val_loaders = make_loaders

    def val_dataloader(self) -> list[DataLoader]:
        return self.make_val_loaders() if self.make_val_loaders is not None else []
