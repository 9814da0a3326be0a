"""Training on uint8 batches (normalised on the device) follows the loss curve of open_clip's float transform."""

from __future__ import annotations

import io
from pathlib import Path

import lightning as L
import numpy as np
import torch
import webdataset as wds
from PIL import Image

import cir.tasks.base
from cir import training
from cir.config import load_config
from cir.data.transforms import Uint8RandomResizedCrop
from cir.schema import FitConfig

STEPS = 6
TOLERANCE = 2e-4  # measured: the two curves agree to 4e-5 (pixels differ by at most 2 grey levels, rarely)
TINY = ["model.name=cir-tiny", "model.pretrained=none", "data.num_workers=0", "data.batch_size=16", "data.shuffle_buffer=0",
        "trainer.accelerator=cpu", "trainer.devices=1", "optim.lr=3e-3", "optim.warmup_steps=2", "model.lora.dropout=0.0",
        f"trainer.max_steps={STEPS}"]


def photo_shards(root: Path, count: int = 48) -> str:
    """JPEG photos-like images (smooth colour fields with noise) of 40-52 px, larger than cir-tiny's 32 px input."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    with wds.TarWriter(str(root / "000000.tar")) as sink:
        for i in range(count):
            coarse = Image.fromarray(rng.uniform(0, 255, (4, 4, 3)).astype(np.uint8))
            size = (40 + i % 13, 52 - i % 11)
            pixels = np.asarray(coarse.resize(size, Image.Resampling.BICUBIC), dtype=np.float64) + rng.normal(0, 10, (size[1], size[0], 3))
            buffer = io.BytesIO()
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=95)
            sink.write({"__key__": f"{i:06d}", "jpg": buffer.getvalue(), "txt": f"photo number {i % 7}"})
    return str(root / "000000.tar")


class Losses(L.Callback):
    def __init__(self) -> None:
        self.values: list[float] = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.values.append(float(outputs["loss"]))


def loss_curve(shards: str, uint8: bool, monkeypatch) -> list[float]:
    if not uint8:
        monkeypatch.setattr(cir.tasks.base, "uint8_version", lambda transform: None)
    cfg = load_config(FitConfig, None, [*TINY, f"data.train_shards={shards}"])
    L.seed_everything(0, verbose=False)
    module, data = training.build_task(cfg)
    assert isinstance(data.image_transform, Uint8RandomResizedCrop) == uint8
    losses = Losses()
    trainer = L.Trainer(max_steps=STEPS, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[losses])
    trainer.fit(module, datamodule=data)
    monkeypatch.undo()
    return losses.values


def test_uint8_batches_train_like_open_clips_float_transform(tmp_path, monkeypatch):
    shards = photo_shards(tmp_path / "shards")
    old = loss_curve(shards, uint8=False, monkeypatch=monkeypatch)
    new = loss_curve(shards, uint8=True, monkeypatch=monkeypatch)
    assert len(old) == len(new) == STEPS
    assert max(old) - min(old) > 100 * TOLERANCE  # steps see different batches: agreeing to TOLERANCE is no accident
    assert np.allclose(new, old, atol=TOLERANCE, rtol=0), (old, new)


def test_the_hook_turns_uint8_images_into_open_clips_floats_and_leaves_the_rest(tmp_path):
    from cir.data.samples import ImageTextBatch
    from cir.data.transforms import uint8_version

    cfg = load_config(FitConfig, None, [*TINY, f"data.train_shards={photo_shards(tmp_path / 'shards', count=4)}"])
    module, data = training.build_task(cfg)
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    batch = ImageTextBatch(images, torch.randint(0, 100, (2, 77)), torch.zeros(6, dtype=torch.long))
    out = data.on_after_batch_transfer(batch, 0)
    assert isinstance(out, ImageTextBatch) and out.texts is batch.texts and out.skipped is batch.skipped
    assert torch.equal(out.images, uint8_version(module.backbone.preprocess_train).to_float(images))
    assert out.images.dtype == torch.float32 and out.images.min() < -1 and out.images.max() > 1
    floats = torch.rand(2, 3, 32, 32)
    assert data.on_after_batch_transfer([floats], 0)[0] is floats
