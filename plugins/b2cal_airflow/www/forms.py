"""The processing request form: fields, validation next to each field, plan preview and submission.

The form is checked in three steps, and each shows its errors next to the field they concern:
the fields themselves (numbers, JSON, filter vocabulary, declared ``expert_config`` keys); then the
outside systems (the site's connection, the running tag in the conditions database, the bucket's
runs in the run registry); then :func:`b2cal.request.parse_request`, which the DAG runs as well.
Only a form that passes all three is turned into a DAG run, through Airflow's REST API as the
logged-in user; a form with errors saves nothing.

Submission is idempotent per request id. The request row is stored first, and the unique request id
lets only one of several concurrent submissions store it. The DAG run id is derived from the request
id alone (:func:`b2cal.request.request_run_id`), so Airflow rejects a second run as well. A failed
trigger deletes the stored row again. A repeated submission with the same values redirects to the
stored request's page, after starting the request's run if Airflow does not have it (the web process
stopped between storing the request and starting the run).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from b2cal.buckets import bucket_ranges
from b2cal.catalog import Catalog, CatalogError, check_filter_values
from b2cal.db import inventory, runcache, store
from b2cal.db.engine import session_scope
from b2cal.db.inventorymodels import AVAILABLE
from b2cal.db.models import AuditEntry, ProcessingRequest
from b2cal.iov import IoV
from b2cal.releases import sort_releases
from b2cal.reports import (
    FINAL_REQUEST_STATES,
    PlanPreview,
    ProposedBucket,
    dependency_notes,
    empty_input_message,
    plan_preview,
    propose_buckets,
)
from b2cal.request import (
    KINDS,
    REQUEST_SCHEMA,
    TAG_PATTERN,
    RequestError,
    RequestSpec,
    check_site_release,
    parse_request,
    request_run_id,
    short_repr,
)
from b2cal_airflow.auth import ProductAction, user_login
from b2cal_airflow.www.airflow_api import AirflowAPIError, AirflowClient, AirflowDep
from b2cal_airflow.www.context import (
    CSRF_FIELD,
    PageSettings,
    SettingsDep,
    UserDep,
    aware,
    cached_catalog,
    check_csrf,
    prefix,
    render,
    require,
)
from b2cal_airflow.www.sites import SITES, canonical_site, known_sites

log = logging.getLogger(__name__)

router = APIRouter()

DEFAULT_SITE = {"prompt": "BNL", "reprocessing": "DESY"}
FILTER_FIELD = "filters::{name}::{input}"
CONFIG_FIELD = "expert_config::{name}"
PROPOSALS_SHOWN = 12
FORM_ERROR = "form"
START_ANYWAY_FIELD = "start_anyway"
START_ANYWAY_LABEL = "Start even if an input keeps no run"
RUNNING_TAG_HELP = (
    "give the global tag that the signed-off bucket is merged into, which must be RUNNING in the "
    "conditions database"
)
#: Request states that free the request's bucket: the overlap warning and the bucket proposals leave
#: such requests out.
BUCKET_FREEING_STATES = frozenset({"rejected", "cancelled"})


@dataclass
class RequestForm:
    """The values of the form as typed, the errors per field, and the conf they make."""

    values: dict[str, Any] = field(default_factory=dict)
    selected: list[str] = field(default_factory=list)
    filters: dict[str, str] = field(default_factory=dict)
    configs: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    conf: dict[str, Any] = field(default_factory=dict)
    #: The id of a stored request with exactly the values of this form, submitted before.
    submitted: str | None = None

    def error(self, name: str, message: str) -> None:
        """Record the first error of a field."""
        self.errors.setdefault(name, message)


@dataclass
class SiteOffer:
    """The releases the form offers for one site.

    :ivar available: the releases available at the site, passed to :func:`parse_request` as
        ``site_releases``.
    :ivar note: the hint next to the release field, saying where the offered releases come from.
    """

    site: str
    releases: list[str]
    available: list[str]
    note: str


@dataclass(frozen=True)
class RunningTagDefault:
    """The running tag that the form offers, and where it comes from, e.g. ``the last prompt request``."""

    tag: str
    source: str


def dag_param_default(details: Mapping[str, Any] | None, key: str) -> Any:
    """Return the default of a DAG param from Airflow's DAG details, or None when the DAG lacks it.

    Airflow 3.3 returns each param as ``{"value": ..., "schema": ..., "description": ..., "source": ...}``.
    """
    param = ((details or {}).get("params") or {}).get(key)
    return param.get("value") if isinstance(param, Mapping) else param


def last_running_tag(settings: PageSettings, kind: str) -> str | None:
    """Return the running tag of the newest request of ``kind``, or None when there is none."""
    with session_scope(settings.db_url()) as session:
        return session.scalar(
            select(ProcessingRequest.running_tag)
            .where(ProcessingRequest.kind == kind)
            .order_by(ProcessingRequest.created_at.desc(), ProcessingRequest.id.desc())
            .limit(1)
        )


async def running_tag_default(
    settings: PageSettings, airflow: AirflowClient, kind: str
) -> RunningTagDefault | None:
    """Return the running tag to offer for a request of ``kind``, or None when nothing names one.

    The running tag of the newest request of the kind comes first, then the pages' configured
    default, then the default of the DAG's ``running_tag`` param, as Airflow's REST API returns it.
    """
    last = await run_in_threadpool(last_running_tag, settings, kind)
    if last:
        return RunningTagDefault(last, f"the last {kind} request")
    if settings.default_running_tag:
        return RunningTagDefault(settings.default_running_tag, "the pages' default B2CAL_RUNNING_TAG")
    try:
        details = await airflow.dag_details(settings.dag_id)
    except AirflowAPIError as exc:
        log.warning("Could not read the params of the DAG %s for the running tag: %s", settings.dag_id, exc)
        return None
    tag = dag_param_default(details, "running_tag")
    if isinstance(tag, str) and tag:
        return RunningTagDefault(tag, f"the default of the DAG {settings.dag_id}")
    return None


def missing_running_tag_message(default: RunningTagDefault | None) -> str:
    """Return the error for an empty running tag, suggesting ``default`` when there is one."""
    message = f"running_tag is missing; {RUNNING_TAG_HELP}"
    if default is None:
        return message
    return f"{message}, for example {default.tag!r} from {default.source}"


def site_offer(session: Session, site: str, imported: list[str]) -> SiteOffer:
    """Return the releases to offer at ``site``: those available there, or every imported one.

    A site without an available imported release still lists the imported catalogs, so that the
    manager can look at their calibrations, but the request is rejected, as the DAG would reject it.
    """
    states = inventory.site_release_states(session, site)
    if not states:
        return SiteOffer(
            site,
            list(imported),
            [],
            f"The site inventory has no releases of {site}, so a request there is rejected until the "
            f"DAG b2cal_release_discovery finds a release at {site} or 'b2cal import-catalog --site "
            f"{site}' registers one. The imported catalogs are listed to show their calibrations.",
        )
    available = sort_releases(name for name, state in states.items() if state == AVAILABLE)
    offered = [name for name in available if name in set(imported)]
    if not offered:
        return SiteOffer(
            site,
            list(imported),
            available,
            f"No imported release is available at {site}, so the request will be rejected; the "
            f"imported catalogs are listed to show their calibrations. See the site page of {site}.",
        )
    return SiteOffer(site, offered, available, f"The releases available at {site}.")


def form_site(site: str, kind: str) -> str:
    """Return the site typed in the form, or the default site of the request kind."""
    return site.strip() or DEFAULT_SITE.get(kind, SITES[0])


def filter_field(name: str, input_name: str) -> str:
    """Return the form field of one input's filter list."""
    return FILTER_FIELD.format(name=name, input=input_name)


