"""Operators that register data in Rucio, add replication rules and wait for them.

Every wait defers to :class:`~b2cal_airflow.triggers.rucio.RucioRulesTrigger`, so no worker slot is
held while Rucio transfers. Every step can run again: registration skips files that are registered
already, and a rule that exists with the same DID, account, RSE expression and copies is reused.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import BaseOperator, Context
from airflow.sdk.exceptions import AirflowException, AirflowNotFoundException, AirflowSkipException

from b2cal.cdst import cdst_output_folder
from b2cal.db import inventory, store
from b2cal.db.engine import session_scope, upgrade
from b2cal.iov import IoV
from b2cal.rucio import (
    GROUPINGS,
    Did,
    RuleRequest,
    RuleWatch,
    plan_cdst_registration,
    plan_skim_registration,
    site_rse,
    skim_dataset_pattern,
    superseded_cdst_containers,
)
from b2cal_airflow.hooks.b2cal import PluginDatabaseHook, SiteHook
from b2cal_airflow.hooks.rucio import RucioHook
from b2cal_airflow.operators.base import RequestOperator
from b2cal_airflow.triggers.rucio import RucioRulesTrigger

_SKIM_RUN = re.compile(r"/e(\d{4})/r(\d{5})$")
#: Seconds between two polls of Rucio when neither the operator nor the connection sets one.
DEFAULT_POLL_INTERVAL = 60.0
#: The RSE that archives a site's cDSTs when its connection has no extra ``cdst_archive_rse``.
DEFAULT_CDST_ARCHIVE_RSE = "DESY-DISK"
#: How long the rules of cDSTs that a later cDST production attempt replaced are kept: 7 days.
SUPERSEDED_CDST_LIFETIME = 7 * 86400


def as_list(value: Any, label: str) -> list[Any]:
    """Return a templated value as a list.

    A list stays as it is, a string that contains a JSON list is parsed, and any other value is wrapped.
    """
    if value is None:
        return []
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                return list(json.loads(text))
            except json.JSONDecodeError:
                raise ValueError(f"{label} {value!r} looks like a list but is not valid JSON") from None
        return [text] if text else []
    if isinstance(value, Sequence):
        return list(value)
    return [value]


def as_bool(value: Any, label: str) -> bool:
    """Return a templated flag: a bool, or the text ``true``/``false`` in any case."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no", "", "none"):
        return False
    raise ValueError(f"{label} {value!r} is not a flag: use true or false")


def as_iov(value: Any, label: str) -> IoV:
    """Return a templated IoV: an IoV, a list of four integers, ``"e1,r1,e2,r2"`` or a JSON list."""
    if isinstance(value, IoV):
        return value
    if isinstance(value, str):
        text = value.strip()
        return IoV.from_list(json.loads(text)) if text.startswith("[") else IoV.parse(text)
    if isinstance(value, Sequence):
        return IoV.from_list(list(value))
    raise ValueError(f"{label} {value!r} is not an IoV: give [e1, r1, e2, r2] or 'e1,r1,e2,r2'")


def as_attempt(value: Any) -> int:
    """Return a templated attempt number: an integer of at least 1, or its text."""
    try:
        attempt = int(str(value).strip())
    except ValueError:
        attempt = 0
    if isinstance(value, bool) or attempt < 1:
        raise ValueError(f"cDST production attempt {value!r} is invalid: give an integer of at least 1")
    return attempt


