"""The processing request: its fields, their validation and the JSON schema of the DAG's Params."""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from b2cal.catalog import Catalog, CatalogError, check_filter_values
from b2cal.iov import IoV

KINDS = ("prompt", "reprocessing")
UID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
TAG_PATTERN = re.compile(r"^[A-Za-z0-9_.+-]{1,128}$")
SITE_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,32}$")

REQUEST_SCHEMA: dict[str, dict[str, Any]] = {
    "request_id": {
        "type": "string",
        "pattern": UID_PATTERN.pattern,
        "description": "Unique id of the request, used in ticket labels and folder names",
    },
    "kind": {"type": "string", "enum": list(KINDS), "description": "prompt or reprocessing"},
    "site": {"type": "string", "pattern": SITE_PATTERN.pattern, "description": "Site that runs the jobs"},
    "release": {"type": "string", "minLength": 1, "description": "basf2 release, e.g. release-11-00-00"},
    "bucket": {
        "type": "array",
        "items": {"type": "integer"},
        "minItems": 4,
        "maxItems": 4,
        "description": "The bucket as an IoV [exp_low, run_low, exp_high, run_high]",
    },
    "calibrations": {
        "type": "array",
        "items": {"type": "string"},
        "description": "Calibrations to run; their dependencies are added. Empty means all.",
    },
    "filter_overrides": {
        "type": "object",
        "description": "Per calibration, per input name: a replacement filter list",
    },
    "expert_config": {"type": "object", "description": "Per calibration: expert_config keys to override"},
    "staging_tag": {"type": "string", "pattern": TAG_PATTERN.pattern, "description": "Staging global tag"},
    "running_tag": {"type": "string", "pattern": TAG_PATTERN.pattern, "description": "Running global tag"},
    "requested_by": {"type": "string", "minLength": 1, "description": "Who asked for the request"},
}


class RequestError(ValueError):
    """An invalid processing request; the message names the field, the value and the fix."""


def request_run_id(uid: str) -> str:
    """Return the id of the DAG run that the request form starts for request ``uid``.

    The id depends on the request id alone, so Airflow rejects a second run of the same request.
    """
    return f"b2cal__{uid}"


@dataclass(frozen=True)
class RequestSpec:
    """A validated processing request."""

    uid: str
    kind: str
    site: str
    release: str
    bucket: IoV
    calibrations: tuple[str, ...]
    staging_tag: str
    running_tag: str
    requested_by: str
    filter_overrides: Mapping[str, Mapping[str, list[str]]] = field(default_factory=dict)
    expert_config_overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    added_dependencies: tuple[str, ...] = ()

    def expert_config(self, catalog: Catalog, name: str) -> dict[str, Any]:
        """Return a calibration's ``expert_config``: the catalog defaults with the request's overrides."""
        merged = dict(catalog[name].expert_config)
        merged.update(self.expert_config_overrides.get(name, {}))
        return merged

    def to_conf(self) -> dict[str, Any]:
        """Return the request as the DAG run conf."""
        return {
            "request_id": self.uid,
            "kind": self.kind,
            "site": self.site,
            "release": self.release,
            "bucket": self.bucket.as_list(),
            "calibrations": list(self.calibrations),
            "filter_overrides": {k: dict(v) for k, v in self.filter_overrides.items()},
            "expert_config": {k: dict(v) for k, v in self.expert_config_overrides.items()},
            "staging_tag": self.staging_tag,
            "running_tag": self.running_tag,
            "requested_by": self.requested_by,
        }


def check_site_release(release: Any, site: str, site_releases: Collection[str]) -> None:
    """Reject a release that is not among the releases available at ``site``.

    :raises RequestError: naming the release and the releases available at the site.
    """
    if release not in site_releases:
        raise RequestError(
            f"release {release!r} is not available at site {site!r}; releases available there: "
            f"{', '.join(site_releases) or 'none'}. Pick one of them, or run the DAG "
            "b2cal_release_discovery for the site if the release was installed recently"
        )


