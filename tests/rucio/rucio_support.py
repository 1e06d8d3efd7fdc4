"""Helpers of the Rucio tests: test files, trigger runs and a recording task instance."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from rucioctl import RucioServer

# A coroutine function run next to a trigger, e.g. to make the rule OK while the trigger waits.
During = Callable[[], Awaitable[Any]] | None


def connection_json(server: RucioServer, **extra: Any) -> str:
    """Return the ``AIRFLOW_CONN_<ID>`` value of a connection to ``server``, with ``extra`` added."""
    values = server.connection_values()
    values["extra"] = {**values["extra"], **extra}
    return json.dumps(values)


def write_run_files(
    root: Path, data_tag: str, exp: int, runs: list[int], per_run: int, suffix: str
) -> list[Path]:
    """Write placeholder files ``<root>/<tag>/eNNNN/rNNNNN/f<i><suffix>`` with distinct contents."""
    paths = []
    for run in runs:
        folder = root / data_tag / f"e{exp:04d}" / f"r{run:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(per_run):
            path = folder / f"f{index}{suffix}"
            path.write_bytes(f"{root.name} {data_tag} {exp} {run} {index}\n".encode())
            paths.append(path)
    return paths


async def first_event(trigger: Any, during: During = None, timeout: float = 90.0) -> dict:
    """Run a trigger until its first event and return the payload; run ``during`` alongside it."""

    async def consume(events: AsyncIterator[Any]) -> dict:
        async for event in events:
            return event.payload
        raise AssertionError("the trigger ended without an event")

    async def main() -> dict:
        task = asyncio.create_task(consume(trigger.run()))
        helper = asyncio.create_task(during()) if during else None
        try:
            return await asyncio.wait_for(task, timeout)
        finally:
            if helper is not None:
                if not helper.done():
                    helper.cancel()
                try:
                    await helper
                except asyncio.CancelledError:
                    pass

    return await main()


def run_trigger(trigger: Any, during: During = None, timeout: float = 90.0) -> dict:
    """Run :func:`first_event` in a new event loop."""
    return asyncio.run(first_event(trigger, during, timeout))


class RecordingTaskInstance:
    """The part of a task instance the operators use: ``xcom_push``, recorded in ``xcoms``."""

    def __init__(self) -> None:
        self.xcoms: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        """Record an XCom."""
        self.xcoms[key] = value
