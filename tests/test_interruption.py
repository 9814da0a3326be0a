"""Interrupting TAT: SIGTERM / SIGINT / SLURM's SIGUSR1 save a checkpoint at a step boundary and the same command
resumes; a non-finite loss stops the run and leaves the last good checkpoint; resume picks the newest good state
and a failed checkpoint write leaves the previous ones whole."""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import pytest
import torch

from cir import fit, training
from cir.config import ConfigError, run_cli
from cir.preemption import slurm_job_id
from cir.resume import newest_checkpoint
from cir.tasks.base import NonFiniteLossError, warmup_cosine
from cir.tasks.tat import TextAnchoredTuning

DEFAULTS = str(Path(__file__).resolve().parent / "configs" / "defaults.yaml")  # the config a command needs first

MAX_STEPS, EVERY, BATCH, LR, WARMUP = 8, 2, 8, 3e-3, 2
ARGS = ["model.name=cir-tiny", "model.pretrained=none", "model.lora.dropout=0.0", "data.num_workers=0",
        f"data.batch_size={BATCH}", "data.resampled=true", "data.samples_per_epoch=100000", "trainer.accelerator=cpu",
        "trainer.devices=1", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
        f"trainer.max_steps={MAX_STEPS}", f"checkpoint.every_n_steps={EVERY}", f"optim.lr={LR}",
        f"optim.warmup_steps={WARMUP}"]