def config_field(name: str) -> str:
    """Return the form field of one calibration's ``expert_config`` overrides."""
    return CONFIG_FIELD.format(name=name)


def suggested_id(kind: str, bucket: IoV) -> str:
    """Return a request id built from the kind and the bucket's first run."""
    return f"{kind}-e{bucket.exp_low:04d}-r{bucket.run_low:05d}"


def suggested_staging_tag(kind: str, bucket: IoV) -> str:
    """Return a staging tag name built from the kind and the bucket's first run."""
    return f"staging_{kind}_e{bucket.exp_low:04d}_r{bucket.run_low:05d}"


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return "null"


def parse_config(text: str, defaults: Mapping[str, Any], label: str) -> dict[str, Any]:
    """Return the keys of an ``expert_config`` JSON text that differ from the catalog's defaults.

    :raises ValueError: naming the key or the JSON error and what the calibration accepts.
    """
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"{label} is not valid JSON ({exc.msg} at line {exc.lineno}); fix the syntax"
        ) from None
    if not isinstance(value, dict):
        raise ValueError(f"{label} must be a JSON object of settings, got {_json_type(value)}")
    unknown = sorted(key for key in value if key not in defaults)
    if unknown:
        raise ValueError(
            f"{label} sets {', '.join(map(repr, unknown))}, which the calibration does not declare; "
            f"its keys are {', '.join(sorted(defaults)) or 'none'}"
        )
    for key, item in value.items():
        default = defaults[key]
        if default is not None and item is not None and _json_type(item) != _json_type(default):
            raise ValueError(
                f"{label} key {key!r} is {_json_type(item)}; the default {default!r} is {_json_type(default)}"
            )
    return {key: item for key, item in value.items() if item != defaults[key]}


