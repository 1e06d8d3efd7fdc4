"""Start and stop the development services, check the command line and the configuration."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from b2cal.devservices.config import DevServicesConfig, catalog_expert_usernames
from b2cal.devservices.server import main, start_services


def test_config_from_env_precedence() -> None:
    environ = {"B2CAL_DEV_CONDDB_TOKEN": "from-env", "B2CAL_DEV_RUNREGISTRY_API_KEY": "key-from-env"}
    config = DevServicesConfig.from_env(environ, runregistry_api_key="explicit")
    assert config.conddb_token == "from-env"
    assert config.runregistry_api_key == "explicit"
    assert config.jira_bot_password == DevServicesConfig().jira_bot_password
    assert config.jira_experts == catalog_expert_usernames()
    assert "cdc-calibration-expert" in config.jira_users()


def test_config_repr_hides_secrets() -> None:
    config = DevServicesConfig(jira_bot_password="s3cret-pw", conddb_token="s3cret-token")
    assert "s3cret" not in repr(config)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"jira_projects": ("cal",)}, "project key"),
        ({"jira_experts": ("has space",)}, "username"),
        ({"conddb_token": ""}, "conddb_token"),
        ({"experiments": (25, 24)}, "increasing"),
        ({"runs_per_experiment": 0}, "runs_per_experiment"),
    ],
)
def test_config_rejects_invalid_values(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DevServicesConfig(**changes)  # type: ignore[arg-type]


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "example.org", "::"])
def test_non_loopback_host_rejected(host: str) -> None:
    with pytest.raises(ValueError, match="loopback"):
        start_services(host=host, jira_port=0, conddb_port=0, runregistry_port=0)


def test_main_rejects_non_loopback_host(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        main(["--host", "0.0.0.0"])
    assert raised.value.code == 2
    assert "loopback" in capsys.readouterr().err


def test_port_in_use_is_reported() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=f"port {port}.*--conddb-port 0"):
            start_services(jira_port=0, conddb_port=port, runregistry_port=0)


def test_start_with_state_dir_writes_storage_and_stops(tmp_path: Path) -> None:
    config = DevServicesConfig(runs_per_experiment=8, experiments=(26,), files_per_skim=1)
    with start_services(
        host="localhost", jira_port=0, conddb_port=0, runregistry_port=0, state_dir=tmp_path, config=config
    ) as services:
        assert services.running
        assert services.jira_url.startswith("http://127.0.0.1:")
        assert services.storage_root == tmp_path / "storage"
        skims = sum(len(record["skims"]) + 1 for record in services.runregistry_state.runs)
        assert len(list(services.storage_root.rglob("*.root"))) == skims
        assert requests.get(f"{services.conddb_url}/v2/globalTags", timeout=10).status_code == 200
    assert not services.running
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{services.conddb_url}/v2/globalTags", timeout=2)
    services.stop()


def test_dev_services_command_runs_until_sigterm(tmp_path: Path) -> None:
    env = {**os.environ, "B2CAL_DEV_JIRA_PASSWORD": "from-env-password"}
    command = [sys.executable, "-m", "b2cal.devservices.server", "--jira-port", "0", "--conddb-port", "0"]
    command += ["--runregistry-port", "0", "--runs-per-experiment", "5", "--experts", "alice,bob"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline() for _ in range(4)]
        urls = [re.search(r"http://\S+", line) for line in lines[:3]]
        assert all(urls), lines
        jira_url = urls[0].group(0)  # type: ignore[union-attr]
        myself = requests.get(
            f"{jira_url}/rest/api/2/myself", auth=("b2cal-bot", "from-env-password"), timeout=10
        )
        assert myself.status_code == 200
        assert "alice" in lines[3]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    stderr = process.stderr.read() if process.stderr else ""
    assert "from-env-password" not in stderr
    assert "GET /rest/api/2/myself -> 200" in stderr