def fit_args(out: Path, shards: str) -> list[str]:
    return [*ARGS, f"data.train_shards={shards}", f"output_dir={out}"]


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def assert_finished_as_one_uninterrupted_run(out: Path) -> None:
    """Step count, optimizer, LR schedule and loop position all say MAX_STEPS steps, none repeated or lost."""
    final = load(out / "checkpoints" / "last.ckpt")
    assert final["global_step"] == MAX_STEPS
    adam_steps = {float(s["step"]) for s in final["optimizer_states"][0]["state"].values()}
    assert adam_steps == {MAX_STEPS}  # the optimizer state came back: its step counters span both runs
    scheduler = final["lr_schedulers"][0]
    assert scheduler["last_epoch"] == MAX_STEPS
    assert scheduler["_last_lr"][0] == pytest.approx(LR * warmup_cosine(MAX_STEPS, WARMUP, MAX_STEPS))
    assert final["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]["ready"] == MAX_STEPS
    record = json.loads((out / "run.json").read_text())
    assert record["global_step"] == MAX_STEPS and record["samples_seen"] == MAX_STEPS * BATCH
    assert (out / "export.pt").is_file()


def assert_stopped_without_finishing(out: Path, step: int) -> None:
    assert load(out / "checkpoints" / "last.ckpt")["global_step"] == step
    assert not (out / "run.json").exists() and not (out / "export.pt").exists()


def wait_for_file(path: Path, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.is_file():
        if proc.poll() is not None:
            pytest.fail(f"the run exited ({proc.returncode}) before {path} appeared")
        if time.monotonic() > deadline:
            pytest.fail(f"{path} did not appear within {timeout:.0f} s")
        time.sleep(0.05)


@pytest.mark.slow
def test_sigterm_to_a_real_run_saves_then_the_same_command_resumes_to_max_steps(image_text_shards, tmp_path, caplog):
    out = tmp_path / "run"
    # with DataLoader workers, which must not outlive or hang the interrupted run
    cmd = [sys.executable, "-m", "cir.fit", DEFAULTS, *fit_args(out, image_text_shards), "data.num_workers=2"]
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for_file(out / "checkpoints" / "last.ckpt", proc)
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    first = (tmp_path / "first.log").read_text()
    assert code == 128 + signal.SIGTERM, first[-3000:]
    saved = re.search(r"saved (\S+) at global step (\d+)", first)
    assert saved, first[-3000:]
    step = int(saved.group(2))
    assert EVERY < step < MAX_STEPS  # after the first periodic checkpoint, before the end
    assert Path(saved.group(1)) == out / "checkpoints" / "last.ckpt"
    assert_stopped_without_finishing(out, step)

    caplog.set_level(logging.INFO, logger="cir.preemption")
    run_cli(fit.main, cmd[3:])  # the same command again, in this process (it has paid for the imports already)
    assert f"from global step {step};" in caplog.text
    assert_finished_as_one_uninterrupted_run(out)


class SignalAt(L.Callback):
    """Sends `signum` to this process `times` times as the first batch at global step `step` begins."""

    def __init__(self, step: int, signum: int, times: int = 1) -> None:
        self.step, self.signum, self.times = step, signum, times
        self.sent = False

    def on_train_batch_start(self, trainer, *args) -> None:
        if trainer.global_step == self.step and not self.sent:
            self.sent = True
            for _ in range(self.times):
                os.kill(os.getpid(), self.signum)


def run_with(monkeypatch, out: Path, shards: str, *extra: L.Callback, overrides: tuple[str, ...] = ()) -> Path:
    original = training.callbacks
    monkeypatch.setattr(training, "callbacks", lambda cfg, o: [*original(cfg, o), *extra])
    try:
        return fit.main(None, [*fit_args(out, shards), *overrides])
    finally:
        monkeypatch.setattr(training, "callbacks", original)


def test_sigint_finishes_the_step_saves_and_exits_130_then_resumes(image_text_shards, tmp_path, monkeypatch):
    out = tmp_path / "run"
    handler_before = signal.getsignal(signal.SIGINT)
    with pytest.raises(SystemExit) as stopped:
        run_with(monkeypatch, out, image_text_shards, SignalAt(3, signal.SIGINT))
    assert stopped.value.code == 128 + signal.SIGINT
    assert_stopped_without_finishing(out, 4)
    assert signal.getsignal(signal.SIGINT) is handler_before  # Lightning put the previous handler back
    run_with(monkeypatch, out, image_text_shards)
    assert_finished_as_one_uninterrupted_run(out)


def test_a_run_stopped_before_its_first_periodic_checkpoint_resumes_into_the_same_last_ckpt(
        image_text_shards, tmp_path, monkeypatch):
    """The signal's last.ckpt is not ModelCheckpoint's own, so its version counter would end the resumed run in a
    second `last-v1.ckpt` beside it; one last.ckpt is what a reader (and the resume) expects."""
    out = tmp_path / "run"
    with pytest.raises(SystemExit):
        run_with(monkeypatch, out, image_text_shards, SignalAt(0, signal.SIGINT))
    assert_stopped_without_finishing(out, 1)
    run_with(monkeypatch, out, image_text_shards)
    assert_finished_as_one_uninterrupted_run(out)
    assert not list((out / "checkpoints").glob("last-v*.ckpt"))


def test_a_signal_during_gradient_accumulation_stops_after_the_optimizer_step(image_text_shards, tmp_path, monkeypatch):
    out = tmp_path / "run"
    with pytest.raises(SystemExit):
        run_with(monkeypatch, out, image_text_shards, SignalAt(2, signal.SIGINT),
                 overrides=("trainer.accumulate_grad_batches=2",))
    saved = load(out / "checkpoints" / "last.ckpt")
    assert saved["global_step"] == 3  # the signal came with the first of step 3's two batches
    assert saved["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]["ready"] == 2 * 3


def test_a_second_sigint_aborts_at_once_without_a_checkpoint(image_text_shards, tmp_path, monkeypatch):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as stopped:
        run_with(monkeypatch, out, image_text_shards, SignalAt(3, signal.SIGINT, times=2))
    assert stopped.value.code == 1  # Lightning's KeyboardInterrupt exit
    assert_stopped_without_finishing(out, 2)  # the periodic checkpoint; nothing saved mid-step


SLURM_ENV = {"SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1", "SLURM_JOB_ID": "4242", "SLURM_PROCID": "0",
             "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_JOB_NAME": "tat", "SLURM_NODELIST": "node1",
             "SLURM_NNODES": "1"}


def test_usr1_under_slurm_saves_requeues_through_scontrol_and_resumes(image_text_shards, tmp_path, monkeypatch):
    bin_dir, calls = tmp_path / "bin", tmp_path / "scontrol.calls"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    scontrol.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    for key, value in SLURM_ENV.items():
        monkeypatch.setenv(key, value)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as stopped:
        run_with(monkeypatch, out, image_text_shards, SignalAt(3, signal.SIGUSR1))
    assert stopped.value.code == 128 + signal.SIGUSR1
    assert calls.read_text().splitlines() == ["requeue 4242"]
    assert_stopped_without_finishing(out, 4)
    assert not list(out.glob("hpc_ckpt_*.ckpt"))  # Lightning's in-handler save did not run
    run_with(monkeypatch, out, image_text_shards)  # what the requeued job does
    assert_finished_as_one_uninterrupted_run(out)
    assert calls.read_text().splitlines() == ["requeue 4242"]


def test_slurm_job_id_names_the_array_task(monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "100")
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    assert slurm_job_id() == "100"
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "90")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "7")
    assert slurm_job_id() == "90_7"


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(image_text_shards, tmp_path, monkeypatch):
    bad_step = 3
    features = TextAnchoredTuning.features

    def nan_at_bad_step(self, images, texts):
        image, text = features(self, images, texts)
        return (image * float("nan"), text) if self.global_step == bad_step else (image, text)

    monkeypatch.setattr(TextAnchoredTuning, "features", nan_at_bad_step)
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match=f"global step {bad_step}:"):
        fit.main(None, fit_args(out, image_text_shards))
    last, periodic = load(out / "checkpoints" / "last.ckpt"), load(out / "checkpoints" / "step0000002.ckpt")
    assert last["global_step"] == periodic["global_step"] == 2
    assert last["state_dict"].keys() == periodic["state_dict"].keys()
    for key, value in last["state_dict"].items():
        assert torch.equal(value, periodic["state_dict"][key]) and (not value.is_floating_point() or value.isfinite().all())
    assert not (out / "run.json").exists() and not (out / "export.pt").exists()


