"""Check that a restarted demo keeps the development services' and the Rucio server's state.

None of these tests starts Airflow: they start the development services (in this process, as the
``b2cal dev-services`` command, or through :class:`b2cal.stack.Stack`) and the Rucio server alone.
"""

from __future__ import annotations

import hashlib
import json
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from server_rules import require

from b2cal.cli import _stack_config, build_parser
from b2cal.devservices.config import DevServicesConfig
from b2cal.devservices.server import main, start_services
from b2cal.iov import IoV
from b2cal.stack import (
    HOME_ENTRIES,
    REPO_ROOT,
    RUCIO_STATE_FILE,
    RUNNING_TAG,
    Stack,
    StackConfig,
    clear_home,
    dev_services_argv,
    free_port,
    rucio_server,
    start_rucio,
)

BOT = (DevServicesConfig().jira_bot_username, DevServicesConfig().jira_bot_password)
CONDDB_TOKEN = {"X-Authorization": f"Bearer {DevServicesConfig().conddb_token}"}
RUNREGISTRY_KEY = {"Authorization": f"Api-Key {DevServicesConfig().runregistry_api_key}"}


class DevServicesProcess:
    """A ``b2cal dev-services`` process on fixed free ports, with a data directory."""

    def __init__(self, data_dir: Path, extra: tuple[str, ...] = ()) -> None:
        self.data_dir = data_dir
        self.ports = {"jira": free_port(), "conddb": free_port(), "runregistry": free_port()}
        self.extra = extra
        self.process: subprocess.Popen[str] | None = None

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"

    def start(self) -> None:
        command = [sys.executable, "-m", "b2cal.devservices.server", "--data-dir", str(self.data_dir)]
        for service, port in self.ports.items():
            command += [f"--{service}-port", str(port)]
        command += ["--runs-per-experiment", "6", "--experts", "cdc-calibration-expert", *self.extra]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.process.stderr.read() if self.process.stderr else ""
            try:
                if requests.get(f"{self.url('jira')}/rest/api/2/serverInfo", timeout=2).ok:
                    return
            except requests.ConnectionError:
                time.sleep(0.1)
        raise AssertionError("b2cal dev-services did not respond within 30 s")

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        assert self.process is not None
        self.process.send_signal(sig)
        status = self.process.wait(timeout=20)
        if self.process.stdout:
            self.process.stdout.close()
        if self.process.stderr:
            self.process.stderr.close()
        self.process = None
        return status

    def kill_if_running(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def dev_services(tmp_path: Path) -> Iterator[DevServicesProcess]:
    handle = DevServicesProcess(tmp_path / "devservices")
    try:
        yield handle
    finally:
        handle.kill_if_running()


def create_issue(jira_url: str, summary: str, **fields: Any) -> str:
    body = {"project": {"key": "CAL"}, "issuetype": {"name": "Task"}, "summary": summary, **fields}
    response = requests.post(f"{jira_url}/rest/api/2/issue", json={"fields": body}, auth=BOT, timeout=10)
    assert response.status_code == 201, response.text
    return str(response.json()["key"])


def get_issue(jira_url: str, key: str) -> dict[str, Any]:
    response = requests.get(f"{jira_url}/rest/api/2/issue/{key}", auth=BOT, timeout=10)
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_demo_keeps_services_state_in_home(tmp_path: Path) -> None:
    args = build_parser().parse_args(["demo", "--home", str(tmp_path / "demo")])
    config = _stack_config(args, autopilot=False)
    argv = dev_services_argv(config)
    assert config.devservices_home == tmp_path / "demo" / "devservices"
    assert argv[argv.index("--data-dir") + 1] == str(tmp_path / "demo" / "devservices")
    assert argv[argv.index("--state-dir") + 1] == str(tmp_path / "demo" / "site")
    assert config.rucio_home == tmp_path / "demo" / "rucio"
    assert args.fresh is False
    assert build_parser().parse_args(["demo", "--fresh"]).fresh is True


def test_dev_services_reload_state_after_restart(dev_services: DevServicesProcess) -> None:
    dev_services.start()
    jira = dev_services.url("jira")
    first = create_issue(jira, "Calibrate CDC T0", labels=["req-1"])
    second = create_issue(jira, "Calibrate ECL energy")
    link = {"type": {"name": "Blocks"}, "inwardIssue": {"key": first}, "outwardIssue": {"key": second}}
    assert requests.post(f"{jira}/rest/api/2/issueLink", json=link, auth=BOT, timeout=10).status_code == 201
    comment = requests.post(
        f"{jira}/rest/api/2/issue/{first}/comment", json={"body": "payloads uploaded"}, auth=BOT, timeout=10
    )
    assert comment.status_code == 201
    transition = {"transition": {"id": "31"}}
    closed = requests.post(
        f"{jira}/rest/api/2/issue/{second}/transitions", json=transition, auth=BOT, timeout=10
    )
    assert closed.status_code == 204
    hook = {
        "name": "b2cal",
        "url": "http://127.0.0.1:9/hook",
        "events": ["jira:issue_updated"],
        "secret": "s",
    }
    assert (
        requests.post(f"{jira}/rest/webhooks/1.0/webhook", json=hook, auth=BOT, timeout=10).status_code == 201
    )
    conddb = dev_services.url("conddb")
    tag = requests.post(
        f"{conddb}/v2/globalTag/DEV", json={"name": "staging_restart"}, headers=CONDDB_TOKEN, timeout=10
    )
    assert tag.status_code in (200, 201), tag.text
    runregistry = dev_services.url("runregistry")
    appended = requests.post(f"{runregistry}/_dev/runs", json={"count": 2}, timeout=10)
    assert appended.status_code == 201
    runs_before = requests.get(f"{runregistry}/rest/v1/runs/", headers=RUNREGISTRY_KEY, timeout=10).json()
    assert dev_services.stop() == 0

    dev_services.start()
    assert get_issue(jira, first)["fields"]["labels"] == ["req-1"]
    assert get_issue(jira, first)["fields"]["comment"]["comments"][0]["body"] == "payloads uploaded"
    assert get_issue(jira, second)["fields"]["status"]["name"] == "Closed"
    links = get_issue(jira, second)["fields"]["issuelinks"]
    assert [item["inwardIssue"]["key"] for item in links] == [first]
    assert create_issue(jira, "Calibrate KLM") == "CAL-3"
    hooks = requests.get(f"{jira}/rest/webhooks/1.0/webhook", auth=BOT, timeout=10).json()
    assert [item["name"] for item in hooks] == ["b2cal"]
    assert requests.get(f"{conddb}/v2/globalTag/staging_restart", timeout=10).status_code == 200
    runs_after = requests.get(f"{runregistry}/rest/v1/runs/", headers=RUNREGISTRY_KEY, timeout=10).json()
    assert runs_after["count"] == runs_before["count"]
    assert runs_after["results"] == runs_before["results"]
    assert dev_services.stop() == 0


def test_dev_services_keep_state_after_kill(dev_services: DevServicesProcess) -> None:
    dev_services.start()
    key = create_issue(dev_services.url("jira"), "Calibrate SVD")
    saved = dev_services.data_dir / "jira.json"
    deadline = time.monotonic() + 10
    while key not in (saved.read_text() if saved.exists() else ""):
        assert time.monotonic() < deadline, f"{saved} did not record {key} within 10 s"
        time.sleep(0.1)
    dev_services.stop(signal.SIGKILL)

    dev_services.start()
    assert get_issue(dev_services.url("jira"), key)["fields"]["summary"] == "Calibrate SVD"
    assert dev_services.stop() == 0


def test_state_files_readable_by_owner_only(dev_services: DevServicesProcess) -> None:
    dev_services.start()
    create_issue(dev_services.url("jira"), "Calibrate PXD")
    assert dev_services.stop() == 0
    for name in ("jira.json", "conddb.json", "runregistry.json"):
        assert (dev_services.data_dir / name).stat().st_mode & 0o777 == 0o600


def test_payloads_and_attachments_survive_restart(tmp_path: Path) -> None:
    config = DevServicesConfig(runs_per_experiment=4, experiments=(26,))
    content = bytes(range(256))
    with start_services(
        jira_port=0, conddb_port=0, runregistry_port=0, config=config, data_dir=tmp_path
    ) as services:
        jira, conddb = services.jira_state, services.conddb_state
        issue = jira.create(
            {
                "fields": {
                    "project": {"key": "CAL"},
                    "issuetype": {"name": "Task"},
                    "summary": "Calibrate TOP",
                }
            },
            "b2cal-bot",
        )
        jira.add_attachment(issue, "t0.root", content, "application/octet-stream", "b2cal-bot")
        tag = conddb.create_tag("DEV", {"name": "staging_26", "description": "bucket 26"})
        payload = conddb.add_payload("TOPCalModuleT0", content, hashlib.md5(content).hexdigest())
        conddb.add_iov(tag.id, payload.id, IoV(26, 0, 26, -1))
        conddb.set_state("staging_26", "RUNNING")
        before = conddb.snapshot("http://files")

    with start_services(
        jira_port=0, conddb_port=0, runregistry_port=0, config=config, data_dir=tmp_path
    ) as services:
        restored = services.jira_state.get(issue.key)
        assert restored.attachments[0].content == content
        assert restored.attachments[0].filename == "t0.root"
        assert services.conddb_state.snapshot("http://files") == before
        assert services.conddb_state.payload(payload.id).data == content
        second = services.conddb_state.add_payload("TOPCalModuleT0", b"x", hashlib.md5(b"x").hexdigest())
        assert second.id == payload.id + 1
        assert second.revision == 2


def test_other_run_list_settings_regenerate_runs(tmp_path: Path) -> None:
    data_dir = tmp_path / "devservices"
    small = DevServicesConfig(runs_per_experiment=4, experiments=(26,))
    with start_services(jira_port=0, conddb_port=0, runregistry_port=0, config=small, data_dir=data_dir):
        pass
    larger = small.with_overrides(runs_per_experiment=7)
    with start_services(
        jira_port=0, conddb_port=0, runregistry_port=0, config=larger, data_dir=data_dir
    ) as services:
        assert len(services.runregistry_state.runs) == 7


def test_second_process_on_data_dir_rejected(tmp_path: Path) -> None:
    config = DevServicesConfig(runs_per_experiment=4, experiments=(26,))
    with start_services(jira_port=0, conddb_port=0, runregistry_port=0, config=config, data_dir=tmp_path):
        with pytest.raises(OSError, match="in use by another b2cal dev-services process"):
            start_services(jira_port=0, conddb_port=0, runregistry_port=0, config=config, data_dir=tmp_path)


def test_invalid_state_file_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "jira.json").write_text("{not json")
    status = main(
        ["--data-dir", str(tmp_path), "--jira-port", "0", "--conddb-port", "0", "--runregistry-port", "0"]
    )
    assert status == 1
    error = capsys.readouterr().err
    assert f"state file {tmp_path / 'jira.json'} is not valid JSON" in error
    assert "--fresh" in error


