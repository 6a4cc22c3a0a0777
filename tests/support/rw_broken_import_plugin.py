"""A plugin whose import fails, as one with a missing dependency would."""

from __future__ import annotations

import a_dependency_nobody_installed  # type: ignore[import-not-found]  # noqa: F401
