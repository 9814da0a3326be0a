"""slurm/tat.sbatch across two nodes (namespaces.py: cir-n1, cir-n2, one rank each, gloo over their bridge), each run
against the same config as one node's two processes; where namespaces are refused, the same runs on the one-node
cluster, two processes (conftest's `cluster`).

The module's three jobs are submitted together and run side by side: the uninterrupted one-node reference, the run
that USR1 stops and SLURM requeues, and the run that loses a rank to SIGKILL (then its rerun)."""

from __future__ import annotations

import json
import os
import re
import signal
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from slurm_cluster import LocalSlurm
from tat_job import TatJob, export_weights, rank_reports, tat_config
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cir.resume import newest_checkpoint

BATCH, SAMPLES, EVERY = 4, 64, 2
STEPS = SAMPLES // (2 * BATCH)  # one exact epoch of 64 pairs over 2 ranks
EPOCH = {f"{i:08d}" for i in range(SAMPLES)}  # the keys conftest's write_image_text_shards gives the pairs
KEY_TRACE = Path(__file__).parent / "key_trace"  # its sitecustomize.py writes each rank's training samples' keys


def exact_epoch(shards: str) -> str:
    return f'train_shards: "{shards}", batch_size: {BATCH}, num_workers: 0, exact_epoch: true'


def losses(out: Path) -> dict[int, float]:
    """train/loss per global step, from every TensorBoard file of the run (both attempts of a requeued job)."""
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    return {event.step: event.value for event in events.Scalars("train/loss")}


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


@dataclass
class Runs:
    nodes: int
    reference: Path  # output_dir of the one-node, two-process run
    interrupted: Path  # output_dir of the run stopped by USR1, requeued and resumed
    interrupted_log: str
    stopped: int  # the step USR1 stopped it at
    keys: Path  # the interrupted run's key trace: rank<R>.attempt<A>
    killed: Path  # output_dir of the run that lost rank 1, then rerun
    killed_log: str
    killed_node: str  # the node rank 1 ran on
    killed_left: list[str]  # run.json or export.pt, where the killed run left them
    saved: int  # the step of the last.ckpt the killed run left
    rerun_log: str


@pytest.fixture(scope="module")
def runs(cluster: LocalSlurm, shard_writer, tmp_path_factory) -> Runs:
    tmp = tmp_path_factory.mktemp("runs")
    shards = shard_writer(tmp / "shards")
    nodes = len(cluster.nodes)
    shape = (f"--nodes={nodes}", f"--ntasks-per-node={2 // nodes}")
    epoch = "max_epochs: 1, max_steps: -1, log_every_n_steps: 1"

    def job(name: str, trainer: str, *flags: str, env: dict[str, str] | None = None) -> TatJob:
        config = tat_config(tmp / f"{name}.yaml", tmp / name, exact_epoch(shards), trainer, EVERY)
        return TatJob(cluster, config, tmp / f"{name}.out", *flags, env=env)

    keys = tmp / "keys"
    keys.mkdir()
    trace = {"PYTHONPATH": os.pathsep.join(filter(None, [str(KEY_TRACE), cluster.env.get("PYTHONPATH")])),
             "CIR_KEY_TRACE": str(keys)}
    reference = job("reference", epoch, "--nodes=1", "--ntasks-per-node=2")
    interrupted = job("interrupted", epoch, *shape, env=trace)
    # long enough that the kill always comes first; the rerun asks for a few steps past where the kill left it
    killed = job("killed", "max_epochs: -1, max_steps: 100000", *shape)

    interrupted.wait_running_with(tmp / "interrupted" / "checkpoints" / "last.ckpt")
    interrupted.interrupt()
    killed.wait_running_with(tmp / "killed" / "checkpoints" / "last.ckpt")
    pid = rank_process(killed.id, 1)
    assert pid is not None
    killed_node = cluster.node_of(pid)
    os.kill(pid, signal.SIGKILL)
    if killed.wait_end(120) != "FAILED":  # bounded: srun ends the other rank (--kill-on-bad-exit, KillWait)
        killed.fail("the job that lost a rank did not fail")
    killed_left = [name for name in ("run.json", "export.pt") if (tmp / "killed" / name).exists()]
    # the step the rerun resumes from: the newest whole checkpoint, which is not last.ckpt when the kill came between
    # a step's checkpoint and last.ckpt's update
    saved = newest_checkpoint(tmp / "killed").global_step
    # what the killed ranks left (rank 0 ended by srun, maybe mid-save) is either whole or ignored: the rerun resumes
    rerun = TatJob(cluster, tmp / "killed.yaml", tmp / "rerun.out", *shape, overrides=[f"trainer.max_steps={saved + 2}"])
    interrupted.resume()
    for run, what in ((rerun, "the rerun after the kill"), (reference, "the one-node reference run")):
        if run.wait_end() != "COMPLETED":
            run.fail(f"{what} did not complete")
    reports = sorted(rank_reports(reference.output()))
    assert [(r, w, n, env, s) for r, w, n, _, env, s in reports] == [(r, 2, 0, "SLURMEnvironment", 0) for r in range(2)]
    assert reports[0][3] == reports[1][3] in dict(cluster.nodes)
    saved_at = re.search(r"saved \S+ at global step (\d+)", interrupted.output())
    assert saved_at, interrupted.output()[-6000:]
    return Runs(nodes, tmp / "reference", tmp / "interrupted", interrupted.output(), int(saved_at.group(1)), keys,
                tmp / "killed", killed.output(), killed_node, killed_left, saved, rerun.output())


