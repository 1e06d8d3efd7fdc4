"""Release discovery: the basf2 releases a site has, their prompt calibration settings, and what changed.

The calibrations a site can run are defined by the basf2 releases installed there, so the catalog
follows the releases. Discovery at one site runs these commands over the site's transport
(:class:`b2cal.remote.Transport`: SSH, or local subprocesses):

1. the site's list command (the connection extra ``release_list_command``, an argument list such as
   ``["ls", "/cvmfs/belle.cern.ch/el9/releases"]``), which prints the installed releases. Every
   whitespace-separated word that matches ``release_pattern`` is a release; the rest is ignored.
2. for each release that is new at the site, failed before or came back: one shell script that sets
   the release up (the site's ``basf2_setup``), runs ``b2caf-prompt-check`` and, when the check
   passes, ``b2caf-prompt-show --json``, which lists the prompt scripts.
3. one more script that runs ``b2caf-prompt-show --script-name <script> --json`` for every script.

The scripts are sent on the standard input of the site's shell (``remote_shell -s``), never through
the login shell's command line, and every release and script name is checked before it is quoted
into them. :func:`plan_discovery` decides what to check from the states stored in the plugin database, and
:mod:`b2cal.db.inventory` records the outcome. This module imports no Airflow.
"""

from __future__ import annotations

import json
import logging
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from b2cal.catalog import Catalog, CatalogError, load_show_output
from b2cal.remote import RemoteCommandError, Transport, UnsafeValueError, check_name
from b2cal.reports import CatalogDiff
from b2cal.sites import SiteConfigError, SiteSettings
from b2cal.tickets import TicketError, TicketTree

log = logging.getLogger(__name__)

#: Release names as basf2 spells them: full releases, pre-releases and light releases.
DEFAULT_RELEASE_PATTERN = r"(?:pre)?release-\d{2}-\d{2}-\d{2}[a-z]?|light-\d{4}-[a-z]+"
#: Seconds that one discovery command may take. Each ``b2caf-prompt-show`` imports basf2, which
#: takes seconds, and a release has about 26 prompt scripts.
DEFAULT_RELEASE_TIMEOUT = 900.0
SCRIPT_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*\.py")
MARKER = "b2cal-discovery:"
#: The label that every release notice carries besides its own.
RELEASE_NOTICE_LABEL = "b2cal-release-notice"
#: The tail of a command's output that an error keeps.
OUTPUT_TAIL = 4000

CHECK_STAGE = "check"
SHOW_STAGE = "show"
IMPORT_STAGE = "import"
COMPARE_STAGE = "compare"
LIST_STAGE = "list"

#: The settings keys of a calibration, with the words a release diff uses for them.
SETTING_LABELS = {
    "input_data_formats": "input formats",
    "input_data_names": "inputs",
    "input_data_filters": "filters",
    "depends_on": "dependencies",
    "expert_username": "expert",
    "produced_payloads": "payloads",
    "expert_config": "expert_config",
    "subsystem": "subsystem",
    "description": "description",
    "script": "script",
}


class DiscoveryError(RuntimeError):
    """A failed discovery command: ``stage`` names the step, and ``output`` contains its last lines."""

    def __init__(self, stage: str, message: str, output: str = "") -> None:
        super().__init__(message)
        self.stage = stage
        self.output = output[-OUTPUT_TAIL:]


# ---------------------------------------------------------------------------------------------------------
# Settings


@dataclass(frozen=True)
class DiscoveryConfig:
    """The settings with which release discovery reaches one site.

    :param site: the site's settings; they give the basf2 set-up command, the environment and the shell.
    :param list_command: the command that prints the releases installed at the site.
    :param release_pattern: which words of the list command's output are release names.
    :param timeout: seconds that one command may take.
    """

    site: SiteSettings
    list_command: tuple[str, ...]
    release_pattern: re.Pattern[str]
    timeout: float = DEFAULT_RELEASE_TIMEOUT

    @property
    def shell_argv(self) -> list[str]:
        """The command that reads a discovery script on its standard input."""
        return [self.site.remote_shell, "-s"]


