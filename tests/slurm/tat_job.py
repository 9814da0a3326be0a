"""One slurm/tat.sbatch job on a test cluster: tiny configs, submit, wait, interrupt with USR1 and release the requeue."""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
import torch
from slurm_cluster import LocalSlurm, wait_for

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "slurm" / "tat.sbatch"
ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")


def tat_config(path: Path, out: Path, data: str, trainer: str, every: int = 2) -> Path:
    """A tiny TAT run (cir-tiny, no LoRA dropout, gloo on CPU) into `out`; `data` and `trainer` are YAML flow maps' insides."""
    path.write_text(
        f"""task: tat
output_dir: {out}
model: {{name: cir-tiny, pretrained: none, lora: {{dropout: 0.0}}}}
data: {{{data}}}
optim: {{lr: 1.0e-3, warmup_steps: 2}}
checkpoint: {{every_n_steps: {every}}}
trainer: {{accelerator: cpu, {trainer}, enable_progress_bar: false, enable_model_summary: false}}
"""
    )
    return path


def rank_reports(text: str) -> list[tuple[int, int, int, str, str, int]]:
    """(rank, world size, node rank, host, cluster environment, starting step) from each rank's GracefulInterruption line."""
    pattern = r"rank (\d+) of world size (\d+) \(node (\d+) (\S+), local rank \d+\), cluster environment (\w+).*?from global step (\d+)"
    return [(int(r), int(w), int(n), host.split(".")[0], env, int(s)) for r, w, n, host, env, s in re.findall(pattern, text)]


def export_weights(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "export.pt", map_location="cpu", weights_only=True)


class TatJob:
    """`sbatch FLAGS slurm/tat.sbatch CONFIG OVERRIDES` (`env`: variables for the job only); every wait fails the test
    with the job's output and the logs."""

    def __init__(self, cluster: LocalSlurm, config: Path, job_out: Path, *flags: str, overrides: Sequence[str] = (),
                 env: Mapping[str, str] | None = None) -> None:
        self.cluster, self.job_out = cluster, job_out
        if env:
            flags = (",".join(["--export=ALL", *(f"{key}={value}" for key, value in env.items())]), *flags)
        result = cluster.run("sbatch", "--parsable", f"--chdir={REPO}", f"--output={job_out}", *flags, str(TEMPLATE),
                             str(config), *overrides)
        self.id = int(result.stdout.strip().split(";")[0])

    def state(self) -> dict[str, str]:
        return self.cluster.job(self.id)

    def output(self) -> str:
        return self.job_out.read_text(errors="replace") if self.job_out.is_file() else ""

    def fail(self, what: str) -> None:
        pytest.fail(f"{what}: job {self.state()}\n--- job output\n{self.output()[-6000:]}\n{self.cluster.logs()}")

    def wait(self, condition, timeout: float, what: str) -> None:
        try:
            wait_for(condition, timeout, what)
        except TimeoutError as err:
            self.fail(str(err))

    def wait_running_with(self, path: Path, timeout: float = 300) -> None:
        def running_with() -> bool:
            if self.state()["JobState"] in ENDED:
                self.fail(f"the job ended before {path.name} existed")
            return path.is_file()

        self.wait(running_with, timeout, str(path))

    def wait_end(self, timeout: float = 300) -> str:
        self.wait(lambda: self.state()["JobState"] in ENDED, timeout, "the job to end")
        return self.state()["JobState"]

    def interrupt(self) -> None:
        """`scancel --signal=USR1`: every rank saves, rank 0 requeues the job (`resume` waits for that)."""
        self.cluster.run("scancel", "--signal=USR1", str(self.id))

    def resume(self) -> None:
        """Wait for the requeue, release the job as soon as SLURM will run it, wait until it completes."""

        def requeued() -> bool:
            job = self.state()
            if job["JobState"] in ENDED:
                self.fail("the job ended instead of requeueing itself")
            return job["JobState"] == "PENDING" and job["Restarts"] == "1"

        self.wait(requeued, 60, "the job to be requeued")
        # Released while slurmd still tears the first attempt down, the job is refused ("Job N already killed, do not
        # launch batch job") and FAILS: wait until no step of the job is left and none of its slurmstepd runs.
        self.wait(lambda: not self.cluster.steps(self.id) and not self.cluster.stepds(self.id), 60,
                  "the first attempt's steps and slurmstepd processes to be gone")
        # slurmd also refuses a launch whose credential dates from the second the requeue revoked the first one
        # (slurm_cred_revoked compares whole seconds): release the job once the clock has left that second.
        requeue_seen = int(time.time())
        self.wait(lambda: int(time.time()) > requeue_seen, 5, "the clock to leave the requeue's second")
        # SLURM holds a requeued job for a while (about 2 minutes) before it may start again
        self.cluster.run("scontrol", "update", f"JobId={self.id}", "StartTime=now")
        if self.wait_end() != "COMPLETED":
            refused = "already killed, do not launch" in self.cluster.logs()
            self.fail("the requeued job was refused by slurmd: released before the first attempt was torn down" if refused
                      else "the requeued job did not complete")
