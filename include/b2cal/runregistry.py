"""Read runs from the run registry REST API (``GET /rest/v1/runs/``)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from datetime import date, datetime
from typing import Any
from urllib.parse import urlsplit

import requests

logger = logging.getLogger(__name__)

RUNS_PATH = "/rest/v1/runs/"
#: Query parameters the run list accepts, besides ``page`` and ``page_size``.
FILTERS = (
    "min_experiment",
    "max_experiment",
    "min_run",
    "max_run",
    "min_date",
    "max_date",
    "run_type",
    "all_detectors_running",
    "expand",
)


class RunRegistryError(Exception):
    """A run registry request that failed; ``status`` is the HTTP status, if there was a response."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def _query_value(name: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, int | str):
        return str(value)
    raise ValueError(f"run registry filter {name}={value!r} must be an int, str, bool, date or datetime")


def _detail(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:200] or response.reason
    if isinstance(body, dict) and "detail" in body:
        return str(body["detail"])
    return str(body)[:300]


class RunRegistry:
    """Client of the run registry.

    :param base_url: the service's root URL, e.g. ``http://127.0.0.1:8093``
    :param api_key: sent as ``Authorization: Api-Key <key>``
    :param timeout: seconds to wait for each response
    :param session: a ``requests.Session`` to reuse; a new one by default
    :param max_attempts: attempts per page when the server returns a 5xx status or cannot be reached
    :param backoff_seconds: wait before the second attempt; it doubles for each further one
    :param page_size: runs per page requested
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        timeout: float = 30.0,
        session: requests.Session | None = None,
        max_attempts: int = 3,
        backoff_seconds: float = 1.0,
        page_size: int = 500,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"run registry URL {base_url!r} must start with http:// or https://")
        if max_attempts < 1:
            raise ValueError(f"max_attempts is {max_attempts}, expected at least 1")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.backoff_seconds = backoff_seconds
        self.page_size = page_size
        self.session = session or requests.Session()
        self._headers = {"Accept": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Api-Key {api_key}"

    def iter_runs(self, **filters: Any) -> Iterator[dict[str, Any]]:
        """Yield the runs matching ``filters``, following the pages of the run list.

        :param filters: any of :data:`FILTERS`; ``None`` values are left out, booleans are sent as
            ``true``/``false`` and dates in ISO 8601
        :raises ValueError: for an unknown filter name
        :raises RunRegistryError: when a page cannot be fetched
        """
        unknown = sorted(set(filters) - set(FILTERS))
        if unknown:
            raise ValueError(
                f"unknown run registry filter(s) {', '.join(unknown)}; valid: {', '.join(FILTERS)}"
            )
        params = {name: _query_value(name, value) for name, value in filters.items() if value is not None}
        params["page_size"] = str(self.page_size)
        url: str | None = f"{self.base_url}{RUNS_PATH}"
        page = 0
        while url is not None:
            page += 1
            body = self._get(url, params if page == 1 else None)
            results = body.get("results")
            if not isinstance(results, list):
                raise RunRegistryError(f"run registry page {page} at {url} has no 'results' list")
            yield from results
            url = body.get("next")
            if url is not None:
                self._check_same_origin(url)

    def list_runs(self, **filters: Any) -> list[dict[str, Any]]:
        """Return all runs matching ``filters``; see :meth:`iter_runs`."""
        return list(self.iter_runs(**filters))

    def _check_same_origin(self, url: str) -> None:
        # The API key goes with every request, so never follow a link to another server.
        base, target = urlsplit(self.base_url), urlsplit(url)
        if (base.scheme, base.netloc) != (target.scheme, target.netloc):
            raise RunRegistryError(
                f"run registry returned a next page on another server ({url}); "
                f"expected one below {self.base_url}"
            )

    def _get(self, url: str, params: Mapping[str, str] | None) -> dict[str, Any]:
        """Fetch one page, retrying server errors and connection failures."""
        last_error = ""
        for attempt in range(1, self.max_attempts + 1):
            try:
                response = self.session.get(url, params=params, headers=self._headers, timeout=self.timeout)
            except (requests.ConnectionError, requests.Timeout) as error:
                last_error = f"{type(error).__name__}: {error}"
            else:
                if response.status_code < 500:
                    return self._parse(url, response)
                last_error = f"HTTP {response.status_code}: {_detail(response)}"
            if attempt < self.max_attempts:
                delay = self.backoff_seconds * 2 ** (attempt - 1)
                logger.warning(
                    "Run registry GET %s failed (attempt %d/%d): %s; retrying in %.1f s",
                    url,
                    attempt,
                    self.max_attempts,
                    last_error,
                    delay,
                )
                time.sleep(delay)
        raise RunRegistryError(
            f"run registry GET {url} failed after {self.max_attempts} attempts: {last_error}; "
            f"check that the run registry at {self.base_url} is up"
        )

    def _parse(self, url: str, response: requests.Response) -> dict[str, Any]:
        if response.status_code in (401, 403):
            raise RunRegistryError(
                f"run registry rejected the request to {url} "
                f"(HTTP {response.status_code}: {_detail(response)}); check the API key",
                response.status_code,
            )
        if response.status_code != 200:
            raise RunRegistryError(
                f"run registry GET {url} returned HTTP {response.status_code}: {_detail(response)}",
                response.status_code,
            )
        try:
            body = response.json()
        except ValueError:
            raise RunRegistryError(f"run registry GET {url} returned a body that is not JSON") from None
        if not isinstance(body, dict):
            raise RunRegistryError(
                f"run registry GET {url} returned {type(body).__name__}, expected an object"
            )
        return body
