"""Throwaway virtual environments that see this environment's packages, offline, and the
tiny plugin distributions (hatchling, a ``rabbitworker.queues`` entry point) tests build and
``pip install`` into them."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from brokertools import closed_port, host_env

import rabbitworker

#: The directory that holds the ``rabbitworker`` package being tested.
HOST_SOURCE = Path(rabbitworker.__file__).resolve().parents[1]


def venv_with_outer_packages(root: Path, *extra_paths: Path) -> Path:
    """Create a venv under ``root`` whose Python also imports everything installed here
    (through a ``.pth`` running ``site.addsitedir``, so editable installs work too) and
    ``extra_paths``, and return its python. Packages installed into it stay in it."""
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    here = sysconfig.get_paths()["purelib"]
    lines = [*map(str, extra_paths), f"import site; site.addsitedir({here!r})"]
    # Named to be read first (.pth files are read in name order): an editable install made
    # in the venv may import a package from out here (hatchling's dev-mode-exact imports
    # `editables` in its own .pth).
    (Path(purelib) / "00-outer-env.pth").write_text("\n".join(lines) + "\n")
    return python


PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "{distribution}"
version = "{version}"
requires-python = ">=3.11"
dependencies = ["rabbitworker-host"]

[project.entry-points."rabbitworker.queues"]
{entry_point} = "{module}"

[tool.hatch.build.targets.wheel]
packages = ["src/{module}"]
dev-mode-exact = {dev_mode_exact}
"""

#: A plugin module as the contract asks: it defines the one hook and nothing else.
PLUGIN_MODULE = """\
from rabbitworker import QueueConfig, hookimpl


async def greet(message):
    return "hello " + message["payload"]["name"]


@hookimpl
def rabbitworker_queues():
    return [QueueConfig({queue!r}, {routing_key!r}, {{"greet": greet}}, prefetch_count=3)]
"""


@dataclass
class PluginEnv:
    """A virtual environment to pip-install plugin distributions into."""

    root: Path
    python: Path

    @classmethod
    def create(cls, root: Path) -> PluginEnv:
        """A fresh venv under ``root``. It imports the host's source too, so the host is
        found even where it is not installed editable."""
        return cls(root, venv_with_outer_packages(root, HOST_SOURCE))

    def build(
        self,
        distribution: str,
        *,
        entry_point: str,
        queue: str,
        routing_key: str = "rk",
        version: str = "1.0.0",
        source: str | None = None,
        dev_mode_exact: bool = False,
    ) -> Path:
        """Write a plugin distribution's source tree; return its directory.

        ``dev_mode_exact``: an editable install maps the module with an import hook
        (hatchling's ``editables`` style) instead of putting ``src`` on ``sys.path``.
        """
        module = distribution.replace("-", "_")
        project = self.root / "src-trees" / distribution
        package = project / "src" / module
        package.mkdir(parents=True)
        (project / "pyproject.toml").write_text(
            PYPROJECT.format(
                distribution=distribution,
                version=version,
                entry_point=entry_point,
                module=module,
                dev_mode_exact=str(dev_mode_exact).lower(),
            )
        )
        (package / "__init__.py").write_text(
            source
            if source is not None
            else PLUGIN_MODULE.format(queue=queue, routing_key=routing_key)
        )
        return project

    def pip(self, *args: str) -> None:
        result = subprocess.run(
            [str(self.python), "-m", "pip", "--disable-pip-version-check", *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr

    def install(self, *projects: Path, editable: bool = False) -> None:
        """``pip install`` the projects offline (``-e`` each when ``editable``)."""
        targets = [
            arg for project in projects for arg in (["-e"] if editable else []) + [str(project)]
        ]
        self.pip("install", "--no-index", "--no-deps", "--no-build-isolation", *targets)

    def uninstall(self, *distributions: str) -> None:
        self.pip("uninstall", "-y", *distributions)

    def env(self, amqp_url: str | None = None, **extra: str) -> dict[str, str]:
        """The host's environment in this venv: entry points autoloaded, except those of
        plugins installed outside it; ``extra`` adds or overrides variables."""
        outside = sorted({ep.name for ep in entry_points(group="rabbitworker.queues")})
        defaults = {
            "RABBITWORKER_PLUGINS": "",
            "RABBITWORKER_DISABLE_PLUGIN_AUTOLOAD": "0",
            "RABBITWORKER_DISABLED_PLUGINS": ",".join(outside),
        }
        return host_env(
            amqp_url or f"amqp://guest:guest@127.0.0.1:{closed_port()}/", **(defaults | extra)
        )

    def rabbitworker(
        self, *args: str, amqp_url: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.python), "-m", "rabbitworker", *args],
            env=self.env(amqp_url),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    def listed(self) -> list[dict[str, Any]]:
        result = self.rabbitworker("queues", "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)  # type: ignore[no-any-return]
