"""Prompt calibration settings of a basf2 release, their validation and their dependency graph.

Each prompt calibration script of a basf2 release declares its settings, which
``b2caf-prompt-show --json`` prints. A release catalog is the list of those settings plus the
vocabulary of the input data filters. This module loads both shapes, rejects invalid settings with an
error that names the calibration and the value, and answers the graph questions the processing request
needs: the dependency closure of a selection, the topological levels and the split into the phase that
runs on raw data (before cDST production) and the phase that runs after it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

MAX_NAME_LENGTH = 64
INPUT_FORMATS = ("raw", "cdst", "mdst", "udst")
RAW_PHASE = "raw"
CDST_PHASE = "cdst"
NOT_PREFIX = "NOT "
FILTER_CATEGORIES = ("Magnet", "Beam Energy", "Run Type", "Data Tag", "Data Quality Tag")

_REQUIRED_KEYS = (
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


class CatalogError(ValueError):
    """Invalid calibration settings or an invalid selection of calibrations."""


@dataclass(frozen=True)
class CalibrationSettings:
    """The settings one prompt calibration script declares."""

    name: str
    expert_username: str
    subsystem: str
    description: str
    input_data_formats: tuple[str, ...]
    input_data_names: tuple[str, ...]
    input_data_filters: Mapping[str, tuple[str, ...]]
    depends_on: tuple[str, ...]
    expert_config: Mapping[str, Any]
    produced_payloads: tuple[str, ...]
    script: str = ""

    @property
    def phase(self) -> str:
        """``raw`` when the calibration reads raw data only, ``cdst`` when it needs processed data."""
        return RAW_PHASE if set(self.input_data_formats) <= {"raw"} else CDST_PHASE

    def to_dict(self) -> dict[str, Any]:
        """Return the settings in the JSON shape of ``b2caf-prompt-show --json``."""
        data: dict[str, Any] = {
            "name": self.name,
            "expert_username": self.expert_username,
            "subsystem": self.subsystem,
            "description": self.description,
            "input_data_formats": list(self.input_data_formats),
            "input_data_names": list(self.input_data_names),
            "input_data_filters": {key: list(values) for key, values in self.input_data_filters.items()},
            "depends_on": list(self.depends_on),
            "expert_config": dict(self.expert_config),
            "produced_payloads": list(self.produced_payloads),
        }
        if self.script:
            data["script"] = self.script
        return data


@dataclass
class Catalog:
    """The prompt calibrations of one basf2 release and the filter vocabulary they use."""

    release: str
    vocabulary: Mapping[str, tuple[str, ...]]
    calibrations: dict[str, CalibrationSettings] = field(default_factory=dict)

    def __contains__(self, name: object) -> bool:
        return name in self.calibrations

    def __getitem__(self, name: str) -> CalibrationSettings:
        try:
            return self.calibrations[name]
        except KeyError:
            raise CatalogError(
                f"calibration {name!r} is not in the catalog of {self.release}; "
                f"known calibrations: {', '.join(sorted(self.calibrations))}"
            ) from None

    def __len__(self) -> int:
        return len(self.calibrations)

    @property
    def names(self) -> list[str]:
        """The calibration names in catalog order."""
        return list(self.calibrations)

    def closure(self, selection: Iterable[str]) -> list[str]:
        """Return the selection plus everything it depends on, directly or not, in catalog order.

        :raises CatalogError: if a selected name is not in the catalog.
        """
        wanted: set[str] = set()
        stack = list(selection)
        while stack:
            name = stack.pop()
            if name in wanted:
                continue
            wanted.add(self[name].name)
            stack.extend(self.calibrations[name].depends_on)
        return [name for name in self.calibrations if name in wanted]

    def added_by_closure(self, selection: Iterable[str]) -> list[str]:
        """Return the dependencies that the closure adds to a selection."""
        chosen = set(selection)
        return [name for name in self.closure(chosen) if name not in chosen]

    def levels(self, selection: Iterable[str] | None = None) -> list[list[str]]:
        """Return the topological levels of a selection: level 0 has no dependency inside it.

        Dependencies outside the selection are ignored, so pass a closed selection (see
        :meth:`closure`) when every dependency must be honoured.
        """
        names = self.names if selection is None else [name for name in self.names if name in set(selection)]
        return topological_levels({name: self.calibrations[name].depends_on for name in names})

    def phases(self, selection: Iterable[str] | None = None) -> dict[str, list[str]]:
        """Split a selection into the raw phase and the cdst phase, each in dependency order."""
        ordered = [name for level in self.levels(selection) for name in level]
        return {
            RAW_PHASE: [name for name in ordered if self.calibrations[name].phase == RAW_PHASE],
            CDST_PHASE: [name for name in ordered if self.calibrations[name].phase == CDST_PHASE],
        }

    def dependents(self, name: str) -> list[str]:
        """Return the calibrations that depend directly on ``name``."""
        return [other for other, settings in self.calibrations.items() if name in settings.depends_on]

    def critical_chain(self, selection: Iterable[str] | None = None) -> list[str]:
        """Return one longest dependency chain of a selection, from its root to its end."""
        names = self.names if selection is None else [name for name in self.names if name in set(selection)]
        chosen = set(names)
        best: dict[str, list[str]] = {}
        for level in self.levels(names):
            for name in level:
                parents = [best[dep] for dep in self.calibrations[name].depends_on if dep in chosen]
                longest = max(parents, key=len, default=[])
                best[name] = [*longest, name]
        return max(best.values(), key=len, default=[])

    def to_dict(self) -> dict[str, Any]:
        """Return the catalog in the shape of a release catalog file."""
        return {
            "basf2_release": self.release,
            "input_data_filters": {key: list(values) for key, values in self.vocabulary.items()},
            "calibrations": [settings.to_dict() for settings in self.calibrations.values()],
        }


def topological_levels(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Group the nodes of a dependency graph into levels, keeping the input order inside a level.

    Edges to nodes outside ``graph`` are ignored.

    :raises CatalogError: naming the cycle when the graph has one.
    """
    deps = {name: [dep for dep in parents if dep in graph] for name, parents in graph.items()}
    level_of: dict[str, int] = {}
    remaining = list(deps)
    while remaining:
        progressed = False
        for name in list(remaining):
            if all(dep in level_of for dep in deps[name]):
                level_of[name] = 1 + max((level_of[dep] for dep in deps[name]), default=-1)
                remaining.remove(name)
                progressed = True
        if not progressed:
            cycle = find_cycle({name: deps[name] for name in remaining})
            raise CatalogError(
                f"dependency cycle {' -> '.join(cycle)}: remove one of these depends_on entries"
            )
    levels: list[list[str]] = [[] for _ in range(1 + max(level_of.values(), default=-1))]
    for name in deps:
        levels[level_of[name]].append(name)
    return levels


