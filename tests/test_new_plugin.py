"""`rabbitworker-host new-plugin NAME` writes a plugin that passes its own tests."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from venvs import venv_with_outer_packages


def run(*command: str | Path, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_generated_plugin_installs_registers_and_passes_its_own_tests(tmp_path: Path) -> None:
    created = run(sys.executable, "-m", "rabbitworker", "new-plugin", "billing", cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    plugin = tmp_path / "rabbitworker-billing"
    python = venv_with_outer_packages(tmp_path)

    installed = run(
        python,
        "-m",
        "pip",
        "install",
        "--no-deps",
        "--no-build-isolation",
        "-e",
        plugin,
        cwd=tmp_path,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    tests = run(python, "-m", "pytest", "-q", "-p", "no:cacheprovider", cwd=plugin)
    listed = run(python, "-m", "rabbitworker", "queues", "--json", cwd=tmp_path)

    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "3 passed" in tests.stdout
    queues = {row["queue"]: row for row in json.loads(listed.stdout)}
    assert queues["billing.queue"]["plugin"]["distribution"] == "rabbitworker-billing"
    assert queues["billing.queue"]["tasks"] == ["greet"]


def test_new_plugin_refuses_a_name_that_is_not_an_identifier(tmp_path: Path) -> None:
    created = run(sys.executable, "-m", "rabbitworker", "new-plugin", "Bad-Name", cwd=tmp_path)

    assert created.returncode == 1
    assert "lowercase letters" in created.stderr
    assert not any(tmp_path.iterdir())
