"""slurm/tat.sbatch on a real one-node SLURM cluster: 2 DDP ranks (gloo, CPU), SIGUSR1, requeue, resume."""

from __future__ import annotations

import json
import re

import pytest
import torch
from slurm_cluster import LocalSlurm
from tat_job import TatJob, rank_reports, tat_config

MAX_STEPS, EVERY, BATCH, RANKS = 12, 2, 4, 2


@pytest.mark.slurm
@pytest.mark.slow
def test_sbatch_template_trains_with_ddp_then_requeues_on_usr1_and_resumes(slurm_cluster: LocalSlurm, image_text_shards, tmp_path):
    # resampled, so both ranks draw the same number of batches
    config = tat_config(tmp_path / "tat_tiny.yaml", tmp_path / "run",
                        f'train_shards: "{image_text_shards}", batch_size: {BATCH}, num_workers: 0, resampled: true, '
                        "samples_per_epoch: 100000", f"max_steps: {MAX_STEPS}", EVERY)
    out = tmp_path / "run"
    job = TatJob(slurm_cluster, config, tmp_path / "job.out", "--nodes=1", f"--ntasks-per-node={RANKS}")
    job.wait_running_with(out / "checkpoints" / "last.ckpt")
    job.interrupt_and_resume()
    log = job.output()

    assert log.count("attempt 2:") == 1 and "attempt 3:" not in log, log[-6000:]
    first, second = log.split("attempt 2:")
    saved = re.search(r"saved \S+ at global step (\d+)", first)
    assert saved, first[-6000:]
    interrupted = int(saved.group(1))
    assert EVERY < interrupted < MAX_STEPS  # USR1 went out once the step-2 checkpoint existed
    assert f"requeued SLURM job {job.id}" in first
    # every rank of both attempts ran under SLURMEnvironment in a world of 2; the second started where the first stopped
    host = slurm_cluster.nodes[0][0]
    assert sorted(rank_reports(first)) == [(r, RANKS, 0, host, "SLURMEnvironment", 0) for r in range(RANKS)]
    assert sorted(rank_reports(second)) == [(r, RANKS, 0, host, "SLURMEnvironment", interrupted) for r in range(RANKS)]
    final = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert final["global_step"] == MAX_STEPS
    assert {float(s["step"]) for s in final["optimizer_states"][0]["state"].values()} == {MAX_STEPS}
    record = json.loads((out / "run.json").read_text())
    assert record["global_step"] == MAX_STEPS
    assert record["samples_seen"] == MAX_STEPS * BATCH * RANKS
    assert (out / "export.pt").is_file()