def parse_request(
    conf: Mapping[str, Any], catalog: Catalog, *, site_releases: Collection[str] | None = None
) -> RequestSpec:
    """Validate a request against the release catalog and return it with its dependencies added.

    :param site_releases: the releases available at the request's site; ``None`` skips that check.
    :raises RequestError: naming the first invalid field.
    """
    uid = _text(conf, "request_id", UID_PATTERN, "letters, digits, '.', '_' or '-', at most 64")
    kind = conf.get("kind", "prompt")
    if kind not in KINDS:
        raise RequestError(f"kind {kind!r} is invalid; use one of {', '.join(KINDS)}")
    site = _text(conf, "site", SITE_PATTERN, "letters, digits, '_' or '-'")
    release = conf.get("release")
    if release is None:
        raise RequestError(f"release is missing; give the release of the catalog, {catalog.release!r}")
    if release != catalog.release:
        raise RequestError(
            f"release {release!r} does not match the catalog {catalog.release!r}; import that release first"
        )
    if site_releases is not None:
        check_site_release(release, site, site_releases)
    if conf.get("bucket") is None:
        raise RequestError("bucket is missing; give the run range as [exp_low, run_low, exp_high, run_high]")
    try:
        bucket = IoV.from_list(conf["bucket"])
    except (TypeError, ValueError) as exc:
        raise RequestError(f"bucket {conf.get('bucket')!r} is invalid: {exc}") from None

    chosen = conf.get("calibrations") or catalog.names
    if not isinstance(chosen, list | tuple) or not all(isinstance(name, str) for name in chosen):
        raise RequestError(
            f'calibrations {short_repr(chosen)} must be a list of calibration names, e.g. ["CDC badwire"]'
        )
    selected = list(chosen)
    unknown = [name for name in selected if name not in catalog]
    if unknown:
        raise RequestError(
            f"calibrations {unknown!r} are not in {catalog.release}; pick names from its catalog"
        )
    closed = catalog.closure(selected)
    added = tuple(name for name in closed if name not in set(selected))

    filters = conf.get("filter_overrides") or {}
    if not isinstance(filters, Mapping):
        raise RequestError(f"filter_overrides {filters!r} must be an object of calibration → input → list")
    for name, per_input in filters.items():
        if name not in closed:
            raise RequestError(f"filter_overrides names calibration {name!r}, which the request does not run")
        settings = catalog[name]
        if not isinstance(per_input, Mapping):
            raise RequestError(f"filter_overrides[{name!r}] must map input names to filter lists")
        for input_name, values in per_input.items():
            if input_name not in settings.input_data_names:
                raise RequestError(
                    f"filter_overrides[{name!r}] names input {input_name!r}; "
                    f"the calibration's inputs are {list(settings.input_data_names)}"
                )
            try:
                check_filter_values(values, catalog.vocabulary, f"filter_overrides[{name!r}][{input_name!r}]")
            except CatalogError as exc:
                raise RequestError(str(exc)) from None

    configs = conf.get("expert_config") or {}
    if not isinstance(configs, Mapping):
        raise RequestError(f"expert_config {configs!r} must be an object of calibration → settings")
    for name, overrides in configs.items():
        if name not in closed:
            raise RequestError(f"expert_config names calibration {name!r}, which the request does not run")
        if not isinstance(overrides, Mapping):
            raise RequestError(f"expert_config[{name!r}] must be an object of settings")
        defaults = catalog[name].expert_config
        extra = [key for key in overrides if key not in defaults]
        if extra:
            raise RequestError(
                f"expert_config[{name!r}] sets {extra!r}, which the calibration does not declare; "
                f"its keys are {sorted(defaults) or 'none'}"
            )

    staging = _text(conf, "staging_tag", TAG_PATTERN, "letters, digits, '.', '_', '+' or '-'")
    running = _text(conf, "running_tag", TAG_PATTERN, "letters, digits, '.', '_', '+' or '-'")
    if staging == running:
        raise RequestError(f"staging_tag and running_tag are both {staging!r}; they must differ")
    requested_by = str(conf.get("requested_by") or "").strip()
    if not requested_by:
        raise RequestError("requested_by is missing; give the user who asks for the request")
    return RequestSpec(
        uid=uid,
        kind=kind,
        site=site,
        release=catalog.release,
        bucket=bucket,
        calibrations=tuple(closed),
        staging_tag=staging,
        running_tag=running,
        requested_by=requested_by,
        filter_overrides={k: {i: list(v) for i, v in per.items()} for k, per in filters.items()},
        expert_config_overrides={k: dict(v) for k, v in configs.items()},
        added_dependencies=added,
    )


def short_repr(value: Any, limit: int = 80) -> str:
    """Return ``repr(value)`` for an error message, cut to about ``limit`` characters with its length."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(str(value))} characters)"


def _text(conf: Mapping[str, Any], key: str, pattern: re.Pattern[str], allowed: str) -> str:
    value = conf.get(key)
    if value is None or value == "":
        raise RequestError(f"{key} is missing; give {allowed}")
    # fullmatch, because "$" in the patterns also matches before a final line break.
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise RequestError(f"{key} {short_repr(value)} is invalid; use {allowed}")
    return value
