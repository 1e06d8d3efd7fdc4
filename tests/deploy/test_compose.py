"""Static checks of docker-compose.yaml and the Dockerfile.

No Docker engine runs on the test machines. Debian's ``docker-compose`` (Compose v1) validates and
resolves the file instead, and the tests read the resolved configuration.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import airflow
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yaml"
ENV_EXAMPLE = ROOT / "deploy" / "compose.env.example"
pytestmark = pytest.mark.usefixtures("docker_compose_installed")
AIRFLOW_SERVICES = (
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
)


def compose(*args: str, env_file: Path = ENV_EXAMPLE) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker-compose", "--env-file", str(env_file), "-f", str(COMPOSE_FILE), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def resolved() -> dict[str, Any]:
    result = compose("config")
    assert result.returncode == 0, result.stderr
    return dict(yaml.safe_load(result.stdout))


def test_compose_file_is_valid():
    result = compose("config", "-q")
    assert result.returncode == 0, result.stderr


def test_compose_has_every_component(resolved):
    expected = {"postgres", "redis", "airflow-init", *AIRFLOW_SERVICES}
    assert expected <= set(resolved["services"])


def test_long_running_services_have_health_checks(resolved):
    for name in ("postgres", "redis", *AIRFLOW_SERVICES):
        assert resolved["services"][name].get("healthcheck", {}).get("test"), name


def test_airflow_services_share_image_and_settings(resolved):
    services = resolved["services"]
    images = {services[name]["image"] for name in (*AIRFLOW_SERVICES, "airflow-init")}
    assert len(images) == 1
    for name in (*AIRFLOW_SERVICES, "airflow-init"):
        env = services[name]["environment"]
        assert services[name]["build"]["context"] == str(ROOT), name
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://"), name
        assert env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql://"), name
        assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://redis:6379/"), name
        assert env["AIRFLOW__CORE__AUTH_MANAGER"].endswith("FabAuthManager"), name
        assert env["AIRFLOW_CONN_B2CAL_DB"], name


def test_airflow_services_wait_for_init(resolved):
    for name in AIRFLOW_SERVICES:
        depends = resolved["services"][name]["depends_on"]
        assert depends["airflow-init"]["condition"] == "service_completed_successfully", name
        assert depends["postgres"]["condition"] == "service_healthy", name
        assert depends["redis"]["condition"] == "service_healthy", name


def test_init_migrates_both_databases_and_creates_roles(resolved):
    init = resolved["services"]["airflow-init"]
    script = "\n".join(init["command"])
    assert "_AIRFLOW_DB_MIGRATE=true" in script
    assert "b2cal db-upgrade" in script
    assert "b2cal import-catalog" in script
    assert "b2cal_airflow.security --roles-only" in script
    assert init["environment"]["B2CAL_DB_URL"].startswith("postgresql+psycopg2://b2cal:")
    postgres_volumes = " ".join(str(volume) for volume in resolved["services"]["postgres"]["volumes"])
    assert "docker-entrypoint-initdb.d" in postgres_volumes


def test_two_celery_workers(resolved):
    worker = resolved["services"]["airflow-worker"]
    command = worker["command"] if isinstance(worker["command"], str) else " ".join(worker["command"])
    assert worker["deploy"]["replicas"] == 2
    assert command.startswith("celery worker")


def test_published_ports_bind_loopback_only(resolved):
    for name, service in resolved["services"].items():
        for port in service.get("ports", []):
            host_ip = port.get("host_ip") if isinstance(port, dict) else str(port).split(":")[0]
            assert host_ip == "127.0.0.1", (name, port)


def test_missing_secret_is_named(tmp_path):
    lines = [
        line for line in ENV_EXAMPLE.read_text().splitlines() if not line.startswith("AIRFLOW_FERNET_KEY=")
    ]
    env_file = tmp_path / "missing-secret.env"
    env_file.write_text("\n".join(lines) + "\n")
    result = compose("config", "-q", env_file=env_file)
    assert result.returncode != 0
    assert "AIRFLOW_FERNET_KEY" in result.stderr


def test_env_example_sets_every_required_variable():
    required = set(re.findall(r"\$\{([A-Z0-9_]+):\?", COMPOSE_FILE.read_text()))
    defined = {
        line.split("=", 1)[0]
        for line in ENV_EXAMPLE.read_text().splitlines()
        if "=" in line and line[0] != "#"
    }
    assert required
    assert required <= defined, sorted(required - defined)


def test_image_uses_installed_airflow_version():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"ARG AIRFLOW_VERSION={airflow.__version__}" in dockerfile
    assert dockerfile.count("FROM apache/airflow:${AIRFLOW_VERSION}-python${PYTHON_VERSION}") == 2
    assert "B2CAL_DOCS_DIR" in dockerfile
