"""The reading pages: requests, a bucket with its timeline, durations, runs, the catalog and its diff."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse

from b2cal.db import inventory, runcache, store
from b2cal.db.engine import session_scope
from b2cal.iov import IoV
from b2cal.reports import diff_catalogs, longest_chain
from b2cal_airflow.auth import ProductAction, is_allowed
from b2cal_airflow.www import charts, data
from b2cal_airflow.www.context import SettingsDep, UserDep, airflow_base, cached_catalog, render, require

router = APIRouter()


def _now() -> datetime:
    return datetime.now(UTC)


def _request_or_404(session: Any, uid: str) -> Any:
    try:
        return data.find_request(session, uid)
    except store.NotFoundError as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from None


def _catalog_or_none(session: Any, db_url: str, release: str) -> Any:
    try:
        return cached_catalog(session, db_url, release)
    except store.NotFoundError:
        return None


@router.get("/", response_class=HTMLResponse)
def requests_page(request: Request, user: UserDep, settings: SettingsDep) -> HTMLResponse:
    """List every request with a progress bar; the table reloads itself while work runs."""
    require(user, ProductAction.READ)
    with session_scope(settings.db_url()) as session:
        items = data.request_list(session)
    return render(request, "requests.html", {"user": user, "requests": items, "now": _now()})


@router.get("/requests-table", response_class=HTMLResponse)
def requests_table(request: Request, user: UserDep, settings: SettingsDep) -> HTMLResponse:
    """Return the requests table alone, for the list page's live reload."""
    require(user, ProductAction.READ)
    with session_scope(settings.db_url()) as session:
        items = data.request_list(session)
    return render(request, "_requests_table.html", {"user": user, "requests": items, "now": _now()})


def _bucket_context(request: Request, settings: Any, session: Any, uid: str, user: Any) -> dict[str, Any]:
    now = _now()
    row = _request_or_404(session, uid)
    db_url = settings.db_url()
    catalog = _catalog_or_none(session, db_url, row.release)
    counts = data.state_counts((item.job_state, item.ticket_state) for item in row.progress)
    timeline = data.timeline(session, row, catalog, now)
    durations = data.durations(session, row, now)
    return {
        "user": user,
        "now": now,
        "summary": data.summary(row, counts),
        "calibrations": data.calibration_rows(
            session,
            row,
            catalog,
            jira_url=settings.jira_url(),
            airflow=airflow_base(request),
            dag_id=settings.dag_id,
        ),
        "timeline": timeline,
        "timeline_svg": charts.timeline_svg(timeline),
        "waiting": ", ".join(
            f"{charts.STATE_LABELS[state]} {charts.duration(seconds)}"
            for state, seconds in timeline.waiting_seconds().items()
            if seconds
        ),
        "durations": durations,
        "catalog_missing": catalog is None,
        "dag_id": settings.dag_id,
    }


def bucket_page_context(request: Request, settings: Any, uid: str, user: Any) -> dict[str, Any]:
    """Return what ``bucket.html`` shows of request ``uid``; 404 when the request does not exist."""
    with session_scope(settings.db_url()) as session:
        context = _bucket_context(request, settings, session, uid, user)
        context["audit"] = data.audit_entries(session, uid, limit=50)
        context["cancellation"] = data.cancellation(session, uid)
        bucket = IoV.from_list(context["summary"]["bucket"])
        context["skim_quota"] = data.skim_quota_rows(session, bucket)
        context["storage"] = data.storage_rows(session, bucket)
    context["typical_storage"] = data.typical_storage()
    context["storage_kinds"] = (("skim", "Skims"), ("cdst", "cDSTs"), ("payload", "Payloads"))
    context["can_cancel"] = is_allowed(user, ProductAction.CANCEL_REQUEST) and not context["summary"]["final"]
    context["can_comment"] = is_allowed(user, ProductAction.COMMENT) and any(
        row["ticket_key"] for row in context["calibrations"]
    )
    return context


@router.get("/requests/{uid}", response_class=HTMLResponse)
def bucket_page(request: Request, uid: str, user: UserDep, settings: SettingsDep) -> HTMLResponse:
    """Show one request's bucket: calibrations, timeline, durations, skim quota, storage, audit log.

    Users allowed to cancel requests also get the cancel form while the request is not over.
    """
    require(user, ProductAction.READ)
    return render(request, "bucket.html", bucket_page_context(request, settings, uid, user))