def read_form(
    form: Mapping[str, Any],
    selected: list[str],
    catalog: Catalog,
    user: Any,
    *,
    site: str,
    running_default: RunningTagDefault | None = None,
) -> RequestForm:
    """Check the fields of a submitted form and build the DAG run conf from them.

    :param site: the site to request, from :func:`form_site` and then :func:`canonical_site`.
    :param running_default: the running tag suggested when the field is empty.
    """
    result = RequestForm(selected=selected)
    for key in ("request_id", "kind", "site", "bucket", "staging_tag", "running_tag", "proposed"):
        result.values[key] = str(form.get(key) or "").strip()
    result.values["release"] = catalog.release
    result.values[START_ANYWAY_FIELD] = bool(form.get(START_ANYWAY_FIELD))
    for name in catalog.names:
        for input_name in catalog[name].input_data_names:
            key = filter_field(name, input_name)
            if key in form:
                result.filters[key] = str(form[key])
        if config_field(name) in form:
            result.configs[config_field(name)] = str(form[config_field(name)])

    kind = result.values["kind"] or "prompt"
    if kind not in KINDS:
        result.error("kind", f"kind {kind!r} is not offered; choose {' or '.join(KINDS)}")
    bucket_text = result.values["bucket"] or result.values["proposed"]
    bucket: IoV | None = None
    if not bucket_text:
        result.error(
            "bucket", "choose a proposed bucket or type a run range as exp_low,run_low,exp_high,run_high"
        )
    else:
        try:
            bucket = IoV.parse(bucket_text)
        except ValueError as exc:
            result.error("bucket", f"bucket {bucket_text!r} is invalid: {exc}")
    if bucket is not None:
        result.values["bucket"] = bucket.as_text()
        if not result.values["request_id"]:
            result.values["request_id"] = suggested_id(kind, bucket)
        if not result.values["staging_tag"]:
            result.values["staging_tag"] = suggested_staging_tag(kind, bucket)
    result.values["site"] = site
    if not result.values["running_tag"]:
        result.error("running_tag", missing_running_tag_message(running_default))
    if not selected:
        result.error("calibrations", "choose at least one calibration; its dependencies are added for you")
    unknown = [name for name in selected if name not in catalog]
    if unknown:
        names = ", ".join(map(repr, unknown))
        result.error(
            "calibrations",
            f"calibration {names} {'is' if len(unknown) == 1 else 'are'} not in the catalog of "
            f"{catalog.release}; choose calibrations from the list below",
        )
        return result
    chosen = catalog.closure(selected)

    filter_overrides: dict[str, dict[str, list[str]]] = {}
    config_overrides: dict[str, dict[str, Any]] = {}
    for name in chosen:
        settings = catalog[name]
        for input_name in settings.input_data_names:
            key = filter_field(name, input_name)
            if key not in result.filters:
                continue
            values = [line.strip() for line in result.filters[key].splitlines() if line.strip()]
            try:
                check_filter_values(values, catalog.vocabulary, f"{name} input {input_name!r}")
            except CatalogError as exc:
                result.error(key, str(exc))
                continue
            if values != list(settings.input_data_filters.get(input_name, ())):
                filter_overrides.setdefault(name, {})[input_name] = values
        key = config_field(name)
        if key in result.configs:
            try:
                overrides = parse_config(
                    result.configs[key], settings.expert_config, f"expert_config of {name}"
                )
            except ValueError as exc:
                result.error(key, str(exc))
                continue
            if overrides:
                config_overrides[name] = overrides

    result.conf = {
        "request_id": result.values["request_id"],
        "kind": kind,
        "site": result.values["site"],
        "release": catalog.release,
        "bucket": bucket.as_list() if bucket is not None else [],
        "calibrations": list(selected),
        "filter_overrides": filter_overrides,
        "expert_config": config_overrides,
        "staging_tag": result.values["staging_tag"],
        "running_tag": result.values["running_tag"],
        "requested_by": user_login(user),
    }
    return result


def error_field(exc: RequestError) -> str:
    """Return the form field a :class:`RequestError` is about; its message starts with the field name."""
    message = str(exc)
    if message.startswith("staging_tag and running_tag"):
        return "staging_tag"
    for key in sorted(REQUEST_SCHEMA, key=len, reverse=True):
        if message.startswith(key):
            return {"filter_overrides": "calibrations", "expert_config": "calibrations"}.get(key, key)
    return FORM_ERROR


