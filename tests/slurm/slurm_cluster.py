"""A SLURM cluster for tests: munged, slurmctld and slurmd run from a temporary folder; one node here (this host),
two in namespaces.py.

Everything the daemons write (config, state, spool, logs, munge key and socket) lives
under one temporary folder, removed at the end. They run in the foreground as children
of the test process, so `stop()` ends exactly the processes `start()` made; SLURM_CONF
in `env` points the client commands (sbatch, scontrol, squeue) at this cluster only.
Each node has CPUS CPUs whatever the hardware (SlurmdParameters=config_overrides), so that the tests' jobs
run side by side; the scheduler looks at pending jobs every second, and a job's processes get KILL_WAIT s
between SIGTERM and SIGKILL, instead of SLURM's 60 s and 30 s defaults.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "squeue", "sinfo", "scancel", "srun")
CPUS = 4
KILL_WAIT = 5

SLURM_CONF = """\
ClusterName=cirtest
SlurmctldHost={ctl_host}({ctl_addr})
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool-%n
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd-%n.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd-%n.log
PlugStackConfig={root}/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=1
ReturnToService=2
KillWait={kill_wait}
{node_lines}
PartitionName=test Nodes={node_names} Default=YES MaxTime=INFINITE State=UP
"""


class SlurmUnavailable(RuntimeError):
    """SLURM's packages are missing and cannot be installed here."""


def missing_binaries() -> list[str]:
    return [b for b in BINARIES if shutil.which(b) is None]


def ensure_packages() -> None:
    """apt-get install the SLURM and munge packages when a binary is missing (needs root and apt)."""
    if not missing_binaries():
        return
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        raise SlurmUnavailable(f"{', '.join(missing_binaries())} not installed, and installing {' '.join(PACKAGES)} "
                               "needs apt-get as root")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"],
                ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES]):
        result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        if result.returncode != 0:
            raise SlurmUnavailable(f"`{' '.join(cmd)}` failed ({result.returncode}): {result.stderr.strip()[-500:]}")
    if missing_binaries():
        raise SlurmUnavailable(f"{', '.join(missing_binaries())} still missing after installing {' '.join(PACKAGES)}")


