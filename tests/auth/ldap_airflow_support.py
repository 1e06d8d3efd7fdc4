"""Run Airflow's components with the FAB auth manager logging in against a test directory.

Every component is a separate process bound to 127.0.0.1, with its own temporary AIRFLOW_HOME, and
is stopped by its process id. The DAGs folder contains one small DAG under the product's DAG id,
whose only task is the ``sign_off`` approval that the role tests need.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import requests

from b2cal.ldapconfig import AuthSettings, render_webserver_config

FAB_AUTH_MANAGER = "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager"
DAG_ID = "b2cal_processing_request"
SIGN_OFF_DAG = f'''\
"""Stand-in for the request DAG: only the manager's sign-off approval."""

from datetime import UTC, datetime

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import DAG

with DAG(
    dag_id="{DAG_ID}",
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    is_paused_upon_creation=False,
):
    ApprovalOperator(task_id="sign_off", subject="Sign off the test bucket", body="Ready.")
'''
CSRF_FIELD = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"')


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LdapAirflow:
    """Airflow's API server, scheduler, DAG processor and triggerer, logging in through LDAP."""

    def __init__(self, home: Path, auth: AuthSettings, bind_password: str) -> None:
        self.home = home
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.logs = home / "logs"
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.admin_password = secrets.token_urlsafe(12)
        airflow_home = home / "airflow"
        dags = home / "dags"
        self.env = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "AIRFLOW_HOME": str(airflow_home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(home / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__AUTH_MANAGER": FAB_AUTH_MANAGER,
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API__BASE_URL": self.url,
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
            "AIRFLOW__FAB__CONFIG_FILE": str(airflow_home / "webserver_config.py"),
            # FAB allows 5 form logins per 40 s from one address; the tests log in more often.
            "AIRFLOW__FAB__AUTH_RATE_LIMIT": "100 per 40 second",
            "B2CAL_LDAP_BIND_PASSWORD": bind_password,
        }
        for folder in (airflow_home, dags, home / "plugins", self.logs):
            folder.mkdir(parents=True, exist_ok=True)
        (dags / "sign_off.py").write_text(SIGN_OFF_DAG)
        (airflow_home / "webserver_config.py").write_text(render_webserver_config(auth, source="the test"))

    def setup(self) -> None:
        """Migrate the metadata database, create the product roles and a local admin."""
        airflow = str(Path(sys.executable).parent / "airflow")
        self.run([airflow, "db", "migrate"], "setup")
        users = self.home / "users.json"
        users.write_text(
            json.dumps([{"username": "admin", "password": self.admin_password, "roles": ["Admin"]}])
        )
        users.chmod(0o600)
        try:
            self.run([sys.executable, "-m", "b2cal_airflow.security", str(users)], "setup")
        finally:
            users.unlink()

    def start(self, timeout: float = 180) -> None:
        """Start the components and wait until the API server responds and the DAG is parsed."""
        airflow = str(Path(sys.executable).parent / "airflow")
        self.launch("api-server", [airflow, "api-server", "-H", "127.0.0.1", "-p", str(self.port)])
        self.launch("scheduler", [airflow, "scheduler", "--skip-serve-logs"])
        self.launch("dag-processor", [airflow, "dag-processor"])
        self.launch("triggerer", [airflow, "triggerer", "--skip-serve-logs"])
        deadline = time.monotonic() + timeout
        while not self._healthy():
            self.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"the API server did not respond within {timeout} s; see {self.logs}")
            time.sleep(0.5)
        token = self.local_token()
        while self.get(f"/api/v2/dags/{DAG_ID}", token).status_code != 200:
            self.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"the DAG {DAG_ID} was not parsed within {timeout} s; see {self.logs}")
            time.sleep(0.5)

    def stop(self) -> None:
        """Stop every component by its process id."""
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        self.processes.clear()

    def run(self, argv: list[str], log_name: str) -> None:
        """Run a command to completion with the components' environment."""
        with (self.logs / f"{log_name}.log").open("a") as handle:
            result = subprocess.run(argv, env=self.env, stdout=handle, stderr=subprocess.STDOUT, check=False)
        if result.returncode != 0:
            tail = (self.logs / f"{log_name}.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{' '.join(argv[:3])} failed with exit status {result.returncode}:\n{tail}")

    def python(self, code: str, *args: str) -> Any:
        """Run Python code in Airflow's environment and return the JSON it prints last."""
        result = subprocess.run(
            [sys.executable, "-c", code, *args], env=self.env, capture_output=True, text=True, timeout=120
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"helper script failed with exit status {result.returncode}:\n{result.stderr[-3000:]}"
            )
        return json.loads(result.stdout.strip().splitlines()[-1])

    def launch(self, name: str, argv: list[str]) -> None:
        """Start one long-running component."""
        handle = (self.logs / f"{name}.log").open("ab")
        self.processes[name] = subprocess.Popen(
            argv, env=self.env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )
        handle.close()

    def check_alive(self) -> None:
        """Raise with the log's tail when a component has exited."""
        for name, process in self.processes.items():
            if process.poll() is not None:
                tail = (self.logs / f"{name}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{name} exited with status {process.returncode}:\n{tail}")

    def _healthy(self) -> bool:
        try:
            return requests.get(f"{self.url}/api/v2/monitor/health", timeout=5).status_code == 200
        except requests.RequestException:
            return False

    def token_response(self, username: str, password: str) -> requests.Response:
        """Request a JWT through ``POST /auth/token``."""
        return requests.post(
            f"{self.url}/auth/token", json={"username": username, "password": password}, timeout=60
        )

    def token(self, username: str, password: str) -> str:
        """Return a JWT for the user, failing when the login is refused."""
        response = self.token_response(username, password)
        if response.status_code != 201:
            raise AssertionError(f"login of {username} refused: {response.status_code} {response.text}")
        return str(response.json()["access_token"])

    def local_token(self) -> str:
        """Return a JWT of the local admin account in FAB's user table."""
        return self.token("admin", self.admin_password)

    def form_login(self, username: str, password: str) -> tuple[requests.Session, requests.Response]:
        """Log in through the ``/auth/login/`` form as a browser does; return the session and response."""
        session = requests.Session()
        page = session.get(f"{self.url}/auth/login/", timeout=30)
        page.raise_for_status()
        match = CSRF_FIELD.search(page.text)
        if match is None:
            raise AssertionError(f"no CSRF token on the login page:\n{page.text[:2000]}")
        response = session.post(
            f"{self.url}/auth/login/",
            data={"username": username, "password": password, "csrf_token": match.group(1)},
            timeout=60,
        )
        return session, response

    def get(self, path: str, token: str, **kwargs: Any) -> requests.Response:
        """Call ``GET`` on the API with a bearer token."""
        return self.call("GET", path, token, **kwargs)

    def call(self, method: str, path: str, token: str, **kwargs: Any) -> requests.Response:
        """Call the API with a bearer token."""
        headers: Mapping[str, str] = {"Authorization": f"Bearer {token}"}
        return requests.request(method, f"{self.url}{path}", headers=headers, timeout=60, **kwargs)

    def roles_of(self, username: str) -> set[str]:
        """Return the role names FAB's user table holds for a user, read as the local admin."""
        response = self.get(f"/auth/fab/v1/users/{username}", self.local_token())
        response.raise_for_status()
        return {role["name"] for role in response.json()["roles"] or []}


def directory_mapping(directory: Any, **overrides: Any) -> dict[str, Any]:
    """Return the ``[auth.ldap]`` mapping for a test directory, with StartTLS and its CA."""
    from slapd_directory import EXPERTS_GROUP, MANAGERS_GROUP, PEOPLE_DN, SERVICE_DN, VIEWERS_GROUP, group_dn

    mapping: dict[str, Any] = {
        "url": directory.url,
        "bind_dn": SERVICE_DN,
        "user_search_base": PEOPLE_DN,
        "groups": {
            "managers": [group_dn(MANAGERS_GROUP)],
            "experts": [group_dn(EXPERTS_GROUP)],
            "viewers": [group_dn(VIEWERS_GROUP)],
        },
        "jira_username_attribute": "b2calJiraUsername",
        "start_tls": True,
        "ca_cert_file": str(directory.ca_cert_file),
        "timeout_seconds": 2,
    }
    mapping.update(overrides)
    return mapping
