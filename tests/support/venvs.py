"""Throwaway virtual environments that see this environment's packages, offline."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path


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
    (Path(purelib) / "outer_env.pth").write_text("\n".join(lines) + "\n")
    return python