def is_same_request(row: ProcessingRequest, conf: Mapping[str, Any], catalog: Catalog) -> bool:
    """Return whether a stored request has every value of a form's conf, as a repeated submission has."""
    try:
        calibrations = set(catalog.closure(list(conf.get("calibrations") or [])))
    except CatalogError:
        return False
    stored = {
        "kind": row.kind,
        "site": row.site,
        "release": row.release,
        "bucket": [row.exp_low, row.run_low, row.exp_high, row.run_high],
        "filter_overrides": row.filter_overrides or {},
        "expert_config": row.expert_config_overrides or {},
        "staging_tag": row.staging_tag,
        "running_tag": row.running_tag,
        "requested_by": row.requested_by,
    }
    return set(row.calibrations) == calibrations and all(
        conf.get(key) == value for key, value in stored.items()
    )


def check_against_database(session: Session, form: RequestForm, catalog: Catalog) -> None:
    """Reject an id that another request has, and a staging tag that an unfinished request uses.

    A stored request with exactly the form's values is no error: ``form.submitted`` then names it.
    """
    uid = form.conf.get("request_id")
    existing = session.scalar(select(ProcessingRequest).where(ProcessingRequest.uid == uid))
    if existing is not None and is_same_request(existing, form.conf, catalog):
        form.submitted = existing.uid
        return
    if existing is not None:
        form.error(
            "request_id",
            f"request id {uid!r} is taken by the {existing.kind} request of {existing.requested_by} from "
            f"{aware(existing.created_at):%Y-%m-%d}; choose another id",
        )
    tag = form.conf.get("staging_tag")
    busy = session.scalar(
        select(ProcessingRequest.uid).where(
            ProcessingRequest.staging_tag == tag, ProcessingRequest.state.not_in(FINAL_REQUEST_STATES)
        )
    )
    if tag and busy is not None:
        form.error(
            "staging_tag",
            f"staging tag {tag!r} belongs to request {busy!r}, which is still running; preparing it would "
            "empty that request's payloads, so choose another tag",
        )


def check_site(settings: PageSettings, form: RequestForm) -> None:
    """Check that the site has a usable connection ``b2cal_site_<site>``."""
    site = form.conf.get("site") or form.values.get("site", "")
    problem = settings.site_problem(site)
    if problem:
        form.error("site", problem)


def check_outside(session: Session, settings: PageSettings, form: RequestForm) -> None:
    """Check the running tag and the bucket's runs against the outside systems."""
    running = form.conf.get("running_tag", "")
    if running and "running_tag" not in form.errors:
        if not TAG_PATTERN.fullmatch(running):
            # A name the conditions database cannot hold is not looked up there.
            problem = (
                f"running_tag {short_repr(running)} is invalid; "
                "use 1 to 128 letters, digits, '.', '_', '+' or '-'"
            )
        else:
            problem = settings.running_tag_problem(running)
        if problem:
            form.error("running_tag", problem)
    if "bucket" in form.errors or not form.conf.get("bucket"):
        return
    bucket = IoV.from_list(form.conf["bucket"])
    registry = settings.run_registry()
    if registry is None:
        form.error(
            "bucket",
            "no run registry connection (b2cal_runregistry) is configured, so the bucket cannot be checked",
        )
        return
    try:
        stored = runcache.refresh_runs(session, registry, bucket)
    except Exception as exc:  # noqa: BLE001 - shown next to the field; nothing is submitted
        form.error("bucket", f"the run registry could not be asked for bucket {bucket}: {exc}")
        return
    if stored == 0:
        form.error(
            "bucket",
            f"the run registry has no run in bucket {bucket}; "
            "pick a proposed bucket or correct the run range",
        )


def validate(
    session: Session, settings: PageSettings, form: RequestForm, catalog: Catalog, offer: SiteOffer
) -> tuple[RequestSpec | None, PlanPreview | None]:
    """Run every check; return the request and its plan, or ``(None, None)`` with the errors in ``form``.

    The release is checked against the site's inventory, and the site's connection is always checked,
    so their errors show next to their fields together with the errors of the other fields. A form
    that repeats a stored request returns ``(None, None)`` with ``form.submitted`` set.
    """
    try:
        check_site_release(catalog.release, offer.site, offer.available)
    except RequestError as exc:
        form.error("release", str(exc))
    if not form.errors:
        check_against_database(session, form, catalog)
    if not form.errors and form.submitted is None:
        check_outside(session, settings, form)
    check_site(settings, form)
    if form.errors or form.submitted is not None:
        return None, None
    try:
        spec = parse_request(form.conf, catalog, site_releases=offer.available)
    except RequestError as exc:
        form.error(error_field(exc), str(exc))
        return None, None
    plan = plan_preview(spec, catalog, runcache.runs_in(session, spec.bucket))
    overlapping = session.scalars(
        select(ProcessingRequest).where(
            ProcessingRequest.kind == spec.kind, ProcessingRequest.state.not_in(BUCKET_FREEING_STATES)
        )
    )
    for other in overlapping:
        if IoV(other.exp_low, other.run_low, other.exp_high, other.run_high).overlaps(spec.bucket):
            plan.warnings.append(
                f"the bucket overlaps the {other.kind} request {other.uid!r} ({other.state})"
            )
    return spec, plan