def find_cycle(graph: Mapping[str, Iterable[str]]) -> list[str]:
    """Return one cycle of ``graph`` as a list of names that starts and ends with the same name."""
    visiting: list[str] = []
    done: set[str] = set()

    def visit(name: str) -> list[str] | None:
        if name in visiting:
            return [*visiting[visiting.index(name) :], name]
        if name in done or name not in graph:
            return None
        visiting.append(name)
        for dep in graph[name]:
            cycle = visit(dep)
            if cycle:
                return cycle
        visiting.pop()
        done.add(name)
        return None

    for start in graph:
        cycle = visit(start)
        if cycle:
            return cycle
    return []


def parse_settings(data: Mapping[str, Any], vocabulary: Mapping[str, Iterable[str]]) -> CalibrationSettings:
    """Build and check one calibration's settings from its JSON form.

    :raises CatalogError: naming the calibration and the invalid value.
    """
    if not isinstance(data, Mapping):
        raise CatalogError(f"calibration settings must be a JSON object, got {type(data).__name__}")
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        raise CatalogError(f"calibration settings need a non-empty string 'name', got {name!r}")
    label = f"calibration {name!r}"
    missing = [key for key in _REQUIRED_KEYS if key not in data]
    if missing:
        raise CatalogError(f"{label} is missing the settings {', '.join(missing)}")
    if len(name) > MAX_NAME_LENGTH:
        raise CatalogError(
            f"{label} has a name of {len(name)} characters; names may have at most {MAX_NAME_LENGTH}"
        )

    formats = _string_list(data["input_data_formats"], label, "input_data_formats")
    unknown_formats = [value for value in formats if value not in INPUT_FORMATS]
    if unknown_formats or not formats:
        raise CatalogError(
            f"{label} has input_data_formats {formats!r}; use one or more of {', '.join(INPUT_FORMATS)}"
        )
    input_names = _string_list(data["input_data_names"], label, "input_data_names")
    if len(set(input_names)) != len(input_names):
        raise CatalogError(f"{label} lists an input name twice in input_data_names {input_names!r}")

    filters = _parse_filters(data["input_data_filters"], input_names, vocabulary, label)
    depends_on = _string_list(data["depends_on"], label, "depends_on")
    if name in depends_on:
        raise CatalogError(f"dependency cycle {name} -> {name}: {label} depends on itself")
    expert_config = data["expert_config"]
    if not isinstance(expert_config, Mapping):
        raise CatalogError(f"{label} has expert_config {expert_config!r}; it must be a JSON object")
    username = data["expert_username"]
    if not isinstance(username, str) or not username.strip() or any(ch.isspace() for ch in username):
        raise CatalogError(f"{label} has expert_username {username!r}; use a Jira username without spaces")

    return CalibrationSettings(
        name=name,
        expert_username=username,
        subsystem=str(data["subsystem"]),
        description=str(data["description"]),
        input_data_formats=tuple(formats),
        input_data_names=tuple(input_names),
        input_data_filters=filters,
        depends_on=tuple(depends_on),
        expert_config=dict(expert_config),
        produced_payloads=tuple(_string_list(data["produced_payloads"], label, "produced_payloads")),
        script=str(data.get("script", "")),
    )


