"""Fixtures for scale-out tests: a real Redis Cluster of three masters and three replicas, and
the gateway and worker kits' fixtures (upstream, keys, projects, processes)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ops.rediscluster import Cluster, available, redis_cluster
from tests.gateway.conftest import http, issue_key, upstream
from tests.worker.conftest import make_project, processes

__all__ = ["http", "issue_key", "make_project", "processes", "upstream"]  # fixtures, by name


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A Redis Cluster of this test's own, on free loopback ports; stopped at the end."""
    if not available():
        pytest.skip("redis-server and redis-cli are not installed")
    with redis_cluster(tmp_path / "redis-cluster") as running:
        yield running
