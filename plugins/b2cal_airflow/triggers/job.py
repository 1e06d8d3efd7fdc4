"""Trigger that waits for a detached local job to write its exit status."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from b2cal.jobs import LocalJob


class LocalJobTrigger(BaseTrigger):
    """Poll a job folder until ``job.exit`` appears or the process is gone.

    :param job_folder: the folder given to :func:`b2cal.jobs.start_local_job`.
    :param poll_interval: seconds between two looks.
    """

    def __init__(self, job_folder: str, poll_interval: float = 30.0) -> None:
        super().__init__()
        self.job_folder = job_folder
        self.poll_interval = poll_interval

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {"job_folder": self.job_folder, "poll_interval": self.poll_interval},
        )

    def look(self) -> dict[str, Any] | None:
        """Return the job's outcome as the event payload, or ``None`` while it runs."""
        job = LocalJob(Path(self.job_folder))
        status = job.exit_status
        if status is None and job.is_alive():
            return None
        if status is None:
            return {
                "status": "failed",
                "reason": "the process ended without an exit status",
                "job_folder": self.job_folder,
            }
        return {
            "status": "succeeded" if status == 0 else "failed",
            "reason": f"exit status {status}",
            "job_folder": self.job_folder,
        }

    async def run(self) -> AsyncIterator[TriggerEvent]:
        while True:
            await asyncio.sleep(self.poll_interval)
            outcome = await asyncio.to_thread(self.look)
            if outcome is not None:
                yield TriggerEvent(outcome)
                return