def refresh_if_stale(session: Session, settings: PageSettings) -> str | None:
    """Collect runs when the newest collected run is older than allowed; return why that failed, if it did."""
    fetched = aware(runcache.last_fetched(session))
    if fetched is not None and datetime.now(UTC) - fetched < settings.runs_max_age:
        return None
    registry = settings.run_registry()
    if registry is None:
        return (
            "No run registry connection (b2cal_runregistry) is configured; proposed buckets use cached runs."
        )
    try:
        runcache.refresh_runs(session, registry)
    except Exception as exc:  # noqa: BLE001 - the form still works with the cached runs
        log.warning("Collecting runs from the run registry failed: %s", exc)
        return f"The run registry did not answer ({exc}); proposed buckets use the runs cached before."
    return None


_proposal_cache: dict[str, tuple[Any, list[ProposedBucket]]] = {}
_proposal_lock = threading.Lock()


def cached_proposals(session: Session, requested: dict[str, IoV]) -> list[ProposedBucket]:
    """Return the proposed buckets, cut again only when the runs, the stored buckets or the requests changed.

    Cutting reads every collected run, which takes most of the form's time with thousands of runs.
    """
    url = str(session.get_bind().url)
    stored = bucket_ranges(session)
    key = (
        runcache.version(session),
        tuple(sorted((uid, iov.as_text()) for uid, iov in requested.items())),
        tuple((name, iov.as_text()) for name, iov in stored.items()),
    )
    with _proposal_lock:
        cached = _proposal_cache.get(url)
    if cached is not None and cached[0] == key:
        return cached[1]
    proposals = propose_buckets(runcache.run_summaries(session), requested=requested, stored=stored)
    with _proposal_lock:
        _proposal_cache[url] = (key, proposals)
    return proposals


def form_context(
    session: Session, catalog: Catalog, offer: SiteOffer, form: RequestForm, user: Any
) -> dict[str, Any]:
    """Return what the form template needs: the catalog, proposed buckets and the typed values."""
    requested = {
        row.uid: IoV(row.exp_low, row.run_low, row.exp_high, row.run_high)
        for row in session.scalars(
            select(ProcessingRequest).where(ProcessingRequest.state.not_in(BUCKET_FREEING_STATES))
        )
    }
    proposals = cached_proposals(session, requested)
    calibrations = []
    selected = set(form.selected)
    known = [name for name in form.selected if name in catalog]
    for name in catalog.names:
        settings = catalog[name]
        calibrations.append(
            {
                "name": name,
                "phase": settings.phase,
                "expert": settings.expert_username,
                "subsystem": settings.subsystem,
                "description": settings.description,
                "depends_on": list(settings.depends_on),
                "checked": name in selected,
                "inputs": [
                    {
                        "name": input_name,
                        "field": filter_field(name, input_name),
                        "text": form.filters.get(
                            filter_field(name, input_name),
                            "\n".join(settings.input_data_filters.get(input_name, ())),
                        ),
                    }
                    for input_name in settings.input_data_names
                ],
                "config_field": config_field(name),
                "config_text": form.configs.get(
                    config_field(name), json.dumps(dict(settings.expert_config), indent=1, sort_keys=True)
                ),
            }
        )
    return {
        "user": user,
        "releases": offer.releases,
        "release": catalog.release,
        "release_offered": catalog.release in offer.releases,
        "release_note": offer.note,
        "site": offer.site,
        "calibrations": calibrations,
        "depends_json": json.dumps({name: list(catalog[name].depends_on) for name in catalog.names}),
        "notes": dependency_notes(catalog, known) if known else {},
        "vocabulary": {key: list(values) for key, values in catalog.vocabulary.items()},
        "proposals": list(reversed(proposals))[:PROPOSALS_SHOWN],
        "kinds": KINDS,
        "sites": known_sites(session),
        "values": form.values,
        "errors": form.errors,
        "form_error": form.errors.get(FORM_ERROR),
        "start_anyway_field": START_ANYWAY_FIELD,
        "start_anyway_label": START_ANYWAY_LABEL,
    }


