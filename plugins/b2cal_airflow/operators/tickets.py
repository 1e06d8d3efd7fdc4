"""The operator that creates a request's Jira ticket tree, exactly once."""

from __future__ import annotations

from typing import Any

from airflow.sdk import Context

from b2cal.db import store
from b2cal.db.engine import session_scope
from b2cal.remote import job_folder
from b2cal.request import RequestSpec
from b2cal.tickets import plan_tickets
from b2cal_airflow.hooks.b2cal import SiteHook
from b2cal_airflow.hooks.jira import TicketHook
from b2cal_airflow.operators.base import RequestOperator

#: Audit action written before the first create request is sent; its presence makes a retry search.
TREE_ACTION = "create_ticket_tree"
#: Path of a request's page in the plugin, below Airflow's base URL.
BUCKET_PAGE = "/b2cal/requests/{uid}"


class CreateTicketTreeOperator(RequestOperator):
    """Create the request's parent ticket and calibration tickets in Jira, once, and store each key.

    The first attempt writes an audit entry before it sends anything, then records each ticket key as
    soon as Jira returns it. A retry finds both, searches Jira by label for what an interrupted
    attempt may have created, and creates only the rest.

    :param jira_conn_id: the Jira connection; see :class:`~b2cal_airflow.hooks.jira.TicketHook`.
    """

    def __init__(self, *, jira_conn_id: str = "b2cal_jira", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.jira_conn_id = jira_conn_id

    def execute(self, context: Context) -> dict[str, str]:
        spec, catalog = self.load()
        hook = TicketHook(self.jira_conn_id)
        folders = self._job_folders(spec, catalog.closure(spec.calibrations))
        plan = plan_tickets(
            catalog,
            spec.calibrations,
            request_uid=spec.uid,
            kind=spec.kind,
            site=spec.site,
            bucket=spec.bucket.as_text(),
            staging_tag=spec.staging_tag,
            job_folders=folders,
            log_locations={name: f"{folder}/attempt-*/job.log" for name, folder in folders.items()},
            bucket_url=self._bucket_url(spec.uid),
            **hook.plan_options(),
        )
        known = self.ticket_keys()
        with session_scope(self.db_url) as session:
            first_attempt = not store.has_action(session, spec.uid, TREE_ACTION)
            if first_attempt:
                store.audit(
                    session, "system", TREE_ACTION, request_uid=spec.uid, message="ticket tree requested"
                )

        def record(calibration: str, key: str) -> None:
            with session_scope(self.db_url) as session:
                store.update_progress(session, spec.uid, calibration, ticket_key=key, ticket_state="new")

        result = hook.get_tree().ensure_tree(
            plan, known=known, on_created=record, first_attempt=first_attempt
        )
        with session_scope(self.db_url) as session:
            for name, key in result.keys.items():
                if known.get(name) != key:
                    store.update_progress(session, spec.uid, name, ticket_key=key, ticket_state="new")
            store.set_request_state(
                session,
                spec.uid,
                "tickets_created",
                tickets=len(result.keys),
                parent_ticket=result.parent_key,
            )
        self.log.info(
            "Request %s has %d tickets (%d created now) under %s: %s",
            spec.uid,
            len(result.keys),
            len(result.created),
            result.parent_key or "no parent ticket",
            result.keys,
        )
        return result.keys

    def _job_folders(self, spec: RequestSpec, names: list[str]) -> dict[str, str]:
        try:
            work_root = str(SiteHook(spec.site).settings["work_root"])
        except Exception as exc:  # noqa: BLE001 - the tickets are made without the job folders then
            self.log.warning("Job folders of site %s unknown, so the tickets omit them: %s", spec.site, exc)
            return {}
        return {name: job_folder(work_root, spec.uid, name) for name in names}

    def _bucket_url(self, uid: str) -> str | None:
        from airflow.configuration import conf

        base = conf.get("api", "base_url", fallback="") or ""
        return f"{base.rstrip('/')}{BUCKET_PAGE.format(uid=uid)}" if base else None
