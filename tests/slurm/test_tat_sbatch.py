"""slurm/tat.sbatch on a real one-node SLURM cluster: 2 DDP ranks (gloo, CPU), SIGUSR1, requeue, resume."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
import torch
from slurm_cluster import LocalSlurm, wait_for

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "slurm" / "tat.sbatch"
MAX_STEPS, EVERY, BATCH, RANKS = 12, 2, 4, 2
ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")


def fit_config(tmp_path: Path, shards: str) -> Path:
    """A tiny TAT run on generated shards; resampled so both ranks draw the same number of batches."""
    config = tmp_path / "tat_tiny.yaml"
    config.write_text(
        f"""task: tat
output_dir: {tmp_path / 'run'}
model: {{name: cir-tiny, pretrained: none, lora: {{dropout: 0.0}}}}
data: {{train_shards: "{shards}", batch_size: {BATCH}, num_workers: 0, resampled: true, samples_per_epoch: 100000}}
optim: {{lr: 1.0e-3, warmup_steps: 2}}
checkpoint: {{every_n_steps: {EVERY}}}
trainer: {{accelerator: cpu, max_steps: {MAX_STEPS}, enable_progress_bar: false, enable_model_summary: false}}
"""
    )
    return config


def rank_reports(text: str) -> list[tuple[int, int, str, int]]:
    """(rank, world size, cluster environment, starting step) from each rank's GracefulInterruption line."""
    pattern = r"rank (\d+) of world size (\d+) .*?cluster environment (\w+), from global step (\d+)"
    return [(int(r), int(w), env, int(s)) for r, w, env, s in re.findall(pattern, text)]


@pytest.mark.slurm
@pytest.mark.slow
def test_sbatch_template_trains_with_ddp_then_requeues_on_usr1_and_resumes(slurm_cluster: LocalSlurm, image_text_shards, tmp_path):
    config = fit_config(tmp_path, image_text_shards)
    out, job_out = tmp_path / "run", tmp_path / "job.out"
    submit = ["sbatch", "--parsable", f"--chdir={REPO}", f"--output={job_out}", "--nodes=1", f"--ntasks-per-node={RANKS}",
              str(TEMPLATE), str(config)]
    result = slurm_cluster.run(*submit)
    job_id = int(result.stdout.strip().split(";")[0])

    def state() -> dict[str, str]:
        return slurm_cluster.job(job_id)

    def output() -> str:
        return job_out.read_text(errors="replace") if job_out.is_file() else ""

    def fail(what: str) -> None:
        pytest.fail(f"{what}: job {state()}\n--- job output\n{output()[-6000:]}\n{slurm_cluster.logs()}")

    def running_with_checkpoint() -> bool:
        if state()["JobState"] in ENDED:
            fail("the job ended before its first checkpoint")
        return (out / "checkpoints" / "last.ckpt").is_file()

    def requeued() -> bool:
        job = state()
        if job["JobState"] in ENDED:
            fail("the job ended instead of requeueing itself")
        return job["JobState"] == "PENDING" and job["Restarts"] == "1"

    try:
        wait_for(running_with_checkpoint, 120, "the first periodic checkpoint")
        slurm_cluster.run("scancel", "--signal=USR1", str(job_id))
        wait_for(requeued, 60, "the job to be requeued")
        # Released while slurmd still tears the first attempt down, the job is refused ("Job N already killed, do not
        # launch batch job") and FAILS: wait until the node is idle and no step of the job is left.
        wait_for(lambda: slurm_cluster.node_state() == "idle" and not slurm_cluster.steps(job_id), 60,
                 "the first attempt's steps to be gone and the node idle")
        # slurmd also refuses a launch whose credential dates from the second the requeue revoked the first one
        # (slurm_cred_revoked compares whole seconds): release the job once the clock has left that second.
        requeue_seen = int(time.time())
        wait_for(lambda: int(time.time()) > requeue_seen, 5, "the clock to leave the requeue's second")
        # SLURM holds a requeued job for a while (about 2 minutes) before it may start again
        slurm_cluster.run("scontrol", "update", f"JobId={job_id}", "StartTime=now")
        wait_for(lambda: state()["JobState"] in ENDED, 120, "the requeued job to end")
    except TimeoutError as err:
        fail(str(err))
    if state()["JobState"] != "COMPLETED":
        refused = "already killed, do not launch" in slurm_cluster.logs()
        fail("the requeued job was refused by slurmd: released before the first attempt was torn down" if refused
             else "the requeued job did not complete")
    log = output()

    assert log.count("attempt 2:") == 1 and "attempt 3:" not in log, log[-6000:]
    first, second = log.split("attempt 2:")
    saved = re.search(r"saved \S+ at global step (\d+)", first)
    assert saved, first[-6000:]
    interrupted = int(saved.group(1))
    assert EVERY < interrupted < MAX_STEPS  # USR1 went out once the step-2 checkpoint existed
    assert f"requeued SLURM job {job_id}" in first
    # every rank of both attempts ran under SLURMEnvironment in a world of 2; the second started where the first stopped
    assert sorted(rank_reports(first)) == [(0, RANKS, "SLURMEnvironment", 0), (1, RANKS, "SLURMEnvironment", 0)]
    assert sorted(rank_reports(second)) == [(r, RANKS, "SLURMEnvironment", interrupted) for r in range(RANKS)]
    final = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert final["global_step"] == MAX_STEPS
    assert {float(s["step"]) for s in final["optimizer_states"][0]["state"].values()} == {MAX_STEPS}
    record = json.loads((out / "run.json").read_text())
    assert record["global_step"] == MAX_STEPS
    assert record["samples_seen"] == MAX_STEPS * BATCH * RANKS
    assert (out / "export.pt").is_file()
