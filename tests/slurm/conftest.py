"""`slurm_cluster`: a real one-node SLURM cluster for the session (packages installed if missing);
`two_nodes`: a real two-node one, each node in its own namespaces (namespaces.py); `cluster`: the two-node one,
else (namespaces refused, the reason printed) the one-node one."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from namespaces import NamespaceSlurm, NamespacesUnavailable, check_namespaces
from slurm_cluster import LocalSlurm, SlurmUnavailable, ensure_packages, running


@pytest.fixture(scope="session")
def slurm_packages() -> None:
    """Skips, with the reason, only where SLURM's packages are missing and cannot be installed."""
    try:
        ensure_packages()
    except SlurmUnavailable as err:
        pytest.skip(f"no SLURM: {err}")


@pytest.fixture(scope="session")
def slurm_cluster(slurm_packages: None) -> Iterator[LocalSlurm]:
    with running(LocalSlurm()) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def slurm_namespaces(slurm_packages: None) -> None:
    """Skips, with the reason, where this machine does not let us make network namespaces."""
    try:
        check_namespaces()
    except NamespacesUnavailable as err:
        pytest.skip(f"no two-node cluster: {err}")


@pytest.fixture(scope="session")
def two_nodes(slurm_namespaces: None) -> Iterator[NamespaceSlurm]:
    with running(NamespaceSlurm()) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def cluster(request) -> LocalSlurm:
    try:
        return request.getfixturevalue("two_nodes")
    except pytest.skip.Exception as err:
        print(f"one node only: {err}")
        return request.getfixturevalue("slurm_cluster")
