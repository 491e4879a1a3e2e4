"""Where browser tests leave what a person may want to look at: screenshots.

``test-artifacts/screenshots/`` at the repository root (gitignored), or
``$CLARION_TEST_ARTIFACTS/screenshots/`` when that is set (a CI job uploads it).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Final

REPO_ROOT: Final = Path(__file__).resolve().parents[2]
PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"


def screenshots_dir() -> Path:
    base = os.environ.get("CLARION_TEST_ARTIFACTS")
    root = Path(base) if base else REPO_ROOT / "test-artifacts"
    directory = root / "screenshots"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def screenshot_path(test_name: str, label: str = "") -> Path:
    """``<test name>[--<label>].png``, with anything unsafe in a file name made ``_``."""
    name = f"{test_name}--{label}" if label else test_name
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")
    return screenshots_dir() / f"{stem}.png"


def is_png(path: Path) -> bool:
    with path.open("rb") as file:
        return file.read(len(PNG_SIGNATURE)) == PNG_SIGNATURE
