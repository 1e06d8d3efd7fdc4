"""FastAPI app with the calibration pages, mounted in Airflow's API server at :data:`URL_PREFIX`.

The user comes from Airflow's own login (see :mod:`b2cal_airflow.www.context`); the pages are:

``/``                           the requests, with a progress bar each
``/requests/new``               the processing request form, its plan preview and submission
``/requests/{id}``              a bucket: calibrations, timeline with critical path, durations
``/requests/{id}/runs``         the runs of the bucket with their flags
``/requests/{id}/signoff``      the readiness report and the manager's decision
``/requests/{id}/cancel``       the manager's cancellation of a request, posted from the bucket page
``/durations``                  time for each bucket and from data taken to calibrated
``/catalog``, ``/catalog/diff`` the catalog of a release with its graph, and the diff of two
``/sites``, ``/sites/{site}``   the basf2 releases of each site, their state and failed checks
``/docs/``                      the Sphinx documentation built by ``make docs``
``/api/...``                    the same data as JSON
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException
from starlette.types import Receive, Scope, Send

from b2cal_airflow.www import api, cancel, comments, forms, pages, signoff, sites, webhooks
from b2cal_airflow.www.context import TEMPLATES, URL_PREFIX, PageSettings, login_url, prefix

__all__ = ["URL_PREFIX", "create_app"]

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"


class DocsFiles(StaticFiles):
    """Serve the built documentation, or say how to build it when it is missing."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not Path(str(self.directory)).joinpath("index.html").is_file():
            response = HTMLResponse(
                "<!doctype html><title>b2cal documentation</title>"
                "<h1>The documentation is not built</h1>"
                f"<p>The pages look for it in <code>{self.directory}</code>. Run <code>make docs</code> in "
                "the b2cal source folder, or set <code>B2CAL_DOCS_DIR</code> to a folder with the built "
                "HTML.</p>",
                status_code=404,
            )
            await response(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def _wants_html(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return "/api/" not in request.url.path and ("text/html" in accept or "application/json" not in accept)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if not _wants_html(request):
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)
    if exc.status_code == 401:
        return RedirectResponse(login_url(request), status_code=303)
    return TEMPLATES.TemplateResponse(
        request,
        "error.html",
        {"status": exc.status_code, "detail": exc.detail, "prefix": prefix(request), "login": ""},
        status_code=exc.status_code,
    )


def create_app(settings: PageSettings | None = None) -> FastAPI:
    """Build the app; it opens no connection and reads no setting until a page is requested.

    :param settings: where the pages find the database and the outside systems; by default from the
        Airflow connections of the API server.
    """
    app = FastAPI(
        title="b2cal", description="Belle II prompt calibration requests", docs_url=None, redoc_url=None
    )
    app.state.b2cal_settings = settings or PageSettings()
    app.add_exception_handler(HTTPException, _http_error)
    app.include_router(api.router)
    app.include_router(forms.router)
    app.include_router(signoff.router)
    app.include_router(cancel.router)
    app.include_router(comments.router)
    app.include_router(pages.router)
    app.include_router(sites.router)
    app.include_router(webhooks.router)
    app.mount("/static", StaticFiles(directory=str(STATIC_DIR)), name="static")
    app.mount(
        "/docs", DocsFiles(directory=str(app.state.b2cal_settings.docs_dir), html=True, check_dir=False)
    )
    return app


def root_middleware() -> dict[str, Any]:
    """Return the plugin's entry for ``fastapi_root_middlewares``."""
    from b2cal_airflow.www.airflow_api import RootAppMiddleware

    return {
        "middleware": RootAppMiddleware,
        "args": [],
        "kwargs": {},
        "name": "b2cal pages' route to the REST API",
    }
