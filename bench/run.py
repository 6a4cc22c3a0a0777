"""Benchmark rabbitworker-host against raw aio-pika and FastStream: ``python bench/run.py``.

The scenarios live in the ``rwbench`` package beside this file; see bench/README.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rwbench.cli import main

if __name__ == "__main__":
    main()
