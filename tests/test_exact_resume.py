"""A run resumed anywhere ends with the uninterrupted run's weights, bitwise on CPU, under the default augmentation
(random resized crop) and the default LoRA dropout: the data path draws every random number from (seed, epoch,
sample) and the checkpoint carries each rank's own random state."""

from __future__ import annotations

import signal

import pytest
import torch
from test_interruption import SignalAt, load, run_with

STOP = 3
# Today's defaults for what draws random numbers: model.aug_cfg (RandomResizedCrop scale 0.9-1) and
# model.lora.dropout=0.1; test_interruption's ARGS turn dropout off, so put the default back.
DEFAULT_RANDOMNESS = ("model.lora.dropout=0.1",)


def final_weights(out) -> dict[str, torch.Tensor]:
    return load(out / "checkpoints" / "last.ckpt")["state_dict"]


@pytest.mark.parametrize("workers", [0, 2])
def test_a_run_resumed_mid_epoch_ends_with_the_uninterrupted_weights_bitwise(image_text_shards, tmp_path, monkeypatch,
                                                                               workers):
    overrides = (*DEFAULT_RANDOMNESS, f"data.num_workers={workers}")
    run_with(monkeypatch, tmp_path / "whole", image_text_shards, overrides=overrides)
    with pytest.raises(SystemExit):
        run_with(monkeypatch, tmp_path / "resumed", image_text_shards, SignalAt(STOP, signal.SIGINT), overrides=overrides)
    assert load(tmp_path / "resumed" / "checkpoints" / "last.ckpt")["global_step"] == STOP + 1
    run_with(monkeypatch, tmp_path / "resumed", image_text_shards, overrides=overrides)
    expected, got = final_weights(tmp_path / "whole"), final_weights(tmp_path / "resumed")
    assert expected.keys() == got.keys()
    differing = {k: (expected[k] - got[k]).abs().max().item() for k in expected if not torch.equal(expected[k], got[k])}
    assert not differing, differing