def release_problem(release: str | None, imported: list[str]) -> str | None:
    """Return why ``release`` cannot be requested because it is missing or not imported, or None."""
    if not release:
        return f"release is missing; choose one of the imported releases: {', '.join(imported)}"
    if release not in imported:
        return (
            f"release {release!r} is not imported; the imported releases are {', '.join(imported)}. "
            "Choose one of them, or import its catalog with 'b2cal import-catalog' first"
        )
    return None


def _catalog_for(
    session: Session, settings: PageSettings, site: str, release: str | None, *, keep: bool
) -> tuple[Catalog, SiteOffer, str | None]:
    """Return the catalog to show, the releases offered at ``site`` and why ``release`` is invalid.

    A release that is missing or not imported is never swapped for another one silently: the site's
    newest release is shown, and the third value is the reason the requested one is rejected.

    :param keep: whether to keep a submitted release that the site lacks. The form then shows it
        with its error. Otherwise the site's newest release is shown.
    """
    imported = store.list_releases(session)
    if not imported:
        raise HTTPException(
            status_code=409,
            detail="No basf2 release catalog is imported yet; import one with 'b2cal import-catalog' first",
        )
    offer = site_offer(session, site, imported)
    allowed = imported if keep else offer.releases
    chosen = release if release in allowed else offer.releases[-1]
    problem = release_problem(release, imported) if keep or release else None
    return cached_catalog(session, settings.db_url(), chosen), offer, problem


def new_form_context(
    settings: PageSettings,
    user: Any,
    release: str | None,
    site: str | None,
    running_default: RunningTagDefault | None,
) -> dict[str, Any]:
    """Return the context of an empty form; it may collect runs, so it runs in a worker thread."""
    kind = "prompt"
    with session_scope(settings.db_url()) as session:
        chosen_site = canonical_site(session, form_site(site or "", kind))
        catalog, offer, problem = _catalog_for(session, settings, chosen_site, release, keep=False)
        notice = refresh_if_stale(session, settings)
        if problem:
            shown = f"{problem[0].upper()}{problem[1:]}. The form shows {catalog.release}."
            notice = f"{shown} {notice}" if notice else shown
        form = RequestForm(selected=catalog.names)
        form.values = {
            "kind": kind,
            "site": chosen_site,
            "running_tag": running_default.tag if running_default else "",
        }
        context = form_context(session, catalog, offer, form, user)
    context["notice"] = notice
    context["running_tag_source"] = running_default.source if running_default else None
    return context


@router.get("/requests/new", response_class=HTMLResponse)
async def new_request_page(
    request: Request,
    user: UserDep,
    settings: SettingsDep,
    airflow: AirflowDep,
    release: str | None = None,
    site: str | None = None,
) -> HTMLResponse:
    """Show an empty request form for a site and a release, with every calibration chosen.

    The running tag is pre-filled as :func:`running_tag_default` finds it.
    """
    require(user, ProductAction.START_REQUEST)
    running_default = await running_tag_default(settings, airflow, "prompt")
    context = await run_in_threadpool(new_form_context, settings, user, release, site, running_default)
    return render(request, "request_form.html", context)


@router.post("/requests/new", response_class=HTMLResponse)
async def submit_request(
    request: Request, user: UserDep, settings: SettingsDep, airflow: AirflowDep
) -> Response:
    """Preview the plan of the form, or submit it: store the request and trigger its DAG run."""
    form_data = await request.form()
    # The role first: a user who may not take the action learns that, not that a token is missing.
    require(user, ProductAction.START_REQUEST)
    check_csrf(request, settings, str(form_data.get(CSRF_FIELD) or ""))
    action = str(form_data.get("action") or "preview")
    selected = [str(value) for value in form_data.getlist("calibrations")]
    kind = str(form_data.get("kind") or "prompt")
    release = str(form_data.get("release") or "").strip()
    running_default = None
    if not str(form_data.get("running_tag") or "").strip():
        running_default = await running_tag_default(settings, airflow, kind)
    with session_scope(settings.db_url()) as session:
        site = canonical_site(session, form_site(str(form_data.get("site") or ""), kind))
        catalog, offer, problem = _catalog_for(session, settings, site, release, keep=True)
        form = read_form(form_data, selected, catalog, user, site=site, running_default=running_default)
        if problem:
            form.error("release", problem)
        spec, plan = validate(session, settings, form, catalog, offer)
        if form.submitted is not None and action != "submit":
            form.error("request_id", submitted_message(session, request, form.submitted))
        context = form_context(session, catalog, offer, form, user)
    if form.submitted is not None and action == "submit":
        log.info("Request %s was submitted before with the same values; showing it", form.submitted)
        try:
            await start_missing_run(settings, airflow, form, catalog, form.submitted)
        except (AirflowAPIError, RequestError) as exc:
            log.warning("Could not start the missing run of request %s: %s", form.submitted, exc)
            context["plan"] = None
            message = f"request {form.submitted!r} is stored but its DAG run could not be started: {exc}"
            form.error(FORM_ERROR, message)
            context["errors"] = form.errors
            context["form_error"] = message
            return render(request, "request_form.html", context, status_code=502)
        return RedirectResponse(f"{prefix(request)}/requests/{form.submitted}", status_code=303)
    if spec is not None and plan is not None and action == "submit" and not form.values[START_ANYWAY_FIELD]:
        check_inputs(form, plan)
        context["errors"] = form.errors
    if spec is None or plan is None or action != "submit" or form.errors:
        context["plan"] = plan
        return render(request, "request_form.html", context, status_code=422 if form.errors else 200)
    return await start_request(request, settings, airflow, spec, catalog, form, context, plan)


