"""`slurm_cluster`: a real one-node SLURM cluster for the session (packages installed if missing)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from slurm_cluster import LocalSlurm, SlurmUnavailable, ensure_packages


@pytest.fixture(scope="session")
def slurm_packages() -> None:
    """Skips, with the reason, only where SLURM's packages are missing and cannot be installed."""
    try:
        ensure_packages()
    except SlurmUnavailable as err:
        pytest.skip(f"no SLURM: {err}")


@pytest.fixture(scope="session")
def slurm_cluster(slurm_packages: None) -> Iterator[LocalSlurm]:
    cluster = LocalSlurm()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
