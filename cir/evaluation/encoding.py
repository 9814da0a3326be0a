"""Zero-shot encoding of benchmark splits as a Lightning validation loop, on any number of devices."""

from __future__ import annotations

import lightning as L
import torch

from cir.evaluation.evaluator import BenchmarkEvaluator
from cir.models import Backbone


class EvaluatorEncoding:
    """Validation batches are the evaluator's encoding loaders: each step encodes one batch of images or captions.

    Mixed into every LightningModule that evaluates zero-shot (this module, and the training tasks' periodic
    validation); the module has `backbone` and `evaluator`.
    """

    backbone: Backbone
    evaluator: BenchmarkEvaluator | None

    @torch.no_grad()
    def validation_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.evaluator.encode_batch(self.backbone, batch, dataloader_idx)


class ZeroShotEvaluation(EvaluatorEncoding, L.LightningModule):
    """Encodes the evaluator's uncached splits; afterwards every rank holds the full feature tables."""

    def __init__(self, backbone: Backbone, evaluator: BenchmarkEvaluator) -> None:
        super().__init__()
        self.backbone = backbone
        self.evaluator = evaluator

    def on_validation_epoch_end(self) -> None:
        self.evaluator.finish_encoding(self.device)