def test_stack_restart_keeps_tickets(tmp_path: Path) -> None:
    config = StackConfig(
        home=tmp_path, jira_port=free_port(), conddb_port=free_port(), runregistry_port=free_port()
    )
    jira = f"http://127.0.0.1:{config.jira_port}"
    (tmp_path / "logs").mkdir()
    stack = Stack(config)
    try:
        stack.start_services()
        first = create_issue(jira, "Calibrate CDC T0")
    finally:
        stack.stop()

    stack = Stack(config)
    try:
        stack.start_services()
        assert get_issue(jira, first)["fields"]["summary"] == "Calibrate CDC T0"
        assert create_issue(jira, "Calibrate ECL energy") == "CAL-2"
        hooks = requests.get(f"{jira}/rest/webhooks/1.0/webhook", auth=BOT, timeout=10).json()
        assert len(hooks) == 1
        assert hooks[0]["url"] == f"{config.api_url}/b2cal/webhooks/jira"
        tag = requests.get(f"http://127.0.0.1:{config.conddb_port}/v2/globalTag/{RUNNING_TAG}", timeout=10)
        assert tag.json()["globalTagStatus"]["name"] == "RUNNING"
    finally:
        stack.stop()
    log = (tmp_path / "logs" / "dev-services.log").read_text()
    assert f"Loaded the jira state from {config.devservices_home / 'jira.json'}" in log


