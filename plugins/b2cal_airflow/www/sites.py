"""The site pages: the basf2 releases of each site with their state, failed checks and discovery errors."""

from __future__ import annotations

from collections import Counter
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.orm import Session

from b2cal.db import inventory, store
from b2cal.db.engine import session_scope
from b2cal.db.inventorymodels import FAILED, SITE_RELEASE_STATES, SiteRelease
from b2cal_airflow.auth import ProductAction
from b2cal_airflow.www.context import SettingsDep, UserDep, aware, prefix, render, require

router = APIRouter()

#: The sites the request form offers even before the site inventory has a release of them.
SITES = ("BNL", "DESY", "KEK")
#: Discovery errors shown on a site page, newest first.
ERRORS_SHOWN = 20


def known_sites(session: Session) -> list[str]:
    """Return the sites the pages know: :data:`SITES` and every site of the site inventory."""
    return sorted({*SITES, *inventory.inventory_sites(session)})


def canonical_site(session: Session, name: str) -> str:
    """Return the known site whose name matches ``name`` in any case, e.g. ``KEK`` for ``kek``.

    The connection ``b2cal_site_<site>`` is found in any case, but the pages and the stored requests
    use the site's own spelling. See :func:`b2cal.db.inventory.canonical_site`.
    """
    return inventory.canonical_site(session, name, SITES)


def release_rows(rows: list[SiteRelease], imported: set[str]) -> list[dict[str, Any]]:
    """Return a site's releases for the page, each with the release its catalog diff starts from.

    The diff compares consecutive releases of the site whose catalogs are imported, because a
    release whose import failed has no catalog to compare.

    :param rows: the site's releases, oldest version first.
    """
    result = []
    previous: str | None = None
    for row in rows:
        diff_from = None
        if row.release in imported:
            diff_from = previous
            previous = row.release
        result.append(
            {
                "release": row.release,
                "state": row.state,
                "error": row.error,
                "source": row.source,
                "calibrations": row.calibrations,
                "first_seen_at": aware(row.first_seen_at),
                "last_seen_at": aware(row.last_seen_at),
                "checked_at": aware(row.checked_at),
                "unavailable_since": aware(row.unavailable_since),
                "imported": row.release in imported,
                "diff_from": diff_from,
            }
        )
    return result


@router.get("/sites", response_class=HTMLResponse)
def sites_page(request: Request, user: UserDep, settings: SettingsDep) -> HTMLResponse:
    """List the sites of the inventory with how many releases are in each state."""
    require(user, ProductAction.READ)
    with session_scope(settings.db_url()) as session:
        names = inventory.inventory_sites(session)
        counts: dict[str, Counter[str]] = {name: Counter() for name in names}
        for row in inventory.list_site_releases(session):
            counts[row.site][row.state] += 1
    sites = [{"site": name, "counts": counts[name]} for name in names]
    return render(request, "sites.html", {"user": user, "sites": sites, "states": SITE_RELEASE_STATES})


@router.get("/sites/{site}", response_class=HTMLResponse)
def site_page(request: Request, site: str, user: UserDep, settings: SettingsDep) -> Response:
    """Show one site's releases with their state, the failed checks and the latest discovery errors.

    A site name in another case than the known site's, e.g. ``bnl``, redirects to the known name.
    """
    require(user, ProductAction.READ)
    with session_scope(settings.db_url()) as session:
        canonical = canonical_site(session, site)
        if canonical != site:
            return RedirectResponse(f"{prefix(request)}/sites/{quote(canonical, safe='')}", status_code=307)
        rows = inventory.list_site_releases(session, site)
        errors = inventory.discovery_errors(session, site=site, limit=ERRORS_SHOWN)
        if not rows and not errors:
            raise HTTPException(
                status_code=404,
                detail=f"site {site!r} has no release inventory; run the DAG b2cal_release_discovery "
                f"for it, or register a release with 'b2cal import-catalog --site {site}'",
            )
        imported = set(store.list_releases(session))
        releases = release_rows(rows, imported)
        error_rows = [
            {
                "at": aware(item.at),
                "release": item.release,
                "stage": item.stage,
                "message": item.message,
                "output": item.output,
            }
            for item in errors
        ]
    context = {
        "user": user,
        "site": site,
        "releases": releases,
        "failed": [item for item in releases if item["state"] == FAILED],
        "errors": error_rows,
        "errors_shown": ERRORS_SHOWN,
    }
    return render(request, "site.html", context)
