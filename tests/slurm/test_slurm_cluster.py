"""The test cluster helper: it runs jobs, stops exactly what it started, and says why when SLURM is unavailable."""

from __future__ import annotations

import shutil

import pytest
import slurm_cluster as cluster_module
from slurm_cluster import LocalSlurm, SlurmUnavailable, ensure_packages


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
