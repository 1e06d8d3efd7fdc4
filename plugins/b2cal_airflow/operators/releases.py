"""The release discovery operator: keep the catalog and each site's releases in step with the site.

:mod:`b2cal.releases` builds the commands and reads their output, and :mod:`b2cal.db.inventory`
stores the result. This operator reads the site's connection, runs the commands over the site's
transport and sends the manager's tickets.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from functools import cached_property
from typing import Any

from airflow.sdk import BaseOperator, Context, Variable
from airflow.sdk.exceptions import AirflowException, AirflowNotFoundException

from b2cal.db import inventory, store
from b2cal.db.engine import session_scope, upgrade
from b2cal.releases import (
    DiscoveryConfig,
    DiscoveryError,
    DiscoveryPlan,
    ReleaseProbe,
    build_release_notice,
    list_releases,
    parse_discovery_config,
    plan_discovery,
    probe_release,
    send_release_notice,
)
from b2cal.sites import SiteConfigError, SiteSettings
from b2cal.tickets import TicketError
from b2cal_airflow.hooks.b2cal import PluginDatabaseHook, SiteHook, TicketHook
from b2cal_airflow.hooks.site import site_transport

#: The extra of the Jira connection that names the calibration manager, who gets the release notices.
MANAGER_EXTRA = "manager_username"


class ReleaseDiscoveryOperator(BaseOperator):
    """List the basf2 releases of one site, check and import the new ones, and tell the manager.

    A release whose check fails is stored with its error and not offered; a release the site no
    longer lists becomes unavailable there. The site connection needs the extra
    ``release_list_command`` (see :func:`b2cal.releases.parse_discovery_config`). Running it again
    changes nothing when the site did not change, and creates no second ticket.

    :param site: the site's name, e.g. ``BNL``.
    :param notify: whether to open a Jira ticket for the manager when a release becomes available.
        The first discovery at a site only records what is there.
    :param db_conn_id: connection of the plugin database.
    :param jira_conn_id: the Jira connection; its extra ``manager_username`` names the assignee.
    """

    template_fields: Sequence[str] = ("site", "notify")
    ui_color = "#ede9fe"

    def __init__(
        self,
        *,
        site: str,
        notify: bool = True,
        db_conn_id: str = "b2cal_db",
        jira_conn_id: str = "b2cal_jira",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.site = site
        self.notify = notify
        self.db_conn_id = db_conn_id
        self.jira_conn_id = jira_conn_id

    @cached_property
    def db_url(self) -> str:
        """The plugin database URL."""
        return PluginDatabaseHook(self.db_conn_id).get_url()

    def execute(self, context: Context) -> dict[str, Any]:
        settings, config = self._site_config()
        upgrade(self.db_url)
        with session_scope(self.db_url) as session:
            states = inventory.site_release_states(session, settings.name)
            vocabulary = inventory.reference_vocabulary(session)

        try:
            plan, probes = asyncio.run(self._discover(settings, config, states))
        except DiscoveryError as exc:
            with session_scope(self.db_url) as session:
                inventory.record_error(session, settings.name, None, exc.stage, str(exc), exc.output)
            raise AirflowException(f"release discovery at {settings.name} failed: {exc}") from None

        with session_scope(self.db_url) as session:
            outcome = inventory.apply_discovery(
                session, plan, probes, vocabulary=vocabulary, notify=bool(self.notify)
            )
        self.log.info(
            "Site %s lists %d releases: available now %s, failed %s, gone %s",
            settings.name,
            len(outcome.listed),
            outcome.available,
            sorted(outcome.failed),
            outcome.gone,
        )
        for release, error in outcome.failed.items():
            self.log.warning("Release %s at %s is not offered: %s", release, settings.name, error)

        result = outcome.to_dict()
        result["notices"] = self._send_notices(settings.name) if self.notify else {}
        return result

    def _site_config(self) -> tuple[SiteSettings, DiscoveryConfig]:
        hook = SiteHook(self.site)
        try:
            settings = hook.site_settings
            extra = hook.get_connection(hook.site_conn_id).extra_dejson
            return settings, parse_discovery_config(settings, extra)
        except SiteConfigError as exc:
            raise AirflowException(f"release discovery at {self.site} cannot start: {exc}") from None

    async def _discover(
        self, settings: SiteSettings, config: DiscoveryConfig, states: dict[str, str]
    ) -> tuple[DiscoveryPlan, list[ReleaseProbe]]:
        async with site_transport(settings) as transport:
            listed = await list_releases(transport, config)
            plan = plan_discovery(settings.name, listed, states)
            self.log.info(
                "Site %s: %d releases listed, checking %s, %s gone",
                settings.name,
                len(listed),
                plan.probe,
                plan.gone,
            )
            probes = [await probe_release(transport, config, release) for release in plan.probe]
        return plan, probes

    def _send_notices(self, site: str) -> dict[str, str]:
        """Send the pending notices of ``site`` and return the ticket key of each release."""
        with session_scope(self.db_url) as session:
            pending = [row.release for row in inventory.pending_notices(session, site)]
        if not pending:
            return {}
        hook, manager = self._ticket_hook(pending, site)
        tree = hook.get_tree()

        sent: dict[str, str] = {}
        failures: list[str] = []
        for release in pending:
            with session_scope(self.db_url) as session:
                catalog = store.load_catalog(session, release)
                diff = inventory.diff_to_previous(session, release)
            notice = build_release_notice(release, site, catalog, diff)
            try:
                key = send_release_notice(
                    tree, notice, project=hook.project, issue_type=hook.issue_type, assignee=manager
                )
            except TicketError as exc:
                self.log.error("The notice of release %s at %s was not sent: %s", release, site, exc)
                failures.append(f"{release}: {exc}")
                continue
            with session_scope(self.db_url) as session:
                inventory.mark_notice_sent(session, site, release, key)
            sent[release] = key

        if failures:
            # The releases are stored and offered already; a retry sends only the notices still pending.
            raise AirflowException(f"release notices at {site} failed: {'; '.join(failures)}")
        return sent

    def _ticket_hook(self, pending: list[str], site: str) -> tuple[TicketHook, str | None]:
        """Return the Jira hook and the manager's username from the extra ``manager_username``."""
        try:
            hook = TicketHook(self.jira_conn_id)
            manager = hook.extras.get(MANAGER_EXTRA)
        except AirflowNotFoundException:
            raise AirflowException(
                f"releases {pending} became available at {site}, but the Jira connection "
                f"{self.jira_conn_id!r} is missing, so no ticket can announce them; create it, or set "
                "notify=False"
            ) from None
        if not manager:
            self.log.warning(
                "The Jira connection %s has no extra %s; release notices stay unassigned",
                self.jira_conn_id,
                MANAGER_EXTRA,
            )
        return hook, manager


#: The Airflow Variable with the sites that the scheduled inventory DAGs visit, as a JSON list.
SITES_VARIABLE = "b2cal_inventory_sites"


def discovery_sites(requested: Sequence[str] | None) -> list[str]:
    """Return the sites to visit: ``requested`` when it names any, else those of the Variable.

    The Variable ``b2cal_inventory_sites`` is read at run time, never when the DAG file is
    parsed. Without it no site is visited.

    :raises AirflowException: when the Variable is not a JSON list of site names.
    """
    if requested:
        sites = list(requested)
    else:
        value = Variable.get(SITES_VARIABLE, default="[]")
        try:
            sites = json.loads(value) if isinstance(value, str) else value
        except json.JSONDecodeError:
            sites = None
        if not isinstance(sites, list):
            raise AirflowException(
                f"the Airflow Variable {SITES_VARIABLE} is {value!r}; set it to a JSON list of site "
                'names, e.g. ["BNL", "DESY"]'
            )
    names = [str(site).strip() for site in sites if str(site).strip()]
    return list(dict.fromkeys(names))
