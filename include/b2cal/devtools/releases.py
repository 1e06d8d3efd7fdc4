"""Load and check the prompt calibration settings of a basf2 release for the basf2 stand-ins.

A release is a JSON file ``<release>.json`` in the catalog shape: ``basf2_release``,
``input_data_filters`` (the filter vocabulary by category) and ``calibrations`` (one entry per prompt
script). The stand-ins pick the release from ``$BELLE2_RELEASE`` and the folder from
``$B2CAL_BASF2_RELEASES``, or use the releases packaged in ``b2cal/data/releases/``.

Two keys exist only for the stand-ins and are not shown by ``b2caf-prompt-show``:

- ``check_error``: a message that makes ``b2caf-prompt-check`` fail. At the top level it fails every
  script, in a calibration entry only that script.
- ``caf_calibrations``: in a calibration entry, the CAF calibrations that the script's
  ``get_calibrations`` returns, as ``[{"name": ..., "payloads": [...]}, ...]``, run in that order. Without
  it the script has one CAF calibration named after its ``name`` setting that produces every payload of
  ``produced_payloads``.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

DEFAULT_RELEASE = "release-11-00-00"
RELEASE_ENV = "BELLE2_RELEASE"
RELEASES_DIR_ENV = "B2CAL_BASF2_RELEASES"

SETTINGS_KEYS = (
    "name",
    "expert_username",
    "subsystem",
    "description",
    "input_data_formats",
    "input_data_names",
    "input_data_filters",
    "depends_on",
    "expert_config",
    "produced_payloads",
)
ALLOWED_DATA_FORMATS = frozenset({"raw", "cdst", "mdst", "udst"})
MAX_NAME_LENGTH = 64


class ReleaseError(Exception):
    """A release or script that the stand-ins cannot find or read."""


@dataclass(frozen=True)
class CafCalibration:
    """One CAF calibration inside a prompt script, with the payloads its algorithms write."""

    name: str
    payloads: tuple[str, ...]


@dataclass(frozen=True)
class Release:
    """The prompt calibration settings of one basf2 release."""

    name: str
    source: str
    input_data_filters: dict[str, list[str]]
    calibrations: list[dict[str, Any]]
    check_error: str | None = None

    def scripts(self) -> list[str]:
        """Return the prompt script file names, sorted."""
        return sorted(entry["script"] for entry in self.calibrations)

    def find_script(self, script: str) -> dict[str, Any]:
        """Return the calibration entry of a script given by file name or by a path to it.

        :raises ReleaseError: if the base name is not a script of this release.
        """
        file_name = Path(script).name
        for entry in self.calibrations:
            if entry.get("script") == file_name:
                return entry
        raise ReleaseError(
            f"Prompt script {script!r} is not in {self.name}: run b2caf-prompt-show to list the scripts"
        )

    def caf_calibrations(self, entry: dict[str, Any]) -> list[CafCalibration]:
        """Return the CAF calibrations that a script's ``get_calibrations`` builds, in run order."""
        declared = entry.get("caf_calibrations")
        if not declared:
            return [CafCalibration(entry["name"], tuple(entry.get("produced_payloads", [])))]
        return [CafCalibration(item["name"], tuple(item.get("payloads", []))) for item in declared]


def settings_of(entry: dict[str, Any]) -> dict[str, Any]:
    """Return a script's settings as ``b2caf-prompt-show --json`` prints them."""
    return {key: entry[key] for key in SETTINGS_KEYS if key in entry}


def load_release(release: str | None = None) -> Release:
    """Load the settings of a release, by default the one named by ``$BELLE2_RELEASE``.

    :raises ReleaseError: if the release file does not exist or is not valid.
    """
    name = release or os.environ.get(RELEASE_ENV) or DEFAULT_RELEASE
    file_name = f"{name}.json"
    releases_dir = os.environ.get(RELEASES_DIR_ENV)
    if releases_dir:
        path = Path(releases_dir) / file_name
        if not path.is_file():
            raise ReleaseError(
                f"Release file {path} does not exist: set {RELEASE_ENV} to a release in {releases_dir} "
                f"or add {file_name} there"
            )
        text = path.read_text(encoding="utf-8")
        source = str(path)
    else:
        packaged = resources.files("b2cal").joinpath("data", "releases", file_name)
        if not packaged.is_file():
            raise ReleaseError(
                f"basf2 release {name!r} is not packaged with b2cal: set {RELEASES_DIR_ENV} to a folder "
                f"that holds {file_name}"
            )
        text = packaged.read_text(encoding="utf-8")
        source = f"b2cal/data/releases/{file_name}"

    try:
        content = json.loads(text)
    except json.JSONDecodeError as error:
        raise ReleaseError(f"Release file {source} is not valid JSON: {error}") from None
    calibrations = content.get("calibrations") if isinstance(content, dict) else None
    if not isinstance(calibrations, list):
        raise ReleaseError(f"Release file {source} must be an object with a 'calibrations' list")
    for index, entry in enumerate(calibrations):
        if not isinstance(entry, dict) or not isinstance(entry.get("script"), str) or "name" not in entry:
            raise ReleaseError(
                f"Release file {source}: calibrations[{index}] needs at least 'name' and 'script'"
            )
    return Release(
        name=content.get("basf2_release", name),
        source=source,
        input_data_filters=content.get("input_data_filters", {}),
        calibrations=calibrations,
        check_error=content.get("check_error"),
    )


