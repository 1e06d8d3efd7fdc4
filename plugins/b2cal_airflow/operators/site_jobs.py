"""Shared parts of the operators that start jobs at a site: request check, clean start, environment."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from airflow.sdk.exceptions import AirflowException

from b2cal.remote import RequestFields, UnsafeValueError, check_request_for_site
from b2cal.sites import SiteSettings

#: The DAG run conf key that requests a clean start: ``true`` for every calibration, or a list of names.
CLEAN_START_KEY = "clean_start"


def check_request_fields(spec: RequestFields) -> None:
    """Reject a request whose fields could change a command, a path or a file at the site.

    :raises AirflowException: naming the field, before anything reaches the site.
    """
    try:
        check_request_for_site(spec)
    except UnsafeValueError as exc:
        raise AirflowException(
            f"request {spec.uid!r} was not sent to site {spec.site!r}: {exc}. "
            "Correct the request and trigger it again"
        ) from None


def clean_start_requested(context: Mapping[str, Any], name: str) -> bool:
    """Return whether the DAG run's conf requests a clean start of the job ``name``.

    ``clean_start`` may be ``true`` (every job of the run) or a list of calibration names. A clean start
    only matters after a failed attempt: it starts the next attempt from scratch instead of from the CAF
    checkpoint. A succeeded job is never started again.
    """
    dag_run = context.get("dag_run")
    conf = getattr(dag_run, "conf", None) or {}
    value = conf.get(CLEAN_START_KEY, False)
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        return value.strip().lower() in ("true", "all") or value == name
    if isinstance(value, list):
        return name in value
    return False


def job_environment(site: SiteSettings) -> dict[str, str]:
    """Return the environment variables of a job at ``site``.

    A local site also gets this interpreter's ``bin`` folder first on ``PATH``, where the basf2
    stand-ins of the demo are installed.
    """
    if site.is_ssh:
        return dict(site.env)
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {"PATH": path, **site.env}
