"""cir.training.train end to end on the tiny model: what a finished run reports."""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import warnings

import pytest
import torch.distributed as dist
import webdataset as wds
from lightning.pytorch.callbacks import ModelCheckpoint
from test_interruption import ARGS, BATCH, DEFAULTS, SignalAt, run_with

from cir import completion, fit
from cir.data.shards import SKIP_REASONS
from cir.resume import RunCheckpoints


def test_a_finished_run_reports_steps_samples_and_skips_per_reason_in_one_line_and_in_run_json(tmp_path, caplog, shard_writer):
    shards = shard_writer(tmp_path / "shards", num_shards=2, per_shard=8)
    with wds.TarWriter(str(tmp_path / "shards" / "train-000002.tar")) as sink:
        sink.write({"__key__": "bad0", "png": b"not an image", "txt": "a red square"})
        sink.write({"__key__": "bad1", "png": b"", "txt": "a red square"})
    out = tmp_path / "run"
    caplog.set_level(logging.INFO, logger="cir.training")
    fit.main(None, [*ARGS, f"data.train_shards={shards.replace('000001', '000002')}", f"output_dir={out}",
                    "data.resampled=false", "data.samples_per_epoch=null", "trainer.max_steps=-1", "trainer.max_epochs=1"])
    record = json.loads((out / "run.json").read_text())
    assert record["global_step"] == 2 and record["samples_seen"] == 16
    assert record["skipped_samples"] == {reason: 2 if reason == "bad_image" else 0 for reason in SKIP_REASONS}
    summary = [r.getMessage() for r in caplog.records if r.getMessage().startswith("trained to")]
    assert summary == ["trained to global step 2 (2 steps in this run), 16 samples seen, 2 skipped (bad_image 2)"]


def test_a_resumed_run_says_nothing_of_its_checkpoint_folder_being_used(tmp_path, image_text_shards):
    """Resuming writes to the run's checkpoints/ folder on purpose: Lightning's "exists and is not empty" warning is
    not raised at all (not only filtered from a command's output, so --debug and the Python API stay quiet too)."""
    args = [*ARGS, f"data.train_shards={image_text_shards}", f"output_dir={tmp_path / 'run'}", "checkpoint.every_n_steps=1"]
    fit.main(None, [*args, "trainer.max_steps=1"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit.main(None, [*args, "trainer.max_steps=2"])
    assert (tmp_path / "run" / "checkpoints" / "step0000002.ckpt").is_file()
    assert not [str(w.message) for w in caught if "not empty" in str(w.message)]


def test_run_checkpoints_keep_model_checkpoints_state_key(tmp_path):
    """Checkpoints store callback state under the state key; RunCheckpoints must read what ModelCheckpoint wrote."""
    options = {"dirpath": tmp_path, "every_n_train_steps": 3, "save_last": True}
    assert RunCheckpoints(**options).state_key == ModelCheckpoint(**options).state_key


def test_images_decoded_through_pil_are_counted_over_every_worker_in_run_json(tmp_path, shard_writer):
    """PIL_DECODES is per process: each DataLoader worker's decodes reach run.json through the batches it makes."""
    shards = shard_writer(tmp_path / "shards", num_shards=2, per_shard=8)  # PNGs: TorchCodec decodes RGB JPEGs only
    out = tmp_path / "run"
    fit.main(None, [*ARGS, f"data.train_shards={shards}", f"output_dir={out}", "data.num_workers=2", "data.resampled=false",
                    "data.samples_per_epoch=null", "trainer.max_steps=-1", "trainer.max_epochs=1"])
    record = json.loads((out / "run.json").read_text())
    assert record["samples_seen"] == 16
    assert record["pil_decoded"] == {"JPEG": 0, "PNG": 16, "WEBP": 0, "other": 0}


ENDINGS = ["finished", "stopped by SIGINT"]


def fit_until(ending: str, monkeypatch, out, shards: str, *overrides: str) -> None:
    """A 2-step fit in this process that finishes, or that SIGINT stops after its first step (exit 130)."""
    stop = (SignalAt(1, signal.SIGINT),) if ending != "finished" else ()
    with pytest.raises(SystemExit) if stop else contextlib.nullcontext():
        run_with(monkeypatch, out, shards, *stop, overrides=(*overrides, "trainer.max_steps=2"))


@pytest.mark.parametrize("ending", ENDINGS)
def test_a_fit_ends_its_data_loader_workers_before_it_returns(tmp_path, image_text_shards, monkeypatch, ending):
    """Lightning ends a plain DataLoader's persistent workers at teardown but not those inside webdataset's wrapper:
    left to the garbage collector they held their shared memory into whatever ran next in the process."""
    before = set(multiprocessing.active_children())
    fit_until(ending, monkeypatch, tmp_path / "run", image_text_shards, "data.num_workers=2")
    assert set(multiprocessing.active_children()) - before == set()


@pytest.fixture
def own_environ():
    """Lightning's DDP setup writes MASTER_PORT, WORLD_SIZE, LOCAL_RANK, ... into this process's environment; a later
    test's `cir.fit` child would take them for a launcher's and wait for ranks that never come."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.mark.parametrize("ending", ENDINGS)
@pytest.mark.usefixtures("own_environ")
def test_a_ddp_fit_ends_its_process_group_before_it_returns(tmp_path, image_text_shards, monkeypatch, ending):
    """A gloo group alive at interpreter exit can abort the process ('terminate called without an active exception',
    pytorch#190489): a rank of a finished SLURM job ended so, failing the job. One process under the ddp strategy
    has the same group of one."""
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    fit_until(ending, monkeypatch, tmp_path / "run", image_text_shards, "trainer.strategy=ddp")
    assert not dist.is_initialized()


@pytest.mark.ddp
@pytest.mark.slow
def test_a_two_process_fit_outside_slurm_exits_0_with_every_output(tmp_path, image_text_shards):
    """Lightning's own ddp launcher on CPU (gloo, two processes, no SLURM): every collective after training is
    joined by both ranks. A reduction only rank 0 joined (the PIL-decode counts, f9efc46) ended every multi-process
    fit with 'lost rank 1', which only tests/slurm caught."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "cir.fit", DEFAULTS, *ARGS, f"data.train_shards={image_text_shards}",
           f"output_dir={out}", "trainer.devices=2", "trainer.strategy=ddp", "trainer.max_steps=2"]
    env = {key: value for key, value in os.environ.items() if not key.startswith("SLURM_")}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((out / "run.json").read_text())
    assert record["global_step"] == 2 and record["samples_seen"] == 2 * 2 * BATCH  # both ranks' batches
    assert sum(record["pil_decoded"].values()) >= record["samples_seen"]
    assert (out / "export.pt").is_file() and completion.why_not_done(out, json.loads(
        (out / completion.RECORD).read_text())["fingerprint"]) is None
