"""Site settings read from connection extras, and their checks."""

from __future__ import annotations

import pytest

from b2cal.filesources import PathTemplateSource, RucioFileSource
from b2cal.sites import SiteConfigError, build_skim_source, parse_site_settings

SSH_EXTRA = {
    "transport": "ssh",
    "site": "BNL",
    "work_root": "/gpfs/belle2/b2cal/jobs",
    "storage_root": "/gpfs/belle2/skims",
    "backend": "HTCondor",
    "backend_options": {"universe": "vanilla", "path_prefix": "root://xrootd-door.bnl.invalid:1094"},
    "prompt_run_options": {"heartbeat": 60, "max_subjobs": 200},
    "basf2_setup": "source /cvmfs/belle.cern.ch/tools/b2setup {release}",
    "host_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB2cal",
}


def parse(extra: dict, conn_type: str | None = "ssh"):
    return parse_site_settings("BNL", extra, conn_id="b2cal_site_bnl", conn_type=conn_type)


def test_ssh_site_settings() -> None:
    site = parse(SSH_EXTRA)
    assert site.is_ssh
    assert site.name == "BNL"
    assert site.cdst_root == "/gpfs/belle2/cdst"
    assert site.backend_options["path_prefix"] == "root://xrootd-door.bnl.invalid:1094"
    assert (
        site.setup_command("release-11-00-00") == "source /cvmfs/belle.cern.ch/tools/b2setup release-11-00-00"
    )
    assert "host_key" not in site.to_dict()


def test_transport_defaults_follow_the_connection_type() -> None:
    local = {key: value for key, value in SSH_EXTRA.items() if key not in ("transport", "host_key")}
    assert parse(local, "generic").transport == "local"
    assert parse({**local, "host_key": SSH_EXTRA["host_key"]}, "ssh").transport == "ssh"


def test_setup_command_per_release() -> None:
    site = parse({**SSH_EXTRA, "basf2_setup": {"release-10-00-00": "setup10", "*": "setup {release}"}})
    assert site.setup_command("release-10-00-00") == "setup10"
    assert site.setup_command("release-11-00-00") == "setup release-11-00-00"
    only_ten = parse({**SSH_EXTRA, "basf2_setup": {"release-10-00-00": "setup10"}})
    with pytest.raises(SiteConfigError, match="no command for 'release-11-00-00'"):
        only_ten.setup_command("release-11-00-00")


def test_release_is_quoted_in_the_setup_command() -> None:
    site = parse(SSH_EXTRA)
    assert site.setup_command("it's") == "source /cvmfs/belle.cern.ch/tools/b2setup 'it'\"'\"'s'"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"transport": "ftp"}, "transport 'ftp' is invalid"),
        ({"work_root": "relative/jobs"}, "work_root 'relative/jobs' must be an absolute path"),
        ({"work_root": "/gpfs/../etc"}, "contains '..'"),
        ({"storage_root": None}, "lacks the extra 'storage_root'"),
        ({"backend": "Slurm"}, "Backend 'Slurm' is not supported"),
        ({"backend_options": {"queue": "l"}}, "Unknown HTCondor backend option 'queue'"),
        ({"prompt_run_options": {"heartbeat": "often"}}, "'heartbeat' must be a non-negative integer"),
        ({"basf2_setup": "source a\nsource b"}, "line break"),
        ({"env": {"1BAD": "x"}}, "env name '1BAD' is invalid"),
        ({"poll_interval": 0}, "poll_interval 0 must be a positive number"),
        ({"max_sessions": 2.5}, "max_sessions 2.5 must be a positive integer"),
        ({"remote_python": "python3; id"}, "remote_python"),
        ({"path_template": "/abs/{tag}/{exp}/{run}"}, "must be relative"),
        ({"host_key": None}, "neither the extra host_key nor known_hosts"),
        ({"known_hosts": "/etc/ssh/known_hosts"}, "sets both host_key and known_hosts"),
        ({"host_key": "AAAAC3NzaC1lZDI1NTE5AAAAIB2cal"}, "host_key must be '<key type> <base64 key>'"),
        ({"no_host_key_check": True}, "turns host key checking off"),
        ({"cdst_command": "produce --all"}, "cdst_command"),
        ({"file_source": "xrootd"}, "file_source 'xrootd' is invalid; use 'path'"),
        ({"file_source": "rucio"}, "file_source 'rucio' needs the extra rucio_rse"),
        (
            {"file_source": "rucio", "rucio_rse": "BNL-DISK"},
            "needs rucio_scheme: b2caf-prompt-run puts the prefix",
        ),
        ({"rucio_rse": "BNL DISK"}, "rucio_rse 'BNL DISK' is invalid; give an RSE name"),
        ({"rucio_scope": "b2cal:skims"}, "rucio_scope 'b2cal:skims' is invalid"),
        ({"rucio_scheme": "root://"}, "rucio_scheme 'root://' must be a protocol scheme"),
        (
            {"rucio_conn_id": "rucio default"},
            "rucio_conn_id 'rucio default' must be an Airflow connection id",
        ),
    ],
)
def test_invalid_extras_are_rejected(change: dict, message: str) -> None:
    extra = {key: value for key, value in {**SSH_EXTRA, **change}.items() if value is not None}
    with pytest.raises(SiteConfigError) as caught:
        parse(extra)
    assert message in str(caught.value)
    assert "b2cal_site_bnl" in str(caught.value)


