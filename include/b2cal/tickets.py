"""The Jira ticket tree of a processing request: what to create, and creating it exactly once.

Every ticket carries a deterministic label derived from the request and the calibration, so that a
retried task finds the tickets it already created instead of creating them again. A "Blocks" link
``{"inwardIssue": A, "outwardIssue": B}`` means that A blocks B, so each dependency is the inward
issue and the calibration that waits for it is the outward issue.

Links are sent inside the create requests (``update.issuelinks``) instead of one call per link. A
link needs both of its tickets, so the tickets go out in rounds: two tickets that depend on each
other never share a round, and the later one carries the link. The rounds are a colouring of the
dependency graph, so a tree of any depth needs as many bulk calls as colours (two for a forest),
each of at most :data:`BULK_LIMIT` tickets.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from string import Template
from typing import Any

from b2cal.catalog import Catalog
from b2cal.jira_api import SERVER, JiraApi, JiraApiError, RestClient

log = logging.getLogger(__name__)

BULK_LIMIT = 50
DONE = "done"
#: The status categories a reopened ticket moves to, in the order they are tried.
REOPEN_CATEGORIES = ("new", "indeterminate")
LINK_TYPE = "Blocks"
#: Fields read when tickets are looked up by label: enough to reuse them and check their links.
FIND_FIELDS = ("labels", "status", "assignee", "issuelinks", "summary")
#: Attempts at creating one ticket before the tree is given up.
CREATE_ATTEMPTS = 3

DEFAULT_DESCRIPTION = Template(
    """Calibration *$name* of processing request $request_id ($kind, $release, site $site).

Bucket (run range): $bucket
Expert: $expert
Phase: $phase
Inputs: $inputs
Depends on: $depends_on
Blocks: $blocks
Produced payloads: $payloads
Staging global tag: $staging_tag
Job folder: $job_folder
Job log: $log_location
Bucket page: $bucket_url

What to check: the job finished, every produced payload is in the staging global tag with an IoV that
starts at the bucket's first run, and the validation plots look as expected. Close this ticket to
release the calibrations it blocks.$extra"""
)

DEFAULT_PARENT_DESCRIPTION = Template(
    """Processing request $request_id ($kind, $release, site $site) for the bucket $bucket.

It has $count calibration tickets. Staging global tag: $staging_tag
Bucket page: $bucket_url"""
)

#: Placeholders that a ticket description template may use.
TICKET_PLACEHOLDERS = frozenset(
    {
        "name",
        "request_id",
        "kind",
        "release",
        "site",
        "bucket",
        "expert",
        "subsystem",
        "phase",
        "inputs",
        "depends_on",
        "blocks",
        "payloads",
        "staging_tag",
        "job_folder",
        "log_location",
        "bucket_url",
        "extra",
    }
)
#: Placeholders that a parent ticket description template may use.
PARENT_PLACEHOLDERS = frozenset(
    {"request_id", "kind", "release", "site", "bucket", "staging_tag", "bucket_url", "count"}
)


class TicketError(RuntimeError):
    """Jira rejected or could not carry out a ticket operation."""


def request_label(request_uid: str) -> str:
    """Return the label that every calibration ticket of a request carries."""
    return f"b2cal-{_slug(request_uid)}"


def ticket_label(request_uid: str, calibration: str) -> str:
    """Return the deterministic label of one calibration's ticket in a request."""
    digest = hashlib.sha1(f"{request_uid}\0{calibration}".encode()).hexdigest()[:12]
    return f"b2cal-{_slug(request_uid)}-{digest}"


def parent_label(request_uid: str) -> str:
    """Return the label of a request's parent ticket."""
    return f"b2cal-{_slug(request_uid)}-parent"


