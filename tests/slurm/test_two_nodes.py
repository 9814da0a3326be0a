"""slurm/tat.sbatch across two nodes (namespaces.py: cir-n1, cir-n2, one rank each, gloo over their bridge),
each run against the same config as one node's two processes."""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

import pytest
import torch
from namespaces import NamespaceSlurm
from tat_job import TatJob, export_weights, rank_reports, tat_config
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

BATCH, SAMPLES, EVERY = 4, 64, 2
STEPS = SAMPLES // (2 * BATCH)  # one exact epoch of 64 pairs over 2 ranks
TWO_NODES = ("--nodes=2", "--ntasks-per-node=1")


def exact_epoch(shards: str) -> str:
    return f'train_shards: "{shards}", batch_size: {BATCH}, num_workers: 0, exact_epoch: true'


def losses(out: Path) -> dict[int, float]:
    """train/loss per global step, from every TensorBoard file of the run (both attempts of a requeued job)."""
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    return {event.step: event.value for event in events.Scalars("train/loss")}


@pytest.fixture(scope="module")
def shards(shard_writer, tmp_path_factory) -> str:
    return shard_writer(tmp_path_factory.mktemp("shards"))


@pytest.fixture(scope="module")
def reference(two_nodes: NamespaceSlurm, shards: str, tmp_path_factory) -> Path:
    """One exact epoch on one node's two processes, uninterrupted: the run the two-node runs must reproduce."""
    tmp = tmp_path_factory.mktemp("one_node")
    config = tat_config(tmp / "tat.yaml", tmp / "run", exact_epoch(shards), "max_epochs: 1, max_steps: -1, log_every_n_steps: 1", EVERY)
    job = TatJob(two_nodes, config, tmp / "job.out", "--nodes=1", "--ntasks-per-node=2")
    if job.wait_end() != "COMPLETED":
        job.fail("the one-node reference run did not complete")
    assert sorted(rank_reports(job.output())) == [(r, 2, 0, "cir-n1", "SLURMEnvironment", 0) for r in range(2)]
    return tmp / "run"


@pytest.fixture(scope="module")
def interrupted(two_nodes: NamespaceSlurm, shards: str, tmp_path_factory) -> tuple[Path, str, int]:
    """The reference's config on two nodes, stopped by USR1 after its first checkpoint, requeued and resumed:
    (output_dir, the job's output, the step it was interrupted at)."""
    tmp = tmp_path_factory.mktemp("two_nodes")
    config = tat_config(tmp / "tat.yaml", tmp / "run", exact_epoch(shards), "max_epochs: 1, max_steps: -1, log_every_n_steps: 1", EVERY)
    job = TatJob(two_nodes, config, tmp / "job.out", *TWO_NODES)
    job.wait_running_with(tmp / "run" / "checkpoints" / "last.ckpt")
    job.interrupt_and_resume()
    log = job.output()
    saved = re.search(r"saved \S+ at global step (\d+)", log)
    assert saved, log[-6000:]
    return tmp / "run", log, int(saved.group(1))