@router.get("/requests/{uid}/live", response_class=HTMLResponse)
def bucket_live(request: Request, uid: str, user: UserDep, settings: SettingsDep) -> HTMLResponse:
    """Return the parts of the bucket page that change while the request runs."""
    require(user, ProductAction.READ)
    with session_scope(settings.db_url()) as session:
        context = _bucket_context(request, settings, session, uid, user)
    return render(request, "_bucket_live.html", context)


@router.get("/requests/{uid}/runs", response_class=HTMLResponse)
def runs_page(request: Request, uid: str, user: UserDep, settings: SettingsDep) -> HTMLResponse:
    """List the runs of a request's bucket with their type, flags, luminosity and skims."""
    require(user, ProductAction.READ)
    with session_scope(settings.db_url()) as session:
        row = _request_or_404(session, uid)
        bucket = data.bucket_of(row)
        records = runcache.records_in(session, bucket)
        runs = [
            {
                "experiment": item.experiment,
                "run": item.run,
                "run_type": item.run_type,
                "overall": item.overall_quality,
                "quality": dict((item.record or {}).get("quality") or {}),
                "shifter": (item.record or {}).get("shifter_quality", ""),
                "solenoid": (item.record or {}).get("solenoid_field", ""),
                "beam_energy": (item.record or {}).get("beam_energy", ""),
                "luminosity": item.recorded_luminosity,
                "skims": list((item.record or {}).get("skims") or []),
                "start_time": item.start_time,
                "stop_time": item.stop_time,
            }
            for item in records
        ]
        fetched = data.aware(runcache.last_fetched(session))
        context = {
            "user": user,
            "summary": data.summary(
                row, data.state_counts((p.job_state, p.ticket_state) for p in row.progress)
            ),
            "runs": runs,
            "detectors": sorted({name for item in runs for name in item["quality"] if name != "overall"}),
            "luminosity": sum(item["luminosity"] for item in runs),
            "fetched": fetched,
        }
    return render(request, "runs.html", context)


@router.get("/durations", response_class=HTMLResponse)
def durations_page(request: Request, user: UserDep, settings: SettingsDep) -> HTMLResponse:
    """Show, per bucket, the time for the bucket and the time from data taken to calibrated."""
    require(user, ProductAction.READ)
    with session_scope(settings.db_url()) as session:
        rows = data.all_durations(session, _now())
    return render(
        request,
        "durations.html",
        {"user": user, "rows": rows, "chart": charts.durations_svg(rows), "days": charts.days},
    )


@router.get("/catalog", response_class=HTMLResponse)
def catalog_page(
    request: Request, user: UserDep, settings: SettingsDep, release: str | None = None
) -> HTMLResponse:
    """Show a release's calibrations and their dependency graph."""
    require(user, ProductAction.READ)
    db_url = settings.db_url()
    with session_scope(db_url) as session:
        releases = store.list_releases(session)
        if not releases:
            return render(request, "catalog.html", {"user": user, "releases": [], "catalog": None})
        chosen = release or releases[-1]
        try:
            catalog = cached_catalog(session, db_url, chosen)
        except store.NotFoundError as exc:
            raise HTTPException(status_code=404, detail=str(exc)) from None
        release_sites = dict(sorted(inventory.release_sites(session, chosen).items()))
    depends_on = {name: catalog[name].depends_on for name in catalog.names}
    chain = longest_chain(depends_on)
    graph = charts.graph_svg(
        catalog.levels(), depends_on, {name: catalog[name].phase for name in catalog.names}, highlight=chain
    )
    context = {
        "user": user,
        "releases": releases,
        "release": chosen,
        "catalog": catalog,
        "graph": graph,
        "chain": chain,
        "levels": catalog.levels(),
        "release_sites": release_sites,
    }
    return render(request, "catalog.html", context)


@router.get("/catalog/diff", response_class=HTMLResponse)
def catalog_diff_page(
    request: Request, user: UserDep, settings: SettingsDep, old: str | None = None, new: str | None = None
) -> HTMLResponse:
    """Compare the catalogs of two releases: calibrations added, removed and changed."""
    require(user, ProductAction.READ)
    db_url = settings.db_url()
    with session_scope(db_url) as session:
        releases = store.list_releases(session)
        diff = None
        if old and new:
            try:
                diff = diff_catalogs(
                    cached_catalog(session, db_url, old), cached_catalog(session, db_url, new)
                )
            except store.NotFoundError as exc:
                raise HTTPException(status_code=404, detail=str(exc)) from None
    return render(
        request,
        "catalog_diff.html",
        {"user": user, "releases": releases, "old": old, "new": new, "diff": diff},
    )
