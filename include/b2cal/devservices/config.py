"""Configure the local development services: credentials, Jira users and the generated run list.

The defaults below are the only place where the development credentials live. They protect
nothing: the services bind to the loopback interface only and hold development data. Each
credential can be overridden with an environment variable, listed in :data:`ENVIRONMENT_VARIABLES`.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from typing import Any

logger = logging.getLogger(__name__)

#: Development password of the Jira bot account (overridden by ``B2CAL_DEV_JIRA_PASSWORD``).
DEFAULT_JIRA_PASSWORD = "b2cal-dev-password"
#: Development password of every expert account (overridden by ``B2CAL_DEV_JIRA_EXPERT_PASSWORD``).
DEFAULT_JIRA_EXPERT_PASSWORD = "b2cal-dev-expert-password"
#: Development bearer token for conditions database writes (overridden by ``B2CAL_DEV_CONDDB_TOKEN``).
DEFAULT_CONDDB_TOKEN = "b2cal-dev-conddb-token"
#: Development API key of the run registry (overridden by ``B2CAL_DEV_RUNREGISTRY_API_KEY``).
DEFAULT_RUNREGISTRY_API_KEY = "b2cal-dev-runregistry-key"

#: Environment variable for each overridable :class:`DevServicesConfig` field.
ENVIRONMENT_VARIABLES: dict[str, str] = {
    "jira_bot_password": "B2CAL_DEV_JIRA_PASSWORD",
    "jira_expert_password": "B2CAL_DEV_JIRA_EXPERT_PASSWORD",
    "conddb_token": "B2CAL_DEV_CONDDB_TOKEN",
    "runregistry_api_key": "B2CAL_DEV_RUNREGISTRY_API_KEY",
}

_PROJECT_KEY = re.compile(r"^[A-Z][A-Z0-9_]{1,9}$")
_USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@+-]*$")


@dataclass(frozen=True)
class DevServicesConfig:
    """Settings shared by the development Jira, conditions database and run registry.

    Secrets are left out of ``repr`` so that logging a configuration never prints them.
    """

    #: Keys of the Jira projects that exist; the first one is the default project.
    jira_projects: tuple[str, ...] = ("CAL",)
    #: Jira account that the automation logs in as.
    jira_bot_username: str = "b2cal-bot"
    jira_bot_password: str = field(default=DEFAULT_JIRA_PASSWORD, repr=False)
    #: Extra Jira accounts, one per calibration expert; they all share ``jira_expert_password``.
    jira_experts: tuple[str, ...] = ()
    jira_expert_password: str = field(default=DEFAULT_JIRA_EXPERT_PASSWORD, repr=False)
    #: Which Jira the development service behaves as: ``Server`` (REST v2) or ``Cloud`` (v2 and v3).
    jira_deployment: str = "Server"
    #: Seconds every Jira REST request waits before it is served, to measure clients under latency.
    jira_latency_seconds: float = 0.0
    #: Cloud only: seconds after its creation before a Jira search returns a new issue.
    jira_search_lag_seconds: float = 0.0
    #: Workflow of each Jira project, as ``(project, workflow)`` pairs: ``classic`` (the default)
    #: or ``simple``, whose transition ids differ.
    jira_workflows: tuple[tuple[str, str], ...] = ()
    #: Bearer token that conditions database writes must carry.
    conddb_token: str = field(default=DEFAULT_CONDDB_TOKEN, repr=False)
    #: User name recorded as ``modifiedBy`` on conditions database objects.
    conddb_username: str = "b2cal-bot"
    #: API key that run registry requests must carry.
    runregistry_api_key: str = field(default=DEFAULT_RUNREGISTRY_API_KEY, repr=False)
    #: Seed of the generated run list; the same seed always gives the same runs.
    seed: int = 2024
    #: Experiments of the generated run list, in time order.
    experiments: tuple[int, ...] = (24, 25, 26)
    #: Number of runs generated per experiment.
    runs_per_experiment: int = 120
    #: Number of placeholder files per run and skim in the site storage tree.
    files_per_skim: int = 2
    #: Number of run registry requests that fail with HTTP 503 right after start, for retry tests.
    runregistry_failures: int = 0

    def __post_init__(self) -> None:
        if not self.jira_projects:
            raise ValueError("jira_projects is empty: configure at least one project key, e.g. ('CAL',)")
        for key in self.jira_projects:
            if not _PROJECT_KEY.match(key):
                raise ValueError(
                    f"Jira project key {key!r} is invalid: use 2 to 10 upper-case letters, digits or "
                    "underscores, starting with a letter"
                )
        for name in (self.jira_bot_username, *self.jira_experts):
            if not _USERNAME.match(name):
                raise ValueError(
                    f"Jira username {name!r} is invalid: use letters, digits and . _ @ + -, "
                    "starting with a letter or digit"
                )
        if self.jira_deployment not in ("Server", "Cloud"):
            raise ValueError(f"jira_deployment {self.jira_deployment!r} is invalid: use 'Server' or 'Cloud'")
        if self.jira_latency_seconds < 0 or self.jira_search_lag_seconds < 0:
            raise ValueError("jira_latency_seconds and jira_search_lag_seconds must be 0 or more")
        for project, workflow in self.jira_workflows:
            if project not in self.jira_projects or workflow not in ("classic", "simple"):
                raise ValueError(
                    f"jira_workflows entry {(project, workflow)!r} is invalid: name a project of "
                    f"{self.jira_projects} and the workflow 'classic' or 'simple'"
                )
        for name in ("jira_bot_password", "jira_expert_password", "conddb_token", "runregistry_api_key"):
            if not getattr(self, name):
                raise ValueError(f"{name} is empty: set a non-empty development credential")
        if not self.experiments or any(exp < 0 for exp in self.experiments):
            raise ValueError(f"experiments {self.experiments!r} must be a non-empty list of numbers >= 0")
        if list(self.experiments) != sorted(set(self.experiments)):
            raise ValueError(f"experiments {self.experiments!r} must be increasing and distinct")
        if self.runs_per_experiment < 1:
            raise ValueError(f"runs_per_experiment is {self.runs_per_experiment}, expected at least 1")
        if self.files_per_skim < 1:
            raise ValueError(f"files_per_skim is {self.files_per_skim}, expected at least 1")
        if self.runregistry_failures < 0:
            raise ValueError(f"runregistry_failures is {self.runregistry_failures}, expected 0 or more")

    @property
    def default_project(self) -> str:
        """The project that tickets go to unless a request names another one."""
        return self.jira_projects[0]

    def jira_users(self) -> dict[str, str]:
        """Return every Jira username with its password, the bot first."""
        users = {self.jira_bot_username: self.jira_bot_password}
        for name in self.jira_experts:
            users.setdefault(name, self.jira_expert_password)
        return users

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> DevServicesConfig:
        """Build a configuration from the defaults, the environment and explicit overrides.

        An explicit override beats an environment variable, which beats the default. Unless
        ``jira_experts`` is given, the expert usernames of the packaged release catalogs become Jira
        users, so tickets can be assigned to them.

        :param environ: environment to read, ``os.environ`` when ``None``
        :param overrides: field values that take precedence over everything else
        """
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, variable in ENVIRONMENT_VARIABLES.items():
            if environ.get(variable):
                values[name] = environ[variable]
        if "jira_experts" not in overrides:
            values["jira_experts"] = catalog_expert_usernames()
        values.update(overrides)
        return cls(**values)

    def with_overrides(self, **changes: Any) -> DevServicesConfig:
        """Return a copy with some fields changed."""
        return replace(self, **changes)


def _packaged_releases() -> list[dict]:
    folder = resources.files("b2cal") / "data" / "releases"
    catalogs = []
    for entry in sorted(folder.iterdir(), key=lambda item: item.name):
        if entry.name.endswith(".json"):
            catalogs.append(json.loads(entry.read_text(encoding="utf-8")))
    return catalogs


def catalog_expert_usernames() -> tuple[str, ...]:
    """Return the sorted expert usernames of every packaged release catalog."""
    names = set()
    for catalog in _packaged_releases():
        for calibration in catalog.get("calibrations", []):
            name = calibration.get("expert_username")
            if name:
                names.add(name)
    return tuple(sorted(names))


def catalog_data_tags() -> tuple[str, ...]:
    """Return the ``Data Tag`` filter vocabulary of the packaged release catalogs, in catalog order."""
    tags: list[str] = []
    for catalog in _packaged_releases():
        for tag in catalog.get("input_data_filters", {}).get("Data Tag", []):
            if tag not in tags:
                tags.append(tag)
    if not tags:
        raise RuntimeError(
            "no 'Data Tag' vocabulary found in b2cal/data/releases/*.json: reinstall the b2cal package"
        )
    return tuple(tags)
