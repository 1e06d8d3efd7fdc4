"""Operators for the buckets' inventory: the skim quota of each open bucket and its storage at a site.

The choices and numbers come from :mod:`b2cal.skimquota` and :mod:`b2cal.storage`. These operators
read the plugin database and the site, and store the results for the pages and for input selection.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import Any

from airflow.sdk import BaseOperator, Context
from airflow.sdk.exceptions import AirflowException, AirflowNotFoundException

from b2cal.buckets import list_buckets
from b2cal.catalog import Catalog
from b2cal.db import inventory, store
from b2cal.db.engine import session_scope, upgrade
from b2cal.filesources import PathTemplateSource
from b2cal.releases import sort_releases
from b2cal.runs import DATA_TAG
from b2cal.runsync import load_runs
from b2cal.sites import SiteConfigError
from b2cal.skimquota import DEFAULT_QUOTA_PB, choose_bucket_quota
from b2cal.storage import measure_bucket
from b2cal_airflow.hooks.b2cal import ConditionsDBHook, PluginDatabaseHook, SiteHook


class _InventoryOperator(BaseOperator):
    """Base of the inventory operators: the plugin database and the catalog to use.

    :param release: the release whose calibrations' filters are used. When empty, the newest release
        available at any site is used, or the newest imported one when no site has one.
    :param db_conn_id: connection of the plugin database.
    """

    def __init__(self, *, release: str = "", db_conn_id: str = "b2cal_db", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.release = release
        self.db_conn_id = db_conn_id

    @cached_property
    def db_url(self) -> str:
        """The plugin database URL."""
        return PluginDatabaseHook(self.db_conn_id).get_url()

    def catalog(self, session: Any, site: str | None = None) -> Catalog:
        """Return the catalog of ``release``, or of the newest release available (at ``site``)."""
        name = self.release
        if not name:
            rows = inventory.list_site_releases(session, site)
            available = [row.release for row in rows if row.state == "available"]
            candidates = available or store.list_releases(session)
            if not candidates:
                raise AirflowException(
                    "no basf2 release is imported; run the DAG b2cal_release_discovery or "
                    "'b2cal import-catalog'"
                )
            name = sort_releases(candidates)[-1]
        return store.load_catalog(session, name)


class ChooseSkimQuotaOperator(_InventoryOperator):
    """Choose the skim quota of every open bucket that has none yet, or of all with ``refresh``.

    :param target_pb: recorded luminosity per skim and bucket, in pb^-1 (2000 = 2 fb^-1).
    :param refresh: choose again for buckets that have a quota, e.g. after the catalog changed.
    """

    template_fields: Sequence[str] = ("target_pb", "refresh", "release")
    ui_color = "#fef3c7"

    def __init__(self, *, target_pb: float = DEFAULT_QUOTA_PB, refresh: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.target_pb = target_pb
        self.refresh = refresh

    def execute(self, context: Context) -> dict[str, dict[str, int]]:
        upgrade(self.db_url)
        chosen: dict[str, dict[str, int]] = {}
        with session_scope(self.db_url) as session:
            catalog = self.catalog(session)
            for bucket in list_buckets(session, state="open"):
                if inventory.bucket_quotas(session, bucket.iov) and not self.refresh:
                    continue
                runs = load_runs(session, bucket.iov)
                quota = choose_bucket_quota(catalog, runs, bucket.iov, target_pb=float(self.target_pb))
                inventory.save_bucket_quota(session, quota)
                chosen[bucket.name] = {tag: len(skim.chosen) for tag, skim in quota.quotas.items()}
                self.log.info(
                    "Skim quota of bucket %s with %s:\n%s", bucket.name, catalog.release, quota.explain()
                )
        if not chosen:
            self.log.info("Every open bucket has its skim quota; nothing to choose")
        return chosen


class StorageAccountingOperator(_InventoryOperator):
    """Measure the skims, cDSTs and payloads of every open bucket at one site and store the numbers.

    Every data tag of the catalog's filter vocabulary is counted. Skims are listed below the site's
    ``storage_root`` and cDSTs below its ``cdst_root``, with its ``path_template``, over SSH for an
    SSH site. Payloads are read from the conditions database.

    :param site: the site's name, e.g. ``BNL``.
    :param conddb_conn_id: the conditions database connection; payloads are not counted without it.
    """

    template_fields: Sequence[str] = ("site", "release")
    ui_color = "#fef3c7"

    def __init__(self, *, site: str, conddb_conn_id: str = "b2cal_conddb", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.site = site
        self.conddb_conn_id = conddb_conn_id

    def execute(self, context: Context) -> dict[str, str]:
        hook = SiteHook(self.site)
        try:
            settings = hook.site_settings
        except SiteConfigError as exc:
            raise AirflowException(f"storage accounting at {self.site} cannot start: {exc}") from None
        try:
            payloads = ConditionsDBHook(self.conddb_conn_id).get_conn()
        except AirflowNotFoundException:
            self.log.warning("No connection %s: payloads are not counted", self.conddb_conn_id)
            payloads = None
        upgrade(self.db_url)
        with session_scope(self.db_url) as session:
            tags = list(self.catalog(session, settings.name).vocabulary.get(DATA_TAG, ()))
            buckets = [
                (bucket.name, bucket.iov, [run.key for run in load_runs(session, bucket.iov)])
                for bucket in list_buckets(session, state="open")
            ]
            staging = {
                name: inventory.bucket_staging_tags(session, iov, settings.name) for name, iov, _ in buckets
            }

        reports = {}
        with hook.session() as site_session:
            lister = site_session if settings.is_ssh else None
            skims = PathTemplateSource(settings.storage_root, settings.path_template, lister=lister)
            cdsts = PathTemplateSource(settings.cdst_root, settings.path_template, lister=lister)
            for name, iov, keys in buckets:
                report = measure_bucket(
                    iov,
                    settings.name,
                    keys,
                    tags,
                    skim_source=skims,
                    cdst_source=cdsts,
                    payloads=payloads,
                    staging_tags=staging[name],
                )
                with session_scope(self.db_url) as session:
                    inventory.save_storage_report(session, report)
                reports[name] = report.explain()
                self.log.info("Storage of %s", reports[name])
        return reports
