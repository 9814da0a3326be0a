"""The test cluster helper: it runs jobs, stops exactly what it started, and says why when SLURM is unavailable."""

from __future__ import annotations

import shutil
import subprocess

import namespaces
import pytest
import slurm_cluster as cluster_module
from namespaces import NamespaceSlurm, NamespacesUnavailable, check_namespaces
from slurm_cluster import LocalSlurm, SlurmUnavailable, ensure_packages, running


def test_missing_packages_without_apt_or_root_name_what_is_missing(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(cluster_module.os, "geteuid", lambda: 1000)
    with pytest.raises(SlurmUnavailable, match="munged, slurmctld.*needs apt-get as root"):
        ensure_packages()


@pytest.mark.slurm
def test_a_cluster_runs_a_two_task_step_then_stops_its_own_daemons(slurm_packages):
    cluster = LocalSlurm()
    try:
        cluster.start()
        ranks = cluster.run("srun", "--ntasks=2", "sh", "-c", "echo $SLURM_PROCID/$SLURM_NTASKS").stdout.split()
        assert sorted(ranks) == ["0/2", "1/2"]
    finally:
        daemons = list(cluster.daemons)
        cluster.stop()
    assert [d.args[0] for d in daemons] == ["munged", "slurmctld", "slurmd"]
    assert all(d.returncode is not None for d in daemons)
    assert not cluster.root.exists()


def test_without_unshare_the_two_node_cluster_is_unavailable_naming_the_tools(monkeypatch):
    monkeypatch.setattr(namespaces.shutil, "which", lambda name: None)
    with pytest.raises(NamespacesUnavailable, match="unshare, nsenter, ip not installed"):
        check_namespaces()


@pytest.mark.slurm
def test_two_namespace_nodes_run_a_task_each_under_their_own_names_then_everything_stops(slurm_namespaces):
    cluster = NamespaceSlurm()
    with running(cluster):
        step = cluster.run("srun", "--nodes=2", "--ntasks-per-node=1", "sh", "-c",
                           'echo "$SLURM_PROCID $(hostname) $SLURM_NODELIST $(getent hosts cir-n1)"').stdout
        holders, daemons = list(cluster.holders.values()), list(cluster.daemons)
    # each task on its own host; both resolve the first node to its bridge address, which this machine does not know
    assert subprocess.run(["getent", "hosts", "cir-n1"], capture_output=True).returncode != 0
    assert sorted(step.split("\n")[:2]) == ["0 cir-n1 cir-n[1-2] 10.77.0.11      cir-n1", "1 cir-n2 cir-n[1-2] 10.77.0.11      cir-n1"]
    assert all(p.returncode is not None for p in daemons + holders) and not cluster.root.exists()
