"""Wait for many Jira tickets with one search per poll, shared by every waiter of a request.

Each waiting task of a request defers with its own trigger, and the triggerer runs all triggers in
one event loop. A :class:`TicketWatcher` per Jira connection and request lives in that loop: every
trigger registers its ticket keys with it and awaits :meth:`TicketWatcher.wait`. The watcher runs
one JQL search for the union of the registered keys per poll and releases each waiter once all its
tickets are in the status category *done* in the same search result. A ticket that was done and is
reopened before that keeps its waiter waiting.

Between polls the watcher looks, every ``wake_interval`` seconds, for a newer webhook event of its
request (see :mod:`b2cal.ticket_events`); one makes it search at once. Lost webhook deliveries only
cost latency, because the polls go on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import ClassVar

log = logging.getLogger(__name__)

DONE = "done"

#: Returns the status category of each ticket it finds; tickets that do not exist are left out.
SearchFunction = Callable[[list[str]], dict[str, str]]
#: Returns the id of the newest webhook event of the request, 0 when there is none.
EventFunction = Callable[[], int]


class TicketWaitError(RuntimeError):
    """Waiting for tickets cannot go on: Jira stayed unreachable, or a ticket does not exist."""


@dataclass
class _Waiter:
    keys: frozenset[str]
    registered: float
    future: asyncio.Future[dict[str, str]]
    missing_polls: int = 0


@dataclass
class WatcherStats:
    """What a watcher did: searches, webhook wake-ups and released waiters."""

    searches: int = 0
    wakeups: int = 0
    released: int = 0
    failures: int = 0
    searched_keys: list[int] = field(default_factory=list)


class TicketWatcher:
    """Poll Jira for the tickets of every registered waiter with one search per poll.

    :param name: the watcher's name in log messages, e.g. ``"b2cal_jira/prompt-e0026-b01"``
    :param search: blocking function that returns the status category of each ticket; it runs in a
        worker thread
    :param poll_interval: seconds between two searches when no webhook event arrives
    :param events: blocking function that returns the newest webhook event id of the request, or
        ``None`` to poll only
    :param wake_interval: seconds between two looks for a new webhook event
    :param min_wait: seconds a waiter waits at least: a trigger that fires right after its task
        deferred can race the scheduler's handling of that deferral
    :param max_failures: failed searches in a row after which every waiter gets an error
    :param missing_polls: searches in a row that may miss one of a waiter's tickets (a Cloud search
        can lag behind creates) before the waiter gets an error
    """

    _shared: ClassVar[dict[tuple[int, str], TicketWatcher]] = {}

    def __init__(
        self,
        name: str,
        search: SearchFunction,
        *,
        poll_interval: float = 30.0,
        events: EventFunction | None = None,
        wake_interval: float = 0.5,
        min_wait: float = 1.0,
        max_failures: int = 20,
        missing_polls: int = 3,
    ) -> None:
        if poll_interval <= 0 or wake_interval <= 0:
            raise ValueError(
                f"poll_interval {poll_interval!r} and wake_interval {wake_interval!r} must be above 0 seconds"
            )
        self.name = name
        self.search = search
        self.poll_interval = poll_interval
        self.events = events
        self.wake_interval = wake_interval
        self.min_wait = min_wait
        self.max_failures = max_failures
        self.missing_polls = missing_polls
        self.stats = WatcherStats()
        self._waiters: list[_Waiter] = []
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self._held_until: float | None = None

    @classmethod
    def shared(cls, key: str, factory: Callable[[], TicketWatcher]) -> TicketWatcher:
        """Return the watcher registered under ``key`` in the running event loop, creating it once."""
        loop_key = (id(asyncio.get_running_loop()), key)
        watcher = cls._shared.get(loop_key)
        if watcher is None:
            watcher = factory()
            cls._shared[loop_key] = watcher
        return watcher

    @classmethod
    def forget_all(cls) -> None:
        """Drop every shared watcher; for tests that start event loops one after another."""
        cls._shared.clear()

    @property
    def waiting(self) -> int:
        """Number of waiters not released yet."""
        return len(self._waiters)

    async def wait(self, keys: Iterable[str]) -> dict[str, str]:
        """Wait until every ticket in ``keys`` is done; return their categories.

        :raises TicketWaitError: when Jira stays unreachable or a ticket does not exist
        """
        wanted = frozenset(keys)
        if not wanted:
            return {}
        waiter = _Waiter(wanted, time.monotonic(), asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        self._changed.set()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"ticket watcher {self.name}"
            )
        try:
            return await waiter.future
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    async def _run(self) -> None:
        try:
            await self._loop()
        except Exception as exc:  # a waiter must never wait for a watcher that died
            log.exception("Watcher %s stopped", self.name)
            self._fail_all(f"the ticket watcher stopped: {exc}")

    async def _loop(self) -> None:
        last_event = await self._latest_event() if self.events else 0
        next_poll = time.monotonic() + self.poll_interval
        next_look = time.monotonic() + self.wake_interval
        failures = 0
        while self._waiters:
            now = time.monotonic()
            self._changed.clear()
            timeout = max(0.0, min(next_poll, next_look if self.events else next_poll) - now)
            try:
                await asyncio.wait_for(self._changed.wait(), timeout)
            except TimeoutError:
                pass
            if not self._waiters:
                break
            now = time.monotonic()
            woken = False
            if self.events and now >= next_look:
                latest = await self._latest_event()
                next_look = time.monotonic() + self.wake_interval
                if latest > last_event:
                    last_event = latest
                    woken = True
                    self.stats.wakeups += 1
            if not woken and now < next_poll:
                continue
            failures = await self._poll(failures)
            next_poll = time.monotonic() + self.poll_interval
            if self._held_until is not None:
                # A waiter whose tickets were done was too young to release: look again once it may go.
                next_poll = min(next_poll, self._held_until)
                self._held_until = None

    async def _latest_event(self) -> int:
        assert self.events is not None
        try:
            return int(await asyncio.to_thread(self.events))
        except Exception as exc:  # noqa: BLE001 - without events the polls still release the waiters
            log.warning("Watcher %s could not read webhook events: %s", self.name, exc)
            return 0

    async def _poll(self, failures: int) -> int:
        keys = sorted(set().union(*(waiter.keys for waiter in self._waiters)))
        self.stats.searches += 1
        self.stats.searched_keys.append(len(keys))
        try:
            categories = await asyncio.to_thread(self.search, keys)
        except Exception as exc:  # noqa: BLE001 - Jira being unreachable for a while is expected
            failures += 1
            self.stats.failures += 1
            log.warning(
                "Watcher %s: search for %d tickets failed (attempt %d/%d): %s",
                self.name,
                len(keys),
                failures,
                self.max_failures,
                exc,
            )
            if failures >= self.max_failures:
                self._fail_all(f"Jira unreachable after {failures} attempts: {exc}")
            return failures
        now = time.monotonic()
        for waiter in list(self._waiters):
            missing = sorted(key for key in waiter.keys if key not in categories)
            if missing:
                waiter.missing_polls += 1
                if waiter.missing_polls >= self.missing_polls:
                    self._release(waiter, error=f"tickets {missing} not found in Jira")
                continue
            waiter.missing_polls = 0
            if not all(categories[key] == DONE for key in waiter.keys):
                continue
            if now - waiter.registered < self.min_wait:
                release_at = waiter.registered + self.min_wait
                self._held_until = min(self._held_until or release_at, release_at)
                continue
            self._release(waiter, result={key: categories[key] for key in waiter.keys})
        open_keys = sorted(key for key, category in categories.items() if category != DONE)
        log.debug("Watcher %s: %d waiters, open tickets %s", self.name, len(self._waiters), open_keys)
        return 0

    def _release(
        self, waiter: _Waiter, *, result: dict[str, str] | None = None, error: str | None = None
    ) -> None:
        if waiter in self._waiters:
            self._waiters.remove(waiter)
        if waiter.future.done():
            return
        if error is not None:
            waiter.future.set_exception(TicketWaitError(error))
        else:
            self.stats.released += 1
            waiter.future.set_result(result or {})

    def _fail_all(self, reason: str) -> None:
        for waiter in list(self._waiters):
            self._release(waiter, error=reason)
