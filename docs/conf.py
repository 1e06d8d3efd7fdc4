"""Sphinx configuration of the b2cal documentation."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "include"), str(ROOT / "plugins")]

project = "b2cal"
author = "b2cal developers"
extensions = ["sphinx.ext.autodoc", "sphinx.ext.viewcode"]
autodoc_typehints = "description"
autodoc_mock_imports = ["airflow"]
exclude_patterns = ["_build"]
html_theme = "alabaster"


def _drop_builtins(app: object, env: object) -> None:
    """Leave Python's builtins out of the source-code pages.

    Some documented members resolve to the ``builtins`` module, for which viewcode lists a page it
    cannot write, so the module index would link to a missing page.
    """
    modules = getattr(env, "_viewcode_modules", {})
    modules.pop("builtins", None)


def setup(app: object) -> None:
    app.connect("env-updated", _drop_builtins)  # type: ignore[attr-defined]
