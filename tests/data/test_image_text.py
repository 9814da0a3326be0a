"""The shard DataModule under Lightning: a run resumed from a checkpoint trains on the batches the whole run would have."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from test_shards import TRANSFORM, make_shards, tokenize

from cir.data.image_text import ImageTextDataModule

BATCHES_PER_EPOCH = 6
MAX_STEPS = 15


class BatchRecorder(L.LightningModule):
    """Trains a scalar on the images and records which samples (their indices) each step saw."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.seen: list[list[int]] = []

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        self.seen.append(batch.texts[:, 0].tolist())
        return self.weight * batch.images.mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def run(root, urls, num_workers: int, mode: str, ckpt_path: str | None = None) -> list[list[int]]:
    data = ImageTextDataModule(
        urls, TRANSFORM, tokenize, batch_size=4, num_workers=num_workers, resampled=mode == "resampled",
        exact_epoch=mode == "exact", samples_per_epoch=4 * BATCHES_PER_EPOCH if mode == "resampled" else None,
        shuffle_buffer=8, seed=1,
    )
    module = BatchRecorder()
    trainer = L.Trainer(
        default_root_dir=root, max_steps=MAX_STEPS, logger=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[ModelCheckpoint(dirpath=root / "ckpt", every_n_train_steps=1, save_top_k=-1, filename="{step}")],
    )
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    assert trainer.global_step == MAX_STEPS
    return module.seen


@pytest.mark.parametrize(("num_workers", "mode"), [(0, "resampled"), (2, "resampled"), (2, "plain"), (2, "exact")])
def test_resumed_run_sees_the_batches_of_the_uninterrupted_run(tmp_path, num_workers, mode):
    # 4 shards x 6 samples: in a plain or exact epoch, each of 2 workers reads 12 samples, 3 batches an epoch
    (tmp_path / "shards").mkdir()
    urls = make_shards(tmp_path / "shards", num_shards=4, per_shard=6)
    whole = run(tmp_path / "whole", urls, num_workers, mode)
    assert whole[:BATCHES_PER_EPOCH] != whole[BATCHES_PER_EPOCH:2 * BATCHES_PER_EPOCH]  # epochs differ: a replay would show
    for step in (4, BATCHES_PER_EPOCH, 9):  # mid first epoch, at its end, mid second epoch
        resumed = run(tmp_path / f"from{step}", urls, num_workers, mode, str(tmp_path / "whole" / "ckpt" / f"step={step}.ckpt"))
        assert resumed == whole[step:], step