def free_ports(n: int) -> list[int]:
    """n distinct TCP ports free on 127.0.0.1 now (all held open together, so they differ)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def wait_for(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.1) -> object:
    """Poll `condition` until it returns something truthy; TimeoutError naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def wait_or_kill(proc: subprocess.Popen, timeout: float = 15) -> None:
    """Wait for a process we asked to end; kill it when it takes longer than `timeout` s."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def running(cluster: LocalSlurm) -> Iterator[LocalSlurm]:
    """The cluster started, and stopped on the way out whatever happened."""
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


class LocalSlurm:
    """munged + slurmctld + one slurmd per node, each node with CPUS CPUs, all in partition `test`.

    Here a single node: this host, at 127.0.0.1. `NamespaceSlurm` (namespaces.py) overrides
    `prepare`, `enter` and `teardown` to give each node its own namespaces and address.
    """

    def __init__(self) -> None:
        # munged wants every folder above its socket searchable by all: not so under pytest's 0700 tmp_path
        self.root = Path(tempfile.mkdtemp(prefix="cir-slurm-"))
        self.root.chmod(0o755)
        host = socket.gethostname().split(".")[0]
        self.controller = (host, "127.0.0.1")
        self.nodes = [(host, "127.0.0.1")]
        self.conf = self.root / "slurm.conf"
        # clients and jobs: this cluster's config, and the Python that runs the tests first on PATH
        self.env = {**os.environ, "SLURM_CONF": str(self.conf),
                    "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        self.daemons: list[subprocess.Popen] = []

    def write_config(self) -> None:
        for sub in ("state", "munge", *(f"spool-{name}" for name, _ in self.nodes)):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        # munged insists on a socket folder only its owner can write and a key only its owner can read
        (self.root / "munge").chmod(0o755)
        key = self.root / "munge.key"
        key.write_bytes(secrets.token_bytes(1024))
        key.chmod(0o600)
        (self.root / "plugstack.conf").write_text("")
        ctld_port, slurmd_port = free_ports(2)
        self.conf.write_text(SLURM_CONF.format(
            ctl_host=self.controller[0], ctl_addr=self.controller[1], root=self.root,
            munge_socket=self.root / "munge" / "munge.socket", ctld_port=ctld_port, slurmd_port=slurmd_port, kill_wait=KILL_WAIT,
            node_lines="\n".join(f"NodeName={name} NodeAddr={addr} CPUs={CPUS} State=UNKNOWN" for name, addr in self.nodes),
            node_names=",".join(name for name, _ in self.nodes),
        ))

    def prepare(self) -> None:
        """Whatever the nodes need before their daemons start (here: nothing, they are this host)."""

    def enter(self, host: str) -> list[str]:
        """The command prefix that runs a daemon on `host` (here: none, every host is this one)."""
        return []

    def teardown(self) -> None:
        """Undo `prepare`, once the daemons are stopped."""

    def node_of(self, pid: int) -> str:
        """The node a process runs on (here: the only one)."""
        return self.nodes[0][0]

    def _spawn(self, label: str, *cmd: str) -> None:
        log = open(self.root / f"{label}.out", "w")
        self.daemons.append(subprocess.Popen(list(cmd), stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                             start_new_session=True))
        log.close()

    def start(self, timeout: float = 60.0) -> None:
        """Start the daemons (in the foreground, as our children) and wait until every node is idle."""
        self.write_config()
        munge_socket = self.root / "munge" / "munge.socket"
        self._spawn("munged", "munged", "-F", f"--key-file={self.root / 'munge.key'}", f"--socket={munge_socket}",
                    f"--pid-file={self.root / 'munged.pid'}", f"--seed-file={self.root / 'munged.seed'}")
        try:
            self.prepare()
            wait_for(lambda: munge_socket.exists() or self._died(), timeout, "munged's socket")
            if not self._died():
                self._spawn("slurmctld", *self.enter(self.controller[0]), "slurmctld", "-D", "-c", "-f", str(self.conf))
                for name, _ in self.nodes:
                    self._spawn(f"slurmd-{name}", *self.enter(name), "slurmd", "-D", "-f", str(self.conf), "-N", name)
                wait_for(lambda: self._died() or self.idle(), timeout, "every node to be idle")
        except TimeoutError as err:
            raise RuntimeError(f"{err}\n{self.logs()}") from None
        if self._died():
            raise RuntimeError(f"a SLURM daemon exited while starting:\n{self.logs()}")

    def _died(self) -> bool:
        return any(p.poll() is not None for p in self.daemons)

    def node_states(self) -> dict[str, str]:
        """Each node's state as sinfo says it (idle, allocated, mixed, down, ...); empty when slurmctld does not answer."""
        result = self.run("sinfo", "-h", "-N", "-o", "%N %T", check=False)
        return dict(line.split() for line in result.stdout.splitlines()) if result.returncode == 0 else {}

    def idle(self) -> bool:
        states = self.node_states()
        return len(states) == len(self.nodes) and set(states.values()) == {"idle"}

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(cmd, capture_output=True, text=True, env=self.env, timeout=60)
        if check and result.returncode != 0:
            raise RuntimeError(f"`{' '.join(cmd)}` failed ({result.returncode}): {result.stderr.strip()}")
        return result

    def job(self, job_id: int) -> dict[str, str]:
        """`scontrol show job` as a dict (JobState, Restarts, ExitCode, ...)."""
        text = self.run("scontrol", "show", "job", str(job_id), "-o").stdout
        return dict(re.findall(r"(\w+)=(\S*)", text))

    def steps(self, job_id: int) -> list[str]:
        """The job's steps slurmctld still knows (a requeued job's old steps linger while slurmd tears them down)."""
        return self.run("squeue", "-h", "-s", "-j", str(job_id), "-o", "%i", check=False).stdout.split()

    def stepds(self, job_id: int) -> list[int]:
        """The job's slurmstepd processes still running, on any node (the namespaces share this machine's pids)."""
        found = []
        for proc in Path("/proc").iterdir():
            with contextlib.suppress(OSError):
                if proc.name.isdigit() and (proc / "cmdline").read_bytes().startswith(f"slurmstepd: [{job_id}.".encode()):
                    found.append(int(proc.name))
        return found

    def jobs(self) -> list[str]:
        """Queued and running jobs as squeue names them (`7`, or `8_[0-1]` for an array's pending tasks)."""
        return self.run("squeue", "-h", "-o", "%i", check=False).stdout.split()

    def logs(self) -> str:
        parts = []
        for path in sorted(self.root.glob("*.out")) + sorted(self.root.glob("*.log")):
            parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}")
        return "\n".join(parts)

    def stop(self) -> None:
        """Cancel what is left of our jobs, end the daemons we started (slurmd, slurmctld, munged), remove the folder."""
        try:
            self.cancel_jobs()
        finally:
            self.stop_daemons()

    def cancel_jobs(self) -> None:
        if not self._died() and self.jobs():
            self.run("scancel", "--partition=test", check=False)  # every job of this cluster, array tasks too
            with contextlib.suppress(TimeoutError):
                wait_for(lambda: not self.jobs(), 30, "cancelled jobs to end")

    def stop_daemons(self) -> None:
        for proc in reversed(self.daemons):
            if proc.poll() is None:
                proc.terminate()
            wait_or_kill(proc)
        self.daemons.clear()
        self.teardown()
        shutil.rmtree(self.root, ignore_errors=True)