def save_at_step(path: Path, step: int, mtime_s: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"global_step": step, "cir_run": {}}, path)
    os.utime(path, ns=(mtime_s * 10**9, mtime_s * 10**9))
    return path


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_resume_picks_the_newest_good_checkpoint_by_its_global_step(tmp_path, caplog):
    out = tmp_path / "run"
    assert newest_checkpoint(out) is None
    ckpts = out / "checkpoints"
    save_at_step(ckpts / "step0000002.ckpt", 2, 1000)
    save_at_step(ckpts / "step0000004.ckpt", 4, 2000)
    last = save_at_step(ckpts / "last.ckpt", 2, 3000)  # the newest file, an older state (seen after kill -9)
    assert newest_checkpoint(out).path == ckpts / "step0000004.ckpt"
    save_at_step(last, 4, 3000)
    assert newest_checkpoint(out).path == last  # the same step: the newest file
    hpc = save_at_step(out / "hpc_ckpt_1.ckpt", 5, 500)  # Lightning's SLURM checkpoint, further on
    assert newest_checkpoint(out).path == hpc and newest_checkpoint(out).global_step == 5
    truncate(hpc)
    with caplog.at_level(logging.WARNING, logger="cir.resume"):
        assert newest_checkpoint(out).path == last
    assert f"checkpoint {hpc} is unreadable" in caplog.text


def test_only_damaged_checkpoints_stop_the_rerun_instead_of_starting_afresh_over_them(tmp_path):
    last = save_at_step(tmp_path / "checkpoints" / "last.ckpt", 4, 1000)
    truncate(last)
    with pytest.raises(ConfigError, match=f"no readable checkpoint .*{last}"):
        newest_checkpoint(tmp_path)


def test_a_truncated_last_ckpt_is_skipped_with_a_warning_and_the_run_resumes_from_the_newest_good_step(
        image_text_shards, tmp_path, monkeypatch, caplog):
    out = tmp_path / "run"
    with pytest.raises(SystemExit):
        run_with(monkeypatch, out, image_text_shards, SignalAt(5, signal.SIGINT))
    last = out / "checkpoints" / "last.ckpt"
    assert load(last)["global_step"] == 6
    truncate(last)  # what a full disk left behind before checkpoints were written atomically
    caplog.set_level(logging.INFO)
    run_with(monkeypatch, out, image_text_shards)
    assert f"checkpoint {last} is unreadable" in caplog.text
    assert f"resuming from {out / 'checkpoints' / 'step0000004.ckpt'} (global step 4)" in caplog.text
    assert_finished_as_one_uninterrupted_run(out)


def test_a_checkpoint_write_that_fails_leaves_the_previous_checkpoints_whole_and_no_temp_file(
        image_text_shards, tmp_path, monkeypatch):
    system_tmp = tmp_path / "system-tmp"
    system_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))
    save = torch.save

    def disk_full_at_step_4(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("global_step") == 4:
            if isinstance(f, (str, os.PathLike)):
                Path(f).write_bytes(b"half a checkpoint")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_full_at_step_4)
    out = tmp_path / "run"
    with pytest.raises(OSError, match="No space left on device") as failed:
        fit.main(None, fit_args(out, image_text_shards))
    assert failed.value.filename == str(out / "checkpoints" / "step0000004.ckpt")
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["last.ckpt", "step0000002.ckpt"]
    assert load(out / "checkpoints" / "last.ckpt")["global_step"] == 2
    assert not list(system_tmp.iterdir())
