"""Exercise the run registry client against the development service."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from datetime import UTC, date, datetime
from typing import Any

import pytest
import requests

from b2cal.devservices.config import DevServicesConfig
from b2cal.devservices.server import DevServices, start_services
from b2cal.runregistry import RunRegistry, RunRegistryError

CONFIG = DevServicesConfig(jira_experts=(), runs_per_experiment=60)


@pytest.fixture(scope="module")
def services() -> Iterator[DevServices]:
    handle = start_services(jira_port=0, conddb_port=0, runregistry_port=0, config=CONFIG)
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture
def registry(services: DevServices) -> RunRegistry:
    services.runregistry_state.faults.clear()
    return RunRegistry(
        services.runregistry_url,
        api_key=CONFIG.runregistry_api_key,
        timeout=10,
        backoff_seconds=0.0,
        page_size=17,
    )


class CountingSession(requests.Session):
    """A session that counts the GET requests it sends."""

    def __init__(self) -> None:
        super().__init__()
        self.gets = 0

    def get(self, url: str | bytes, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        self.gets += 1
        return super().get(url, **kwargs)


def test_iter_runs_follows_every_page(services: DevServices) -> None:
    session = CountingSession()
    registry = RunRegistry(
        services.runregistry_url, api_key=CONFIG.runregistry_api_key, session=session, page_size=17
    )
    runs = list(registry.iter_runs())
    expected = services.runregistry_state.runs
    assert runs == expected
    assert session.gets == -(-len(expected) // 17)


def test_filters_are_applied(services: DevServices, registry: RunRegistry) -> None:
    every = services.runregistry_state.runs
    selected = registry.list_runs(
        min_experiment=25, max_experiment=26, min_run=10, max_run=30, run_type="physics"
    )
    expected = [
        r
        for r in every
        if 25 <= r["experiment"] <= 26 and 10 <= r["run"] <= 30 and r["run_type"] == "physics"
    ]
    assert selected == expected
    assert selected

    complete = registry.list_runs(all_detectors_running=True)
    assert complete == [r for r in every if r["all_detectors_running"]]
    assert len(complete) < len(every)


def test_date_filters(services: DevServices, registry: RunRegistry) -> None:
    every = services.runregistry_state.runs
    start = datetime.fromisoformat(every[30]["start_time"])
    from_time = registry.list_runs(min_date=start)
    assert from_time == every[30:]

    day = start.date()
    on_day = registry.list_runs(min_date=day, max_date=date(day.year, day.month, day.day))
    assert on_day
    assert all(datetime.fromisoformat(r["start_time"]).astimezone(UTC).date() == day for r in on_day)


def test_none_filters_are_left_out(registry: RunRegistry, services: DevServices) -> None:
    assert len(registry.list_runs(min_experiment=None, run_type=None)) == len(services.runregistry_state.runs)


def test_unknown_filter_is_rejected_before_any_request(registry: RunRegistry) -> None:
    with pytest.raises(ValueError, match="min_experimnet"):
        list(registry.iter_runs(min_experimnet=24))


def test_invalid_filter_value_reports_the_server_message(registry: RunRegistry) -> None:
    with pytest.raises(RunRegistryError, match="run_type") as raised:
        registry.list_runs(run_type="calibration")
    assert raised.value.status == 400


def test_wrong_api_key(services: DevServices) -> None:
    registry = RunRegistry(services.runregistry_url, api_key="wrong", backoff_seconds=0.0)
    with pytest.raises(RunRegistryError, match="check the API key") as raised:
        registry.list_runs()
    assert raised.value.status == 401


def test_server_errors_are_retried(
    services: DevServices, registry: RunRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    services.runregistry_state.faults.fail_next(2, 503)
    with caplog.at_level(logging.WARNING, logger="b2cal.runregistry"):
        runs = registry.list_runs(min_experiment=26)
    assert runs == [r for r in services.runregistry_state.runs if r["experiment"] == 26]
    messages = [record.getMessage() for record in caplog.records if record.name == "b2cal.runregistry"]
    assert len(messages) == 2
    assert "attempt 1/3" in messages[0]
    assert "HTTP 503" in messages[0]
    assert "attempt 2/3" in messages[1]


def test_failure_on_a_later_page_is_retried(services: DevServices, registry: RunRegistry) -> None:
    first_page = registry.list_runs()[:17]
    services.runregistry_state.faults.fail_next(1, 502)
    pages = registry.iter_runs()
    assert [next(pages) for _ in range(17)] == first_page
    assert len(list(pages)) == len(services.runregistry_state.runs) - 17


def test_persistent_server_errors_raise(services: DevServices, registry: RunRegistry) -> None:
    services.runregistry_state.faults.fail_next(3, 500)
    with pytest.raises(RunRegistryError, match="after 3 attempts: HTTP 500"):
        registry.list_runs()
    assert services.runregistry_state.faults.pending == 0


def test_connection_errors_are_retried_then_raised(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    registry = RunRegistry(f"http://127.0.0.1:{port}", api_key="k", timeout=2, backoff_seconds=0.0)
    with caplog.at_level(logging.WARNING, logger="b2cal.runregistry"):
        with pytest.raises(RunRegistryError, match="after 3 attempts: ConnectionError"):
            registry.list_runs()
    assert len([record for record in caplog.records if record.name == "b2cal.runregistry"]) == 2


class ForeignNextSession(requests.Session):
    """A session that returns one page whose ``next`` link points at another server."""

    def get(self, url: str | bytes, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        response = requests.Response()
        response.status_code = 200
        response._content = (
            b'{"count": 2, "next": "http://198.51.100.7/rest/v1/runs/?page=2", "results": [{}]}'
        )
        return response


def test_next_link_to_another_server_is_not_followed() -> None:
    registry = RunRegistry("http://127.0.0.1:9", api_key="secret", session=ForeignNextSession())
    runs = registry.iter_runs()
    assert next(runs) == {}
    with pytest.raises(RunRegistryError, match="another server"):
        next(runs)
