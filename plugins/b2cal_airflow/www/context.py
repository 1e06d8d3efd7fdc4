"""What every calibration page needs: settings, the logged-in user, CSRF tokens and the templates.

The pages take the user from Airflow's own login: the API server's JWT, sent by the browser as the
``_token`` cookie that Airflow's login sets, or by a script as an ``Authorization: Bearer`` header.
The auth manager turns it into a user; the product's roles are checked with
:mod:`b2cal_airflow.auth`.

Forms carry a CSRF token: an HMAC, keyed with the API server's secret key, of the JWT that
authenticated the page. Another site can neither read the cookie nor compute the token, and the
token changes with every login. Requests that authenticate with a bearer header need no token,
since a browser never adds that header by itself.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import Depends, HTTPException, Request
from fastapi.templating import Jinja2Templates
from markdown_it import MarkdownIt
from markupsafe import Markup

from b2cal.catalog import Catalog
from b2cal.db import store
from b2cal.db.runcache import RunSource
from b2cal_airflow.auth import ProductAction, check_allowed, is_allowed, user_login

log = logging.getLogger(__name__)

URL_PREFIX = "/b2cal"
DAG_ID = "b2cal_processing_request"
TOKEN_COOKIE = "_token"
CSRF_FIELD = "csrf_token"
#: The detail of Airflow's 403 response to a token it cannot validate.
INVALID_TOKEN_DETAIL = "Invalid JWT token"
TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
# Raw HTML in the text is escaped, because a report quotes people's comments.
_MARKDOWN = MarkdownIt("commonmark", {"html": False}).enable("table")


def markdown_html(text: str | None) -> Markup:
    """Render Markdown text, such as a readiness report, as HTML that shows no raw HTML of the text."""
    return Markup(_MARKDOWN.render(text or ""))  # noqa: S704 - markdown-it escapes the text's HTML


def duration_text(days: float) -> str:
    """Return a duration given in days as people read it: ``2.40 days``, ``5.5 hours`` or ``12 minutes``."""
    if days >= 1:
        return f"{days:.2f} days"
    hours = days * 24
    if hours >= 1:
        return f"{hours:.1f} hours"
    return f"{hours * 60:.0f} minutes"


TEMPLATES.env.filters["markdown"] = markdown_html
TEMPLATES.env.filters["duration"] = duration_text


def _repo_docs() -> Path:
    return Path(__file__).resolve().parents[3] / "docs" / "_build" / "html"


def default_docs_dir() -> Path:
    """Return the built Sphinx HTML: ``$B2CAL_DOCS_DIR``, or ``docs/_build/html`` of the source tree."""
    configured = os.environ.get("B2CAL_DOCS_DIR")
    return Path(configured) if configured else _repo_docs()


class _Cached:
    """Cache a value for a while: connections rarely change, and reading them costs a lookup each time."""

    def __init__(self, load: Callable[[], Any], seconds: float = 60.0) -> None:
        self.load = load
        self.seconds = seconds
        self._value: Any = None
        self._at = float("-inf")
        self._lock = threading.Lock()

    def __call__(self) -> Any:
        with self._lock:
            if time.monotonic() - self._at > self.seconds:
                self._value = self.load()
                self._at = time.monotonic()
            return self._value


def default_running_tag() -> str | None:
    """Return the running tag the request form offers before any request: ``$B2CAL_RUNNING_TAG``, or None."""
    return os.environ.get("B2CAL_RUNNING_TAG", "").strip() or None


def _airflow_db_url() -> str:
    from b2cal_airflow.hooks.b2cal import PluginDatabaseHook

    return PluginDatabaseHook().get_url()


def _airflow_jira_url() -> str | None:
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        host = BaseHook.get_connection("b2cal_jira").host
    except AirflowNotFoundException:
        return None
    return (host or "").rstrip("/") or None


def _airflow_run_registry() -> RunSource | None:
    from airflow.sdk.exceptions import AirflowNotFoundException

    from b2cal_airflow.hooks.b2cal import RunRegistryHook

    try:
        return RunRegistryHook(timeout=20.0).get_conn()
    except AirflowNotFoundException:
        return None


def _airflow_site_problem(site: str) -> str | None:
    from b2cal_airflow.hooks.b2cal import SiteHook

    try:
        _ = SiteHook(site).settings
    except ValueError as exc:
        return str(exc)
    return None


def _airflow_running_tag_problem(tag: str) -> str | None:
    from b2cal_airflow.hooks.b2cal import ConditionsDBHook

    try:
        found = ConditionsDBHook(timeout=20.0).get_conn().get_global_tag(tag)
    except Exception as exc:  # noqa: BLE001 - any failure is shown to the manager next to the field
        return f"the conditions database could not be asked about {tag!r}: {exc}"
    if found is None:
        return f"global tag {tag!r} does not exist in the conditions database; give the running (prompt) tag"
    state = (found.get("globalTagStatus") or {}).get("name")
    if state != "RUNNING":
        return f"global tag {tag!r} is {state}, not RUNNING; the running update needs a RUNNING tag"
    return None


def _airflow_secret() -> bytes:
    from airflow.configuration import conf

    secret = conf.get("api", "secret_key", fallback="") or conf.get("api_auth", "jwt_secret", fallback="")
    if not secret:
        raise RuntimeError("[api] secret_key is empty; the calibration pages need it to sign their forms")
    return secret.encode()


@dataclass
class PageSettings:
    """Where the pages find their data and the outside systems; tests replace the defaults.

    :param db_url: the plugin database URL.
    :param jira_url: Jira's base URL, for ticket links, or None.
    :param run_registry: a run registry client, or None when no connection is configured.
    :param site_problem: why a site cannot run jobs, or None when it can.
    :param running_tag_problem: why a tag cannot be the running tag, or None when it can.
    :param secret: the key of the CSRF tokens.
    :param docs_dir: the built Sphinx HTML that ``/docs/`` serves.
    :param runs_max_age: how old the newest collected run may be before the request form collects runs.
    :param refresh_seconds: how often a page that shows running work reloads its live parts.
    :param default_running_tag: the running tag the request form offers when no request of the kind
        exists yet; with None, the form offers the default of the DAG's ``running_tag`` param.
    """

    db_url: Callable[[], str] = field(default_factory=lambda: _Cached(_airflow_db_url))
    jira_url: Callable[[], str | None] = field(default_factory=lambda: _Cached(_airflow_jira_url))
    run_registry: Callable[[], RunSource | None] = _airflow_run_registry
    site_problem: Callable[[str], str | None] = _airflow_site_problem
    running_tag_problem: Callable[[str], str | None] = _airflow_running_tag_problem
    secret: Callable[[], bytes] = field(default_factory=lambda: _Cached(_airflow_secret, 3600.0))
    docs_dir: Path = field(default_factory=default_docs_dir)
    runs_max_age: timedelta = timedelta(minutes=10)
    refresh_seconds: int = 5
    dag_id: str = DAG_ID
    default_running_tag: str | None = field(default_factory=default_running_tag)


def settings_of(request: Request) -> PageSettings:
    """Return the settings of the app that serves the request."""
    return request.app.state.b2cal_settings  # type: ignore[no-any-return]


SettingsDep = Annotated[PageSettings, Depends(settings_of)]


def request_token(request: Request) -> str | None:
    """Return the JWT the request authenticates with: the bearer header first, then the UI's cookie."""
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip() or None
    return request.cookies.get(TOKEN_COOKIE) or None