@pytest.mark.slurm
@pytest.mark.slow
def test_two_nodes_train_as_one_node_does_stop_together_on_usr1_and_resume(interrupted, reference):
    out, log, stopped = interrupted
    first, second = log.split("attempt 2:")
    assert "attempt 1: 2 node(s) x 1 task(s)" in first and second.startswith(" 2 node(s) x 1 task(s)")
    assert EVERY <= stopped < STEPS
    assert first.count("received SIGUSR1: stopping after this training step") == 2  # each rank, on its own node
    # rank r on node r of the allocation, one rank per host; the ranks meet at the first node's name
    for attempt, start in ((first, 0), (second, stopped)):
        reports = sorted(rank_reports(attempt))
        assert [(r, w, n, env, s) for r, w, n, _, env, s in reports] == [(r, 2, r, "SLURMEnvironment", start) for r in range(2)]
        hosts = [host for _, _, _, host, _, _ in reports]
        assert sorted(hosts) == ["cir-n1", "cir-n2"]
        assert attempt.count(f"ranks meet at {hosts[0]}:") == 2
    assert f"exact epoch: {SAMPLES} pairs in 4 shards, {SAMPLES // 2} per rank per epoch, 0 left out" in first
    assert "[c10d]" not in log  # its lookups of the peers' addresses answer from the hosts file, without warnings
    assert sorted(p.name for p in (out / "checkpoints").glob("last*")) == ["last.ckpt"]
    record = json.loads((out / "run.json").read_text())
    assert record["global_step"] == STEPS and record["samples_seen"] == SAMPLES
    # until the interruption, every step's loss bit for bit as on one node: the same batches on the same ranks,
    # reduced alike over the bridge as over loopback (the step the signal ended is not in TensorBoard: it stops
    # the run before Lightning logs that step)
    before, one_node = {step: loss for step, loss in losses(out).items() if step < stopped}, losses(reference)
    assert sorted(before) == list(range(stopped - 1)) and before == {step: one_node[step] for step in before}


@pytest.mark.slurm
@pytest.mark.slow
def test_two_nodes_resumed_after_usr1_end_with_the_uninterrupted_export(interrupted, reference):
    """Exact resume across nodes: each rank regenerates its share of the epoch and its random state."""
    out, _, stopped = interrupted
    after = {step: loss for step, loss in losses(out).items() if step >= stopped}
    assert after == {step: loss for step, loss in losses(reference).items() if step >= stopped}
    ours, theirs = export_weights(out), export_weights(reference)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def rank_process(job_id: int, rank: int) -> int | None:
    """The pid of the job's `python -m cir.fit` with SLURM_PROCID=rank (all namespaces share this machine's pids)."""
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            environ = set((proc / "environ").read_bytes().split(b"\0"))
        except (FileNotFoundError, PermissionError, NotADirectoryError, ProcessLookupError):
            continue
        if b"cir.fit" in cmdline and {f"SLURM_JOB_ID={job_id}".encode(), f"SLURM_PROCID={rank}".encode()} <= environ:
            return int(proc.name)
    return None


@pytest.mark.slurm
@pytest.mark.slow
def test_a_rank_killed_on_one_node_ends_the_job_naming_node_and_rank_and_the_rerun_resumes(two_nodes, shards, tmp_path):
    out = tmp_path / "run"
    # long enough that the kill always comes first; the rerun asks for a few steps past where the kill left it
    config = tat_config(tmp_path / "tat.yaml", out, exact_epoch(shards), "max_epochs: -1, max_steps: 100000", EVERY)
    job = TatJob(two_nodes, config, tmp_path / "job.out", *TWO_NODES)
    job.wait_running_with(out / "checkpoints" / "last.ckpt")
    pid = rank_process(job.id, 1)
    assert pid is not None and two_nodes.node_of(pid) == "cir-n2"
    os.kill(pid, signal.SIGKILL)
    assert job.wait_end(120) == "FAILED"  # bounded: srun ends the other rank (--kill-on-bad-exit, KillWait=10)
    log = job.output()
    assert "srun: error: cir-n2: task 1: Killed" in log, log[-4000:]
    assert not (out / "run.json").exists() and not (out / "export.pt").exists()

    saved = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["global_step"]
    # what the killed ranks left (rank 0 ended by srun, maybe mid-save) is either whole or ignored: the rerun resumes
    rerun = TatJob(two_nodes, config, tmp_path / "rerun.out", *TWO_NODES, overrides=[f"trainer.max_steps={saved + 2}"])
    if rerun.wait_end() != "COMPLETED":
        rerun.fail("the rerun after the kill did not complete")
    resumed = re.search(r"resuming from (\S+) \(global step (\d+)\)", rerun.output())
    assert resumed and int(resumed.group(2)) == saved, rerun.output()[-4000:]
    assert json.loads((out / "run.json").read_text())["global_step"] == saved + 2