def test_clear_home_deletes_stack_files_only(tmp_path: Path) -> None:
    config = StackConfig(
        home=tmp_path,
        api_port=free_port(),
        jira_port=free_port(),
        conddb_port=free_port(),
        runregistry_port=free_port(),
    )
    for name in HOME_ENTRIES:
        if name.endswith((".json", "secret")):
            (tmp_path / name).write_text("{}")
        else:
            (tmp_path / name / "sub").mkdir(parents=True)
    (tmp_path / "notes.txt").write_text("keep me")

    removed = clear_home(config)

    assert sorted(path.name for path in removed) == sorted(HOME_ENTRIES)
    assert [path.name for path in tmp_path.iterdir()] == ["notes.txt"]


def test_clear_home_refuses_while_port_in_use(tmp_path: Path) -> None:
    (tmp_path / "passwords.json").write_text("{}")
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        config = StackConfig(
            home=tmp_path,
            api_port=port,
            jira_port=free_port(),
            conddb_port=free_port(),
            runregistry_port=free_port(),
        )
        with pytest.raises(RuntimeError, match=f"port {port} on 127.0.0.1 is in use"):
            clear_home(config)
    assert (tmp_path / "passwords.json").exists()


def test_demo_fresh_rejected_while_running(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "passwords.json").write_text("{}")
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        args = build_parser().parse_args(["demo", "--home", str(tmp_path), "--port", str(port), "--fresh"])
        assert args.func(args) == 1
    assert f"b2cal demo: error: port {port} on 127.0.0.1 is in use" in capsys.readouterr().err
    assert (tmp_path / "passwords.json").exists()


