"""Stop training at a step boundary on SIGTERM, SIGINT or SLURM's requeue signal, with a checkpoint to resume from.

Lightning acts on signals inside the handler: on SLURM's SIGUSR1 it saves mid-step,
and under DDP each rank enters the save's barrier wherever it happens to be, which
can meet another rank's gradient all-reduce and hang. Here a handler only records
the signal; after each training step the ranks agree on what was received (one
all-reduce of two integers), save the checkpoint together, rank 0 requeues the SLURM
job when the signal was SIGUSR1, and every rank exits with 128 + signal number (the
shell's code for "ended by this signal": the run is resumable, not finished). A
second SIGINT aborts at once, without a checkpoint.

The handlers are installed at train start, after Lightning's own, so they replace
them for the training loop; Lightning puts the previous handlers back at teardown.
DataLoader workers forked after that inherit them, so a SIGINT or SIGUSR1 that reaches
them too (a terminal's Ctrl-C, SLURM signalling every process) leaves them running
until the main process shuts them down. PyTorch gives workers its own SIGTERM handler,
which ends them: see docs/guarantees.md.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import threading
from pathlib import Path
from types import FrameType

import lightning as L
import torch
from lightning.pytorch.plugins.environments import SLURMEnvironment

from cir.distributed import hosts
from cir.signals import note as note_stop
from cir.signals import note_peers

log = logging.getLogger(__name__)

REQUEUE_SIGNAL = signal.SIGUSR1


class Interrupted(SystemExit):
    """A signal stopped the run after its checkpoint was saved; rerunning the same command resumes."""


def slurm_job_id() -> str:
    """The id that `scontrol requeue` takes: `<array job>_<task>` for an array task, else SLURM_JOB_ID."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array_job is not None:
        return f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ["SLURM_JOB_ID"]


def requeue_slurm_job(job_id: str) -> bool:
    """`scontrol requeue JOB`; a failure is logged (the checkpoint is saved, the job can be resubmitted)."""
    try:
        result = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True, check=False)
    except FileNotFoundError:
        log.error("cannot requeue SLURM job %s: scontrol is not on PATH", job_id)
        return False
    if result.returncode != 0:
        log.error("scontrol requeue %s failed (exit %d): %s", job_id, result.returncode, result.stderr.strip())
        return False
    log.info("requeued SLURM job %s", job_id)
    return True


class GracefulInterruption(L.Callback):
    """On a signal, finish the current optimizer step, save `checkpoint_path` on every rank together, then exit.

    SIGTERM and SIGINT stop the run; under SLURM, SIGUSR1 (`#SBATCH --signal=USR1@SECONDS`,
    or `scancel --signal=USR1`) also requeues the job, which resumes from the checkpoint.
    Each rank logs its place in the job at train start, so a job's output shows
    how many ranks Lightning formed, under which cluster environment, from which step.
    """

    def __init__(self, checkpoint_path: Path) -> None:
        self.checkpoint_path = Path(checkpoint_path)
        self.received: set[int] = set()
        self.checked_step = -1
        self.pid = os.getpid()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.received, self.checked_step, self.pid = set(), trainer.global_step, os.getpid()
        signals = [signal.SIGTERM, signal.SIGINT]
        if SLURMEnvironment.detect():
            signals.append(REQUEUE_SIGNAL)
        if threading.current_thread() is not threading.main_thread():
            log.warning("training outside the main thread: signals are not handled, a stopped run resumes "
                        "from its last periodic checkpoint")
            signals = []
        for signum in signals:
            signal.signal(signum, self._on_signal)
        cluster = getattr(trainer.strategy, "cluster_environment", None)
        log.info(
            "rank %d of world size %d (node %d %s, local rank %d), cluster environment %s%s, from global step %d; "
            "on %s: save %s and stop%s",
            trainer.global_rank, trainer.world_size, trainer.node_rank, socket.gethostname(), trainer.local_rank,
            type(cluster).__name__ if cluster is not None else "none",
            f" (ranks meet at {cluster.main_address}:{cluster.main_port})" if trainer.world_size > 1 else "",
            trainer.global_step,
            "/".join(signal.Signals(s).name for s in signals) or "no signal", self.checkpoint_path,
            f" (SIGUSR1 also requeues SLURM job {slurm_job_id()})" if REQUEUE_SIGNAL in signals else "",
        )
        if trainer.world_size > 1:  # a peer lost later is named by its rank and host (cir.signals.rank_lost)
            note_peers(hosts(), trainer.global_rank)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self.pid:
            return  # a forked DataLoader worker: the main process stops the run and then its workers
        if signum == signal.SIGINT and signum in self.received:
            raise KeyboardInterrupt
        log.warning("received %s: stopping after this training step", signal.Signals(signum).name)
        self.received.add(signum)
        note_stop(signum)

    def agreed(self, trainer: L.Trainer) -> tuple[bool, int]:
        """(requeue, signal) over all ranks: any rank's signal stops them all at the same step."""
        requeue, signum = REQUEUE_SIGNAL in self.received, max(self.received, default=0)
        if trainer.world_size == 1:
            return requeue, signum
        local = torch.tensor([int(requeue), signum], device=trainer.strategy.root_device)
        requeue, signum = trainer.strategy.reduce(local, reduce_op="max").tolist()
        return bool(requeue), signum

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        # mid gradient accumulation there is no optimizer step to checkpoint yet (every rank accumulates alike)
        if trainer.global_step == self.checked_step:
            return
        self.checked_step = trainer.global_step
        requeue, signum = self.agreed(trainer)
        if not signum:
            return
        trainer.save_checkpoint(self.checkpoint_path, weights_only=False)
        if trainer.is_global_zero:
            log.info("saved %s at global step %d; rerun the same command to resume", self.checkpoint_path,
                     trainer.global_step)
            if requeue:
                requeue_slurm_job(slurm_job_id())
        # no rank exits before rank 0 has requeued: srun --kill-on-bad-exit ends the step on the first exit
        trainer.strategy.barrier("GracefulInterruption")
        raise Interrupted(128 + signum)
