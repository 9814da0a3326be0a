"""A SLURM cluster of two nodes on this one machine: each node in its own network, UTS and mount namespaces.

    controller namespace: slurmctld on bridge br0, 10.77.0.1 (host name cir-ctl)
    node namespaces:      slurmd on eth0, 10.77.0.11 (cir-n1) and 10.77.0.12 (cir-n2), veths on br0

Each namespace is held by a `cat` reading a pipe from the test process (`unshare` without
--fork execs it in the new namespaces), so the namespaces, their links and addresses end
with their processes: when `stop()` ends them, or when the test process dies and the pipe
closes. The machine's own network is never touched: every link is made inside the
controller's namespace, and traffic between the nodes stays on their bridge. Every
namespace bind-mounts one hosts file over /etc/hosts (and an nsswitch.conf that looks host
names up there only), so `cir-n1` resolves to a node's address only inside the cluster (Lightning's MASTER_ADDR is the first host of
SLURM_NODELIST; gloo binds to the address its host name resolves to). munged runs on the
machine: its socket is a file, which every network namespace reaches.

The test process is in none of these namespaces: its client commands (sbatch, squeue,
scontrol, scancel, sinfo, srun) are wrappers, first on `env["PATH"]`, that run the real
command in the controller's network namespace. They take themselves off PATH first, so a
job (which inherits sbatch's environment) runs the real commands over the cluster's network.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from slurm_cluster import LocalSlurm, wait_for, wait_or_kill

SUBNET = "10.77.0"
KINDS = ("net", "uts", "mnt")
CLIENTS = ("sbatch", "squeue", "scontrol", "scancel", "sinfo", "srun")
WRAPPER = """#!/bin/sh
# {name} in the test cluster's controller namespace, without this wrapper on the PATH its jobs inherit
PATH="${{PATH#{bin}:}}" exec nsenter --target={pid} --net {real} "$@"
"""


class NamespacesUnavailable(RuntimeError):
    """This machine does not let us make network namespaces (not root, or no CAP_SYS_ADMIN / CAP_NET_ADMIN)."""


def check_namespaces() -> None:
    """Make and drop one network + UTS + mount namespace with a bridge in it; NamespacesUnavailable says why not."""
    missing = [tool for tool in ("unshare", "nsenter", "ip") if shutil.which(tool) is None]
    if missing:
        raise NamespacesUnavailable(f"{', '.join(missing)} not installed")
    probe = ["unshare", "--net", "--uts", "--mount", "sh", "-c",
             "ip link add br0 type bridge && ip link add v0 type veth peer name v1 && hostname cir-probe"]
    result = subprocess.run(probe, capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise NamespacesUnavailable(f"`{' '.join(probe)}` failed ({result.returncode}): {result.stderr.strip()}")


class NamespaceSlurm(LocalSlurm):
    """munged on this machine; slurmctld and two slurmd, each in its own namespaces, nodes cir-n1 and cir-n2."""

    def __init__(self, nodes: int = 2) -> None:
        super().__init__()
        self.controller = ("cir-ctl", f"{SUBNET}.1")
        self.nodes = [(f"cir-n{i}", f"{SUBNET}.{10 + i}") for i in range(1, nodes + 1)]
        self.holders: dict[str, subprocess.Popen] = {}
        self.bin = self.root / "bin"
        self.env["PATH"] = f"{self.bin}:{self.env['PATH']}"

    def _ip(self, host: str, *args: str) -> None:
        self._in(host, ["--net"], "ip", *args)

    def _in(self, host: str, kinds: list[str], *cmd: str) -> None:
        if not self._apart(self.holders[host].pid):  # never run a command meant for a node on this machine itself
            raise RuntimeError(f"{host}'s holder (pid {self.holders[host].pid}) is not in namespaces of its own")
        result = subprocess.run(["nsenter", f"--target={self.holders[host].pid}", *kinds, *cmd],
                                capture_output=True, text=True, timeout=30)
        if result.returncode != 0:
            raise RuntimeError(f"`{' '.join(cmd)}` in {host}'s namespaces failed: {result.stderr.strip()}")

    def prepare(self) -> None:
        """Namespaces, bridge, veths, addresses, host names, hosts file, client wrappers."""
        hosts = self.root / "hosts"
        hosts.write_text("127.0.0.1 localhost\n" + "".join(f"{addr} {name}\n" for name, addr in [self.controller, *self.nodes]))
        # names from the hosts file only: the namespaces reach no DNS server, and a lookup that waits for one fails
        # (c10d warned for every reverse lookup of a peer's address) instead of falling back to the number
        system = Path("/etc/nsswitch.conf")
        nsswitch = self.root / "nsswitch.conf" if system.is_file() else None
        if nsswitch is not None:
            nsswitch.write_text("".join(line for line in system.read_text().splitlines(keepends=True)
                                        if not line.startswith("hosts:")) + "hosts: files\n")
        for name, addr in [self.controller, *self.nodes]:
            self.holders[name] = subprocess.Popen(["unshare", "--net", "--uts", "--mount", "--propagation", "private", "cat"],
                                                  stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, start_new_session=True)
        # until unshare has made them (and made mounts private), a holder's namespaces are this machine's: wait until
        # it runs `cat`, or `ip` and `mount` would change this machine's network and files
        for name, holder in self.holders.items():
            wait_for(lambda holder=holder: self._apart(holder.pid) or holder.poll() is not None, 30, f"{name}'s namespaces")
        ctl = self.controller[0]
        self._ip(ctl, "link", "add", "br0", "type", "bridge")
        self._ip(ctl, "addr", "add", f"{self.controller[1]}/24", "dev", "br0")
        for name, addr in [self.controller, *self.nodes]:
            self._in(name, ["--uts"], "hostname", name)
            self._in(name, ["--mount"], "mount", "--bind", str(hosts), "/etc/hosts")
            if nsswitch is not None:
                self._in(name, ["--mount"], "mount", "--bind", str(nsswitch), str(system))
            self._ip(name, "link", "set", "lo", "up")
            if name == ctl:
                continue
            self._ip(ctl, "link", "add", f"v-{name}", "type", "veth", "peer", "name", "eth0", "netns", str(self.holders[name].pid))
            self._ip(ctl, "link", "set", f"v-{name}", "master", "br0", "up")
            self._ip(name, "addr", "add", f"{addr}/24", "dev", "eth0")
            self._ip(name, "link", "set", "eth0", "up")
        self._ip(ctl, "link", "set", "br0", "up")
        self.bin.mkdir()
        for client in CLIENTS:
            wrapper = self.bin / client
            wrapper.write_text(WRAPPER.format(name=client, bin=self.bin, pid=self.holders[ctl].pid, real=shutil.which(client)))
            wrapper.chmod(0o755)

    @staticmethod
    def _apart(pid: int) -> bool:
        """Whether the process runs `cat` (unshare has set everything up) in a network, UTS and mount namespace each
        different from this process's."""
        try:
            return Path(f"/proc/{pid}/comm").read_text().strip() == "cat" and all(Path(f"/proc/{pid}/ns/{kind}").readlink() != Path(f"/proc/self/ns/{kind}").readlink() for kind in KINDS)
        except OSError:
            return False

    def enter(self, host: str) -> list[str]:
        return ["nsenter", f"--target={self.holders[host].pid}", "--net", "--uts", "--mount", f"--wd={self.root}"]

    def teardown(self) -> None:
        """End the namespaces' holders: with their last process gone, the namespaces and their links go too."""
        for holder in self.holders.values():
            holder.stdin.close()
            wait_or_kill(holder)
        self.holders.clear()

    def node_of(self, pid: int) -> str:
        """The node whose namespaces a process runs in (by its UTS namespace)."""
        uts = Path(f"/proc/{pid}/ns/uts").readlink()
        return next(name for name, holder in self.holders.items() if Path(f"/proc/{holder.pid}/ns/uts").readlink() == uts)