def check_scripts(release: Release, scripts: list[str] | None = None) -> list[str]:
    """Check the settings of the given scripts, or of all scripts, and return the problems found.

    Checks what ``CalibrationSettings`` of basf2 enforces when a script is imported (name length, data
    formats, input names, filters from the vocabulary, JSON ``expert_config``) and what
    ``b2caf-prompt-check`` adds: unique names, known dependencies and no dependency cycle.
    """
    problems: list[str] = []
    if scripts:
        entries = []
        for script in scripts:
            try:
                entries.append(release.find_script(script))
            except ReleaseError as error:
                problems.append(str(error))
    else:
        entries = list(release.calibrations)

    vocabulary = {value for values in release.input_data_filters.values() for value in values}
    names = Counter(entry["name"] for entry in release.calibrations)
    known_names = set(names)
    for entry in entries:
        prefix = f"{entry['script']}:"
        if release.check_error:
            problems.append(f"{prefix} {release.check_error}")
        if entry.get("check_error"):
            problems.append(f"{prefix} {entry['check_error']}")
        problems += [f"{prefix} {problem}" for problem in _entry_problems(entry, vocabulary, known_names)]
        if names[entry["name"]] > 1:
            problems.append(
                f"{prefix} calibration name {entry['name']!r} is used by {names[entry['name']]} scripts"
            )

    cycle = _find_dependency_cycle(release.calibrations)
    checked_names = {entry["name"] for entry in entries}
    if cycle and checked_names.intersection(cycle):
        problems.append("Circular dependency: " + " -> ".join(cycle))
    return problems


def _entry_problems(entry: dict[str, Any], vocabulary: set[str], known_names: set[str]) -> list[str]:
    problems: list[str] = []
    name = entry["name"]
    if not isinstance(name, str) or not name or len(name) > MAX_NAME_LENGTH:
        problems.append(f"name {name!r} must be a non-empty string of at most {MAX_NAME_LENGTH} characters")

    formats = entry.get("input_data_formats") or []
    if not formats:
        problems.append("input_data_formats is empty: give at least one of raw, cdst, mdst, udst")
    unknown_formats = sorted({str(value).lower() for value in formats} - ALLOWED_DATA_FORMATS)
    if unknown_formats:
        problems.append(
            f"input_data_formats has unknown formats {unknown_formats}: use raw, cdst, mdst, udst"
        )

    input_names = set(entry.get("input_data_names") or [])
    if not input_names:
        problems.append("input_data_names is empty: give at least one input name")
    filters = entry.get("input_data_filters") or {}
    if filters and set(filters) != input_names:
        problems.append(
            f"input_data_filters keys {sorted(filters)} differ from input_data_names {sorted(input_names)}"
        )
    for input_name, values in filters.items():
        for value in values:
            bare = value[len("NOT") :].lstrip() if value.startswith("NOT") else value
            if vocabulary and bare not in vocabulary:
                problems.append(f"input_data_filters[{input_name!r}] has unknown filter {value!r}")

    for dependency in entry.get("depends_on") or []:
        if dependency not in known_names:
            problems.append(f"depends_on names {dependency!r}, which no script of the release defines")
        if dependency == name:
            problems.append("depends_on names the calibration itself")

    expert_config = entry.get("expert_config", {})
    if not isinstance(expert_config, dict):
        problems.append(f"expert_config must be a JSON object, got {type(expert_config).__name__}")
    payloads = entry.get("produced_payloads", [])
    if not isinstance(payloads, list) or not all(
        isinstance(payload, str) and payload for payload in payloads
    ):
        problems.append(f"produced_payloads {payloads!r} must be a list of payload names")
    return problems


def _find_dependency_cycle(calibrations: list[dict[str, Any]]) -> list[str] | None:
    graph = {entry["name"]: list(entry.get("depends_on") or []) for entry in calibrations}
    finished: set[str] = set()
    path: list[str] = []

    def visit(name: str) -> list[str] | None:
        if name in path:
            return path[path.index(name) :] + [name]
        if name in finished or name not in graph:
            return None
        path.append(name)
        for dependency in graph[name]:
            cycle = visit(dependency)
            if cycle:
                return cycle
        path.pop()
        finished.add(name)
        return None

    for name in graph:
        cycle = visit(name)
        if cycle:
            return cycle
    return None