async def start_missing_run(
    settings: PageSettings, airflow: Any, form: RequestForm, catalog: Catalog, uid: str
) -> None:
    """Start the DAG run of a request that the form stored but whose run Airflow does not have.

    That happens when the web process stopped between storing the request and starting its run.
    Only the run id the form gives a request is started, so a request started some other way never
    gets a second run; Airflow's unique run ids keep two resubmissions from starting two runs.
    """
    run_id = request_run_id(uid)
    with session_scope(settings.db_url()) as session:
        row = session.scalar(select(ProcessingRequest).where(ProcessingRequest.uid == uid))
        stored_run = row.dag_run_id if row is not None else None
    if stored_run != run_id or await airflow.get_run(settings.dag_id, run_id) is not None:
        return
    spec = parse_request(form.conf, catalog)
    try:
        await trigger_run(settings, airflow, spec, run_id)
    except AirflowAPIError as exc:
        if exc.status == 409:
            return
        # A submission of the same form may have been starting the run at the same moment, and
        # Airflow can respond to that race with an error other than 409. The existing run is enough.
        if await airflow.get_run(settings.dag_id, run_id) is not None:
            log.info("Run %s of request %s was started meanwhile (Airflow returned %s)", run_id, uid, exc)
            return
        raise
    audit_trigger(
        settings, spec, run_id, f"started the missing {settings.dag_id} run {run_id} of the stored request"
    )
    log.info("Started the missing run %s of request %s", run_id, uid)


async def trigger_run(settings: PageSettings, airflow: Any, spec: RequestSpec, run_id: str) -> None:
    """Start the DAG run ``run_id`` of a request through Airflow's REST API."""
    note = f"Started from the request form by {spec.requested_by}"
    await airflow.trigger(settings.dag_id, run_id, spec.to_conf(), note=note)


def audit_trigger(
    settings: PageSettings, spec: RequestSpec, run_id: str, message: str, **detail: Any
) -> None:
    """Record in the audit log that the form started the DAG run ``run_id`` of a request."""
    with session_scope(settings.db_url()) as session:
        store.audit(
            session,
            spec.requested_by,
            "trigger_dag_run",
            request_uid=spec.uid,
            message=message,
            dag_run_id=run_id,
            **detail,
        )


def check_inputs(form: RequestForm, plan: PlanPreview) -> None:
    """Reject a plan in which a calibration input keeps no run, as the preview warns."""
    problems = [empty_input_message(name, count) for name, count in plan.empty_inputs()]
    if problems:
        form.error(
            "calibrations",
            f"{'; '.join(problems)}. Such a calibration fails at once for lack of input: change its "
            f"filters or the bucket, or tick '{START_ANYWAY_LABEL}' to start the request anyway",
        )


def submitted_message(session: Session, request: Request, uid: str) -> str:
    """Return the message that request ``uid`` is stored already, with its submitter and its page."""
    row = session.scalar(select(ProcessingRequest).where(ProcessingRequest.uid == uid))
    who = f" by {row.requested_by} on {aware(row.created_at):%Y-%m-%d %H:%M} UTC" if row else ""
    return (
        f"request {uid!r} was already submitted{who}, so it is not started again; open its page "
        f"{prefix(request)}/requests/{uid}, or choose another request id for a new request"
    )


class DuplicateRequestError(RuntimeError):
    """A request with the same id was stored by another submission first."""