def parse_discovery_config(site: SiteSettings, extra: Mapping[str, Any]) -> DiscoveryConfig:
    """Read the discovery extras of a site connection.

    ``release_list_command`` (required) is the argument list of the command that prints the
    releases, ``release_pattern`` a regular expression that a whole word must match to count as a
    release, ``release_timeout`` the seconds one command may take.

    :raises SiteConfigError: naming the connection, the extra and the fix.
    """
    where = f"connection {site.conn_id!r}"
    command = extra.get("release_list_command")
    if command is None:
        raise SiteConfigError(
            f"{where} lacks the extra 'release_list_command': give the command that prints the basf2 "
            "releases installed at the site as a list of arguments, e.g. "
            '["ls", "/cvmfs/belle.cern.ch/el9/releases"]'
        )
    if isinstance(command, str) or not isinstance(command, list) or not command:
        raise SiteConfigError(
            f"{where}: release_list_command {command!r} must be a non-empty list of arguments, "
            'e.g. ["ls", "/cvmfs/belle.cern.ch/el9/releases"]'
        )
    for part in command:
        if not isinstance(part, str) or not part or any(ord(char) < 32 for char in part):
            raise SiteConfigError(
                f"{where}: release_list_command argument {part!r} must be a non-empty string without "
                "control characters"
            )
    pattern_text = extra.get("release_pattern", DEFAULT_RELEASE_PATTERN)
    try:
        pattern = re.compile(str(pattern_text))
    except re.error as exc:
        raise SiteConfigError(
            f"{where}: release_pattern {pattern_text!r} is not a valid regular expression ({exc})"
        ) from None
    timeout = extra.get("release_timeout", DEFAULT_RELEASE_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
        raise SiteConfigError(f"{where}: release_timeout {timeout!r} must be a positive number of seconds")
    return DiscoveryConfig(site, tuple(command), pattern, float(timeout))


# ---------------------------------------------------------------------------------------------------------
# Release names and the plan


def release_sort_key(name: str) -> tuple[tuple[int, ...], str]:
    """Return a key that sorts release names by the numbers in them, then by name.

    ``release-10-00-00`` sorts after ``release-09-02-01``, a pre-release just before its release, and
    light releases (``light-2403-persian``, numbered by year and month) after the full releases.
    """
    return tuple(int(part) for part in re.findall(r"\d+", name)), name


def sort_releases(names: Iterable[str]) -> list[str]:
    """Return release names ordered by version, oldest first."""
    return sorted(set(names), key=release_sort_key)


def parse_release_listing(output: str, pattern: re.Pattern[str]) -> list[str]:
    """Return the release names in the output of a site's list command, ordered by version.

    A word counts when the whole word matches ``pattern`` after a trailing ``/`` is removed, so the
    output of ``ls``, ``ls -F`` or a plain list of names all work.
    """
    found: set[str] = set()
    ignored = 0
    for word in output.split():
        name = word.rstrip("/")
        if pattern.fullmatch(name):
            found.add(name)
        else:
            ignored += 1
    if ignored:
        log.debug("The release listing had %d words that are not release names", ignored)
    return sort_releases(found)


@dataclass
class DiscoveryPlan:
    """The work of one discovery run at a site, decided from the listing and the stored states.

    :ivar probe: releases to check and read: new at the site, failed before, or listed again after
        they had disappeared.
    :ivar unchanged: releases that are available and still listed.
    :ivar gone: releases that the site no longer lists; they become unavailable.
    :ivar first_inventory: whether the plugin database knew no release of the site before.
    """

    site: str
    listed: list[str]
    probe: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    gone: list[str] = field(default_factory=list)
    first_inventory: bool = False


def plan_discovery(site: str, listed: Iterable[str], states: Mapping[str, str]) -> DiscoveryPlan:
    """Compare the releases a site lists with the states stored for it.

    :param states: release name -> ``available``, ``failed`` or ``unavailable``, as stored for the site.
    """
    names = sort_releases(listed)
    plan = DiscoveryPlan(site=site, listed=names, first_inventory=not states)
    for name in names:
        if states.get(name) == "available":
            plan.unchanged.append(name)
        else:
            plan.probe.append(name)
    listed_set = set(names)
    plan.gone = sort_releases(
        name for name, state in states.items() if name not in listed_set and state != "unavailable"
    )
    return plan


# ---------------------------------------------------------------------------------------------------------
# Scripts and their output


def _preamble(config: DiscoveryConfig, release: str) -> list[str]:
    """Return the lines that set up ``release``, export the site's environment and report the release."""
    lines = []
    setup = config.site.setup_command(release)
    if setup:
        lines += [
            f"{{ {setup}\n}} || {{",
            f'    echo "{MARKER} setup-failed $?"',
            "    exit 0",
            "}",
        ]
    for name, value in config.site.env.items():
        lines.append(f"export {name}={shlex.quote(value)}")
    lines.append(f'echo "{MARKER} release ${{BELLE2_RELEASE:-}}"')
    return lines


def build_check_script(config: DiscoveryConfig, release: str) -> str:
    """Return the script that sets ``release`` up, checks its prompt scripts and lists them."""
    check_name("release", release)
    lines = _preamble(config, release)
    lines += [
        f'echo "{MARKER} check-begin"',
        "b2caf-prompt-check 2>&1",
        "status=$?",
        f'echo "{MARKER} check-status $status"',
        '[ "$status" -eq 0 ] || exit 0',
        f'echo "{MARKER} scripts-begin"',
        "b2caf-prompt-show --json",
        f'echo "{MARKER} scripts-status $?"',
    ]
    return "\n".join(lines) + "\n"


def build_show_script(config: DiscoveryConfig, release: str, scripts: Sequence[str]) -> str:
    """Return the script that prints the settings of every prompt script of ``release`` as JSON."""
    check_name("release", release)
    lines = _preamble(config, release)
    for script in scripts:
        if not SCRIPT_NAME.fullmatch(script):
            raise UnsafeValueError(
                f"prompt script name {script!r} is invalid; expected a file name like caf_cdc.py"
            )
        quoted = shlex.quote(script)
        lines += [
            f"echo {shlex.quote(f'{MARKER} show-begin {script}')}",
            f"b2caf-prompt-show --script-name {quoted} --json",
            f'echo "{MARKER} show-status $?"',
        ]
    return "\n".join(lines) + "\n"


@dataclass
class _MarkedOutput:
    """Discovery output split at the marker lines."""

    #: Single markers: ``release`` (the set-up release) and ``setup-failed`` (its exit status).
    values: dict[str, str] = field(default_factory=dict)
    #: The lines between ``<name>-begin`` and ``<name>-status``, by name: ``check``, ``scripts``,
    #: ``show <script>``.
    sections: dict[str, list[str]] = field(default_factory=dict)
    #: The exit status that ended each section.
    statuses: dict[str, str] = field(default_factory=dict)


def _split_output(output: str) -> _MarkedOutput:
    marked = _MarkedOutput()
    current: str | None = None
    for line in output.splitlines():
        if not line.startswith(MARKER):
            if current is not None:
                marked.sections[current].append(line)
            continue
        word, _, rest = line[len(MARKER) :].strip().partition(" ")
        if word.endswith("-begin"):
            current = f"{word.removesuffix('-begin')} {rest}".strip()
            marked.sections[current] = []
        elif word.endswith("-status") and current is not None:
            marked.statuses[current] = rest.strip()
            current = None
        else:
            marked.values[word] = rest.strip()
    return marked


def _last_json(lines: Iterable[str]) -> Any:
    # Tools may log to stdout before their JSON; the JSON is the last line that parses.
    for line in reversed(list(lines)):
        text = line.strip()
        if text.startswith(("{", "[")):
            try:
                return json.loads(text)
            except json.JSONDecodeError:
                continue
    return None


def _check_release_line(values: Mapping[str, str], release: str, output: str) -> None:
    """Raise when the set-up failed or set up another release than ``release``."""
    if "setup-failed" in values:
        raise DiscoveryError(
            CHECK_STAGE,
            f"the basf2 set-up command of {release} failed with exit status {values['setup-failed']}; "
            "check the site's basf2_setup",
            output,
        )
    found = values.get("release", "").strip()
    if found != release:
        what = f"set up {found!r}" if found else "did not set BELLE2_RELEASE"
        raise DiscoveryError(
            CHECK_STAGE,
            f"the basf2 set-up command for {release} {what}; make the site's basf2_setup set up the "
            "release that its {release} placeholder names",
            output,
        )


def parse_check_output(release: str, output: str) -> list[str]:
    """Return the prompt scripts of a release from the check script's output.

    :raises DiscoveryError: when the set-up failed or set up another release, the check failed, or
        the script list is missing.
    """
    marked = _split_output(output)
    _check_release_line(marked.values, release, output)
    status = marked.statuses.get("check")
    check_lines = [line for line in marked.sections.get("check", []) if line.strip()]
    if status is None:
        raise DiscoveryError(CHECK_STAGE, f"b2caf-prompt-check of {release} printed no exit status", output)
    if status != "0":
        problems = [line for line in check_lines if "[INFO]" not in line]
        raise DiscoveryError(
            CHECK_STAGE,
            f"b2caf-prompt-check of {release} failed with exit status {status}: "
            + ("; ".join(problems[-10:]) or "no output"),
            "\n".join(check_lines),
        )
    scripts = _last_json(marked.sections.get("scripts", []))
    if marked.statuses.get("scripts") != "0" or not isinstance(scripts, list):
        raise DiscoveryError(
            SHOW_STAGE, f"b2caf-prompt-show --json of {release} did not list the prompt scripts", output
        )
    if not scripts or not all(isinstance(item, str) for item in scripts):
        raise DiscoveryError(SHOW_STAGE, f"{release} lists no prompt scripts: {scripts!r}", output)
    return [str(item) for item in scripts]


def parse_show_output(release: str, scripts: Sequence[str], output: str) -> list[dict[str, Any]]:
    """Return the settings of each prompt script, with its file name under ``script``.

    :raises DiscoveryError: naming the first script whose settings are missing or not a JSON object.
    """
    marked = _split_output(output)
    _check_release_line(marked.values, release, output)
    settings: list[dict[str, Any]] = []
    for script in scripts:
        lines = marked.sections.get(f"show {script}")
        status = marked.statuses.get(f"show {script}")
        data = _last_json(lines or [])
        if lines is None or not isinstance(data, dict):
            detail = "\n".join(lines or [])
            raise DiscoveryError(
                SHOW_STAGE,
                f"b2caf-prompt-show --script-name {script} --json of {release} printed no settings"
                + (f" (exit status {status})" if status else ""),
                detail or output,
            )
        settings.append({**data, "script": script})
    return settings


# ---------------------------------------------------------------------------------------------------------
# Commands at the site


@dataclass
class ReleaseProbe:
    """The result of checking one release at a site: its settings, or the stage that failed."""

    release: str
    settings: list[dict[str, Any]] = field(default_factory=list)
    stage: str | None = None
    error: str = ""
    output: str = ""

    @property
    def ok(self) -> bool:
        """Whether the check passed and every script's settings were read."""
        return self.stage is None

    def catalog(self, vocabulary: Mapping[str, Iterable[str]]) -> Catalog:
        """Build the release's catalog from the settings.

        :raises CatalogError: when a setting is invalid or the dependency graph is broken.
        """
        categories = {category: list(values) for category, values in vocabulary.items()}
        return load_show_output(self.release, self.settings, categories)


async def list_releases(transport: Transport, config: DiscoveryConfig) -> list[str]:
    """Run the site's list command and return the releases it prints, ordered by version.

    :raises DiscoveryError: when the command fails or prints no release name, so that a broken
        listing never marks every release of the site unavailable.
    """
    what = f"the release list command {shlex.join(config.list_command)!r} on {transport.description}"
    try:
        result = await transport.run(config.list_command, "", config.timeout)
    except TimeoutError as exc:
        raise DiscoveryError(LIST_STAGE, f"{what} timed out after {config.timeout:g} s: {exc}") from None
    output = result.stdout + result.stderr
    if result.exit_status != 0:
        status = "a signal" if result.exit_status is None else f"exit status {result.exit_status}"
        raise DiscoveryError(LIST_STAGE, f"{what} failed with {status}: {output.strip()[-500:]}", output)
    releases = parse_release_listing(result.stdout, config.release_pattern)
    if not releases:
        raise DiscoveryError(
            LIST_STAGE,
            f"{what} printed no name that matches release_pattern {config.release_pattern.pattern!r}; "
            "check the command and the pattern (is the software area mounted?)",
            output,
        )
    unsafe = []
    for name in releases:
        try:
            check_name("release", name)
        except UnsafeValueError:
            unsafe.append(name)
    if unsafe:
        raise DiscoveryError(
            LIST_STAGE,
            f"{what} printed release names with unsafe characters {unsafe!r}; tighten release_pattern",
        )
    return releases


async def probe_release(transport: Transport, config: DiscoveryConfig, release: str) -> ReleaseProbe:
    """Check one release at the site and read the settings of its prompt scripts.

    Failures of the release (set-up, check, settings, a command that timed out) come back in the
    probe. A failure to reach the site raises, because it does not concern the release.

    :raises RemoteCommandError: when the site's shell cannot be started.
    """
    try:
        result = await transport.run(config.shell_argv, build_check_script(config, release), config.timeout)
        _require_shell(result.exit_status, result.stderr, transport, release)
        scripts = parse_check_output(release, result.stdout + _stderr_note(result.stderr))
        result = await transport.run(
            config.shell_argv, build_show_script(config, release, scripts), config.timeout
        )
        _require_shell(result.exit_status, result.stderr, transport, release)
        settings = parse_show_output(release, scripts, result.stdout)
    except DiscoveryError as exc:
        log.warning("Release %s at %s failed its %s: %s", release, config.site.name, exc.stage, exc)
        return ReleaseProbe(release, stage=exc.stage, error=str(exc), output=exc.output)
    except UnsafeValueError as exc:
        log.warning("Release %s at %s listed an unsafe script name: %s", release, config.site.name, exc)
        return ReleaseProbe(release, stage=SHOW_STAGE, error=str(exc))
    except TimeoutError as exc:
        # One slow release must not stop the others; it is checked again on the next run.
        log.warning("Release %s at %s: a discovery command timed out: %s", release, config.site.name, exc)
        return ReleaseProbe(
            release,
            stage=CHECK_STAGE,
            error=f"a discovery command for {release} timed out after {config.timeout:g} s; "
            "raise the site's release_timeout if the release is just slow to set up",
        )
    log.info("Release %s at %s: %d prompt scripts read", release, config.site.name, len(settings))
    return ReleaseProbe(release, settings=settings)


def _require_shell(status: int | None, stderr: str, transport: Transport, release: str) -> None:
    # The scripts end with exit 0 whatever the tools did, so another status means the shell itself failed.
    if status != 0:
        detail = stderr.strip()[-500:] or "no output"
        raise RemoteCommandError(
            f"the discovery script for {release} on {transport.description} ended with exit status "
            f"{status}: {detail}; check the site's remote_shell"
        )


def _stderr_note(stderr: str) -> str:
    return f"\n{stderr}" if stderr.strip() else ""


def catalog_from_probe(
    probe: ReleaseProbe, vocabulary: Mapping[str, Iterable[str]]
) -> Catalog | ReleaseProbe:
    """Return the probe's catalog, or the probe marked as failed at the import when it is invalid."""
    try:
        return probe.catalog(vocabulary)
    except CatalogError as exc:
        return ReleaseProbe(
            probe.release, stage=IMPORT_STAGE, error=f"the settings of {probe.release} are invalid: {exc}"
        )


# ---------------------------------------------------------------------------------------------------------
# Release diff


def previous_release(release: str, candidates: Iterable[str]) -> str | None:
    """Return the newest release of ``candidates`` older than ``release``.

    When none is older, the newest other release is returned, and ``None`` when there is no other.
    """
    others = [name for name in sort_releases(candidates) if name != release]
    older = [name for name in others if release_sort_key(name) < release_sort_key(release)]
    if older:
        return older[-1]
    return others[-1] if others else None


def calibrations_differ(diff: CatalogDiff) -> bool:
    """Return whether two catalogs define different calibrations or settings; the vocabulary is ignored."""
    return bool(diff.added or diff.removed or diff.changed)


def describe_release_diff(diff: CatalogDiff) -> list[str]:
    """Return one line per change from ``diff.old_release`` to ``diff.new_release``, for people to read.

    Lines name the calibration and the setting, e.g. ``CDC badwire: dependencies: added 'CDC dedx'``.
    """
    lines = [f"added calibration {name!r}" for name in diff.added]
    lines += [f"removed calibration {name!r}" for name in diff.removed]
    for name, changes in diff.changed.items():
        for change in changes:
            label = SETTING_LABELS.get(change.key, change.key)
            lines.append(f"{name}: {label}: {_describe_change(change.old, change.new)}")
    for category, values in diff.vocabulary_added.items():
        lines.append(f"filter vocabulary {category}: added {', '.join(map(repr, values))}")
    for category, values in diff.vocabulary_removed.items():
        lines.append(f"filter vocabulary {category}: removed {', '.join(map(repr, values))}")
    return lines


def _describe_change(old: Any, new: Any) -> str:
    if isinstance(old, list) and isinstance(new, list):
        added = [item for item in new if item not in old]
        removed = [item for item in old if item not in new]
        parts = []
        if added:
            parts.append(f"added {', '.join(map(repr, added))}")
        if removed:
            parts.append(f"removed {', '.join(map(repr, removed))}")
        return "; ".join(parts) or f"reordered to {new!r}"
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        parts = []
        for key in sorted(set(old) | set(new)):
            if key not in old:
                parts.append(f"{key} added ({new[key]!r})")
            elif key not in new:
                parts.append(f"{key} removed (was {old[key]!r})")
            elif old[key] != new[key]:
                parts.append(f"{key} {_describe_change(old[key], new[key])}")
        return "; ".join(parts)
    return f"{old!r} -> {new!r}"


def release_diff_dict(diff: CatalogDiff) -> dict[str, Any]:
    """Return a release diff as JSON-ready data: the changes by kind and the readable lines."""
    return {
        "old_release": diff.old_release,
        "new_release": diff.new_release,
        "added": list(diff.added),
        "removed": list(diff.removed),
        "changed": {
            name: [
                {
                    "key": change.key,
                    "label": SETTING_LABELS.get(change.key, change.key),
                    "old": change.old,
                    "new": change.new,
                }
                for change in changes
            ]
            for name, changes in diff.changed.items()
        },
        "vocabulary_added": dict(diff.vocabulary_added),
        "vocabulary_removed": dict(diff.vocabulary_removed),
        "lines": describe_release_diff(diff),
    }


# ---------------------------------------------------------------------------------------------------------
# The notice to the manager


def notice_label(release: str) -> str:
    """Return the Jira label of the ticket that announces ``release``."""
    return "b2cal-release-notice-" + re.sub(r"[^A-Za-z0-9_.-]+", "-", release).strip("-")


@dataclass(frozen=True)
class ReleaseNotice:
    """The ticket that announces a new release to the calibration manager."""

    release: str
    site: str
    label: str
    summary: str
    description: str


def build_release_notice(
    release: str, site: str, catalog: Catalog, diff: CatalogDiff | None
) -> ReleaseNotice:
    """Write the ticket that announces a release available at ``site``, with its diff to an earlier one."""
    lines = [
        f"basf2 release *{release}* is available at site {site}. Its check passed and its "
        f"{len(catalog)} prompt calibrations are in the catalog, so requests at {site} can use it.",
        "",
    ]
    if diff is None:
        lines.append("No earlier release is in the catalog to compare with.")
    else:
        changes = describe_release_diff(diff)
        if changes:
            lines.append(f"Changes from {diff.old_release}:")
            lines += [f"* {line}" for line in changes]
        else:
            lines.append(f"The calibrations and their settings are the same as in {diff.old_release}.")
    return ReleaseNotice(
        release=release,
        site=site,
        label=notice_label(release),
        summary=f"New basf2 release {release} at {site}: {len(catalog)} prompt calibrations",
        description="\n".join(lines),
    )


def send_release_notice(
    tree: TicketTree, notice: ReleaseNotice, *, project: str, issue_type: str, assignee: str | None
) -> str:
    """Create the ticket of ``notice`` once and return its key.

    The ticket is found by its label before one is created, so a retry creates no second ticket. When
    the release was announced for another site before, that ticket gets a comment naming this site.

    :param assignee: the calibration manager's Jira username; the ticket stays unassigned without one.
    :raises TicketError: when Jira rejects the ticket or its response is lost. The next attempt
        finds the ticket by its label if it was created.
    """
    found = tree.find(notice.label).get(notice.label)
    if found is not None:
        key = str(found["key"])
        summary = str((found.get("fields") or {}).get("summary") or "")
        # A ticket created for this site by an attempt that failed before recording it needs no comment.
        if f" at {notice.site}:" not in summary:
            tree.comment(key, f"basf2 release {notice.release} is now also available at site {notice.site}.")
        log.info("Release %s at %s: the manager's ticket %s exists", notice.release, notice.site, key)
        return key
    fields: dict[str, Any] = {
        "project": {"key": project},
        "issuetype": {"name": issue_type},
        "summary": notice.summary,
        "description": tree.api.text(notice.description),
        "labels": [notice.label, RELEASE_NOTICE_LABEL],
    }
    reference = tree.api.user_reference(assignee) if assignee else None
    if reference is not None:
        fields["assignee"] = reference
    result = tree.api.create_issues([{"fields": fields}])
    if 0 in result.created:
        key = result.created[0]["key"]
        log.info("Release %s at %s: created the manager's ticket %s", notice.release, notice.site, key)
        return key
    error = result.ambiguous or result.rejected.get(0)
    raise TicketError(
        f"Jira did not create the ticket that announces {notice.release} ({error}); the next attempt "
        f"looks for the label {notice.label} first, so it creates no second ticket"
    )
