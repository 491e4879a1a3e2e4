"""Which Chromium the browser tests drive, and how to launch it.

The tests use the system's Chromium (Debian's ``chromium`` package), never a browser
Playwright downloads: ``CLARION_CHROMIUM`` names one explicitly, else the first of
``/usr/bin/chromium``, ``chromium`` and ``chromium-browser`` that exists.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Final

NO_CHROMIUM: Final = (
    "browser tests SKIPPED: no Chromium (install Debian's chromium and chromium-driver)"
)
CANDIDATES: Final = ("/usr/bin/chromium", "chromium", "chromium-browser")


def find_chromium(environ: Mapping[str, str] = os.environ) -> Path | None:
    """The Chromium executable to drive, or None when this machine has none."""
    named = environ.get("CLARION_CHROMIUM")
    candidates = (named,) if named else CANDIDATES
    for candidate in candidates:
        found = shutil.which(candidate)
        if found:
            return Path(found)
    return None


def launch_args() -> list[str]:
    """Chromium's sandbox cannot start as root (containers, CI): only then turn it off."""
    return ["--no-sandbox"] if os.geteuid() == 0 else []
