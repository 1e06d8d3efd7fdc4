"""Discover the basf2 releases of the calibration sites every day and keep the catalog in step.

The calibrations a site can run are defined by the basf2 releases installed there. For each site,
one mapped task lists the releases with the site connection's ``release_list_command``, over SSH or
locally. For every release that is new at the site it runs ``b2caf-prompt-check`` and
``b2caf-prompt-show --json``, and imports the prompt calibration settings into the catalog. A release whose
check fails is stored with the error and not offered; a release that disappears from a site is
marked unavailable there and never deleted. When a release becomes available, the calibration
manager gets a Jira ticket with what changed since the release before it.

The scheduled run visits the sites of the Airflow Variable ``b2cal_inventory_sites`` (a JSON
list). Trigger the DAG with ``sites`` set to check some sites at once, for example after a release
was installed.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import DAG, Param, task

from b2cal_airflow.operators.releases import ReleaseDiscoveryOperator, discovery_sites

with DAG(
    dag_id="b2cal_release_discovery",
    description="List the basf2 releases of each site, check and import the new ones",
    schedule="@daily",
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    render_template_as_native_obj=True,
    tags=["b2cal", "releases"],
    default_args={"retries": 2, "retry_delay": timedelta(minutes=10)},
    params={
        "sites": Param(
            [],
            type="array",
            items={"type": "string"},
            description="Sites to visit; empty means the sites of the Variable b2cal_inventory_sites",
        ),
        "notify": Param(True, type="boolean", description="Open a Jira ticket for each new release"),
    },
    doc_md=__doc__,
) as dag:

    @task
    def choose_sites(params: dict[str, Any] | None = None) -> list[str]:
        """Return the sites this run visits."""
        return discovery_sites((params or {}).get("sites"))

    ReleaseDiscoveryOperator.partial(task_id="discover_releases", notify="{{ params.notify }}").expand(
        site=choose_sites()
    )