def reserve_request(db_url: str, spec: RequestSpec, catalog: Catalog, run_id: str) -> None:
    """Store the request with its DAG run id before the run is triggered.

    :raises DuplicateRequestError: when another submission stored a request with the same id first.
    """
    try:
        with session_scope(db_url) as session:
            stored = session.scalar(select(ProcessingRequest.id).where(ProcessingRequest.uid == spec.uid))
            if stored is not None:
                raise DuplicateRequestError(spec.uid)
            row = store.save_request(session, spec, catalog)
            row.dag_run_id = run_id
            session.flush()
    except IntegrityError as exc:
        # The request id is unique: a concurrent submission committed it between the check and the insert.
        raise DuplicateRequestError(spec.uid) from exc


def release_request(db_url: str, uid: str) -> None:
    """Delete a request stored by :func:`reserve_request` whose DAG run was not started."""
    with session_scope(db_url) as session:
        row = session.scalar(select(ProcessingRequest).where(ProcessingRequest.uid == uid))
        if row is not None:
            session.delete(row)
        session.execute(
            delete(AuditEntry).where(AuditEntry.request_uid == uid, AuditEntry.action == "submit_request")
        )


async def start_request(
    request: Request,
    settings: PageSettings,
    airflow: Any,
    spec: RequestSpec,
    catalog: Catalog,
    form: RequestForm,
    context: dict[str, Any],
    plan: PlanPreview,
) -> Response:
    """Store the request, trigger its DAG run and redirect to its page; delete it if the trigger fails."""
    run_id = request_run_id(spec.uid)
    try:
        reserve_request(settings.db_url(), spec, catalog, run_id)
    except DuplicateRequestError:
        with session_scope(settings.db_url()) as session:
            row = session.scalar(select(ProcessingRequest).where(ProcessingRequest.uid == spec.uid))
            same = row is not None and is_same_request(row, form.conf, catalog)
            message = submitted_message(session, request, spec.uid)
        if same:
            log.info("Request %s was submitted concurrently with the same values; showing it", spec.uid)
            return RedirectResponse(f"{prefix(request)}/requests/{spec.uid}", status_code=303)
        log.warning("Request %s was submitted concurrently with other values; rejected", spec.uid)
        return _show_error(request, context, form, plan, "request_id", message, 409)
    try:
        await trigger_run(settings, airflow, spec, run_id)
    except AirflowAPIError as exc:
        release_request(settings.db_url(), spec.uid)
        log.warning("Airflow rejected run %s of request %s: %s", run_id, spec.uid, exc)
        if exc.status == 409:
            message = (
                f"Airflow already has the run {run_id} of request {spec.uid!r}, so nothing new was "
                f"started or saved; open the request's page {prefix(request)}/requests/{spec.uid}, "
                "or choose another request id"
            )
            return _show_error(request, context, form, plan, "request_id", message, 409)
        message = f"Airflow did not start the run ({exc.status}): {exc.detail}. Nothing was saved."
        status = 502 if exc.status >= 500 else exc.status
        return _show_error(request, context, form, plan, FORM_ERROR, message, status)
    audit_trigger(
        settings,
        spec,
        run_id,
        f"started {settings.dag_id} run {run_id} from the request form",
        added_dependencies=list(spec.added_dependencies),
    )
    log.info("Request %s submitted by %s as run %s", spec.uid, spec.requested_by, run_id)
    return RedirectResponse(f"{prefix(request)}/requests/{spec.uid}", status_code=303)


def _show_error(
    request: Request,
    context: dict[str, Any],
    form: RequestForm,
    plan: PlanPreview,
    name: str,
    message: str,
    status: int,
) -> HTMLResponse:
    form.error(name, message)
    context["errors"] = form.errors
    context["form_error"] = form.errors.get(FORM_ERROR)
    context["plan"] = plan
    return render(request, "request_form.html", context, status_code=status)


@router.post("/api/preview")
def preview_api(conf: dict[str, Any], user: UserDep, settings: SettingsDep) -> dict[str, Any]:
    """Return the plan of a request conf (the DAG's Params) without starting anything.

    Missing and invalid fields, including experiment and run numbers out of range, return 422
    before any run is read from the database.
    """
    require(user, ProductAction.READ)
    with session_scope(settings.db_url()) as session:
        imported = store.list_releases(session)
        release = conf.get("release")
        problem = release_problem(release if isinstance(release, str) else str(release or ""), imported)
        if problem:
            raise HTTPException(status_code=422, detail=problem)
        if isinstance(conf.get("site"), str):
            conf = {**conf, "site": canonical_site(session, conf["site"])}
        try:
            catalog = cached_catalog(session, settings.db_url(), str(release))
            offer = site_offer(session, str(conf.get("site") or ""), imported)
            spec = parse_request(
                {"requested_by": user_login(user), **conf}, catalog, site_releases=offer.available
            )
        except (RequestError, store.NotFoundError) as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from None
        return plan_preview(spec, catalog, runcache.runs_in(session, spec.bucket)).to_dict()
