"""Fixtures of the SSH site tests: one loopback OpenSSH server per session and site connections to it.

The server is Debian's ``sshd`` with a generated host key and user key (``b2cal.devtools.sshd``). The
"remote" side is this machine: the site's set-up command puts this venv's ``bin`` folder, with the basf2
stand-ins, first on ``PATH``.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from server_rules import require

# Airflow reads its home when first imported; keep it out of the user's ~/airflow.
if "AIRFLOW_HOME" not in os.environ:
    _airflow_home = tempfile.mkdtemp(prefix="b2cal-ssh-tests-airflow-")
    atexit.register(shutil.rmtree, _airflow_home, True)
    os.environ["AIRFLOW_HOME"] = _airflow_home

from b2cal.devtools.sshd import LoopbackSSHD, sshd_available  # noqa: E402
from b2cal.sites import SiteSettings, parse_site_settings  # noqa: E402

BIN_DIR = Path(sys.executable).parent
#: Seconds one stand-in calibration takes in these tests.
JOB_SECONDS = "2"


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopbackSSHD]:
    """Run one loopback sshd for the whole session."""
    require(sshd_available(), "/usr/sbin/sshd is missing: install openssh-server (make system-packages)")
    server = LoopbackSSHD(tmp_path_factory.mktemp("sshd"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def site_extra(sshd: LoopbackSSHD, root: Path, **overrides: Any) -> dict[str, Any]:
    """Return the extras of an SSH site whose folders lie below ``root``."""
    extra: dict[str, Any] = {
        "transport": "ssh",
        "site": "DESY",
        "work_root": str(root / "work"),
        "storage_root": str(root / "storage"),
        "cdst_root": str(root / "cdst"),
        "backend": "HTCondor",
        "backend_options": {"universe": "vanilla", "getenv": "false"},
        "prompt_run_options": {"heartbeat": 1},
        "basf2_setup": f"export PATH={BIN_DIR}:$PATH",
        "remote_python": sys.executable,
        "env": {"B2CAL_FAKE_JOB_SECONDS": JOB_SECONDS},
        "poll_interval": 0.5,
        "command_timeout": 30,
        "unreachable_timeout": 60,
        **sshd.connection_extra(),
    }
    extra.update(overrides)
    return {key: value for key, value in extra.items() if value is not None}


def set_site(
    monkeypatch: pytest.MonkeyPatch, site: str, sshd: LoopbackSSHD, root: Path, **overrides: Any
) -> SiteSettings:
    """Create the connection ``b2cal_site_<site>`` to the loopback server and return its settings."""
    fields = sshd.connection_fields()
    extra = site_extra(sshd, root, **overrides)
    for key in ("login", "password", "port"):
        if key in overrides:
            fields[key] = overrides.pop(key)
            extra.pop(key, None)
    conn = {"conn_type": "ssh", **fields, "extra": extra}
    monkeypatch.setenv(f"AIRFLOW_CONN_B2CAL_SITE_{site.upper()}", json.dumps(conn))
    return parse_site_settings(site, extra, conn_id=f"b2cal_site_{site.lower()}", conn_type="ssh")


@pytest.fixture
def ssh_site(monkeypatch: pytest.MonkeyPatch, sshd: LoopbackSSHD, tmp_path: Path) -> SiteSettings:
    """Return the site DESY, reached over SSH, with its folders below this test's temporary folder."""
    return set_site(monkeypatch, "DESY", sshd, tmp_path)


def run_async(coroutine: Any, timeout: float = 120.0) -> Any:
    """Run a coroutine on a fresh event loop, as the triggerer or a task would, with a timeout."""
    return asyncio.run(asyncio.wait_for(coroutine, timeout))


async def first_event(trigger: Any) -> dict[str, Any]:
    """Run a trigger until its first event and return the payload."""
    async for event in trigger.run():
        return dict(event.payload)
    raise AssertionError(f"{trigger!r} ended without an event")
