"""Keep each open bucket's skim quota and its storage at the calibration sites up to date, every day.

Every bucket needs the same recorded luminosity of each calibration skim (``target_pb``, 2 fb^-1 by
default), whatever its size. The first task chooses, for every open bucket without a quota, the
runs whose skim files reach it, preferring runs that every calibration reading the skim accepts,
and stores the choice with its explanation. Input selection then reads only those runs' skims, and
skim replication copies only them.

The mapped task measures, per site of the Airflow Variable ``b2cal_inventory_sites`` (a JSON list),
the bytes of skims, cDSTs and payloads that each open bucket takes there.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import DAG, Param, task

from b2cal.skimquota import DEFAULT_QUOTA_PB
from b2cal_airflow.operators.inventory import ChooseSkimQuotaOperator, StorageAccountingOperator
from b2cal_airflow.operators.releases import discovery_sites

with DAG(
    dag_id="b2cal_bucket_inventory",
    description="Choose the skim quota of open buckets and measure their storage per site",
    schedule="@daily",
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    render_template_as_native_obj=True,
    tags=["b2cal", "runs"],
    default_args={"retries": 2, "retry_delay": timedelta(minutes=10)},
    params={
        "target_pb": Param(
            DEFAULT_QUOTA_PB,
            type="number",
            exclusiveMinimum=0,
            description="Recorded luminosity of each skim per bucket, in pb^-1",
        ),
        "refresh": Param(False, type="boolean", description="Choose again for buckets that have a quota"),
        "sites": Param(
            [],
            type="array",
            items={"type": "string"},
            description="Sites to measure; empty means the sites of the Variable b2cal_inventory_sites",
        ),
    },
    doc_md=__doc__,
) as dag:
    quota = ChooseSkimQuotaOperator(
        task_id="choose_skim_quotas", target_pb="{{ params.target_pb }}", refresh="{{ params.refresh }}"
    )

    @task
    def choose_sites(params: dict[str, Any] | None = None) -> list[str]:
        """Return the sites this run measures."""
        return discovery_sites((params or {}).get("sites"))

    storage = StorageAccountingOperator.partial(task_id="measure_storage").expand(site=choose_sites())

    quota >> storage
