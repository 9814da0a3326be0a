"""The DataModule that owns TAT's training data: image-text WebDataset shards."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import torch

from cir.config import ConfigError
from cir.data.shards import image_text_loader, image_text_pipeline
from cir.data.transforms import NormaliseOnDevice
from cir.data.validation import ZeroShotValidationData


class ImageTextDataModule(NormaliseOnDevice, ZeroShotValidationData, L.LightningDataModule):
    """Builds the shard loader once the process group exists, so shards split by the real rank."""

    def __init__(
        self,
        train_shards: str | Sequence[str],
        image_transform: Callable,
        tokenize: Callable[[list[str]], torch.Tensor] | None,
        batch_size: int,
        num_workers: int,
        **pipeline_options: Any,
    ) -> None:
        """pipeline_options: image_text_pipeline's keywords for how an epoch is drawn (resampled, exact_epoch,
        samples_per_epoch, shuffle_buffer, seed, text_embedding_key), handed on as given."""
        super().__init__()
        self.train_shards = train_shards
        self.image_transform = image_transform
        self.tokenize = tokenize
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pipeline_options = pipeline_options

    def train_dataloader(self):
        world_size = self.trainer.world_size if self.trainer is not None else 1
        options = self.pipeline_options
        if world_size > 1 and not (options.get("resampled") or options.get("exact_epoch")):
            # Shards split by rank give ranks different batch counts, and DDP would hang at the first missing step.
            raise ConfigError(
                f"config key `data.exact_epoch`: {world_size} processes need data.exact_epoch=true (one pass, ranks in step) "
                "or data.resampled=true with data.samples_per_epoch, so every rank makes the same number of batches"
            )
        try:
            pipeline = image_text_pipeline(
                self.train_shards,
                image_transform=self.image_transform,
                tokenize=None if options.get("text_embedding_key") else self.tokenize,
                batch_size=self.batch_size,
                **options,
            )
        except ValueError as err:  # no usable shard counts: a data problem the user fixes in the config
            raise ConfigError(f"config key `data.train_shards`: {err}") from None
        pin = self.trainer is not None and self.trainer.strategy.root_device.type == "cuda"
        loader = image_text_loader(pipeline, self.num_workers, pin_memory=pin)
        if self.trainer is not None:
            loader.position = self.training_position
        return loader

    def training_position(self) -> tuple[int, int]:
        """(epoch, batches of it trained): where a run resumed from a checkpoint saved now picks up the data.

        An epoch Lightning has counted as finished (one that max_steps stopped too) is over: a resumed run
        starts the next one at its first batch, as Lightning's loops do.
        """
        epochs = self.trainer.fit_loop.epoch_progress.current
        progress = self.trainer.fit_loop.epoch_loop.batch_progress
        if epochs.completed == epochs.started:
            return self.trainer.current_epoch, 0
        if progress.is_last_batch:
            return self.trainer.current_epoch + 1, 0
        return self.trainer.current_epoch, progress.current.processed
