"""Triggers that wait for Rucio replication rules to be OK, without holding a worker slot.

:class:`RucioRulesTrigger` waits for many rules and fetches them with one listing call per account and
scope in each poll; :class:`RucioRuleTrigger` is the same for a single rule id.

A rule is done when Rucio reports OK *and* it locks every expected file (see
:attr:`b2cal.rucio.RuleProgress.verdict`). A STUCK rule fails the wait only after a grace period,
because the judge repairer often recovers it. When Rucio is unreachable the trigger backs off and
retries up to a maximum number of attempts, logging "attempt n/m" each time. An unknown rule or DID,
and rejected credentials, end the wait at once with a failure event.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from b2cal.rucio import Did, RuleProgress, RuleWatch, assess_rules, judge_rule, listing_filters
from b2cal_airflow.hooks.rucio import RucioHook, credential_errors, transient_errors

# Above this many rules the per-rule progress lines go to DEBUG and INFO gets one summary per change.
DETAILED_LOG_LIMIT = 20


class WatchError(RuntimeError):
    """A watched rule or DID does not exist; waiting longer cannot help."""


class RulePoller:
    """Fetch the state of every watched rule with as few calls as it can; runs in a worker thread.

    The first poll resolves watches given by DID and RSE expression to rule ids, and counts the files
    of DIDs whose expected count is not given. Later polls list rules per account and scope (see
    :func:`b2cal.rucio.listing_filters`).

    :param batch_min: the smallest group of rules fetched with one listing call; smaller groups
        are fetched rule by rule.
    """

    def __init__(self, rucio_conn_id: str, watches: list[RuleWatch], batch_min: int = 2) -> None:
        self.hook = RucioHook(rucio_conn_id)
        self.watches = watches
        self.batch_min = batch_min
        self.expected: dict[str, int | None] = {}
        self.counted: set[str] = set()
        self.known: dict[str, dict[str, Any]] = {}
        self.calls = 0
        self._resolved = False

    def close(self) -> None:
        """Drop the client and its token."""
        self.hook.close()

    def _call(self, function: Any, *args: Any) -> Any:
        from rucio.common.exception import DataIdentifierNotFound, RuleNotFound

        self.calls += 1
        try:
            return function(*args)
        except RuleNotFound as exc:
            raise WatchError(
                f"rule {args[0]} not found on {self.hook.settings.host}: it never existed there, or Rucio "
                f"deleted it when its lifetime ended ({exc})"
            ) from exc
        except DataIdentifierNotFound as exc:
            raise WatchError(
                f"DID {args[0]} not found on {self.hook.settings.host}: register it first ({exc})"
            ) from exc

    def _resolve(self) -> None:
        for watch in self.watches:
            if watch.rule_id:
                self.expected[watch.rule_id] = watch.expected_files
                stub = watch.rule_stub()
                if stub is not None:
                    self.known.setdefault(watch.rule_id, stub)
                continue
            did = Did.parse(str(watch.did))
            rules = [
                rule
                for rule in self._call(self.hook.list_did_rules, did)
                if rule.get("rse_expression") == watch.rse_expression
            ]
            if not rules:
                raise WatchError(
                    f"DID {did} has no replication rule for the RSE expression {watch.rse_expression!r}; "
                    "add one (RucioAddRuleOperator) before waiting for it"
                )
            for rule in rules:
                self.expected[str(rule["id"])] = watch.expected_files
                self.known[str(rule["id"])] = rule
        self._resolved = True

    def _count(self, rule: dict[str, Any]) -> int:
        return int(self._call(self.hook.count_files, Did(str(rule["scope"]), str(rule["name"]))))

    def poll(self) -> list[dict[str, Any]]:
        """Return the current dictionary of every watched rule, in watch order."""
        if not self._resolved:
            self._resolve()
        rules: dict[str, dict[str, Any]] = {}
        filters, singles = listing_filters(
            list(self.known[rule_id] for rule_id in self.expected if rule_id in self.known), self.batch_min
        )
        for rule_filter in filters:
            for rule in self._call(self.hook.list_rules, rule_filter):
                if rule["id"] in self.expected:
                    rules[rule["id"]] = rule
        # Rules fetched one by one: unknown ones, small groups, and any a listing missed (deleted rules
        # raise RuleNotFound here).
        for rule_id in [*singles, *(rule_id for rule_id in self.expected if rule_id not in rules)]:
            if rule_id not in rules:
                rules[rule_id] = self._call(self.hook.get_rule, rule_id)
        for rule_id, rule in rules.items():
            self.known[rule_id] = rule
            if self.expected[rule_id] is None and rule_id not in self.counted:
                self.expected[rule_id] = self._count(rule)
                self.counted.add(rule_id)
        return [rules[rule_id] for rule_id in self.expected]

    def recount(self) -> list[str]:
        """Count the files of the DIDs counted by the first poll again; return the rules whose count grew.

        A file attached after the first count would otherwise go unnoticed: its rule reports OK with the
        old number of locks until the judge evaluator runs.
        """
        grown = []
        for rule_id in self.counted:
            count = self._count(self.known[rule_id])
            if count != self.expected[rule_id]:
                self.expected[rule_id] = count
                grown.append(rule_id)
        return grown


class RucioRulesTrigger(BaseTrigger):
    """Wait until every watched rule is OK with all its locks.

    :param watches: :meth:`b2cal.rucio.RuleWatch.to_dict` of each rule to wait for.
    :param rucio_conn_id: the Rucio connection.
    :param poll_interval: seconds between two polls.
    :param stuck_grace_period: seconds a rule may stay STUCK (or SUSPENDED) before the wait fails.
    :param max_attempts: failed polls in a row, with Rucio unreachable, before the wait fails.
    :param max_backoff: the longest pause in seconds between two failed polls; pauses double from
        ``poll_interval`` up to it.
    :param batch_min: the smallest group of rules fetched with one listing call.
    """

    def __init__(
        self,
        watches: list[dict[str, Any]],
        rucio_conn_id: str = RucioHook.default_conn_name,
        poll_interval: float = 60.0,
        stuck_grace_period: float = 1800.0,
        max_attempts: int = 20,
        max_backoff: float = 600.0,
        batch_min: int = 2,
    ) -> None:
        super().__init__()
        if not watches:
            raise ValueError("RucioRulesTrigger needs at least one rule to wait for")
        self.watches = [RuleWatch.from_dict(watch).to_dict() for watch in watches]
        self.rucio_conn_id = rucio_conn_id
        self.poll_interval = float(poll_interval)
        self.stuck_grace_period = float(stuck_grace_period)
        self.max_attempts = int(max_attempts)
        self.max_backoff = float(max_backoff)
        self.batch_min = int(batch_min)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "watches": self.watches,
                "rucio_conn_id": self.rucio_conn_id,
                "poll_interval": self.poll_interval,
                "stuck_grace_period": self.stuck_grace_period,
                "max_attempts": self.max_attempts,
                "max_backoff": self.max_backoff,
                "batch_min": self.batch_min,
            },
        )

    def backoff(self, attempt: int) -> float:
        """Return the pause after the ``attempt``-th failed poll in a row."""
        return min(self.max_backoff, self.poll_interval * 2 ** (attempt - 1))

    def _failure(self, message: str, progress: list[RuleProgress] | None = None) -> TriggerEvent:
        return TriggerEvent(
            {"status": "failed", "message": message, "rules": [item.to_dict() for item in progress or []]}
        )

    def _log_progress(
        self, progress: list[RuleProgress], previous: dict[str, tuple[str, int, int, int]]
    ) -> None:
        detailed = len(progress) <= DETAILED_LOG_LIMIT
        for item in progress:
            if previous.get(item.rule_id) != item.counts:
                if detailed:
                    self.log.info("%s", item.summary())
                else:
                    self.log.debug("%s", item.summary())
                previous[item.rule_id] = item.counts

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from rucio.common.exception import RucioException

        poller = RulePoller(
            self.rucio_conn_id, [RuleWatch.from_dict(watch) for watch in self.watches], self.batch_min
        )
        retryable = transient_errors()
        rejected = credential_errors()
        # NOTE: the STUCK clock lives in memory only. A triggerer restart re-creates the trigger from its
        # serialized arguments, so the grace period starts again.
        stuck_since: dict[str, float] = {}
        previous: dict[str, tuple[str, int, int, int]] = {}
        last_summary = ""
        attempt = 0
        try:
            while True:
                try:
                    rules = await asyncio.to_thread(poller.poll)
                    progress = [judge_rule(rule, poller.expected[str(rule["id"])]) for rule in rules]
                    outcome = assess_rules(progress, stuck_since, time.monotonic(), self.stuck_grace_period)
                    if outcome.done and await asyncio.to_thread(poller.recount):
                        self.log.info("Files were attached since the first count; waiting for their locks")
                        outcome = assess_rules(
                            [judge_rule(rule, poller.expected[str(rule["id"])]) for rule in rules],
                            stuck_since,
                            time.monotonic(),
                            self.stuck_grace_period,
                        )
                except WatchError as exc:
                    yield self._failure(str(exc))
                    return
                except rejected as exc:
                    yield self._failure(
                        f"Rucio rejected the credentials of connection {self.rucio_conn_id!r}: {exc}"
                    )
                    return
                except Exception as exc:
                    # A plain RucioException is what the client raises for an HTTP 500 without details,
                    # e.g. a brief database failure on the server. Its subclasses are specific errors.
                    if not isinstance(exc, retryable) and type(exc) is not RucioException:
                        yield self._failure(f"polling Rucio failed: {type(exc).__name__}: {exc}")
                        return
                    attempt += 1
                    if attempt >= self.max_attempts:
                        yield self._failure(
                            f"Rucio at {poller.hook.settings.host} stayed unreachable for {attempt} "
                            f"polls in a row (attempt {attempt}/{self.max_attempts}): {exc}"
                        )
                        return
                    pause = self.backoff(attempt)
                    self.log.warning(
                        "Rucio at %s is unreachable (attempt %d/%d): %s; retrying in %.0f s",
                        poller.hook.settings.host,
                        attempt,
                        self.max_attempts,
                        exc,
                        pause,
                    )
                    await asyncio.sleep(pause)
                    continue
                if attempt:
                    self.log.info("Rucio responds again after %d failed attempts", attempt)
                    attempt = 0
                self._log_progress(progress, previous)
                if outcome.done:
                    self.log.info("%s (%d Rucio calls)", outcome.message, poller.calls)
                    yield TriggerEvent(
                        {
                            "status": "success",
                            "message": outcome.message,
                            "rules": [item.to_dict() for item in progress],
                        }
                    )
                    return
                if outcome.failed:
                    yield self._failure(outcome.message, progress)
                    return
                if outcome.message != last_summary:
                    self.log.info("Waiting: %s", outcome.message)
                    last_summary = outcome.message
                await asyncio.sleep(self.poll_interval)
        finally:
            poller.close()


class RucioRuleTrigger(RucioRulesTrigger):
    """Wait until one rule is OK with all its locks; see :class:`RucioRulesTrigger` for the rest.

    :param rule_id: the rule's id.
    :param expected_files: files the rule must lock per copy; ``None`` counts the files of its DID.
    """

    def __init__(
        self,
        rule_id: str,
        expected_files: int | None = None,
        rucio_conn_id: str = RucioHook.default_conn_name,
        poll_interval: float = 60.0,
        stuck_grace_period: float = 1800.0,
        max_attempts: int = 20,
        max_backoff: float = 600.0,
    ) -> None:
        super().__init__(
            watches=[RuleWatch(rule_id=rule_id, expected_files=expected_files).to_dict()],
            rucio_conn_id=rucio_conn_id,
            poll_interval=poll_interval,
            stuck_grace_period=stuck_grace_period,
            max_attempts=max_attempts,
            max_backoff=max_backoff,
        )
        self.rule_id = rule_id
        self.expected_files = expected_files

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "rule_id": self.rule_id,
                "expected_files": self.expected_files,
                "rucio_conn_id": self.rucio_conn_id,
                "poll_interval": self.poll_interval,
                "stuck_grace_period": self.stuck_grace_period,
                "max_attempts": self.max_attempts,
                "max_backoff": self.max_backoff,
            },
        )