class RucioWaitingOperator(BaseOperator):
    """Base of the Rucio operators that can defer until rules are OK.

    :param rucio_conn_id: the Rucio connection.
    :param poll_interval: seconds between two polls of Rucio while waiting; ``None`` takes the Rucio
        connection's extra ``poll_interval``, else 60.
    :param stuck_grace_period: seconds a rule may stay STUCK before the task fails.
    :param max_attempts: polls in a row that may fail with Rucio unreachable before the task fails.
    :param max_backoff: the longest pause in seconds between two failed polls.
    :param wait_timeout: the longest wait for the rules; ``None`` waits as long as it takes.
    """

    ui_color = "#e0f2fe"

    def __init__(
        self,
        *,
        rucio_conn_id: str = RucioHook.default_conn_name,
        poll_interval: float | None = None,
        stuck_grace_period: float = 1800.0,
        max_attempts: int = 20,
        max_backoff: float = 600.0,
        wait_timeout: timedelta | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if poll_interval is not None and poll_interval <= 0:
            raise ValueError(f"poll_interval {poll_interval!r} is invalid: use a positive number of seconds")
        if max_attempts < 1:
            raise ValueError(f"max_attempts {max_attempts!r} is invalid: use at least 1")
        self.rucio_conn_id = rucio_conn_id
        self.poll_interval = poll_interval
        self.stuck_grace_period = stuck_grace_period
        self.max_attempts = max_attempts
        self.max_backoff = max_backoff
        self.wait_timeout = wait_timeout

    def resolve_poll_interval(self) -> float:
        """Return the poll interval: the argument, else the connection's extra, else 60 seconds."""
        if self.poll_interval is not None:
            return float(self.poll_interval)
        return RucioHook(self.rucio_conn_id).settings.poll_interval or DEFAULT_POLL_INTERVAL

    def defer_until_ok(self, watches: list[RuleWatch]) -> None:
        """Defer to the rules trigger; :meth:`execute_complete` runs when it fires."""
        poll_interval = self.resolve_poll_interval()
        self.log.info("Waiting for %d rules to be OK, polling every %s s", len(watches), poll_interval)
        self.defer(
            trigger=RucioRulesTrigger(
                watches=[watch.to_dict() for watch in watches],
                rucio_conn_id=self.rucio_conn_id,
                poll_interval=poll_interval,
                stuck_grace_period=self.stuck_grace_period,
                max_attempts=self.max_attempts,
                max_backoff=self.max_backoff,
            ),
            method_name="execute_complete",
            timeout=self.wait_timeout,
        )

    def execute_complete(self, context: Context, event: dict[str, Any]) -> list[str]:
        """Fail with the trigger's message unless every rule is OK; return the rule ids."""
        rules = event.get("rules", [])
        if event.get("status") != "success":
            raise AirflowException(f"waiting for Rucio rules failed: {event.get('message')}")
        self.log.info("%s", event.get("message"))
        return [rule["rule_id"] for rule in rules]


class RucioAddRuleOperator(RucioWaitingOperator):
    """Add a replication rule for each DID, reusing an identical existing one, and optionally wait for it.

    :param dids: ``"scope:name"`` strings (a bare name takes the connection's scope), or one string.
    :param rse_expression: where the copies go, e.g. ``DESY-DISK``.
    :param copies: how many copies the RSE expression must hold.
    :param lifetime: seconds until Rucio deletes the rule; ``None`` keeps it.
    :param activity: the transfer activity, e.g. ``Data Consolidation``; ``None`` takes the server's default.
    :param grouping: ``DATASET`` keeps each dataset on one RSE, ``ALL`` everything, ``NONE`` nothing.
    :param wait_for_completion: defer until every rule is OK with all its locks.
    :param expected_files: files each rule must lock, as one number or a mapping from DID to number;
        ``None`` counts the files of the DIDs when the wait starts.
    :param skip_without_rse: skip the task when ``rse_expression`` renders empty, e.g. from an XCom
        whose empty value means that no copy is wanted. Without it, an empty expression is an error.
    :return: the rule ids, in the order of ``dids``.
    """

    template_fields: Sequence[str] = ("dids", "rse_expression", "expected_files", "lifetime")

    def __init__(
        self,
        *,
        dids: Any,
        rse_expression: str,
        copies: int = 1,
        lifetime: int | None = None,
        activity: str | None = None,
        grouping: str = "DATASET",
        comment: str | None = None,
        wait_for_completion: bool = False,
        expected_files: int | Mapping[str, int] | None = None,
        skip_without_rse: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not isinstance(copies, int) or copies < 1:
            raise ValueError(f"copies {copies!r} is invalid: use an integer of at least 1")
        if grouping not in GROUPINGS:
            raise ValueError(f"grouping {grouping!r} is invalid: use one of {', '.join(GROUPINGS)}")
        self.dids = dids
        self.rse_expression = rse_expression
        self.copies = copies
        self.lifetime = lifetime
        self.activity = activity
        self.grouping = grouping
        self.comment = comment
        self.wait_for_completion = wait_for_completion
        self.expected_files = expected_files
        self.skip_without_rse = skip_without_rse

    def _expected(self, did: Did) -> int | None:
        if self.expected_files is None or self.expected_files == "":
            return None
        if isinstance(self.expected_files, Mapping):
            value = self.expected_files.get(str(did))
            return None if value is None else int(value)
        return int(self.expected_files)

    def execute(self, context: Context) -> list[str]:
        if self.skip_without_rse and not (self.rse_expression or "").strip():
            raise AirflowSkipException(
                f"task {self.task_id!r} got an empty RSE expression, so it adds no rule"
            )
        hook = RucioHook(self.rucio_conn_id)
        dids = [Did.parse(str(item), default_scope=hook.scope) for item in as_list(self.dids, "dids")]
        if not dids:
            raise ValueError(f"task {self.task_id!r} got no DIDs to add rules for: check the dids argument")
        lifetime = None if self.lifetime in (None, "", "None") else int(self.lifetime)
        rules = []
        for did in dids:
            request = RuleRequest(
                did=did,
                rse_expression=self.rse_expression,
                copies=self.copies,
                lifetime=lifetime,
                activity=self.activity,
                grouping=self.grouping,
                comment=self.comment,
            )
            rules.append(hook.ensure_rule(request))
        rule_ids = [rule["id"] for rule in rules]
        context["ti"].xcom_push(key="rule_ids", value=rule_ids)
        if self.wait_for_completion:
            watches = [
                RuleWatch.for_rule(rule, self._expected(Did(rule["scope"], rule["name"]))) for rule in rules
            ]
            self.defer_until_ok(watches)
        return rule_ids


class RucioWaitForRulesOperator(RucioWaitingOperator):
    """Wait, deferred, until rules are OK with all their locks.

    Name the rules by id, or by DIDs together with the RSE expression their rules were made for (the
    wait then covers every rule of those DIDs with exactly that expression).

    :param rule_ids: rule ids.
    :param dids: ``"scope:name"`` strings (a bare name takes the connection's scope).
    :param rse_expression: the RSE expression of the rules of ``dids``.
    :param expected_files: files each rule must lock, as one number or a mapping from rule id or DID
        to number; ``None`` counts the files of each rule's DID when the wait starts.
    :return: the rule ids.
    """

    template_fields: Sequence[str] = ("rule_ids", "dids", "rse_expression", "expected_files")

    def __init__(
        self,
        *,
        rule_ids: Any = None,
        dids: Any = None,
        rse_expression: str | None = None,
        expected_files: int | Mapping[str, int] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if rule_ids is None and dids is None:
            raise ValueError("RucioWaitForRulesOperator needs rule_ids, or dids with an rse_expression")
        if dids is not None and not rse_expression:
            raise ValueError(
                "RucioWaitForRulesOperator got dids without rse_expression: name the RSE expression"
            )
        self.rule_ids = rule_ids
        self.dids = dids
        self.rse_expression = rse_expression
        self.expected_files = expected_files

    def _expected(self, key: str) -> int | None:
        if self.expected_files is None or self.expected_files == "":
            return None
        if isinstance(self.expected_files, Mapping):
            value = self.expected_files.get(key)
            return None if value is None else int(value)
        return int(self.expected_files)

    def execute(self, context: Context) -> None:
        watches = [
            RuleWatch(rule_id=str(rule_id), expected_files=self._expected(str(rule_id)))
            for rule_id in as_list(self.rule_ids, "rule_ids")
        ]
        dids = as_list(self.dids, "dids")
        if dids:
            scope = RucioHook(self.rucio_conn_id).scope
            for item in dids:
                did = Did.parse(str(item), default_scope=scope)
                watches.append(
                    RuleWatch(
                        did=str(did),
                        rse_expression=self.rse_expression,
                        expected_files=self._expected(str(did)),
                    )
                )
        if not watches:
            raise ValueError(
                f"task {self.task_id!r} got no rules to wait for: rule_ids and dids rendered empty"
            )
        self.defer_until_ok(watches)


class RucioRegisterCdstOperator(RequestOperator):
    """Register a request's cDST files at the site's RSE: files, one dataset per skim, one container.

    Files are found as ``<cdst_root>/<data_tag>/e{exp:04d}/r{run:05d}/*_cdst.root``; the site's
    connection gives ``cdst_root`` and, in the extra ``rucio_rse``, the RSE (default ``<SITE>-DISK``).
    Every file, dataset and the container get the metadata experiment, run (files only), bucket,
    request id and data tag. When cDST production ran again after a rejection, the files of its
    attempt are registered, from the attempt's output folder (:func:`b2cal.cdst.cdst_output_folder`)
    and under DID names that carry the attempt, so the files of earlier attempts stay as they are.

    The cDSTs of the earlier attempts were made with rejected payloads. Once a later attempt is
    registered, the account's rules on their containers (the staging rule at the site and the archive
    copy) get an end ``superseded_lifetime`` seconds later, so that Rucio frees their space; a rule
    that already ends sooner keeps its end.

    Pushes the XComs ``container`` (the container's DID), ``rse``, ``files`` (how many files) and
    ``archive_rse``: the site extra ``cdst_archive_rse`` (default ``DESY-DISK``), where the cDSTs are
    kept for the long term. An empty value means no archive copy and is pushed as ``""``.

    :param site: the site; default: the stored request's.
    :param bucket: the bucket IoV; default: the stored request's.
    :param cdst_root: overrides the site connection's ``cdst_root``.
    :param cdst_attempt: the cDST production attempt whose files are registered; default: the stored
        request's when ``site`` or ``bucket`` is not given, else 1.
    :param rse: overrides the site's RSE.
    :param only_rucio_sites: skip the task when the site's connection has no extra ``rucio_rse`` and
        ``rse`` is not given, so that sites without Rucio run the request without registration.
    :param scope: the Rucio scope; default: the Rucio connection's extra ``scope``.
    :param metadata_style: ``json`` or ``columns``; default: the Rucio connection's extra ``metadata``.
    :param superseded_lifetime: seconds that the rules of earlier attempts' cDSTs are kept (default
        7 days); ``None`` leaves them as they are.
    :return: the registration summary: rse, container, datasets with their file counts, files,
        registered, already_registered, and ``expired_rules``: the ids of the earlier attempts' rules
        that this call gave an end.
    """

    template_fields: Sequence[str] = (
        "request_id",
        "site",
        "bucket",
        "cdst_root",
        "cdst_attempt",
        "rse",
        "scope",
    )
    ui_color = "#e0f2fe"

    def __init__(
        self,
        *,
        site: str | None = None,
        bucket: Any = None,
        cdst_root: str | None = None,
        cdst_attempt: int | str | None = None,
        rse: str | None = None,
        scope: str | None = None,
        metadata_style: str | None = None,
        only_rucio_sites: bool = False,
        superseded_lifetime: int | None = SUPERSEDED_CDST_LIFETIME,
        rucio_conn_id: str = RucioHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if superseded_lifetime is not None and (
            isinstance(superseded_lifetime, bool)
            or not isinstance(superseded_lifetime, int)
            or superseded_lifetime < 1
        ):
            raise ValueError(
                f"superseded_lifetime {superseded_lifetime!r} is invalid: use a number of seconds of at "
                "least 1, or None to keep the rules of earlier cDST production attempts"
            )
        self.site = site
        self.bucket = bucket
        self.cdst_root = cdst_root
        self.cdst_attempt = cdst_attempt
        self.rse = rse
        self.scope = scope
        self.metadata_style = metadata_style
        self.only_rucio_sites = only_rucio_sites
        self.superseded_lifetime = superseded_lifetime
        self.rucio_conn_id = rucio_conn_id

    def execute(self, context: Context) -> dict[str, Any]:
        site, bucket = self.site, self.bucket
        attempt = 1 if self.cdst_attempt in (None, "") else as_attempt(self.cdst_attempt)
        if not site or bucket in (None, ""):
            spec, _ = self.load()
            site = site or spec.site
            bucket = spec.bucket if bucket in (None, "") else bucket
            if self.cdst_attempt in (None, ""):
                with session_scope(self.db_url) as session:
                    attempt = store.get_cdst_attempt(session, spec.uid)
        bucket = as_iov(bucket, "bucket")

        site_hook = SiteHook(site)
        extra = site_hook.get_connection(site_hook.site_conn_id).extra_dejson
        if self.only_rucio_sites and not (self.rse or extra.get("rucio_rse")):
            raise AirflowSkipException(
                f"site {site} does not use Rucio, so its cDSTs are not registered: to register them, "
                f"set the extra 'rucio_rse' of connection {site_hook.site_conn_id!r}, e.g. {site_rse(site)!r}"
            )
        cdst_root = cdst_output_folder(
            self.cdst_root or site_hook.settings["cdst_root"], self.request_id, attempt
        )
        rse = self.rse or extra.get("rucio_rse") or site_rse(site)
        archive_rse = str(extra.get("cdst_archive_rse", DEFAULT_CDST_ARCHIVE_RSE) or "").strip()

        hook = RucioHook(self.rucio_conn_id)
        plan = plan_cdst_registration(
            cdst_root,
            request_id=self.request_id,
            bucket=bucket,
            scope=self.scope or hook.scope,
            rse=rse,
            attempt=attempt,
        )
        self.log.info(
            "Registering %d cDST files of request %s (bucket %s, cDST production attempt %s) at %s",
            len(plan.files),
            self.request_id,
            bucket,
            attempt,
            rse,
        )
        summary = hook.register(plan, self.metadata_style)
        summary["expired_rules"] = self._expire_superseded(hook, self.scope or hook.scope, bucket, attempt)

        ti = context["ti"]
        ti.xcom_push(key="container", value=summary["container"])
        ti.xcom_push(key="rse", value=rse)
        ti.xcom_push(key="files", value=summary["files"])
        ti.xcom_push(key="archive_rse", value=archive_rse)
        return summary

    def _expire_superseded(self, hook: RucioHook, scope: str, bucket: IoV, attempt: int) -> list[str]:
        """Give the rules of the cDSTs of earlier attempts an end; return the ids of those shortened."""
        if self.superseded_lifetime is None or attempt < 2:
            return []
        shortened = []
        for name in superseded_cdst_containers(self.request_id, bucket, attempt):
            container = Did(scope, name)
            for rule in hook.expire_rules(container, self.superseded_lifetime):
                if rule["shortened"]:
                    shortened.append(rule["id"])
        if shortened:
            self.log.info(
                "The %d rules of the cDSTs of attempts before %d now end in %d s: %s",
                len(shortened),
                attempt,
                self.superseded_lifetime,
                ", ".join(shortened),
            )
            with session_scope(self.db_url) as session:
                store.audit(
                    session,
                    "system",
                    "cdst_rules_expired",
                    request_uid=self.request_id,
                    message=f"{len(shortened)} rules of superseded cDSTs end in {self.superseded_lifetime} s",
                    rules=shortened,
                    attempt=attempt,
                )
        return shortened


class RucioRegisterSkimsOperator(BaseOperator):
    """Register the calibration skim files that lie at the source site: one dataset per run and skim.

    Files are found as ``<storage_root>/<data_tag>/e{exp:04d}/r{run:05d}/*.root``, with
    ``storage_root`` from the site connection ``b2cal_site_<source_site>``. The task is skipped when that
    connection does not exist, because then skims are registered by the system that writes them.

    :param source_site: the site where the skims are written.
    :param runs: the run range to register, as an IoV.
    :param data_tags: the skims to register; empty means every skim found.
    :param rse: the source RSE; default: the site connection's extra ``rucio_rse``, else ``<SITE>-DISK``.
    :param scope: the Rucio scope; default: the Rucio connection's extra ``scope``.
    """

    template_fields: Sequence[str] = ("source_site", "runs", "data_tags", "rse", "scope")
    ui_color = "#e0f2fe"

    def __init__(
        self,
        *,
        source_site: str = "KEK",
        runs: Any = (0, 0, -1, -1),
        data_tags: Any = (),
        rse: str | None = None,
        scope: str | None = None,
        metadata_style: str | None = None,
        rucio_conn_id: str = RucioHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.source_site = source_site
        self.runs = runs
        self.data_tags = data_tags
        self.rse = rse
        self.scope = scope
        self.metadata_style = metadata_style
        self.rucio_conn_id = rucio_conn_id

    def execute(self, context: Context) -> dict[str, Any]:
        site_hook = SiteHook(self.source_site)
        try:
            extra = site_hook.get_connection(site_hook.site_conn_id).extra_dejson
        except AirflowNotFoundException:
            raise AirflowSkipException(
                f"no connection {site_hook.site_conn_id!r}: "
                f"skims at {self.source_site} are registered elsewhere"
            ) from None
        rse = self.rse or extra.get("rucio_rse") or site_rse(self.source_site)
        hook = RucioHook(self.rucio_conn_id)
        plan = plan_skim_registration(
            site_hook.settings["storage_root"],
            runs=as_iov(self.runs, "runs"),
            scope=self.scope or hook.scope,
            rse=rse,
            data_tags=[str(tag) for tag in as_list(self.data_tags, "data_tags")],
        )
        if not plan.datasets:
            self.log.info("No skim files of runs %s below %s", self.runs, site_hook.settings["storage_root"])
            return plan.summary()
        return hook.register(plan, self.metadata_style)


class RucioReplicateSkimsOperator(RucioWaitingOperator):
    """Keep calibration skims replicated to the calibration sites: one rule per run dataset and destination.

    The operator finds the run datasets of each skim (``skim/<data_tag>/eNNNN/rNNNNN``) created in the
    last ``lookback_hours`` and adds a rule to every destination unless an identical one exists. Then it
    waits for all of them in one deferred trigger, which fetches them with a few listing calls per poll.

    :param destinations: RSE expressions of the calibration sites, e.g. ``["BNL-DISK"]``.
    :param data_tags: the skims to replicate.
    :param lookback_hours: only datasets created this recently; ``None`` takes every one.
    :param runs: only datasets of runs inside this IoV; ``None`` takes every run.
    :param lifetime: seconds until Rucio deletes each rule; ``None`` keeps them.
    :param activity: the transfer activity.
    :param wait_for_completion: defer until every rule is OK.
    :param quota_only: only datasets of runs in the skim quota of an open bucket
        (:func:`b2cal.db.inventory.quota_runs_to_replicate`); set ``lookback_hours`` to ``None`` with
        it, because a quota is chosen after its bucket's runs were taken.
    :param db_conn_id: connection of the plugin database, which holds the quotas.
    :return: the rule ids.
    """

    template_fields: Sequence[str] = (
        "destinations",
        "data_tags",
        "lookback_hours",
        "runs",
        "scope",
        "lifetime",
        "quota_only",
    )

    def __init__(
        self,
        *,
        destinations: Any,
        data_tags: Any,
        lookback_hours: float | None = 72.0,
        runs: Any = None,
        scope: str | None = None,
        copies: int = 1,
        lifetime: int | None = None,
        activity: str | None = "Production Input",
        wait_for_completion: bool = True,
        quota_only: bool = False,
        db_conn_id: str = "b2cal_db",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.quota_only = quota_only
        self.db_conn_id = db_conn_id
        self.destinations = destinations
        self.data_tags = data_tags
        self.lookback_hours = lookback_hours
        self.runs = runs
        self.scope = scope
        self.copies = copies
        self.lifetime = lifetime
        self.activity = activity
        self.wait_for_completion = wait_for_completion

    def _find_datasets(self, hook: RucioHook, scope: str) -> list[Did]:
        """Return the run datasets of the skims, created within the lookback and inside the run range."""
        runs = None if self.runs in (None, "", "None") else as_iov(self.runs, "runs")
        created_after = None
        if self.lookback_hours not in (None, "", "None"):
            now = datetime.now(UTC).replace(tzinfo=None)
            created_after = now - timedelta(hours=float(self.lookback_hours))
        quota = self._quota_runs() if as_bool(self.quota_only, "quota_only") else None
        datasets = []
        for tag in as_list(self.data_tags, "data_tags"):
            for did in hook.list_datasets(scope, skim_dataset_pattern(str(tag)), created_after):
                match = _SKIM_RUN.search(did.name)
                key = (int(match.group(1)), int(match.group(2))) if match else None
                if runs is not None and (key is None or not runs.contains(*key)):
                    continue
                if quota is not None and key not in quota.get(str(tag), frozenset()):
                    continue
                datasets.append(did)
        return datasets

    def _quota_runs(self) -> dict[str, frozenset[tuple[int, int]]]:
        """Return the skim quota runs of the open buckets per data tag, from the plugin database."""
        url = PluginDatabaseHook(self.db_conn_id).get_url()
        upgrade(url)
        with session_scope(url) as session:
            quota = inventory.quota_runs_to_replicate(session)
        self.log.info("Skim quota of the open buckets: %s", {tag: len(keys) for tag, keys in quota.items()})
        return quota

    def execute(self, context: Context) -> list[str]:
        hook = RucioHook(self.rucio_conn_id)
        destinations = [str(item) for item in as_list(self.destinations, "destinations")]
        if not destinations:
            raise ValueError(f"task {self.task_id!r} has no destinations: name at least one RSE expression")
        datasets = self._find_datasets(hook, self.scope or hook.scope)

        lifetime = None if self.lifetime in (None, "", "None") else int(self.lifetime)
        rules = hook.ensure_rules(
            [
                RuleRequest(did, destination, copies=self.copies, lifetime=lifetime, activity=self.activity)
                for did in datasets
                for destination in destinations
            ]
        )
        created = sum(1 for rule in rules if rule["created"])
        self.log.info(
            "%d skim datasets, %d rules to %s: %d added, %d reused",
            len(datasets),
            len(rules),
            ", ".join(destinations),
            created,
            len(rules) - created,
        )

        rule_ids = [rule["id"] for rule in rules]
        if rules and self.wait_for_completion:
            self.defer_until_ok([RuleWatch.for_rule(rule) for rule in rules])
        return rule_ids