def _slug(value: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", value).strip("-")
    if not slug:
        raise ValueError(f"request id {value!r} gives an empty Jira label; use letters or digits")
    return slug


def check_template(template: Template | str, allowed: Iterable[str], what: str) -> Template:
    """Return ``template`` as a :class:`~string.Template`; raise ``ValueError`` on unknown placeholders."""
    result = template if isinstance(template, Template) else Template(template)
    if not result.is_valid():
        raise ValueError(f"{what} is not a valid template: write a literal $ as $$")
    unknown = sorted(set(result.get_identifiers()) - set(allowed))
    if unknown:
        raise ValueError(
            f"{what} uses unknown placeholders {unknown}; available: {', '.join(sorted(allowed))}"
        )
    return result


@dataclass(frozen=True)
class TicketSpec:
    """One ticket to create: its calibration, label, assignee and fields."""

    calibration: str
    label: str
    assignee: str
    fields: Mapping[str, Any]
    blocked_by: tuple[str, ...] = ()


@dataclass(frozen=True)
class ParentSpec:
    """The parent ticket of a request (an epic or a parent issue) and how children point at it.

    :param link_field: ``parent`` (Cloud epics, and sub-tasks everywhere) or the id of the Epic
        Link custom field of a Data Center site, e.g. ``customfield_10008``
    """

    label: str
    fields: Mapping[str, Any]
    link_field: str = "parent"


@dataclass
class TicketPlan:
    """The tickets and "Blocks" links of one processing request."""

    request_uid: str
    project: str
    tickets: list[TicketSpec] = field(default_factory=list)
    parent: ParentSpec | None = None

    @property
    def label(self) -> str:
        """The label shared by every calibration ticket of the request."""
        return request_label(self.request_uid)

    def links(self) -> list[tuple[str, str]]:
        """Return ``(blocking, blocked)`` calibration pairs, one per dependency."""
        return [(dep, spec.calibration) for spec in self.tickets for dep in spec.blocked_by]

    def create_rounds(self, missing: Iterable[str]) -> list[list[str]]:
        """Split the calibrations to create into rounds in which no two depend on each other.

        Greedy colouring, most-connected calibration first: each calibration takes the first round
        that none of its missing neighbours took.
        """
        wanted = set(missing)
        neighbours: dict[str, set[str]] = {name: set() for name in wanted}
        for blocking, blocked in self.links():
            if blocking in wanted and blocked in wanted:
                neighbours[blocking].add(blocked)
                neighbours[blocked].add(blocking)
        position = {spec.calibration: index for index, spec in enumerate(self.tickets)}
        order = sorted(wanted, key=lambda name: (-len(neighbours[name]), position.get(name, 0)))
        colour: dict[str, int] = {}
        for name in order:
            taken = {colour[other] for other in neighbours[name] if other in colour}
            colour[name] = next(number for number in range(len(wanted) + 1) if number not in taken)
        rounds: list[list[str]] = [[] for _ in range(max(colour.values(), default=-1) + 1)]
        for spec in self.tickets:
            if spec.calibration in colour:
                rounds[colour[spec.calibration]].append(spec.calibration)
        return rounds


def plan_tickets(
    catalog: Catalog,
    selection: Iterable[str],
    *,
    request_uid: str,
    project: str,
    kind: str,
    site: str,
    bucket: str,
    staging_tag: str,
    issue_type: str = "Task",
    description: Template | str = DEFAULT_DESCRIPTION,
    extra: Mapping[str, str] | None = None,
    job_folders: Mapping[str, str] | None = None,
    log_locations: Mapping[str, str] | None = None,
    bucket_url: str | None = None,
    components: bool = False,
    parent_issue_type: str | None = None,
    parent_link_field: str = "parent",
    parent_description: Template | str = DEFAULT_PARENT_DESCRIPTION,
) -> TicketPlan:
    """Plan one ticket per selected calibration, blocked by the tickets of its dependencies.

    :param description: the description template of a calibration ticket; see
        :data:`TICKET_PLACEHOLDERS` for the placeholders it may use
    :param extra: per-calibration text appended to the description, such as the input selection
    :param job_folders: the folder each calibration's job runs in
    :param log_locations: where each calibration's job log is
    :param bucket_url: the web page of the request, linked from every ticket
    :param components: whether each ticket gets its calibration's subsystem as Jira component;
        the components must exist in the project
    :param parent_issue_type: issue type of the request's parent ticket (``Epic``, or e.g. ``Task``
        when the calibration tickets are sub-tasks); ``None`` plans no parent ticket
    :param parent_link_field: the field through which a ticket names its parent
    :raises ValueError: if a template uses a placeholder that does not exist
    """
    template = check_template(description, TICKET_PLACEHOLDERS, "the ticket description template")
    chosen = catalog.closure(selection)
    plan = TicketPlan(request_uid=request_uid, project=project)
    for name in chosen:
        settings = catalog[name]
        deps = tuple(dep for dep in settings.depends_on if dep in chosen)
        blocks = [other for other in chosen if name in catalog[other].depends_on]
        text = template.safe_substitute(
            name=name,
            request_id=request_uid,
            kind=kind,
            release=catalog.release,
            site=site,
            bucket=bucket,
            expert=settings.expert_username,
            subsystem=settings.subsystem,
            phase=settings.phase,
            inputs=", ".join(settings.input_data_names) or "none",
            depends_on=", ".join(deps) or "nothing",
            blocks=", ".join(blocks) or "nothing",
            payloads=", ".join(settings.produced_payloads) or "none declared",
            staging_tag=staging_tag,
            job_folder=(job_folders or {}).get(name, "not known yet"),
            log_location=(log_locations or {}).get(name, "not known yet"),
            bucket_url=bucket_url or "not configured",
            extra=f"\n\n{extra[name]}" if extra and name in extra else "",
        )
        label = ticket_label(request_uid, name)
        fields: dict[str, Any] = {
            "project": {"key": project},
            "issuetype": {"name": issue_type},
            "summary": f"[{request_uid}] {name}"[:255],
            "description": text,
            "labels": [request_label(request_uid), label, f"subsystem-{_slug(settings.subsystem)}"],
        }
        if components:
            fields["components"] = [{"name": settings.subsystem}]
        plan.tickets.append(
            TicketSpec(
                calibration=name,
                label=label,
                assignee=settings.expert_username,
                fields=fields,
                blocked_by=deps,
            )
        )
    if parent_issue_type:
        parent_template = check_template(
            parent_description, PARENT_PLACEHOLDERS, "the parent description template"
        )
        plan.parent = ParentSpec(
            label=parent_label(request_uid),
            link_field=parent_link_field,
            fields={
                "project": {"key": project},
                "issuetype": {"name": parent_issue_type},
                "summary": f"[{request_uid}] Calibration of bucket {bucket}"[:255],
                "description": parent_template.safe_substitute(
                    request_id=request_uid,
                    kind=kind,
                    release=catalog.release,
                    site=site,
                    bucket=bucket,
                    staging_tag=staging_tag,
                    bucket_url=bucket_url or "not configured",
                    count=len(chosen),
                ),
                "labels": [parent_label(request_uid)],
            },
        )
    return plan


@dataclass
class TreeResult:
    """What :meth:`TicketTree.ensure_tree` found and created."""

    keys: dict[str, str]
    parent_key: str | None = None
    created: list[str] = field(default_factory=list)
    links_created: int = 0
    duplicates_closed: list[str] = field(default_factory=list)


class TicketTree:
    """Create, find, follow and close the tickets of a plan through a Jira client.

    :param client: an ``atlassian.Jira`` client, e.g. from ``JiraHook.get_conn()``
    :param mode: ``server`` (Data Center, REST v2) or ``cloud`` (REST v3)
    :param settle_seconds: how long to keep searching for a ticket whose create call failed
        ambiguously before creating it again; Cloud search lags behind creates, so it defaults to
        30 s there and to 0 (one search) on Server
    :param settle_interval: seconds between two of those searches
    :param api: a ready :class:`~b2cal.jira_api.JiraApi`; built from the other arguments when omitted
    """

    def __init__(
        self,
        client: RestClient | None = None,
        *,
        mode: str = SERVER,
        account_ids: Mapping[str, str] | None = None,
        account_email_domain: str | None = None,
        settle_seconds: float | None = None,
        settle_interval: float = 2.0,
        api: JiraApi | None = None,
    ) -> None:
        if api is None:
            if client is None:
                raise ValueError("TicketTree needs a Jira client or a JiraApi")
            api = JiraApi(
                client, mode=mode, account_ids=account_ids, account_email_domain=account_email_domain
            )
        self.api = api
        if settle_seconds is None:
            # Cloud search lags behind creates; Server search does not.
            settle_seconds = 0.0 if api.mode == SERVER else 30.0
        self.settle_seconds = settle_seconds
        self.settle_interval = settle_interval

    @property
    def mode(self) -> str:
        """The Jira deployment: ``server`` or ``cloud``."""
        return self.api.mode

    # Reading

    def search(self, jql: str, fields: str | Sequence[str] = "status") -> list[dict[str, Any]]:
        """Return every issue that ``jql`` matches, following the pages."""
        names = [part.strip() for part in fields.split(",")] if isinstance(fields, str) else list(fields)
        try:
            return self.api.search(jql, names)
        except JiraApiError as exc:
            raise TicketError(f"Jira search {jql!r} failed: {exc}") from exc

    def find(self, label: str) -> dict[str, dict[str, Any]]:
        """Return the tickets that carry ``label``, keyed by each of their labels.

        When several tickets carry the same label, the one with the lowest key is returned.
        """
        found: dict[str, dict[str, Any]] = {}
        for label_of, issues in self._by_label(
            self.search(f'labels = "{label}" ORDER BY key', FIND_FIELDS)
        ).items():
            found[label_of] = issues[0]
        return found

    def categories(self, keys: Iterable[str]) -> dict[str, str]:
        """Return the status category key (``new``, ``indeterminate``, ``done``) of each ticket.

        Tickets that do not exist are left out of the result.
        """
        wanted = sorted(set(keys))
        if not wanted:
            return {}
        try:
            issues = self.api.search(f"key in ({', '.join(wanted)})", ["status"])
        except JiraApiError as exc:
            missing = set(self.api.missing_keys(exc))
            remaining = [key for key in wanted if key not in missing]
            if not missing or not remaining:
                if missing:
                    return {}
                raise TicketError(f"Jira search for the tickets {wanted} failed: {exc}") from exc
            log.warning("Tickets %s do not exist in Jira; reading the others", sorted(missing))
            issues = self.api.search(f"key in ({', '.join(remaining)})", ["status"])
        return {issue["key"]: issue["fields"]["status"]["statusCategory"]["key"] for issue in issues}

    # Changing

    def transition_to(self, key: str, category: str = DONE) -> bool:
        """Move a ticket to a status of ``category``; return ``False`` when it already is there.

        The transition is chosen by its target status category, because transition ids and status
        names differ between workflows.
        """
        current = self.categories([key]).get(key)
        if current == category:
            return False
        transitions = self.api.transitions(key)
        for transition in transitions:
            target = transition.get("to", {}).get("statusCategory", {}).get("key")
            if target == category:
                self.api.transition(key, transition["id"])
                log.info("Moved %s to %r through transition %s", key, category, transition["id"])
                return True
        names = [transition.get("name") for transition in transitions]
        raise TicketError(
            f"ticket {key} has no transition to status category {category!r} (available: {names}); "
            "check the project's workflow"
        )

    def reopen(self, key: str) -> bool:
        """Move a done ticket back to a status of category ``new``, or else ``indeterminate``.

        :return: ``False`` when the ticket was not done.
        :raises TicketError: when the workflow offers no transition to either category.
        """
        if self.categories([key]).get(key) != DONE:
            return False
        errors = []
        for category in REOPEN_CATEGORIES:
            try:
                return self.transition_to(key, category)
            except TicketError as exc:
                errors.append(str(exc))
        raise TicketError(f"ticket {key} could not be reopened: {'; '.join(errors)}")

    def comment(self, key: str, text: str) -> None:
        """Add a comment to a ticket."""
        self.api.add_comment(key, text)

    # Creating

    def ensure(
        self,
        plan: TicketPlan,
        *,
        known: Mapping[str, str] | None = None,
        on_created: Callable[[str, str], None] | None = None,
        first_attempt: bool = False,
    ) -> dict[str, str]:
        """Create the missing tickets and links of ``plan`` and return the key of each calibration.

        See :meth:`ensure_tree`.
        """
        return self.ensure_tree(plan, known=known, on_created=on_created, first_attempt=first_attempt).keys

    def ensure_tree(
        self,
        plan: TicketPlan,
        *,
        known: Mapping[str, str] | None = None,
        on_created: Callable[[str, str], None] | None = None,
        first_attempt: bool = False,
    ) -> TreeResult:
        """Create the missing parent, tickets and links of ``plan``, each exactly once.

        Tickets found by their label are reused. After a create call that failed ambiguously
        (timeout, dropped connection, 5xx) the label search runs again, for up to
        ``settle_seconds``, before anything is created again, so a create whose response was lost
        does not lead to a second ticket. A label that several tickets carry keeps the lowest key;
        the others are closed with a comment.

        :param known: ticket keys recorded by an earlier attempt, by calibration; they are trusted
            even when a lagging Cloud search does not return them yet
        :param on_created: called with ``(calibration, key)`` right after each ticket is created,
            so that the caller can record it before anything else can fail
        :param first_attempt: the caller's own records show that no earlier attempt sent a create
            request for this plan, so the search for existing tickets is skipped. Only a caller
            that writes such a record before its first create request may pass ``True``.
        :raises TicketError: when a ticket cannot be created
        """
        result = TreeResult(keys={})
        found: dict[str, dict[str, Any]] = {}
        if not (first_attempt and not known):
            labels = [plan.label] + ([plan.parent.label] if plan.parent else [])
            issues = self.search(f"labels in ({_quoted(labels)}) ORDER BY key", FIND_FIELDS)
            by_label = self._by_label(issues)
            unique = {spec.label for spec in plan.tickets} | ({plan.parent.label} if plan.parent else set())
            result.duplicates_closed = self._close_duplicates(
                {label: group for label, group in by_label.items() if label in unique}
            )
            found = {label: group[0] for label, group in by_label.items()}
        linked = _blocks_links(found.values())

        keys: dict[str, str] = {}
        for spec in plan.tickets:
            if spec.label in found:
                keys[spec.calibration] = found[spec.label]["key"]
            elif known and spec.calibration in known:
                keys[spec.calibration] = known[spec.calibration]
        if plan.parent is not None:
            result.parent_key = self._ensure_parent(plan.parent, found)

        missing = [spec.calibration for spec in plan.tickets if spec.calibration not in keys]
        specs = {spec.calibration: spec for spec in plan.tickets}
        for round_names in plan.create_rounds(missing):
            for start in range(0, len(round_names), BULK_LIMIT):
                batch = [specs[name] for name in round_names[start : start + BULK_LIMIT]]
                updates = [self._update(plan, spec, keys, linked, result.parent_key) for spec in batch]
                created = self._create(batch, updates, linked)
                for spec in batch:
                    keys[spec.calibration] = created[spec.calibration]
                    result.created.append(spec.calibration)
                    if on_created is not None:
                        on_created(spec.calibration, created[spec.calibration])

        for blocking, blocked in plan.links():
            pair = (keys[blocking], keys[blocked])
            if pair not in linked:
                self.api.link(*pair, LINK_TYPE)
                linked.add(pair)
                result.links_created += 1
        result.keys = {spec.calibration: keys[spec.calibration] for spec in plan.tickets}
        log.info(
            "Ticket tree of request %s: %d tickets, %d created, %d separate link calls, parent %s",
            plan.request_uid,
            len(result.keys),
            len(result.created),
            result.links_created,
            result.parent_key or "-",
        )
        return result

    def _ensure_parent(self, parent: ParentSpec, found: Mapping[str, dict[str, Any]]) -> str:
        if parent.label in found:
            return str(found[parent.label]["key"])
        update = {"fields": self._fields(parent.fields, None)}
        spec = TicketSpec(calibration="(parent)", label=parent.label, assignee="", fields=parent.fields)
        return self._create([spec], [update], set())[spec.calibration]

    def _fields(self, fields: Mapping[str, Any], assignee: str | None) -> dict[str, Any]:
        result = dict(fields)
        if isinstance(result.get("description"), str):
            result["description"] = self.api.text(result["description"])
        reference = self.api.user_reference(assignee) if assignee else None
        if reference is not None:
            result["assignee"] = reference
        elif assignee:
            log.warning("Expert %r has no Jira account id; the ticket stays unassigned", assignee)
        return result

    def _update(
        self,
        plan: TicketPlan,
        spec: TicketSpec,
        keys: Mapping[str, str],
        linked: set[tuple[str, str]],
        parent_key: str | None,
    ) -> dict[str, Any]:
        fields = self._fields(spec.fields, spec.assignee)
        if plan.parent is not None and parent_key:
            link_field = plan.parent.link_field
            fields[link_field] = {"key": parent_key} if link_field == "parent" else parent_key
        operations = []
        for blocking, blocked in plan.links():
            if blocked == spec.calibration and blocking in keys:
                operations.append(
                    {"add": {"type": {"name": LINK_TYPE}, "inwardIssue": {"key": keys[blocking]}}}
                )
            elif blocking == spec.calibration and blocked in keys:
                operations.append(
                    {"add": {"type": {"name": LINK_TYPE}, "outwardIssue": {"key": keys[blocked]}}}
                )
        update: dict[str, Any] = {"fields": fields}
        if operations:
            update["update"] = {"issuelinks": operations}
        return update

    def _create(
        self, batch: Sequence[TicketSpec], updates: Sequence[dict[str, Any]], linked: set[tuple[str, str]]
    ) -> dict[str, str]:
        """Create the tickets of one batch and return their keys; raise :class:`TicketError` on failure."""
        keys: dict[str, str] = {}
        pending = list(range(len(batch)))
        bodies = [dict(update) for update in updates]
        problems: dict[str, str] = {}
        for attempt in range(1, CREATE_ATTEMPTS + 1):
            result = self.api.create_issues([bodies[index] for index in pending])
            uncertain: list[int] = []
            for position, index in enumerate(pending):
                if position in result.created:
                    keys[batch[index].calibration] = result.created[position]["key"]
                    _record_links(bodies[index], result.created[position]["key"], linked)
                    continue
                error = result.ambiguous or result.rejected.get(position)
                if error is None or error.ambiguous:
                    uncertain.append(index)
                elif "assignee" in error.errors and "assignee" in bodies[index]["fields"]:
                    log.warning(
                        "Jira rejected assignee %r of %s (%s); creating the ticket unassigned",
                        batch[index].assignee,
                        batch[index].label,
                        error.errors["assignee"],
                    )
                    bodies[index] = {**bodies[index], "fields": {**bodies[index]["fields"]}}
                    del bodies[index]["fields"]["assignee"]
                else:
                    problems[batch[index].calibration] = str(error)
            if uncertain:
                log.warning(
                    "Create of %d tickets failed ambiguously (attempt %d/%d: %s); searching by label",
                    len(uncertain),
                    attempt,
                    CREATE_ATTEMPTS,
                    result.ambiguous or "per-item server error",
                )
                found = self._look_for([batch[index].label for index in uncertain])
                for index in uncertain:
                    issue = found.get(batch[index].label)
                    if issue is not None:
                        keys[batch[index].calibration] = issue["key"]
                        linked.update(_blocks_links([issue]))
                        _record_links(bodies[index], issue["key"], linked)
            pending = [
                index
                for index in pending
                if batch[index].calibration not in keys and batch[index].calibration not in problems
            ]
            if not pending:
                break
        for index in pending:
            problems[batch[index].calibration] = "still not created after the retries"
        if problems:
            raise TicketError(
                "Jira did not create the tickets of "
                + "; ".join(f"{name!r}: {text}" for name, text in problems.items())
            )
        return keys

    def _look_for(self, labels: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Search for tickets by label until all are found or ``settle_seconds`` have passed."""
        deadline = time.monotonic() + self.settle_seconds
        while True:
            try:
                issues = self.api.search(f"labels in ({_quoted(labels)}) ORDER BY key", FIND_FIELDS)
            except JiraApiError as exc:
                log.warning("Search for the tickets %s failed: %s", list(labels), exc)
                issues = []
            found = {label: group[0] for label, group in self._by_label(issues).items()}
            if all(label in found for label in labels) or time.monotonic() >= deadline:
                return found
            time.sleep(self.settle_interval)

    @staticmethod
    def _by_label(issues: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
        grouped: dict[str, list[dict[str, Any]]] = {}
        for issue in issues:
            for label in issue.get("fields", {}).get("labels", []) or []:
                grouped.setdefault(label, []).append(issue)
        for group in grouped.values():
            group.sort(key=_key_order)
        return grouped

    def _close_duplicates(self, by_label: Mapping[str, list[dict[str, Any]]]) -> list[str]:
        closed: list[str] = []
        for label, group in by_label.items():
            if len(group) < 2:
                continue
            keep = group[0]["key"]
            for extra in group[1:]:
                key = extra["key"]
                if key in closed or extra["fields"]["status"]["statusCategory"]["key"] == DONE:
                    continue
                log.warning("Tickets %s and %s both carry the label %s; closing %s", keep, key, label, key)
                try:
                    self.comment(key, f"Duplicate of {keep}: both carry the label {label}. Closed by b2cal.")
                    self.transition_to(key, DONE)
                    closed.append(key)
                except (JiraApiError, TicketError) as exc:
                    log.warning("Could not close the duplicate ticket %s: %s", key, exc)
        return closed


def _quoted(labels: Iterable[str]) -> str:
    return ", ".join(f'"{label}"' for label in labels)


def _key_order(issue: Mapping[str, Any]) -> tuple[str, int]:
    project, _, number = str(issue.get("key", "")).rpartition("-")
    return (project, int(number) if number.isdigit() else 0)


def _blocks_links(issues: Iterable[Mapping[str, Any]]) -> set[tuple[str, str]]:
    """Return the ``(blocking, blocked)`` key pairs of the "Blocks" links listed on ``issues``."""
    pairs: set[tuple[str, str]] = set()
    for issue in issues:
        for link in issue.get("fields", {}).get("issuelinks", []) or []:
            if (link.get("type") or {}).get("name") != LINK_TYPE:
                continue
            if "outwardIssue" in link:
                pairs.add((issue["key"], link["outwardIssue"]["key"]))
            if "inwardIssue" in link:
                pairs.add((link["inwardIssue"]["key"], issue["key"]))
    return pairs


def _record_links(body: Mapping[str, Any], key: str, linked: set[tuple[str, str]]) -> None:
    """Add the links that a create body carried to ``linked``, once the ticket exists as ``key``."""
    for operation in (body.get("update") or {}).get("issuelinks", []):
        add = operation.get("add", {})
        if "inwardIssue" in add:
            linked.add((add["inwardIssue"]["key"], key))
        if "outwardIssue" in add:
            linked.add((key, add["outwardIssue"]["key"]))
