"""Run a site's validation step from an operator, over the site's connection.

:class:`ValidationSession` is a :class:`~b2cal_airflow.hooks.site.SiteSession` that also runs the
validation program of :mod:`b2cal.site_validation` on the session's event loop, so the program runs and
its folder is copied back over one SSH connection.
"""

from __future__ import annotations

from collections.abc import Mapping

from b2cal import site_validation
from b2cal.site_validation import ValidationRun
from b2cal.sites import ValidationStep
from b2cal_airflow.hooks.site import PERMANENT_SITE_ERRORS, TRANSIENT_SITE_ERRORS, SiteSession


def site_errors() -> tuple[type[BaseException], ...]:
    """Return every error of a command or a copy at a site, SFTP errors such as a missing folder included."""
    # asyncssh is imported here, not with the module, so DAG files that import the operators do not load it.
    import asyncssh

    return (*PERMANENT_SITE_ERRORS, *TRANSIENT_SITE_ERRORS, OSError, asyncssh.Error)


class ValidationSession(SiteSession):
    """A site session that also runs the site's validation program."""

    def run_validation(
        self, step: ValidationStep, job_dir: str, attempt: int, *, setup_command: str, env: Mapping[str, str]
    ) -> ValidationRun:
        """Run the validation program of one job attempt; see :func:`b2cal.site_validation.run_validation`."""
        return self._run(
            site_validation.run_validation(
                self.transport,
                step,
                job_dir,
                attempt,
                shell=self.settings.remote_shell,
                setup_command=setup_command,
                env=env,
            )
        )
