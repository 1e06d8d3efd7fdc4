"""File sources: path templates on the local disk and over a shell, and Rucio against a real server."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from b2cal.filesources import (
    FileEntry,
    PathTemplateSource,
    RucioFileSource,
    SshCommandError,
    SshDirectoryLister,
    pfn_path,
    pfn_to_path,
)
from b2cal.iov import IoV


def write_files(root: Path, tag: str, exp: int, run: int, names: list[str]) -> None:
    folder = root / tag / f"e{exp:04d}" / f"r{run:05d}"
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(name.encode())


def test_path_template_lists_only_existing_runs(tmp_path: Path):
    write_files(tmp_path, "hadron_calib", 26, 1, ["b.root", "a.root", "notes.txt"])
    write_files(tmp_path, "hadron_calib", 26, 3, ["c.root"])
    source = PathTemplateSource(tmp_path)
    found = source.list_files("hadron_calib", [(26, 1), (26, 2), (26, 3)])
    assert sorted(found) == [(26, 1), (26, 3)]
    folder = tmp_path / "hadron_calib" / "e0026" / "r00001"
    assert found[(26, 1)] == [
        FileEntry(str(folder / "a.root"), None, 6),
        FileEntry(str(folder / "b.root"), None, 6),
    ]


def test_path_template_is_checked():
    with pytest.raises(ValueError, match="lacks {run}"):
        PathTemplateSource("/data", "{tag}/e{exp:04d}")
    with pytest.raises(ValueError, match="does not format"):
        PathTemplateSource("/data", "{tag}/{exp}/{run}/{site}")


class LocalShellClient:
    """Runs commands with the local shell and returns them the way ``paramiko.SSHClient`` does."""

    def __init__(self) -> None:
        self.commands: list[str] = []

    def exec_command(self, command: str, timeout: float | None = None) -> tuple[Any, Any, Any]:
        self.commands.append(command)
        result = subprocess.run(["sh", "-c", command], capture_output=True, timeout=timeout)
        return None, _Stream(result.stdout, result.returncode), _Stream(result.stderr, result.returncode)


class _Stream:
    def __init__(self, data: bytes, status: int) -> None:
        self._data = data
        self.channel = self
        self._status = status

    def read(self) -> bytes:
        return self._data

    def recv_exit_status(self) -> int:
        return self._status


def test_ssh_lister_matches_local_listing(tmp_path: Path):
    for run in range(1, 6):
        write_files(
            tmp_path, "mumu_tight_or_highm_calib", 26, run, [f"f{index}.root" for index in range(run)]
        )
    write_files(tmp_path, "mumu_tight_or_highm_calib", 26, 7, ["odd name with spaces.root"])
    client = LocalShellClient()
    remote = PathTemplateSource(tmp_path, lister=SshDirectoryLister(client, host="site", batch_size=3))
    local = PathTemplateSource(tmp_path)
    runs = [(26, run) for run in range(0, 9)]
    assert remote.list_files("mumu_tight_or_highm_calib", runs) == local.list_files(
        "mumu_tight_or_highm_calib", runs
    )
    # Nine folders in batches of three: three commands, although most folders do not exist.
    assert len(client.commands) == 3
    assert "ssh site" in remote.description


def test_ssh_lister_reports_real_errors(tmp_path: Path):
    folder = tmp_path / "locked"
    folder.mkdir()
    client = LocalShellClient()
    lister = SshDirectoryLister(client, host="site")
    lister.command = lambda folders, pattern: "echo 'find: permission denied' >&2; exit 1"  # type: ignore[method-assign]
    with pytest.raises(SshCommandError, match="permission denied.*storage_root"):
        lister.list_directories([str(folder)], "*.root")


def test_pfn_to_path():
    assert pfn_to_path("file://localhost/data/BNL-DISK/b2cal/x.root") == "/data/BNL-DISK/b2cal/x.root"
    assert pfn_to_path("davs://storage.example:443/b2cal/x.root") == "davs://storage.example:443/b2cal/x.root"


def test_rucio_source_needs_an_rse():
    with pytest.raises(ValueError, match="rse is empty"):
        RucioFileSource(object(), "b2cal", "")


@pytest.fixture
def registered_skims(rucio_conn: Any, tmp_path: Path) -> dict[str, Any]:
    """Register skim files at KEK-DISK through the Rucio hook, as the skim replication DAG does."""
    from b2cal.rucio import plan_skim_registration
    from b2cal_airflow.hooks.rucio import RucioHook

    tag = f"hadron_calib{tmp_path.name[-6:].replace('-', '').replace('_', '')}"
    storage = tmp_path / "storage"
    write_files(storage, tag, 26, 1, ["s1.root", "s0.root"])
    write_files(storage, tag, 26, 2, ["s0.root"])
    write_files(storage, tag, 27, 4, ["s0.root", "s1.root", "s2.root"])
    hook = RucioHook()
    plan = plan_skim_registration(storage, runs=IoV(0, 0, -1, -1), scope=rucio_conn.scope, rse="KEK-DISK")
    hook.register(plan)
    client = hook.get_conn()
    client.set_metadata(rucio_conn.scope, f"skim/{tag}/e0026/r00001/s0.root", "events", 1500)
    yield {"client": client, "tag": tag, "scope": rucio_conn.scope, "rse_root": rucio_conn.rse_root}
    hook.close()


def test_rucio_source_lists_replicas_per_run(registered_skims: dict[str, Any]):
    client, tag, scope = registered_skims["client"], registered_skims["tag"], registered_skims["scope"]
    source = RucioFileSource(client, scope, "KEK-DISK", chunk_size=2)
    found = source.list_files(tag, [(26, 1), (26, 2), (26, 3), (27, 4)], with_events=True)
    assert sorted(found) == [(26, 1), (26, 2), (27, 4)]
    assert [Path(entry.path).name for entry in found[(26, 1)]] == ["s0.root", "s1.root"]
    assert [len(found[key]) for key in sorted(found)] == [2, 1, 3]
    for entries in found.values():
        for entry in entries:
            assert Path(entry.path).is_file()
            assert str(registered_skims["rse_root"]) in entry.path
    assert found[(26, 1)][0].events == 1500
    assert found[(26, 1)][1].events is None
    assert found[(26, 1)][0].size == len(b"s0.root")


def test_rucio_source_sees_only_its_rse(registered_skims: dict[str, Any]):
    client, tag, scope = registered_skims["client"], registered_skims["tag"], registered_skims["scope"]
    # Nothing was replicated to BNL yet, so the site has no skim files although the datasets exist.
    assert RucioFileSource(client, scope, "BNL-DISK").list_files(tag, [(26, 1), (27, 4)]) == {}
    assert RucioFileSource(client, scope, "KEK-DISK").list_files("no_such_skim", [(26, 1)]) == {}


def test_pfn_path():
    assert pfn_path("root://door.example:1094//pnfs/b2cal/x.root") == "/pnfs/b2cal/x.root"
    assert pfn_path("file://localhost/data/x%20y.root") == "/data/x y.root"


def test_rucio_source_takes_pfns_of_one_scheme(rucio_conn: Any, tmp_path: Path):
    """An RSE with a file and an xrootd protocol: the source gives the PFNs of the scheme it is given."""
    from b2cal.rucio import plan_skim_registration
    from b2cal_airflow.hooks.rucio import RucioHook

    tag = f"bhabha_calib{tmp_path.name[-6:].replace('-', '').replace('_', '')}"
    write_files(tmp_path / "storage", tag, 32, 1, ["s0.root", "s1.root"])
    hook = RucioHook()
    client = hook.get_conn()
    door = {
        "scheme": "root",
        "hostname": "xrootd-door.desy.invalid",
        "port": 1094,
        "prefix": "//pnfs/desy/",
        "impl": "rucio.rse.protocols.xrootd.Default",
        "domains": {"lan": {"read": 2, "write": 0, "delete": 0}, "wan": {"read": 2, "write": 0, "delete": 0}},
    }
    if not any(protocol["scheme"] == "root" for protocol in client.get_protocols("DESY-DISK")):
        client.add_protocol("DESY-DISK", door)
    plan = plan_skim_registration(
        tmp_path / "storage", runs=IoV(32, 0, 32, -1), scope=rucio_conn.scope, rse="DESY-DISK"
    )
    hook.register(plan)
    scope = rucio_conn.scope
    try:
        xrootd = RucioFileSource(client, scope, "DESY-DISK", scheme="root").list_files(tag, [(32, 1)])
        paths = RucioFileSource(client, scope, "DESY-DISK", scheme="root", paths_only=True).list_files(
            tag, [(32, 1)]
        )
        local = RucioFileSource(client, scope, "DESY-DISK", scheme="file").list_files(tag, [(32, 1)])
    finally:
        hook.close()

    names = [f"skim/{tag}/e0032/r00001/s0.root", f"skim/{tag}/e0032/r00001/s1.root"]
    assert [entry.path for entry in xrootd[(32, 1)]] == [
        f"root://xrootd-door.desy.invalid:1094//pnfs/desy/{scope}/{name}" for name in names
    ]
    assert [entry.path for entry in paths[(32, 1)]] == [f"/pnfs/desy/{scope}/{name}" for name in names]
    for entry in local[(32, 1)]:
        assert Path(entry.path).is_file()
        assert entry.path.startswith(str(rucio_conn.rse_root / "DESY-DISK"))
