"""A run resumed anywhere ends with the uninterrupted run's weights, bitwise on CPU, under the default augmentation
(random resized crop) and the default LoRA dropout: the data path draws every random number from (seed, epoch,
sample) and the checkpoint carries each rank's own random state. Both training paths: TAT on image-text shards and
supervised fine-tuning on triplets, with 0 and 2 DataLoader workers."""

from __future__ import annotations

import signal

import pytest
import torch
from test_interruption import SignalAt, load, run_with

from cir import fit, training
from cir.data.synth import generate
from cir.resume import newest_checkpoint

STOP = 3
# Today's defaults for what draws random numbers: model.aug_cfg (RandomResizedCrop scale 0.9-1) and
# model.lora.dropout=0.1; test_interruption's ARGS turn dropout off, so put the default back.
DEFAULT_RANDOMNESS = ("model.lora.dropout=0.1",)


def final_state(out) -> dict:
    """The checkpoint a rerun would resume from (an interrupted run's last.ckpt is its own file, so under the
    default checkpoint.every_n_steps the finished run's last checkpoint is last-v1.ckpt)."""
    return load(newest_checkpoint(out).path)


def final_weights(out) -> dict[str, torch.Tensor]:
    return final_state(out)["state_dict"]


def assert_same_weights(whole, resumed) -> None:
    expected, got = final_weights(whole), final_weights(resumed)
    assert expected.keys() == got.keys()
    differing = {k: (expected[k] - got[k]).abs().max().item() for k in expected if not torch.equal(expected[k], got[k])}
    assert not differing, differing


@pytest.mark.parametrize("workers", [0, 2])
def test_a_run_resumed_mid_epoch_ends_with_the_uninterrupted_weights_bitwise(image_text_shards, tmp_path, monkeypatch,
                                                                               workers):
    overrides = (*DEFAULT_RANDOMNESS, f"data.num_workers={workers}")
    run_with(monkeypatch, tmp_path / "whole", image_text_shards, overrides=overrides)
    with pytest.raises(SystemExit):
        run_with(monkeypatch, tmp_path / "resumed", image_text_shards, SignalAt(STOP, signal.SIGINT), overrides=overrides)
    assert load(tmp_path / "resumed" / "checkpoints" / "last.ckpt")["global_step"] == STOP + 1
    run_with(monkeypatch, tmp_path / "resumed", image_text_shards, overrides=overrides)
    assert_same_weights(tmp_path / "whole", tmp_path / "resumed")


# 48 training triplets in batches of 8: 6 steps an epoch. Stopped at step 3, the resumed run finishes epoch 0 from
# its 5th batch, then trains 3 batches of epoch 1.
TRIPLET_BATCH, SUPERVISED_STEPS = 8, 9


@pytest.fixture(scope="module")
def triplet_root(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    generate(out, 0, progress=False, image_size=16, pretrain_samples=8, tune_samples=8, train_queries=48,
             val_queries=8, test_queries=8, shard_size=64)
    return out / "cirr"


def supervised(monkeypatch, out, root, workers: int, *extra) -> None:
    """A supervised fine-tuning run with the default augmentation and LoRA dropout, no validation."""
    original = training.callbacks
    monkeypatch.setattr(training, "callbacks", lambda cfg, o: [*original(cfg, o), *extra])
    try:
        fit.main(None, ["task=supervised", "model.name=cir-tiny", "model.pretrained=none", f"supervised.train.root={root}",
                        f"data.batch_size={TRIPLET_BATCH}", f"data.num_workers={workers}", "trainer.accelerator=cpu",
                        "trainer.devices=1", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
                        "trainer.max_epochs=-1", f"trainer.max_steps={SUPERVISED_STEPS}", "eval.benchmarks=[]",
                        f"output_dir={out}"])
    finally:
        monkeypatch.setattr(training, "callbacks", original)


@pytest.mark.parametrize("workers", [0, 2])
def test_supervised_fine_tuning_resumed_mid_epoch_ends_with_the_uninterrupted_weights_bitwise(triplet_root, tmp_path,
                                                                                              monkeypatch, workers):
    supervised(monkeypatch, tmp_path / "whole", triplet_root, workers)
    with pytest.raises(SystemExit):
        supervised(monkeypatch, tmp_path / "resumed", triplet_root, workers, SignalAt(STOP, signal.SIGINT))
    stopped = load(tmp_path / "resumed" / "checkpoints" / "last.ckpt")
    assert stopped["global_step"] == STOP + 1 and stopped["TripletDataModule"] == {"epoch": 0, "batches": STOP + 1}
    supervised(monkeypatch, tmp_path / "resumed", triplet_root, workers)
    assert final_state(tmp_path / "resumed")["global_step"] == SUPERVISED_STEPS
    assert_same_weights(tmp_path / "whole", tmp_path / "resumed")