def test_prompt_run_command_line() -> None:
    argv = parse(SSH_EXTRA).prompt_run_argv()
    assert argv[:2] == ["b2caf-prompt-run", "HTCondor"]
    assert argv[argv.index("--universe") + 1] == "vanilla"
    assert argv[argv.index("--path-prefix") + 1] == "root://xrootd-door.bnl.invalid:1094"
    assert argv.index("caf_config.json") + 1 == argv.index("input_data.json")
    assert argv[argv.index("--max-subjobs") + 1] == "200"


def test_validation_step_is_absent_by_default() -> None:
    assert parse(SSH_EXTRA).validation is None
    assert parse({**SSH_EXTRA, "validation": None}).validation is None
    assert parse(SSH_EXTRA).to_dict()["validation"] is None


def test_validation_step_builds_argv() -> None:
    extra = {
        **SSH_EXTRA,
        "validation": {"command": "b2val-prompt-run", "options": ["--plots", 2], "timeout": 600},
    }

    step = parse(extra).validation

    assert step is not None
    assert step.timeout == 600
    assert step.argv("/jobs/r1/cal", "/jobs/r1/cal/validation/attempt-1") == [
        "b2val-prompt-run",
        "--plots",
        "2",
        "/jobs/r1/cal",
        "/jobs/r1/cal/validation/attempt-1",
    ]
    assert parse(extra).to_dict()["validation"]["options"] == ["--plots", "2"]
    assert parse({**SSH_EXTRA, "validation": {"command": "b2val-prompt-run"}}).validation.timeout == 1800


@pytest.mark.parametrize(
    ("validation", "message"),
    [
        ("b2val-prompt-run", "validation 'b2val-prompt-run' must be an object"),
        ({"options": []}, "validation lacks 'command'"),
        ({"command": "b2val-prompt-run; rm -rf /"}, "validation.command"),
        ({"command": "b2val-prompt-run", "options": "--plots 2"}, "must be a list of arguments"),
        ({"command": "b2val-prompt-run", "options": [["--plots"]]}, r"validation.options\[0\]"),
        ({"command": "b2val-prompt-run", "options": ["a\nb"]}, "control character"),
        ({"command": "b2val-prompt-run", "timeout": 0}, "validation.timeout 0 must be a positive number"),
        ({"command": "b2val-prompt-run", "timout": 60}, "unknown keys timout"),
    ],
)
def test_invalid_validation_step_is_rejected(validation: object, message: str) -> None:
    with pytest.raises(SiteConfigError, match=message) as caught:
        parse({**SSH_EXTRA, "validation": validation})

    assert "b2cal_site_bnl" in str(caught.value)


RUCIO_EXTRA = {**SSH_EXTRA, "file_source": "rucio", "rucio_rse": "BNL-DISK", "rucio_scheme": "root"}


def test_file_source_defaults_to_path() -> None:
    site = parse(SSH_EXTRA)
    assert site.file_source == "path"
    assert site.rucio_rse is None
    assert site.rucio_conn_id == "rucio_default"
    assert site.to_dict()["file_source"] == "path"


def test_rucio_file_source_settings() -> None:
    site = parse({**RUCIO_EXTRA, "rucio_conn_id": "rucio_bnl", "rucio_scope": "belle"})
    assert site.file_source == "rucio"
    assert site.rucio_rse == "BNL-DISK"
    assert site.rucio_conn_id == "rucio_bnl"
    assert site.rucio_scope == "belle"
    assert site.rucio_scheme == "root"


def test_empty_rucio_rse_means_none() -> None:
    assert parse({**SSH_EXTRA, "rucio_rse": ""}).rucio_rse is None


def test_rucio_without_path_prefix_needs_no_scheme() -> None:
    extra = {**RUCIO_EXTRA, "backend_options": {"universe": "vanilla"}}
    del extra["rucio_scheme"]
    assert parse(extra).rucio_scheme is None


def test_build_skim_source_follows_file_source() -> None:
    path_source = build_skim_source(parse(SSH_EXTRA))
    assert isinstance(path_source, PathTemplateSource)
    assert path_source.root == "/gpfs/belle2/skims"

    rucio_site = parse(RUCIO_EXTRA)
    with pytest.raises(ValueError, match="pass a client of connection 'rucio_default'"):
        build_skim_source(rucio_site)
    client = object()
    source = build_skim_source(rucio_site, rucio_client=client, rucio_scope="from_connection")
    assert isinstance(source, RucioFileSource)
    assert source.client is client
    assert source.rse == "BNL-DISK"
    assert source.scheme == "root"
    assert source.scope == "from_connection"
    # The site's backend puts the xrootd door in front of each path.
    assert source.paths_only

    scoped = build_skim_source(parse({**RUCIO_EXTRA, "rucio_scope": "belle"}), rucio_client=client)
    assert isinstance(scoped, RucioFileSource)
    assert scoped.scope == "belle"
    local = parse({**RUCIO_EXTRA, "backend_options": {"universe": "vanilla"}})
    unprefixed = build_skim_source(local, rucio_client=client)
    assert isinstance(unprefixed, RucioFileSource)
    assert not unprefixed.paths_only
