"""What a training run shows while it trains: a bar that counts to the run's end, and a model summary without a
FLOPs column that could only say 0.

Lightning's bar counts the batches of one epoch, so a `trainer.max_steps` run of 6 steps over a 375-batch epoch
showed `Epoch 0/0 6/375` and an ETA for an epoch it never finishes. RunProgressBar counts optimizer steps to
max_steps (a run by epochs keeps Lightning's bar), so its ETA is the run's. Lightning's summary counts FLOPs only
by running `example_input_array`, which our modules do not set (a forward of a real batch at start would cost a
step); the column and the total are left out then (the training FLOPs per sample go to TensorBoard through
cir.throughput).
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelSummary, RichProgressBar
from lightning.pytorch.utilities.model_summary.model_summary import _format_summary_table

log = logging.getLogger("lightning.pytorch.callbacks.model_summary")


class RunProgressBar(RichProgressBar):
    """Counts optimizer steps from the run's start to trainer.max_steps (resumed runs start at their step)."""

    def _by_steps(self) -> bool:
        return self.trainer.max_steps > 0

    @property
    def total_train_batches(self) -> int | float:
        return self.trainer.max_steps if self._by_steps() else super().total_train_batches

    def _get_train_description(self, current_epoch: int) -> str:
        if self._by_steps():
            return f"{'Step':{len(self.validation_description)}}"
        return super()._get_train_description(current_epoch)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._by_steps() or self.train_progress_bar_id is None:
            super().on_train_epoch_start(trainer, pl_module)
        if self._by_steps() and self.progress is not None and self.train_progress_bar_id is not None:
            self._update(self.train_progress_bar_id, trainer.global_step)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not self._by_steps():
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
            return
        if not self.is_disabled and self.train_progress_bar_id is None:
            self._initialize_train_progress_bar_id()
        self._update(self.train_progress_bar_id, trainer.global_step)
        self._update_metrics(trainer, pl_module)
        self.refresh()


class StepModelSummary(ModelSummary):
    """Lightning's table, without the FLOPs column and total when nothing was counted."""

    @staticmethod
    def summarize(summary_data: list[tuple[str, list[str]]], total_parameters: int, trainable_parameters: int,
                  model_size: float, total_training_modes: dict[str, int], total_flops: int, **kwargs: Any) -> None:
        if total_flops:
            ModelSummary.summarize(summary_data, total_parameters, trainable_parameters, model_size,
                                   total_training_modes, total_flops, **kwargs)
            return
        columns = [column for column in summary_data if column[0] != "FLOPs"]
        table = _format_summary_table(total_parameters, trainable_parameters, model_size, total_training_modes, 0,
                                      *columns)
        log.info("\n" + table.rsplit("\n", 1)[0])  # the last line is "0 Total Flops"


def display_callbacks(trainer_kwargs: dict[str, Any]) -> list[L.Callback]:
    """The bar and the summary, unless the config switched them off (Lightning refuses a bar callback then)."""
    shown: list[L.Callback] = []
    if trainer_kwargs.get("enable_progress_bar", True) is not False:
        shown.append(RunProgressBar())
    if trainer_kwargs.get("enable_model_summary", True) is not False:
        shown.append(StepModelSummary())
    return shown
