"""Zero-shot evaluation loaders for a training DataModule: periodic validation during fit."""

from __future__ import annotations

from torch.utils.data import DataLoader

from cir.evaluation import BenchmarkEvaluator
from cir.models import Backbone


class ZeroShotValidationData:
    """Mixin for a LightningDataModule: its validation loaders are the evaluator's encoding loaders.

    Lightning reads validation loaders from the DataModule once one is given, so
    the DataModule (which owns all data) hands them out; the task only encodes.
    """

    evaluator: BenchmarkEvaluator | None = None
    eval_backbone: Backbone | None = None

    def attach_evaluation(self, evaluator: BenchmarkEvaluator | None, backbone: Backbone) -> None:
        self.evaluator = evaluator
        self.eval_backbone = backbone

    def val_dataloader(self) -> list[DataLoader]:
        return self.evaluator.dataloaders(self.eval_backbone) if self.evaluator is not None else []
