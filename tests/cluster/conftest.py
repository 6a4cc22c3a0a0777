"""Fixtures of the cluster suite: a real three-node RabbitMQ cluster on this machine.

The cluster starts once per session, the first time a test asks for it (about half a
minute), so ``nox -s tests`` needs no manual step; it is stopped and deleted at the end even
when tests fail. Every test finds all three nodes running: a node a test stopped or killed is
brought back after it. ``nox -s cluster`` (``pytest -m cluster``) runs only this suite.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).parent
# --import-mode=importlib puts no test directory on sys.path: the drills use their own
# helpers (drillkit) and the fault suite's (faultkit, FaultRig).
for helpers in (HERE, HERE.parent / "faults"):
    if str(helpers) not in sys.path:
        sys.path.insert(0, str(helpers))

from clustertools import RabbitCluster, running_cluster  # noqa: E402

#: Per-test timeout of this suite: the first test also waits for the cluster to start, and
#: drills (kill a node, wait for it to boot again) take tens of seconds each.
CLUSTER_TEST_TIMEOUT = 300
STARTUP_KEY = pytest.StashKey[dict[str, float]]()


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test under tests/cluster/ carries the ``cluster`` marker and the suite's
    timeout, so ``-m cluster`` selects it and ``-m "not cluster"`` leaves it out, whether or
    not a new module remembered its ``pytestmark``. ``tryfirst``: before ``-m`` deselects."""
    for item in items:
        if HERE in item.path.parents:
            if item.get_closest_marker("cluster") is None:
                item.add_marker(pytest.mark.cluster)
            if item.get_closest_marker("timeout") is None:
                item.add_marker(pytest.mark.timeout(CLUSTER_TEST_TIMEOUT))


@pytest.fixture(scope="session")
def rabbit_cluster(pytestconfig: pytest.Config) -> Iterator[RabbitCluster]:
    """Three RabbitMQ nodes clustered for this session (``rw1@localhost`` ... ``rw3@localhost``;
    ``RABBITWORKER_TEST_CLUSTER_PREFIX`` changes ``rw``), stopped and deleted afterwards."""
    timings = pytestconfig.stash.setdefault(STARTUP_KEY, {})
    with running_cluster(os.environ.get("RABBITWORKER_TEST_CLUSTER_PREFIX", "rw")) as cluster:
        timings["start"] = cluster.startup_seconds
        yield cluster
        stopping = time.monotonic()
    timings["stop"] = time.monotonic() - stopping


@pytest.fixture(autouse=True)
def _restore_cluster_nodes(rabbit_cluster: RabbitCluster) -> Iterator[None]:
    """After each test, bring back any node it stopped or killed, so one test's drill never
    breaks the next."""
    yield
    rabbit_cluster.restore()


@pytest.fixture
def cluster_vhost(rabbit_cluster: RabbitCluster) -> Iterator[str]:
    """A fresh vhost on the cluster (guest has full rights), deleted after the test."""
    vhost = rabbit_cluster.create_vhost()
    yield vhost
    # Its quorum queues have a member on every node: delete it from a whole cluster, not
    # while a node the test stopped is still coming back.
    rabbit_cluster.restore()
    rabbit_cluster.delete_vhost(vhost)


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    timings = config.stash.get(STARTUP_KEY, {})
    if "start" in timings:
        stop = f", stopped in {timings['stop']:.1f} s" if "stop" in timings else ""
        terminalreporter.write_line(f"test cluster: started in {timings['start']:.1f} s{stop}")
