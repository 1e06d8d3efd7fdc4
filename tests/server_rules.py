"""The rule for tests that need a server: skip where it is missing, fail under ``CI=true``.

It lives in a module of its own because pytest imports every ``conftest.py`` under the module name
``conftest``, so the test folders cannot import the rule from ``tests/conftest.py``. Pytest puts
``tests/`` on ``sys.path`` when it loads that file, so every test module can import this one.
"""

from __future__ import annotations

import os

import pytest

POSTGRES_ADMIN_URL = os.environ.get(
    "B2CAL_TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
)


def require(condition: bool, reason: str) -> None:
    """Skip the test with ``reason`` when ``condition`` is false, or fail it under ``CI=true``."""
    if condition:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true requires it)")
    pytest.skip(reason)
