"""Operators that collect runs from the run registry and propose the next bucket."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import Any

from airflow.sdk import BaseOperator, Context
from airflow.sdk.exceptions import AirflowException

from b2cal.buckets import DEFAULT_TARGET_PB, BucketError, propose_next_bucket, save_bucket
from b2cal.db.engine import session_scope, upgrade
from b2cal.runregistry import RunRegistryError
from b2cal.runsync import CollectionScope, RunSyncError, collect_runs
from b2cal_airflow.hooks.b2cal import PluginDatabaseHook, RunRegistryHook


def _optional_int(value: Any, name: str) -> int | None:
    if value in (None, ""):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise AirflowException(
            f"{name}={value!r} is not an integer; give an experiment number or leave it empty"
        ) from None


class _PluginDatabaseOperator(BaseOperator):
    """Base of operators that write the plugin database.

    :param db_conn_id: connection of the plugin database.
    """

    def __init__(self, *, db_conn_id: str = "b2cal_db", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.db_conn_id = db_conn_id

    @cached_property
    def db_url(self) -> str:
        """The plugin database URL."""
        return PluginDatabaseHook(self.db_conn_id).get_url()


class CollectRunsOperator(_PluginDatabaseOperator):
    """Copy the runs of an experiment range from the run registry into the plugin database.

    New runs are added, changed runs updated with the change logged, and runs of the range that the
    registry no longer returns are flagged as missing. Running it again with the same registry
    contents changes nothing, so retries are safe.

    :param min_experiment: first experiment to collect; all when empty.
    :param max_experiment: last experiment to collect; all when empty.
    :param allow_empty: flag every stored run of the range when the registry returns none.
    :param runregistry_conn_id: the run registry connection (base URL, API key as password).
    """

    template_fields: Sequence[str] = ("min_experiment", "max_experiment")
    ui_color = "#e0f2fe"

    def __init__(
        self,
        *,
        min_experiment: int | str | None = None,
        max_experiment: int | str | None = None,
        allow_empty: bool = False,
        runregistry_conn_id: str = "b2cal_runregistry",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.min_experiment = min_experiment
        self.max_experiment = max_experiment
        self.allow_empty = allow_empty
        self.runregistry_conn_id = runregistry_conn_id

    def execute(self, context: Context) -> dict[str, Any]:
        try:
            scope = CollectionScope(
                min_experiment=_optional_int(self.min_experiment, "min_experiment"),
                max_experiment=_optional_int(self.max_experiment, "max_experiment"),
            )
        except ValueError as exc:
            raise AirflowException(str(exc)) from None
        registry = RunRegistryHook(self.runregistry_conn_id).get_conn()
        upgrade(self.db_url)
        try:
            with session_scope(self.db_url) as session:
                report = collect_runs(session, registry, scope, allow_empty=self.allow_empty)
        except (RunRegistryError, RunSyncError) as exc:
            raise AirflowException(f"run collection for {scope} failed: {exc}") from None
        for change in report.changes:
            self.log.info(
                "Run e%s r%s %s %s", change["experiment"], change["run"], change["kind"], change["fields"]
            )
        self.log.info(
            "Collected %d runs of %s: %d new, %d changed, %d unchanged, %d missing, %d reappeared",
            report.fetched,
            scope,
            report.new,
            report.changed,
            report.unchanged,
            report.missing,
            report.reappeared,
        )
        return report.to_dict()


class ProposeBucketOperator(_PluginDatabaseOperator):
    """Propose the bucket after the latest stored one, and store it once it reaches the target.

    :param target_luminosity_pb: good physics luminosity at which the bucket is cut, in pb^-1.
    :param cross_experiments: let the bucket continue into the next experiment.
    :param store_complete: store a complete proposal as an open bucket; an incomplete one is only
        reported.
    """

    template_fields: Sequence[str] = ("target_luminosity_pb", "cross_experiments")
    ui_color = "#e0f2fe"

    def __init__(
        self,
        *,
        target_luminosity_pb: float | str = DEFAULT_TARGET_PB,
        cross_experiments: bool | str = False,
        store_complete: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.target_luminosity_pb = target_luminosity_pb
        self.cross_experiments = cross_experiments
        self.store_complete = store_complete

    def execute(self, context: Context) -> dict[str, Any] | None:
        try:
            target = float(self.target_luminosity_pb)
        except (TypeError, ValueError):
            raise AirflowException(
                f"target_luminosity_pb={self.target_luminosity_pb!r} is not a number; give pb^-1, e.g. 9000"
            ) from None
        cross = str(self.cross_experiments).strip().lower() in ("1", "true", "yes", "on")
        upgrade(self.db_url)
        try:
            with session_scope(self.db_url) as session:
                proposal = propose_next_bucket(session, target_pb=target, cross_experiments=cross)
                if proposal is None:
                    self.log.info("No collected run after the latest bucket; nothing to propose")
                    return None
                stored = False
                if proposal.complete and self.store_complete:
                    save_bucket(session, proposal, actor="b2cal_run_collection")
                    stored = True
        except (BucketError, ValueError) as exc:
            raise AirflowException(f"bucket proposal failed: {exc}") from None
        for note in proposal.notes:
            self.log.info("Bucket %s: %s", proposal.name, note)
        self.log.info(
            "Bucket %s: %d runs, %d good physics runs, %.1f pb^-1 of %.1f pb^-1%s",
            proposal.name,
            proposal.runs,
            proposal.good_physics_runs,
            proposal.luminosity_pb,
            proposal.target_pb,
            ", stored as open" if stored else "",
        )
        return {**proposal.to_dict(), "stored": stored}
