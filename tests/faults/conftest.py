"""Fixtures of the fault-injection suite (``pytest -m faults``, ``nox -s faults``).

Each test gets its own vhost (the root ``broker`` fixture) and a :class:`FaultRig` that
starts real ``python -m rabbitworker`` processes with ``fault_plugin``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# --import-mode=importlib puts no test directory on sys.path; the suite's helpers live
# beside this file.
sys.path.insert(0, str(Path(__file__).parent))

from faultkit import FaultRig


@pytest.fixture
def rig(amqp_url: str, tmp_path: Path) -> Iterator[FaultRig]:
    """Host processes running ``fault_plugin`` on this test's vhost; killed afterwards."""
    rig = FaultRig(amqp_url, tmp_path)
    yield rig
    rig.kill_all()