def _string_list(value: Any, label: str, key: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise CatalogError(f"{label} has {key} {value!r}; it must be a list of strings")
    return list(value)


def _parse_filters(
    value: Any, input_names: list[str], vocabulary: Mapping[str, Iterable[str]], label: str
) -> dict[str, tuple[str, ...]]:
    if not isinstance(value, Mapping):
        raise CatalogError(f"{label} has input_data_filters {value!r}; it must be a JSON object")
    # An empty mapping means the script sets no filters at all; otherwise every input needs a list.
    if value and set(value) != set(input_names):
        raise CatalogError(
            f"{label} has input_data_filters for {sorted(value)!r} but input_data_names {input_names!r}; "
            "give one filter list per input name, with the same names"
        )
    filters: dict[str, tuple[str, ...]] = {}
    for input_name, items in value.items():
        filters[input_name] = tuple(check_filter_values(items, vocabulary, f"{label} input {input_name!r}"))
    return filters


def check_filter_values(values: Any, vocabulary: Mapping[str, Iterable[str]], label: str) -> list[str]:
    """Return a filter list after checking each value against the vocabulary.

    A value may start with "NOT " to negate it.

    :param label: what the list belongs to, for the error message.
    :raises CatalogError: naming the first value outside the vocabulary.
    """
    strings = _string_list(values, label, "filters")
    allowed = {item for items in vocabulary.values() for item in items}
    for item in strings:
        bare = item[len(NOT_PREFIX) :] if item.startswith(NOT_PREFIX) else item
        if bare not in allowed:
            raise CatalogError(
                f"{label} has the filter {item!r}, which is not in the filter vocabulary; use a value "
                f"of the categories {', '.join(vocabulary)}, optionally prefixed with {NOT_PREFIX!r}"
            )
    return strings


def parse_vocabulary(value: Any) -> dict[str, tuple[str, ...]]:
    """Check and return the filter vocabulary, one list of strings per category."""
    if not isinstance(value, Mapping) or not value:
        raise CatalogError(f"input_data_filters vocabulary {value!r} must be a non-empty JSON object")
    vocabulary: dict[str, tuple[str, ...]] = {}
    for category, items in value.items():
        vocabulary[str(category)] = tuple(_string_list(items, "the vocabulary", f"category {category!r}"))
    return vocabulary


def build_catalog(
    release: str, vocabulary: Mapping[str, Iterable[str]], settings: Iterable[Mapping[str, Any]]
) -> Catalog:
    """Check every calibration's settings and the graph they form, and return the catalog.

    :raises CatalogError: on the first invalid setting, duplicate name, unknown dependency or cycle.
    """
    if not isinstance(release, str) or not release.strip():
        raise CatalogError(f"basf2 release {release!r} must be a non-empty string such as 'release-11-00-00'")
    vocab = parse_vocabulary(dict(vocabulary))
    catalog = Catalog(release=release, vocabulary=vocab)
    for item in settings:
        parsed = parse_settings(item, vocab)
        if parsed.name in catalog.calibrations:
            raise CatalogError(
                f"calibration {parsed.name!r} appears twice in {release}; names must be unique"
            )
        catalog.calibrations[parsed.name] = parsed
    for parsed in catalog.calibrations.values():
        unknown = [dep for dep in parsed.depends_on if dep not in catalog.calibrations]
        if unknown:
            raise CatalogError(
                f"calibration {parsed.name!r} depends on {', '.join(map(repr, unknown))}, which "
                f"{'is' if len(unknown) == 1 else 'are'} not in {release}; "
                "fix the name or add the calibration"
            )
    topological_levels({name: s.depends_on for name, s in catalog.calibrations.items()})
    for parsed in catalog.calibrations.values():
        late = [dep for dep in parsed.depends_on if catalog.calibrations[dep].phase == CDST_PHASE]
        if parsed.phase == RAW_PHASE and late:
            raise CatalogError(
                f"calibration {parsed.name!r} reads raw data but depends on {', '.join(map(repr, late))}, "
                "which need cDST input and so run after cDST production; a raw-phase calibration can only "
                "depend on raw-phase calibrations"
            )
    return catalog


def load_release(data: Mapping[str, Any]) -> Catalog:
    """Build a catalog from a whole release document (``basf2_release``, filters, calibrations)."""
    if not isinstance(data, Mapping):
        raise CatalogError("a release catalog must be a JSON object with basf2_release and calibrations")
    for key in ("basf2_release", "input_data_filters", "calibrations"):
        if key not in data:
            raise CatalogError(f"the release catalog has no {key!r} key; add it")
    calibrations = data["calibrations"]
    if not isinstance(calibrations, list):
        raise CatalogError("the release catalog's 'calibrations' must be a list of settings objects")
    return build_catalog(data["basf2_release"], data["input_data_filters"], calibrations)


def load_release_file(path: str | Path) -> Catalog:
    """Read a release catalog JSON file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CatalogError(f"{path} is not valid JSON: {exc}") from exc
    return load_release(data)


def load_show_output(
    release: str, outputs: Iterable[str | Mapping[str, Any]], vocabulary: Mapping[str, Iterable[str]]
) -> Catalog:
    """Build a catalog from the ``b2caf-prompt-show --json`` output of each script of a release."""
    settings = []
    for output in outputs:
        if isinstance(output, str):
            try:
                output = json.loads(output)
            except json.JSONDecodeError as exc:
                raise CatalogError(f"b2caf-prompt-show output is not valid JSON: {exc}") from exc
        settings.append(output)
    return build_catalog(release, vocabulary, settings)


def packaged_releases() -> list[str]:
    """Return the names of the release catalogs shipped with the package."""
    folder = resources.files("b2cal") / "data" / "releases"
    return sorted(item.name.removesuffix(".json") for item in folder.iterdir() if item.name.endswith(".json"))


def load_packaged_release(release: str = "release-11-00-00") -> Catalog:
    """Load a release catalog shipped with the package."""
    path = resources.files("b2cal") / "data" / "releases" / f"{release}.json"
    if not path.is_file():
        raise CatalogError(
            f"no packaged catalog for {release!r}; packaged releases: {', '.join(packaged_releases())}"
        )
    return load_release(json.loads(path.read_text(encoding="utf-8")))
