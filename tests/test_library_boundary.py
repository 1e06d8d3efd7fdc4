"""The domain library must stay importable without Airflow."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import b2cal


def test_library_imports_no_airflow():
    modules = [
        info.name
        for info in pkgutil.walk_packages(b2cal.__path__, "b2cal.")
        if ".migrations" not in info.name and not info.name.endswith((".cli", ".stack", ".e2e"))
    ]
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print(sorted(m for m in sys.modules if m == 'airflow' or m.startswith('airflow.')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert len(modules) > 8
    assert result.stdout.strip() == "[]"
