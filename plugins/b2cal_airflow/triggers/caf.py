"""Trigger that waits for a calibration job at its site without holding a worker slot."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from b2cal.caf import JobVerdict
from b2cal.remote import JobPaths, JobSnapshot, JudgeKind, Transport, inspect_job, judge_snapshot, stop_job
from b2cal.sites import SiteSettings
from b2cal_airflow.hooks.site import (
    PERMANENT_SITE_ERRORS,
    TRANSIENT_SITE_ERRORS,
    aget_site_settings,
    site_transport,
)

#: Maximum pause between two connection attempts while a site is unreachable, in seconds.
MAX_RECONNECT_DELAY = 60.0


def job_outcome(
    settings: SiteSettings, job_dir: str, snapshot: JobSnapshot, verdict: JobVerdict
) -> dict[str, Any]:
    """Return the event payload of an attempt that ended: its verdict, the end of its log, where it ran."""
    summary = verdict.to_dict()
    return {
        "status": verdict.state,
        "reason": verdict.reason,
        "site": settings.site,
        "transport": settings.transport,
        "job_folder": job_dir,
        "attempt": snapshot.attempt,
        "exit_status": snapshot.exit_status,
        "log_tail": "\n".join(snapshot.log_tail),
        "calibrations": summary["calibrations"],
        "output_databases": summary["output_databases"],
    }


class CafJobTrigger(BaseTrigger):
    """Poll one attempt of a job at its site until it succeeds or fails.

    A ``caf`` job is judged from ``caf_state.db``, the output folder and the log, never from the exit
    status alone, because ``b2caf-prompt-run`` exits 0 after a missing input file. An ``exit_status`` job
    (cDST production) is judged by its exit status. Each poll runs one probe at the site over the site's
    shared connection, and reports the calibration states, the iteration and the collector subjobs to the
    plugin database when they change. A site that cannot be reached is retried with backoff until its
    ``unreachable_timeout``; a wrong host key or a rejected login fails at once.

    Cancelling the task (mark failed, mark success, clear) stops the job at the site.

    :param site: the site's name; its connection is ``b2cal_site_<site>``.
    :param job_folder: the job folder at the site.
    :param attempt: the attempt to wait for.
    :param poll_interval: seconds between two looks at the job.
    :param judge: ``caf`` or ``exit_status``.
    :param request_id: the request, to report progress; no report without it.
    :param calibration: the calibration, to report progress.
    :param db_conn_id: the plugin database connection.
    """

    def __init__(
        self,
        site: str,
        job_folder: str,
        attempt: int = 1,
        poll_interval: float = 30.0,
        judge: JudgeKind = "caf",
        request_id: str | None = None,
        calibration: str | None = None,
        db_conn_id: str = "b2cal_db",
    ) -> None:
        super().__init__()
        self.site = site
        self.job_folder = job_folder
        self.attempt = attempt
        self.poll_interval = poll_interval
        self.judge = judge
        self.request_id = request_id
        self.calibration = calibration
        self.db_conn_id = db_conn_id
        self._reported: dict[str, Any] | None = None
        self._db_url: str | None = None

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "site": self.site,
                "job_folder": self.job_folder,
                "attempt": self.attempt,
                "poll_interval": self.poll_interval,
                "judge": self.judge,
                "request_id": self.request_id,
                "calibration": self.calibration,
                "db_conn_id": self.db_conn_id,
            },
        )

    @property
    def paths(self) -> JobPaths:
        """The files of the attempt this trigger waits for."""
        return JobPaths(self.job_folder, self.attempt)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        try:
            settings = await aget_site_settings(self.site)
        except PERMANENT_SITE_ERRORS as exc:
            yield self._error(str(exc))
            return
        async with site_transport(settings) as transport:
            event = await self._wait(settings, transport)
        yield TriggerEvent(event)

    async def _wait(self, settings: SiteSettings, transport: Transport) -> dict[str, Any]:
        failures = 0
        unreachable_since: float | None = None
        # The first look waits one interval: a trigger that fires at once can race the scheduler's
        # handling of the attempt that deferred.
        next_look = time.monotonic() + self.poll_interval
        while True:
            await asyncio.sleep(max(0.0, next_look - time.monotonic()))
            # Looks start every poll_interval however long each takes, so a job that ends is seen at
            # most one interval plus one look later.
            started = time.monotonic()
            try:
                snapshot = await inspect_job(
                    transport,
                    self.job_folder,
                    attempt=self.attempt,
                    caf=self.judge == "caf",
                    timeout=settings.command_timeout,
                )
            except PERMANENT_SITE_ERRORS as exc:
                return self._error(str(exc)).payload
            except TRANSIENT_SITE_ERRORS as exc:
                failures += 1
                unreachable_since = unreachable_since or time.monotonic()
                waited = time.monotonic() - unreachable_since
                if waited > settings.unreachable_timeout:
                    return self._error(
                        f"site {settings.name} was unreachable for {waited:.0f} s, longer than its "
                        f"unreachable_timeout of {settings.unreachable_timeout:.0f} s: {exc}"
                    ).payload
                delay = min(MAX_RECONNECT_DELAY, self.poll_interval, 2.0 ** min(failures, 6))
                delay *= random.uniform(0.5, 1)
                next_look = time.monotonic() + delay
                self.log.warning(
                    "Looking at attempt %s in %s at %s failed (failure %d, for %.0f s of at most %.0f s); "
                    "retrying in %.1f s: %s",
                    self.attempt,
                    self.job_folder,
                    settings.name,
                    failures,
                    waited,
                    settings.unreachable_timeout,
                    delay,
                    exc,
                )
                continue
            if failures:
                self.log.info("Site %s is reachable again after %d failed looks", settings.name, failures)
            failures, unreachable_since = 0, None
            next_look = started + self.poll_interval

            verdict = judge_snapshot(snapshot, self.judge)
            await self._report(snapshot, verdict)
            if verdict.state != "running":
                return job_outcome(settings, self.job_folder, snapshot, verdict)

    def _error(self, reason: str) -> TriggerEvent:
        self.log.error(
            "Waiting for attempt %s in %s on site %s failed: %s",
            self.attempt,
            self.job_folder,
            self.site,
            reason,
        )
        return TriggerEvent(
            {
                "status": "error",
                "reason": reason,
                "site": self.site,
                "job_folder": self.job_folder,
                "attempt": self.attempt,
                "log_tail": "",
            }
        )

    async def _report(self, snapshot: JobSnapshot, verdict: JobVerdict) -> None:
        detail = {
            "site": self.site,
            "attempt": self.attempt,
            "pid": snapshot.pid,
            "states": verdict.calibration_states,
            "iteration": verdict.iteration,
            "subjobs_done": verdict.subjobs_done,
            "subjobs_total": verdict.subjobs_total,
            "subjobs_failed": verdict.subjobs_failed,
        }
        if detail == self._reported:
            return
        self._reported = detail
        self.log.info(
            "Attempt %s in %s: %s (%d/%d collector subjobs done)",
            self.attempt,
            self.job_folder,
            verdict.reason,
            verdict.subjobs_done,
            verdict.subjobs_total,
        )
        if self.request_id is None or self.calibration is None:
            return
        try:
            await asyncio.to_thread(self._write_progress, detail)
        except Exception as exc:  # noqa: BLE001 - progress is informative; the wait goes on without it
            self.log.warning(
                "Could not record the progress of %s in the plugin database: %s", self.calibration, exc
            )

    def _write_progress(self, detail: dict[str, Any]) -> None:
        from b2cal.db import store
        from b2cal.db.engine import session_scope
        from b2cal_airflow.hooks.b2cal import PluginDatabaseHook

        if self._db_url is None:
            self._db_url = PluginDatabaseHook(self.db_conn_id).get_url()
        assert self.request_id is not None and self.calibration is not None
        with session_scope(self._db_url) as session:
            store.update_progress(session, self.request_id, self.calibration, job_detail=detail)

    async def on_kill(self) -> None:
        """Stop the job at the site when a user marks the task failed or successful, or clears it."""
        settings = await aget_site_settings(self.site)
        async with site_transport(settings) as transport:
            message = await stop_job(transport, self.paths, timeout=settings.command_timeout)
        self.log.info(
            "Stopped attempt %s in %s on site %s: %s", self.attempt, self.job_folder, self.site, message
        )