def rucio_token(url: str, password: str) -> str:
    headers = {"X-Rucio-Account": "root", "X-Rucio-Username": "b2cal", "X-Rucio-Password": password}
    response = requests.get(f"{url}/auth/userpass", headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    return response.headers["X-Rucio-Auth-Token"]


def test_rucio_database_kept_across_restarts(tmp_path: Path) -> None:
    venv = REPO_ROOT / ".venv-rucio"
    require(
        (venv / "bin" / "gunicorn").exists(), f"no Rucio server venv at {venv}: run 'make rucio-server-venv'"
    )
    config = StackConfig(home=tmp_path, rucio=True)
    server = rucio_server(config)
    assert server is not None
    try:
        assert start_rucio(server) is False
        token = {"X-Rucio-Auth-Token": rucio_token(server.url, server.password)}
        created = requests.post(
            f"{server.url}/dids/b2cal/restart-check", json={"type": "DATASET"}, headers=token, timeout=30
        )
        assert created.status_code == 201, created.text
    finally:
        server.down()
    saved = json.loads((config.rucio_home / RUCIO_STATE_FILE).read_text())
    assert saved["rses"] == list(server.rses)
    assert (config.rucio_home / RUCIO_STATE_FILE).stat().st_mode & 0o777 == 0o600

    again = rucio_server(StackConfig(home=tmp_path, rucio=True))
    assert again is not None
    try:
        assert start_rucio(again) is True
        assert again.password == server.password
        token = {"X-Rucio-Auth-Token": rucio_token(again.url, again.password)}
        found = requests.get(f"{again.url}/dids/b2cal/restart-check", headers=token, timeout=30)
        assert found.status_code == 200, found.text
        assert re.search(r'"type":\s*"DATASET"', found.text)
    finally:
        again.down()