@pytest.mark.slurm
@pytest.mark.slow
def test_two_nodes_train_as_one_node_does_stop_together_on_usr1_and_resume(runs: Runs, cluster: LocalSlurm):
    first, second = runs.interrupted_log.split("attempt 2:")
    tasks = 2 // runs.nodes
    assert f"attempt 1: {runs.nodes} node(s) x {tasks} task(s)" in first and second.startswith(f" {runs.nodes} node(s) x {tasks} task(s)")
    assert "attempt 3:" not in second
    assert EVERY <= runs.stopped < STEPS
    assert first.count("received SIGUSR1: stopping after this training step") == 2  # each rank, on its own node
    # rank r on node r of the allocation, one rank per host; the ranks meet at the first node's name
    for attempt, start in ((first, 0), (second, runs.stopped)):
        reports = sorted(rank_reports(attempt))
        assert [(r, w, n, env, s) for r, w, n, _, env, s in reports] == [
            (r, 2, r * runs.nodes // 2, "SLURMEnvironment", start) for r in range(2)]
        hosts = [host for _, _, _, host, _, _ in reports]
        assert sorted(hosts) == [name for name, _ in cluster.nodes for _ in range(tasks)]
        assert attempt.count(f"ranks meet at {hosts[0]}:") == 2
    assert f"exact epoch: {SAMPLES} pairs in 4 shards, {SAMPLES // 2} per rank per epoch, 0 left out" in first
    assert "[c10d]" not in runs.interrupted_log  # its lookups of the peers' addresses answer from the hosts file
    out = runs.interrupted
    assert sorted(p.name for p in (out / "checkpoints").glob("last*")) == ["last.ckpt"]
    final = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert final["global_step"] == STEPS
    assert {float(s["step"]) for s in final["optimizer_states"][0]["state"].values()} == {STEPS}
    record = json.loads((out / "run.json").read_text())
    assert record["global_step"] == STEPS and record["samples_seen"] == SAMPLES
    # until the interruption, every step's loss bit for bit as on one node: the same batches on the same ranks,
    # reduced alike over the bridge as over loopback (the step the signal ended is not in TensorBoard: it stops
    # the run before Lightning logs that step)
    before, one_node = {step: loss for step, loss in losses(out).items() if step < runs.stopped}, losses(runs.reference)
    assert sorted(before) == list(range(runs.stopped - 1)) and before == {step: one_node[step] for step in before}


@pytest.mark.slurm
@pytest.mark.slow
def test_two_nodes_resumed_after_usr1_end_with_the_uninterrupted_export(runs: Runs):
    """Exact resume across nodes: each rank regenerates its share of the epoch and its random state."""
    after = {step: loss for step, loss in losses(runs.interrupted).items() if step >= runs.stopped}
    assert after == {step: loss for step, loss in losses(runs.reference).items() if step >= runs.stopped}
    ours, theirs = export_weights(runs.interrupted), export_weights(runs.reference)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


@pytest.mark.slurm
@pytest.mark.slow
def test_each_rank_trains_on_its_own_half_of_the_epoch_and_the_resume_goes_on_where_it_stopped(runs: Runs):
    """The samples each rank's loader handed to training, by key: the ranks' shares are disjoint and together the
    epoch, and the requeued attempt takes each rank's share up again at the first sample not trained on."""
    done = runs.stopped * BATCH  # samples per rank in the steps before the interruption
    shares = []
    for rank in range(2):
        first = (runs.keys / f"rank{rank}.attempt1").read_text().split()
        second = (runs.keys / f"rank{rank}.attempt2").read_text().split()
        # the first attempt took `done` samples, and those of the batches fetched ahead of the step that stopped it
        assert len(first) >= done and first[done:] == second[: len(first) - done]
        share = first[:done] + second
        assert len(share) == len(set(share)) == SAMPLES // 2, (rank, first, second)
        shares.append(set(share))
    assert not shares[0] & shares[1] and shares[0] | shares[1] == EPOCH


@pytest.mark.slurm
@pytest.mark.slow
def test_a_rank_killed_on_one_node_ends_the_job_naming_node_and_rank_and_the_rerun_resumes(runs: Runs, cluster: LocalSlurm):
    assert runs.killed_node == cluster.nodes[-1][0]  # cir-n2 on two nodes
    log = runs.killed_log
    assert f"srun: error: {runs.killed_node}: task 1: Killed" in log, log[-4000:]
    # rank 0 on the other node: one line naming the rank and host it lost (and the address its host name resolves
    # to: cir-n2's on the bridge; on one node, whatever this host's name gives), no traceback
    address = re.escape(dict(cluster.nodes)[runs.killed_node]) if runs.nodes == 2 else r"\S+"
    assert re.search(rf"error: lost rank 1 on {runs.killed_node} \({address}\): gloo says ", log), log[-4000:]
    assert "Traceback" not in log and "[rank0]" not in log, log[-4000:]
    assert runs.killed_left == []
    resumed = re.search(r"resuming from (\S+) \(global step (\d+)\)", runs.rerun_log)
    assert resumed and int(resumed.group(2)) == runs.saved, runs.rerun_log[-4000:]
    assert json.loads((runs.killed / "run.json").read_text())["global_step"] == runs.saved + 2
