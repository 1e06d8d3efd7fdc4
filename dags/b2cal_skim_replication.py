"""Keep the calibration skims of new runs replicated from KEK to the calibration sites.

Every hour the DAG registers the skim files that lie at KEK, if the connection ``b2cal_site_kek``
exists; without it, the system that writes the skims is expected to register them. Then it makes sure
that every run dataset ``skim/<data_tag>/eNNNN/rNNNNN`` in the skim quota of an open bucket (chosen by
the bucket inventory DAG, a fixed luminosity per skim and bucket) has a replication rule to each
destination RSE, and waits for all those rules in one deferred trigger. With ``quota_only`` off it
takes every run dataset created in the last ``lookback_hours`` instead.
Rules that already exist are reused, so each run only adds rules for datasets that are new since the
previous run.

A calibration at BNL reads its skims from BNL-DISK; when a run's rule stays STUCK past the grace
period the run fails and names the rule, so the transfer can be fixed before a request needs the run.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import DAG, Param

from b2cal_airflow.operators.rucio import RucioRegisterSkimsOperator, RucioReplicateSkimsOperator

CALIBRATION_SKIMS = ["hadron_calib", "mumu_tight_or_highm_calib", "bhabha_all_calib", "cosmic_calib"]

with DAG(
    dag_id="b2cal_skim_replication",
    description="Register calibration skims at KEK and replicate new runs to the calibration sites",
    schedule="@hourly",
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    # A run waits until its rules are OK; later runs must still add rules for newer runs meanwhile.
    max_active_runs=4,
    render_template_as_native_obj=True,
    tags=["b2cal", "rucio"],
    params={
        "data_tags": Param(
            CALIBRATION_SKIMS, type="array", items={"type": "string"}, description="Skims to replicate"
        ),
        "destinations": Param(
            ["BNL-DISK"], type="array", items={"type": "string"}, description="RSE expressions of the sites"
        ),
        "runs": Param(
            [0, 0, -1, -1],
            type="array",
            items={"type": "integer"},
            minItems=4,
            maxItems=4,
            description="Runs to register and replicate, as an IoV [e1, r1, e2, r2]",
        ),
        "quota_only": Param(
            True,
            type="boolean",
            description="Replicate only the runs in the skim quota of an open bucket. When off, "
            "replicate every run dataset created within lookback_hours",
        ),
        "lookback_hours": Param(
            72,
            type="number",
            minimum=1,
            description="Without quota_only, replicate datasets created this recently",
        ),
        "lifetime_days": Param(60, type="integer", minimum=1, description="Days until the skim rules expire"),
    },
    doc_md=__doc__,
) as dag:
    register = RucioRegisterSkimsOperator(
        task_id="register_kek_skims",
        source_site="KEK",
        runs="{{ params.runs }}",
        data_tags="{{ params.data_tags }}",
    )
    replicate = RucioReplicateSkimsOperator(
        task_id="replicate_skims",
        destinations="{{ params.destinations }}",
        data_tags="{{ params.data_tags }}",
        runs="{{ params.runs }}",
        quota_only="{{ params.quota_only }}",
        # A quota lists runs recorded before the quota was chosen, so the search has no time limit.
        lookback_hours="{{ None if params.quota_only else params.lookback_hours }}",
        lifetime="{{ params.lifetime_days * 86400 }}",
        activity="Production Input",
        poll_interval=60,
        stuck_grace_period=3600,
        wait_timeout=timedelta(hours=6),
        # Registration is skipped when skims are registered elsewhere; replication runs all the same.
        trigger_rule="none_failed",
    )

    register >> replicate