async def current_user(request: Request) -> Any:
    """Return the logged-in Airflow user; 401 without a valid token.

    Airflow returns 403 for a token it cannot validate: one that expired, or one signed by a stack
    that was since started from scratch. Such a user needs to log in again, so the pages return 401,
    which redirects a browser to the login page instead of to a page it cannot leave.
    """
    from airflow.api_fastapi.core_api.security import get_user
    from fastapi.security import HTTPAuthorizationCredentials

    header = request.headers.get("authorization", "")
    credentials = None
    if header.lower().startswith("bearer "):
        credentials = HTTPAuthorizationCredentials(scheme="Bearer", credentials=header[7:])
    try:
        return await get_user(request, None, credentials)
    except HTTPException as exc:
        if exc.status_code == 403 and exc.detail == INVALID_TOKEN_DETAIL:
            raise HTTPException(
                status_code=401, detail="the login expired or is invalid; log in again"
            ) from None
        raise


UserDep = Annotated[Any, Depends(current_user)]


def require(user: Any, action: ProductAction) -> None:
    """Raise 403 with the reason unless the user may take the product action."""
    from b2cal_airflow.auth import PermissionDeniedError

    try:
        check_allowed(user, action)
    except PermissionDeniedError as exc:
        raise HTTPException(status_code=403, detail=str(exc)) from None


