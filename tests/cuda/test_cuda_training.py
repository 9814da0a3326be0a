"""TAT on the device: bf16-mixed steps train only the image tower's LoRA; a device checkpoint resumes on CPU."""

from __future__ import annotations

import math

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader


class Recorder(L.Callback):
    """Per step: the loss, the gradients about to be applied, and the dtype the image tower computed in."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.grads: list[dict[str, torch.Tensor]] = []
        self.image_dtypes: set[torch.dtype] = set()

    def on_fit_start(self, trainer, module) -> None:
        module.backbone.model.visual.register_forward_hook(lambda _m, _i, out: self.image_dtypes.add(out.dtype))

    def on_before_optimizer_step(self, trainer, module, optimizer) -> None:
        self.grads.append({n: p.grad.detach().float().cpu() for n, p in module.named_parameters() if p.grad is not None})

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


def trainer(target, tmp_path, steps: int, *callbacks: L.Callback, accelerator: str | None = None) -> L.Trainer:
    return L.Trainer(accelerator=accelerator or target.accelerator, devices=1, precision="bf16-mixed", max_steps=steps,
                     callbacks=list(callbacks), logger=False, enable_progress_bar=False, enable_model_summary=False,
                     default_root_dir=str(tmp_path), limit_val_batches=0, enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks))


def test_bf16_steps_are_finite_and_train_only_the_image_lora(target, tat, tat_batches, tmp_path) -> None:
    module = tat(target, "model.lora.dropout=0.0")
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("backbone.model.visual.") and ".lora_" in n for n in trainable)
    recorder = Recorder()
    trainer(target, tmp_path, 3, recorder).fit(module, DataLoader(tat_batches(module, target, 3), batch_size=None))
    assert module.device.type == target.device and recorder.image_dtypes == {torch.bfloat16}
    assert len(recorder.losses) == 3 and all(math.isfinite(x) for x in recorder.losses), recorder.losses
    assert [set(g) for g in recorder.grads] == [trainable] * 3
    assert all(torch.isfinite(g).all() for step in recorder.grads for g in step.values())
    last = recorder.grads[-1]  # after one step LoRA B is no longer zero, so A gets gradients too
    assert all(g.abs().sum() > 0 for g in last.values()), [n for n, g in last.items() if not g.abs().sum()]


def test_a_device_checkpoint_resumes_on_cpu(first, tat, tat_batches, tmp_path) -> None:
    module = tat(first)
    batches = tat_batches(module, first, 2)
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_last=True)
    trainer(first, tmp_path, 2, checkpoints).fit(module, DataLoader(batches, batch_size=None))
    saved = {k: v.detach().cpu() for k, v in module.state_dict().items()}

    class Check(L.Callback):
        def on_train_start(self, trainer, resumed) -> None:
            assert trainer.global_step == 2 and resumed.device.type == "cpu"
            state = resumed.state_dict()
            assert state.keys() == saved.keys() and all(torch.equal(state[k], saved[k]) for k in saved)

    resumed = tat(first)
    run = trainer(first, tmp_path, 3, Check(), accelerator="cpu")
    run.fit(resumed, DataLoader(batches, batch_size=None), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert run.global_step == 3 and int(resumed.samples_seen) == 3 * first.batch_size
