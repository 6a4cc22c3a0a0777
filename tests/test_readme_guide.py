"""The README's "Write a queue plugin" guide, run command by command, word for word.

The commands run in a fresh venv that sees this environment's packages (so nothing is
downloaded); pip is told, through its own environment variables only, not to fetch
dependencies or build environments. `cd` changes the directory of the commands after it;
a bare `rabbitworker-host` is started in the background, as in a second terminal.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

from brokertools import Broker, wait_for
from venvs import venv_with_outer_packages

README = Path(__file__).parent.parent / "README.md"


def guide_commands() -> list[str]:
    text = README.read_text()
    guide = text[text.index("<!-- guide:start -->") : text.index("<!-- guide:end -->")]
    blocks = re.findall(r"```bash\n(.*?)```", guide, flags=re.S)
    return [line for block in blocks for line in block.splitlines() if line.strip()]


def shims(python: Path) -> Path:
    """rabbitworker-host, pytest and pip in the venv's bin, as an installed host has them."""
    bin_dir = python.parent
    for name, module in (
        ("rabbitworker-host", "rabbitworker"),
        ("pytest", "pytest"),
        ("pip", "pip"),
    ):
        shim = bin_dir / name
        shim.write_text(f'#!/bin/sh\nexec "{python}" -m {module} "$@"\n')
        shim.chmod(0o755)
    return bin_dir


def test_the_plugin_guide_works_as_written(broker: Broker, tmp_path: Path) -> None:
    commands = guide_commands()
    assert commands[0] == "rabbitworker-host new-plugin billing"
    bin_dir = shims(venv_with_outer_packages(tmp_path))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RABBITWORKER_")}
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env['PATH']}",
        RABBITWORKER_AMQP_URL=broker.amqp_url,
        PIP_NO_DEPS="1",
        PIP_NO_BUILD_ISOLATION="0",
        PYTHONUNBUFFERED="1",
    )
    cwd = tmp_path
    host_log = tmp_path / "host.log"
    host: subprocess.Popen[bytes] | None = None
    outputs: dict[str, str] = {}
    try:
        for command in commands:
            if command.startswith("cd "):
                cwd = cwd / shlex.split(command)[1]
                continue
            if command == "rabbitworker-host":
                with host_log.open("wb") as log:
                    host = subprocess.Popen(
                        ["bash", "-c", command],
                        cwd=cwd,
                        env=env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                wait_for(
                    lambda: "consuming from" in host_log.read_text(),
                    timeout=20,
                    message="the host to start consuming",
                )
                continue
            done = subprocess.run(
                ["bash", "-c", command],
                cwd=cwd,
                env=env,
                capture_output=True,
                text=True,
                timeout=180,
                check=False,
            )
            assert done.returncode == 0, f"{command!r} failed:\n{done.stdout}\n{done.stderr}"
            outputs[command] = done.stdout
        assert host is not None, "the guide never starts the host"
        wait_for(
            lambda: "ACKed message" in host_log.read_text(),
            timeout=20,
            message="the published task to be acked",
        )
    finally:
        if host is not None:
            host.terminate()
            host.wait(timeout=40)
    log = host_log.read_text()
    assert "[billing.queue] hello, Ada!" in log
    assert "[billing.queue] ACKed message" in log
    assert "3 passed" in outputs["pytest"]
    assert "billing.queue" in outputs["rabbitworker-host queues"]