def csrf_token(request: Request, settings: PageSettings) -> str:
    """Return the CSRF token of the session that authenticated the request."""
    credential = request_token(request) or ""
    return hmac.new(settings.secret(), b"b2cal-form\0" + credential.encode(), hashlib.sha256).hexdigest()


def check_csrf(request: Request, settings: PageSettings, submitted: str | None) -> None:
    """Raise 403 unless a cookie-authenticated form carries the token of its session."""
    if request.headers.get("authorization", "").lower().startswith("bearer "):
        return
    if not submitted or not hmac.compare_digest(submitted, csrf_token(request, settings)):
        log.warning("Refused a form post to %s without a valid CSRF token", request.url.path)
        raise HTTPException(
            status_code=403,
            detail="The form's security token is missing or belongs to an older login. "
            "Reload the page and submit the form again.",
        )


def login_url(request: Request) -> str:
    """Return Airflow's login page, coming back to the requested page afterwards."""
    try:
        from airflow.api_fastapi.app import get_auth_manager

        return str(get_auth_manager().get_url_login(next_url=str(request.url)))
    except Exception:  # noqa: BLE001 - no auth manager in this process: use the FAB login path
        return f"{airflow_base(request)}/auth/login/?{urlencode({'next': str(request.url)})}"


#: The app's own mounts. A request inside one, such as a missing page of the documentation, has the
#: mount in its root path, which the links of an error page must leave out.
FILE_MOUNTS = ("/docs", "/static")


def prefix(request: Request) -> str:
    """Return the path under which the pages are mounted, e.g. ``/b2cal``."""
    root = str(request.scope.get("root_path", "")).rstrip("/")
    for mount in FILE_MOUNTS:
        if root.endswith(mount):
            return root[: -len(mount)]
    return root


def airflow_base(request: Request) -> str:
    """Return the path of Airflow's own UI, the mount point without the plugin's prefix."""
    root = prefix(request)
    return root[: -len(URL_PREFIX)] if root.endswith(URL_PREFIX) else ""


def aware(value: datetime | None) -> datetime | None:
    """Return the time with its zone; SQLite gives back UTC times without one."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def render(request: Request, template: str, context: dict[str, Any], status_code: int = 200) -> Any:
    """Render a page with the values every template uses: links, the user and their rights."""
    settings = settings_of(request)
    user = context.get("user")
    values = {
        "prefix": prefix(request),
        "airflow": airflow_base(request),
        "csrf_field": CSRF_FIELD,
        "csrf_token": csrf_token(request, settings) if request_token(request) else "",
        "login": user_login(user) if user is not None else "",
        "can_start": is_allowed(user, ProductAction.START_REQUEST) if user is not None else False,
        "can_sign_off": is_allowed(user, ProductAction.SIGN_OFF) if user is not None else False,
        "refresh_seconds": settings.refresh_seconds,
        **context,
    }
    return TEMPLATES.TemplateResponse(request, template, values, status_code=status_code)


@lru_cache(maxsize=32)
def _catalog(db_url: str, release: str, imported_at: str) -> Catalog:
    from b2cal.db.engine import session_scope

    with session_scope(db_url) as session:
        return store.load_catalog(session, release)


def cached_catalog(session: Any, db_url: str, release: str) -> Catalog:
    """Return a release's catalog, rebuilt only when the release was imported again.

    :raises b2cal.db.store.NotFoundError: when the release was never imported.
    """
    from sqlalchemy import select

    from b2cal.db.models import Release

    imported = session.scalar(select(Release.imported_at).where(Release.name == release))
    if imported is None:
        return store.load_catalog(session, release)
    return _catalog(db_url, release, str(imported))
