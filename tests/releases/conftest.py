"""Fixtures of the release discovery tests: release catalogs for the basf2 stand-ins and a site that has them.

A site's software area is a folder with one sub-folder per installed release, which the site's list
command (``ls -F``) prints. The stand-ins read each release's settings from ``catalogs/<release>.json``;
the site's set-up command puts this venv's ``bin`` first on ``PATH`` and names the release in
``BELLE2_RELEASE``, as ``b2setup`` does.
"""

from __future__ import annotations

import atexit
import copy
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from server_rules import require

# Airflow reads its home when first imported; keep it out of the user's ~/airflow.
if "AIRFLOW_HOME" not in os.environ:
    _airflow_home = tempfile.mkdtemp(prefix="b2cal-release-tests-airflow-")
    atexit.register(shutil.rmtree, _airflow_home, True)
    os.environ["AIRFLOW_HOME"] = _airflow_home

from b2cal.devtools.sshd import LoopbackSSHD, sshd_available  # noqa: E402

BIN_DIR = Path(sys.executable).parent
OLD = "release-11-00-00"
NEW = "release-12-00-00"
BROKEN = "release-12-01-00"
CHECK_ERROR = "ImportError: cannot import name 'CDCDeadboard' from 'cdc.calibration'"
#: The calibrations of the small test release, with a dependency chain.
BASE_CALIBRATIONS = ("CDC Tracking", "CDC badwire", "TOP pre-tracking calibration")
ADDED = "CDC deadboard"
REMOVED = "TOP pre-tracking calibration"
CHANGED = "CDC badwire"


def packaged() -> dict[str, Any]:
    """Return the packaged catalog of release-11-00-00."""
    path = resources.files("b2cal") / "data" / "releases" / f"{OLD}.json"
    return dict(json.loads(path.read_text(encoding="utf-8")))


def old_release() -> dict[str, Any]:
    """Return a small release: three calibrations of the packaged catalog."""
    content = packaged()
    entries = [
        copy.deepcopy(entry) for entry in content["calibrations"] if entry["name"] in BASE_CALIBRATIONS
    ]
    return {
        "basf2_release": OLD,
        "input_data_filters": content["input_data_filters"],
        "calibrations": entries,
    }


def new_release() -> dict[str, Any]:
    """Return the next release: one calibration added, one removed, one dependency changed."""
    content = old_release()
    content["basf2_release"] = NEW
    added = next(entry for entry in packaged()["calibrations"] if entry["name"] == ADDED)
    content["calibrations"] = [entry for entry in content["calibrations"] if entry["name"] != REMOVED]
    content["calibrations"].append(copy.deepcopy(added))
    changed = next(entry for entry in content["calibrations"] if entry["name"] == CHANGED)
    changed["depends_on"] = [*changed["depends_on"], "CDC deadboard"]
    return content


def broken_release() -> dict[str, Any]:
    """Return a release whose ``b2caf-prompt-check`` fails."""
    content = old_release()
    content["basf2_release"] = BROKEN
    content["check_error"] = CHECK_ERROR
    return content


@dataclass
class SiteSoftware:
    """A site's software area and the stand-ins' catalogs of its releases."""

    root: Path

    @property
    def releases_dir(self) -> Path:
        """The folder the list command lists: one sub-folder per installed release."""
        return self.root / "software" / "releases"

    @property
    def catalogs_dir(self) -> Path:
        """The folder ``$B2CAL_BASF2_RELEASES`` of the stand-ins."""
        return self.root / "catalogs"

    def install(self, content: dict[str, Any]) -> None:
        """Install a release: its folder for the listing and its catalog for the stand-ins."""
        name = content["basf2_release"]
        (self.releases_dir / name).mkdir(parents=True, exist_ok=True)
        self.catalogs_dir.mkdir(parents=True, exist_ok=True)
        (self.catalogs_dir / f"{name}.json").write_text(json.dumps(content), encoding="utf-8")

    def uninstall(self, name: str) -> None:
        """Remove a release from the listing; the stand-ins' catalog stays, as files on a mirror may."""
        shutil.rmtree(self.releases_dir / name)

    def extra(self, **overrides: Any) -> dict[str, Any]:
        """Return the site connection's extras, without the SSH part."""
        extra: dict[str, Any] = {
            "work_root": str(self.root / "work"),
            "storage_root": str(self.root / "storage"),
            "basf2_setup": f"export PATH={BIN_DIR}:$PATH BELLE2_RELEASE={{release}}",
            "env": {"B2CAL_BASF2_RELEASES": str(self.catalogs_dir)},
            "release_list_command": ["ls", "-F", str(self.releases_dir)],
            "release_timeout": 60,
            "command_timeout": 60,
        }
        extra.update(overrides)
        return extra


@pytest.fixture
def software(tmp_path: Path) -> SiteSoftware:
    """Return a site software area with release-11-00-00 installed."""
    area = SiteSoftware(tmp_path / "site")
    area.releases_dir.mkdir(parents=True)
    # Folders that are not releases, as a real software area has them.
    (area.releases_dir / "externals").mkdir()
    (area.releases_dir / "README").write_text("releases of this site\n")
    area.install(old_release())
    return area


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopbackSSHD]:
    """Run one loopback sshd for the release tests."""
    require(sshd_available(), "/usr/sbin/sshd is missing: install openssh-server (make system-packages)")
    server = LoopbackSSHD(tmp_path_factory.mktemp("sshd"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def plugin_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Return the URL of a fresh plugin database, also set as the connection ``b2cal_db``."""
    from b2cal.db.engine import upgrade

    url = f"sqlite:///{tmp_path / 'b2cal.db'}"
    upgrade(url)
    monkeypatch.setenv("AIRFLOW_CONN_B2CAL_DB", json.dumps({"conn_type": "generic", "extra": {"url": url}}))
    return url


def set_ssh_site(
    monkeypatch: pytest.MonkeyPatch, site: str, sshd: LoopbackSSHD, software: SiteSoftware, **overrides: Any
) -> None:
    """Create the connection ``b2cal_site_<site>`` to the loopback server for ``software``.

    An override of ``None`` leaves that extra out.
    """
    extra = {
        "transport": "ssh",
        "remote_python": sys.executable,
        **software.extra(**overrides),
        **sshd.connection_extra(),
    }
    extra = {key: value for key, value in extra.items() if value is not None}
    conn = {"conn_type": "ssh", **sshd.connection_fields(), "extra": extra}
    monkeypatch.setenv(f"AIRFLOW_CONN_B2CAL_SITE_{site.upper()}", json.dumps(conn))
