"""Share request logging, fault injection and timestamps between the development services."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from fastapi import FastAPI, Request, Response
from fastapi.responses import PlainTextResponse

#: Maximum length of a logged path with its query string.
_MAX_LOGGED_TARGET = 240


@dataclass(frozen=True)
class InjectedFault:
    """One planned failure: the HTTP status to return and the path prefix it applies to."""

    status: int
    path_prefix: str


class FaultInjector:
    """Queue of failures that the next matching requests return instead of being served.

    Tests use it to prove that clients retry server errors. The failure response is plain text, as a
    proxy in front of a real service would send it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: deque[InjectedFault] = deque()

    def fail_next(self, count: int = 1, status: int = 503, path_prefix: str = "/") -> None:
        """Make the next ``count`` requests whose path starts with ``path_prefix`` fail with ``status``."""
        if count < 0:
            raise ValueError(f"count is {count}, expected 0 or more")
        if not 400 <= status <= 599:
            raise ValueError(f"status {status} is not an HTTP error status: use 400 to 599")
        with self._lock:
            self._pending.extend(InjectedFault(status, path_prefix) for _ in range(count))

    def clear(self) -> None:
        """Drop every pending failure."""
        with self._lock:
            self._pending.clear()

    @property
    def pending(self) -> int:
        """Number of failures not yet returned."""
        with self._lock:
            return len(self._pending)

    def take(self, path: str) -> InjectedFault | None:
        """Remove and return the first pending failure that applies to ``path``."""
        with self._lock:
            for fault in self._pending:
                if path.startswith(fault.path_prefix):
                    self._pending.remove(fault)
                    return fault
        return None


def install_request_logging(app: FastAPI, service_logger: logging.Logger, faults: FaultInjector) -> None:
    """Log one line per request, and return planned failures before the route runs.

    A handler can name the objects it touched in ``request.state.log_ids`` (for example
    ``"key=CAL-3"``) and the line includes them. Headers are never logged, so tokens, API keys and
    passwords stay out of the log.
    """

    @app.middleware("http")
    async def log_request(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        target = request.url.path
        if request.url.query:
            target = f"{target}?{request.url.query}"
        if len(target) > _MAX_LOGGED_TARGET:
            target = target[: _MAX_LOGGED_TARGET - 3] + "..."

        fault = faults.take(request.url.path)
        if fault is not None:
            response: Response = PlainTextResponse(
                f"injected failure: HTTP {fault.status} from the development service\n",
                status_code=fault.status,
            )
            service_logger.warning(
                "%s %s -> %d (injected failure)", request.method, target, response.status_code
            )
            return response

        response = await call_next(request)
        elapsed_ms = (time.perf_counter() - started) * 1000
        ids = getattr(request.state, "log_ids", "")
        service_logger.info(
            "%s %s -> %d%s (%.1f ms)",
            request.method,
            target,
            response.status_code,
            f" {ids}" if ids else "",
            elapsed_ms,
        )
        return response


def set_log_ids(request: Request, text: str) -> None:
    """Record the ids a request touched, for the request log line."""
    request.state.log_ids = text


def utc_now() -> datetime:
    """Return the current time in UTC, without microseconds."""
    return datetime.now(UTC).replace(microsecond=0)


def base_url_of(request: Request, configured: str | None) -> str:
    """Return the service's base URL: the configured one, or the one the request came in on."""
    if configured:
        return configured.rstrip("/")
    return str(request.base_url).rstrip("/")
