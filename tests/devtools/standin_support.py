"""Helpers shared by the stand-in tests: paths of the installed scripts and the packaged catalog."""

from __future__ import annotations

import json
import sys
from importlib import resources
from pathlib import Path
from typing import Any

BIN_DIR = Path(sys.executable).parent
RELEASE = "release-11-00-00"


def tool_path(name: str) -> str:
    """Return the path of an installed console script, failing the test if it is missing."""
    path = BIN_DIR / name
    assert path.is_file(), f"{path} is missing: run pip install -e . in the project's virtualenv"
    return str(path)


def packaged_release() -> dict[str, Any]:
    """Return the packaged release-11-00-00 catalog."""
    text = (
        resources.files("b2cal").joinpath("data", "releases", f"{RELEASE}.json").read_text(encoding="utf-8")
    )
    return json.loads(text)
