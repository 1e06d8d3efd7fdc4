"""Rucio data management for the calibration loop: DID names, registration plans and rule judgement.

This module imports neither Airflow nor Rucio. It decides *what* to register and *whether* a rule is
done; the Airflow hook performs the calls.

DID names follow the storage layout, so that with the ``identity`` LFN-to-PFN algorithm a file's path on
an RSE is ``<prefix>/<scope>/<name>``:

==================  ================================================================
cDST file           ``cdst/<request_id>/<data_tag>/e0026/r00012/<file name>``
cDST dataset        ``cdst/<request_id>/<bucket>/<data_tag>`` (one per bucket and skim)
cDST container      ``cdst/<request_id>/<bucket>`` (one per bucket)
skim file           ``skim/<data_tag>/e0026/r00012/<file name>``
skim dataset        ``skim/<data_tag>/e0026/r00012`` (one per run and skim)
==================  ================================================================

``<bucket>`` is :func:`bucket_label`, e.g. ``e0026r00001-e0026r00400``. The request id is part of
every cDST name because a prompt request and a later reprocessing of the same bucket produce
different files.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from b2cal.iov import OPEN, IoV

SITE_RSES = {"KEK": "KEK-DISK", "BNL": "BNL-DISK", "DESY": "DESY-DISK"}
"""The disk RSE of each site."""

RULE_ID_PATTERN = re.compile(r"^[0-9a-f]{32}$")
SCOPE_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,25}$")
# Rucio's generic naming schema: at most 250 characters, slashes allowed.
NAME_PATTERN = re.compile(r"^[/A-Za-z0-9][/A-Za-z0-9._-]{0,249}$")
FILE_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
GROUPINGS = ("ALL", "DATASET", "NONE")
# Rucio's date format in filters such as ``created_after``.
RUCIO_DATE_FORMAT = "%a, %d %b %Y %H:%M:%S UTC"

METADATA_STYLES = ("json", "columns")
# The column of Rucio's ``dids`` table (managed by its DID column plugin) that stores each metadata key
# on a server without JSON metadata, such as one on SQLite, and the maximum lengths of those columns.
COLUMN_KEYS = {
    "experiment": "project",
    "run": "run_number",
    "bucket": "version",
    "request_id": "campaign",
    "data_tag": "stream_name",
    "data_type": "datatype",
}
COLUMN_LENGTHS = {"project": 50, "version": 50, "campaign": 50, "stream_name": 70, "datatype": 50}

_RUN_FOLDER = re.compile(r"^r(\d{5})$")
_EXP_FOLDER = re.compile(r"^e(\d{4})$")


class RucioPlanError(ValueError):
    """Invalid input for a Rucio operation; the message names the value and the fix."""


# -- DIDs and names --------------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class Did:
    """A data identifier ``scope:name``."""

    scope: str
    name: str

    def __post_init__(self) -> None:
        if not SCOPE_PATTERN.match(self.scope):
            raise RucioPlanError(
                f"Rucio scope {self.scope!r} is invalid: use 1-25 letters, digits, '_', '-' or '.'"
            )
        if not NAME_PATTERN.match(self.name):
            raise RucioPlanError(
                f"Rucio DID name {self.name!r} is invalid: use at most 250 letters, digits, '/', '.', '_' "
                "or '-', starting with a letter, digit or '/'"
            )

    @classmethod
    def parse(cls, text: str, default_scope: str | None = None) -> Did:
        """Parse ``"scope:name"``; a bare name takes ``default_scope``."""
        scope, colon, name = str(text).strip().partition(":")
        if not colon:
            if default_scope is None:
                raise RucioPlanError(f"DID {text!r} has no scope: write it as 'scope:name'")
            scope, name = default_scope, scope
        return cls(scope, name)

    def as_dict(self) -> dict[str, str]:
        """Return ``{"scope": ..., "name": ...}`` as the Rucio client expects."""
        return {"scope": self.scope, "name": self.name}

    def __str__(self) -> str:
        return f"{self.scope}:{self.name}"


def site_rse(site: str) -> str:
    """Return the disk RSE of a site, e.g. ``BNL-DISK`` for ``BNL``."""
    key = site.strip().upper()
    if key in SITE_RSES:
        return SITE_RSES[key]
    return f"{key}-DISK"


def bucket_label(bucket: IoV) -> str:
    """Return the bucket's name part, e.g. ``e0026r00001-e0026r00400``.

    An open end is written ``open``, and a bucket that ends with a whole experiment ends in
    ``e0027``.
    """
    low = f"e{bucket.exp_low:04d}r{bucket.run_low:05d}"
    if bucket.is_open_ended:
        return f"{low}-open"
    if bucket.run_high == OPEN:
        return f"{low}-e{bucket.exp_high:04d}"
    return f"{low}-e{bucket.exp_high:04d}r{bucket.run_high:05d}"


def _check_part(value: str, label: str) -> str:
    if not FILE_NAME_PATTERN.match(value):
        raise RucioPlanError(
            f"{label} {value!r} cannot be part of a Rucio DID name: use letters, digits, '.', '_' or '-'"
        )
    return value


def _cdst_prefix(request_id: str, attempt: int) -> str:
    """Return ``cdst/<request>``, plus ``/attempt-<n>`` for the output of a later cDST production attempt.

    The names of attempt 1 carry no attempt, so they stay those of a request that ran cDST production
    once. A later attempt writes new files of the same file names, which need other DIDs.
    """
    if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
        raise RucioPlanError(f"cDST production attempt {attempt!r} is invalid: use an integer of at least 1")
    prefix = f"cdst/{_check_part(request_id, 'request id')}"
    return prefix if attempt == 1 else f"{prefix}/attempt-{attempt}"


def cdst_file_name(
    request_id: str, data_tag: str, exp: int, run: int, file_name: str, attempt: int = 1
) -> str:
    """Return the DID name of one cDST file of a cDST production attempt."""
    prefix, tag_part = _cdst_prefix(request_id, attempt), _check_part(data_tag, "data tag")
    return f"{prefix}/{tag_part}/e{exp:04d}/r{run:05d}/{_check_part(file_name, 'file name')}"


def cdst_dataset_name(request_id: str, bucket: IoV, data_tag: str, attempt: int = 1) -> str:
    """Return the DID name of the cDST dataset of one bucket and skim of a cDST production attempt."""
    prefix, tag_part = _cdst_prefix(request_id, attempt), _check_part(data_tag, "data tag")
    return f"{prefix}/{bucket_label(bucket)}/{tag_part}"


def cdst_container_name(request_id: str, bucket: IoV, attempt: int = 1) -> str:
    """Return the DID name of the cDST container of one bucket of a cDST production attempt."""
    return f"{_cdst_prefix(request_id, attempt)}/{bucket_label(bucket)}"


def superseded_cdst_containers(request_id: str, bucket: IoV, attempt: int) -> list[str]:
    """Return the DID names of the cDST containers that ``attempt`` replaces, oldest first.

    When cDST production ran again after a rejection, the files of the earlier attempts were made
    with rejected payloads: nothing reads them any more.
    """
    _cdst_prefix(request_id, attempt)
    return [cdst_container_name(request_id, bucket, earlier) for earlier in range(1, attempt)]


def lifetime_to_shorten(rule: Mapping[str, Any], lifetime: int, now: datetime) -> bool:
    """Decide whether a rule must get ``lifetime`` seconds from ``now`` so that it ends.

    A rule that stays forever, or would expire after ``now + lifetime``, is shortened. A rule that
    expires sooner keeps its end, so applying the same lifetime again changes nothing. ``now`` is
    naive UTC, like the rule's ``expires_at``.
    """
    if isinstance(lifetime, bool) or not isinstance(lifetime, int) or lifetime < 1:
        raise RucioPlanError(f"lifetime {lifetime!r} is invalid: use a number of seconds of at least 1")
    expires_at = _as_datetime(rule.get("expires_at"))
    return expires_at is None or expires_at > now + timedelta(seconds=lifetime + 60)


def skim_file_name(data_tag: str, exp: int, run: int, file_name: str) -> str:
    """Return the DID name of one calibration skim file."""
    tag_part, file_part = _check_part(data_tag, "data tag"), _check_part(file_name, "file name")
    return f"skim/{tag_part}/e{exp:04d}/r{run:05d}/{file_part}"


def skim_dataset_name(data_tag: str, exp: int, run: int) -> str:
    """Return the DID name of the calibration skim dataset of one run."""
    return f"skim/{_check_part(data_tag, 'data tag')}/e{exp:04d}/r{run:05d}"


def skim_dataset_pattern(data_tag: str) -> str:
    """Return the wildcard pattern that matches every run dataset of one skim."""
    return f"skim/{_check_part(data_tag, 'data tag')}/e*/r*"


# -- metadata --------------------------------------------------------------------------------------


def rucio_metadata(metadata: Mapping[str, Any], style: str) -> dict[str, Any]:
    """Return the metadata keys as the server stores them.

    ``json`` keeps the keys as they are; it needs a Rucio database with JSON support (PostgreSQL,
    MySQL, Oracle 12 or later). ``columns`` moves each key to a column of Rucio's DID table (see
    :data:`COLUMN_KEYS`), which every database has, and rejects a value longer than its column.
    """
    if style == "json":
        return dict(metadata)
    if style != "columns":
        raise RucioPlanError(f"metadata style {style!r} is unknown: use one of {', '.join(METADATA_STYLES)}")
    result: dict[str, Any] = {}
    for key, value in metadata.items():
        if key not in COLUMN_KEYS:
            raise RucioPlanError(
                f"metadata key {key!r} has no Rucio DID column: use the keys {sorted(COLUMN_KEYS)} "
                "or the metadata style 'json'"
            )
        column = COLUMN_KEYS[key]
        if column == "run_number":
            result[column] = int(value)
            continue
        text = str(value)
        if len(text) > COLUMN_LENGTHS[column]:
            raise RucioPlanError(
                f"metadata {key}={text!r} is longer than the {COLUMN_LENGTHS[column]} characters of Rucio's "
                f"'{column}' column: shorten it or use the metadata style 'json'"
            )
        result[column] = text
    return result


# -- registration plans ----------------------------------------------------------------------------


def file_checksums(path: Path, chunk_size: int = 1 << 20) -> tuple[int, str, str]:
    """Return a file's size in bytes, its adler32 (8 hex digits) and its MD5, as Rucio stores them."""
    adler = 1
    md5 = hashlib.md5(usedforsecurity=False)
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            adler = zlib.adler32(chunk, adler)
            md5.update(chunk)
            size += len(chunk)
    return size, f"{adler & 0xFFFFFFFF:08x}", md5.hexdigest()


@dataclass(frozen=True)
class FileRecord:
    """A local file to register, with its DID, checksums and metadata."""

    path: Path
    did: Did
    bytes: int
    adler32: str
    md5: str
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_path(cls, path: Path, did: Did, metadata: Mapping[str, Any]) -> FileRecord:
        """Read the file and build its record."""
        size, adler32, md5 = file_checksums(path)
        return cls(path=path, did=did, bytes=size, adler32=adler32, md5=md5, metadata=dict(metadata))

    def replica(self) -> dict[str, Any]:
        """Return the file as an entry of ``add_replicas``."""
        return {**self.did.as_dict(), "bytes": self.bytes, "adler32": self.adler32, "md5": self.md5}


@dataclass(frozen=True)
class DatasetRecord:
    """A dataset to create, with the files it contains and its metadata."""

    did: Did
    files: tuple[FileRecord, ...]
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RegistrationPlan:
    """Files to register at one RSE, grouped in datasets, optionally under one container."""

    rse: str
    datasets: tuple[DatasetRecord, ...]
    container: Did | None = None
    container_metadata: Mapping[str, Any] = field(default_factory=dict)

    @property
    def files(self) -> list[FileRecord]:
        """Every file of the plan."""
        return [record for dataset in self.datasets for record in dataset.files]

    def summary(self) -> dict[str, Any]:
        """Return the plan as JSON-friendly values for XCom and logs."""
        return {
            "rse": self.rse,
            "container": str(self.container) if self.container else None,
            "datasets": {str(dataset.did): len(dataset.files) for dataset in self.datasets},
            "files": len(self.files),
        }


def _run_files(root: Path, pattern: str) -> Iterator[tuple[str, int, int, Path]]:
    """Yield ``(data_tag, exp, run, path)`` for files laid out as ``<root>/<tag>/eNNNN/rNNNNN/<pattern>``."""
    for path in sorted(root.glob(f"*/e*/r*/{pattern}")):
        exp_match = _EXP_FOLDER.match(path.parent.parent.name)
        run_match = _RUN_FOLDER.match(path.parent.name)
        if not (exp_match and run_match and path.is_file()):
            continue
        yield path.parent.parent.parent.name, int(exp_match.group(1)), int(run_match.group(1)), path


def plan_cdst_registration(
    cdst_root: Path | str,
    *,
    request_id: str,
    bucket: IoV,
    scope: str,
    rse: str,
    data_type: str = "cdst",
    attempt: int = 1,
) -> RegistrationPlan:
    """Plan the registration of a request's cDST files: one dataset per skim, one container per bucket.

    Files are found as ``<cdst_root>/<data_tag>/e{exp:04d}/r{run:05d}/*_cdst.root``; runs outside the
    bucket are left out. ``cdst_root`` is the output folder of cDST production attempt ``attempt``,
    whose number goes into the DID names of every attempt after the first.

    :raises RucioPlanError: when the bucket has no cDST file below ``cdst_root``.
    """
    root = Path(cdst_root)
    label = bucket_label(bucket)
    by_tag: dict[str, list[FileRecord]] = {}
    for data_tag, exp, run, path in _run_files(root, "*_cdst.root"):
        if not bucket.contains(exp, run):
            continue
        did = Did(scope, cdst_file_name(request_id, data_tag, exp, run, path.name, attempt))
        metadata = {
            "experiment": exp,
            "run": run,
            "bucket": label,
            "request_id": request_id,
            "data_tag": data_tag,
            "data_type": data_type,
        }
        by_tag.setdefault(data_tag, []).append(FileRecord.from_path(path, did, metadata))
    if not by_tag:
        raise RucioPlanError(
            f"no cDST files of bucket {bucket} below {root} (expected <data_tag>/eNNNN/rNNNNN/*_cdst.root): "
            "run cDST production first, or check the site's cdst_root"
        )
    common: dict[str, Any] = {"bucket": label, "request_id": request_id, "data_type": data_type}
    if bucket.exp_low == bucket.exp_high:
        common["experiment"] = bucket.exp_low
    datasets = tuple(
        DatasetRecord(
            did=Did(scope, cdst_dataset_name(request_id, bucket, data_tag, attempt)),
            files=tuple(files),
            metadata={**common, "data_tag": data_tag},
        )
        for data_tag, files in sorted(by_tag.items())
    )
    return RegistrationPlan(
        rse=rse,
        datasets=datasets,
        container=Did(scope, cdst_container_name(request_id, bucket, attempt)),
        container_metadata=common,
    )


def plan_skim_registration(
    storage_root: Path | str,
    *,
    runs: IoV,
    scope: str,
    rse: str,
    data_tags: Sequence[str] | None = None,
    data_type: str = "raw",
) -> RegistrationPlan:
    """Plan the registration of calibration skim files: one dataset per run and skim, no container.

    Files are found as ``<storage_root>/<data_tag>/e{exp:04d}/r{run:05d}/*.root``. An empty plan is
    valid: no new run has skims yet.
    """
    selected_tags = set(data_tags) if data_tags else None
    by_run: dict[tuple[str, int, int], list[FileRecord]] = {}
    for data_tag, exp, run, path in _run_files(Path(storage_root), "*.root"):
        if (selected_tags is not None and data_tag not in selected_tags) or not runs.contains(exp, run):
            continue
        did = Did(scope, skim_file_name(data_tag, exp, run, path.name))
        metadata = {"experiment": exp, "run": run, "data_tag": data_tag, "data_type": data_type}
        by_run.setdefault((data_tag, exp, run), []).append(FileRecord.from_path(path, did, metadata))
    datasets = tuple(
        DatasetRecord(
            did=Did(scope, skim_dataset_name(data_tag, exp, run)),
            files=tuple(files),
            metadata={"experiment": exp, "run": run, "data_tag": data_tag, "data_type": data_type},
        )
        for (data_tag, exp, run), files in sorted(by_run.items())
    )
    return RegistrationPlan(rse=rse, datasets=datasets)


# -- rules -----------------------------------------------------------------------------------------


def check_rule_id(rule_id: str) -> str:
    """Return ``rule_id`` if it has Rucio's format of 32 lowercase hex digits, else raise."""
    if not isinstance(rule_id, str) or not RULE_ID_PATTERN.match(rule_id):
        raise RucioPlanError(f"rule id {rule_id!r} is invalid: a Rucio rule id is 32 lowercase hex digits")
    return rule_id


@dataclass(frozen=True)
class RuleRequest:
    """A replication rule to add, or to reuse when an identical one exists.

    :param lifetime: seconds until Rucio deletes the rule, or ``None`` for a rule that stays.
    :param activity: the transfer activity; ``None`` takes the server's default.
    """

    did: Did
    rse_expression: str
    copies: int = 1
    lifetime: int | None = None
    activity: str | None = None
    grouping: str = "DATASET"
    comment: str | None = None

    def __post_init__(self) -> None:
        if not self.rse_expression or not self.rse_expression.strip():
            raise RucioPlanError("rule RSE expression is empty: give an RSE name such as 'DESY-DISK'")
        if not isinstance(self.copies, int) or self.copies < 1:
            raise RucioPlanError(f"rule copies {self.copies!r} is invalid: use an integer of at least 1")
        if self.lifetime is not None and (not isinstance(self.lifetime, int) or self.lifetime <= 0):
            raise RucioPlanError(
                f"rule lifetime {self.lifetime!r} is invalid: "
                "use a positive number of seconds, or None to keep the rule"
            )
        if self.grouping not in GROUPINGS:
            raise RucioPlanError(
                f"rule grouping {self.grouping!r} is invalid: use one of {', '.join(GROUPINGS)}"
            )

    def add_rule_arguments(self) -> dict[str, Any]:
        """Return the keyword arguments of the client's ``add_replication_rule``."""
        arguments: dict[str, Any] = {
            "dids": [self.did.as_dict()],
            "copies": self.copies,
            "rse_expression": self.rse_expression,
            "grouping": self.grouping,
            "lifetime": self.lifetime,
        }
        if self.activity:
            arguments["activity"] = self.activity
        if self.comment:
            arguments["comment"] = self.comment
        return arguments


def find_reusable_rule(
    rules: Iterable[Mapping[str, Any]], request: RuleRequest, account: str
) -> Mapping[str, Any] | None:
    """Return the existing rule that Rucio would call a duplicate of ``request``, if any.

    Rucio allows one rule per DID, account, RSE expression and number of copies, whatever its
    activity or lifetime, so such a rule is reused instead of added.
    """
    for rule in rules:
        if (
            rule.get("scope") == request.did.scope
            and rule.get("name") == request.did.name
            and rule.get("account") == account
            and rule.get("rse_expression") == request.rse_expression
            and int(rule.get("copies", 0)) == request.copies
        ):
            return rule
    return None


def rule_differences(rule: Mapping[str, Any], request: RuleRequest) -> list[str]:
    """Return how a reused rule differs from the request in activity and grouping, for the log."""
    differences = []
    if request.activity and rule.get("activity") != request.activity:
        differences.append(f"activity {rule.get('activity')!r} instead of {request.activity!r}")
    if rule.get("grouping") not in (None, request.grouping):
        differences.append(f"grouping {rule.get('grouping')!r} instead of {request.grouping!r}")
    return differences


def lifetime_to_extend(
    rule: Mapping[str, Any], request: RuleRequest, now: datetime
) -> tuple[bool, int | None]:
    """Decide whether a reused rule's lifetime must grow to cover the request, and to what.

    A lifetime is raised, never shortened: a rule that stays forever is left alone, and a rule that
    would expire before ``now + request.lifetime`` gets the requested lifetime (or none at all when the
    request is for a rule that stays). ``now`` is naive UTC, like the rule's ``expires_at``.
    """
    expires_at = _as_datetime(rule.get("expires_at"))
    if expires_at is None:
        return False, None
    if request.lifetime is None:
        return True, None
    if expires_at < now + timedelta(seconds=request.lifetime - 60):
        return True, request.lifetime
    return False, None


@dataclass(frozen=True)
class RuleWatch:
    """One rule to wait for: by its id, or by the DID and RSE expression it was made for.

    :param expected_files: how many files the rule must lock (per copy); ``None`` counts the files
        of the rule's DID instead.
    :param account: with ``rule_id``, ``did`` and ``created_at``, lets the first poll fetch the rule in
        a batch instead of alone. A wrong value costs one extra call, never a wrong result.
    :param created_at: when the rule was created, in Rucio's date format (:data:`RUCIO_DATE_FORMAT`).
    """

    rule_id: str | None = None
    did: str | None = None
    rse_expression: str | None = None
    expected_files: int | None = None
    account: str | None = None
    created_at: str | None = None

    def __post_init__(self) -> None:
        if self.rule_id is not None:
            check_rule_id(self.rule_id)
        elif not (self.did and self.rse_expression):
            raise RucioPlanError(
                "a rule to wait for needs a rule id, or a DID together with an RSE expression"
            )
        if self.did is not None:
            Did.parse(self.did)
        if self.expected_files is not None and (
            not isinstance(self.expected_files, int) or self.expected_files < 0
        ):
            raise RucioPlanError(
                f"expected files {self.expected_files!r} is invalid: use a non-negative integer"
            )

    def describe(self) -> str:
        """Return how the watch is named in messages."""
        if self.rule_id:
            return f"rule {self.rule_id}"
        return f"the rule of {self.did} at {self.rse_expression}"

    @classmethod
    def for_rule(cls, rule: Mapping[str, Any], expected_files: int | None = None) -> RuleWatch:
        """Build the watch of a rule dictionary, with every hint filled in."""
        created_at = _as_datetime(rule.get("created_at"))
        return cls(
            rule_id=str(rule["id"]),
            did=f"{rule['scope']}:{rule['name']}",
            rse_expression=rule.get("rse_expression"),
            expected_files=expected_files,
            account=rule.get("account"),
            created_at=created_at.strftime(RUCIO_DATE_FORMAT) if created_at else None,
        )

    def rule_stub(self) -> dict[str, Any] | None:
        """Return the fields :func:`listing_filters` needs, when the hints hold them all."""
        if not (self.rule_id and self.did and self.account and self.created_at):
            return None
        did = Did.parse(self.did)
        return {
            "id": self.rule_id,
            "account": self.account,
            "scope": did.scope,
            "created_at": self.created_at,
        }

    def to_dict(self) -> dict[str, Any]:
        """Return the watch as JSON-serialisable values."""
        return {
            "rule_id": self.rule_id,
            "did": self.did,
            "rse_expression": self.rse_expression,
            "expected_files": self.expected_files,
            "account": self.account,
            "created_at": self.created_at,
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> RuleWatch:
        """Build a watch from :meth:`to_dict` output."""
        return cls(
            rule_id=values.get("rule_id"),
            did=values.get("did"),
            rse_expression=values.get("rse_expression"),
            expected_files=values.get("expected_files"),
            account=values.get("account"),
            created_at=values.get("created_at"),
        )


@dataclass(frozen=True)
class RuleProgress:
    """How far one rule is, judged from its lock counts and the files it must lock."""

    rule_id: str
    did: str
    rse_expression: str
    state: str
    locks_ok: int
    locks_replicating: int
    locks_stuck: int
    expected_locks: int | None
    error: str | None = None

    @property
    def verdict(self) -> str:
        """``ok``, ``stuck`` or ``waiting``.

        A rule is ``ok`` only when Rucio reports OK *and* the rule has a lock for every expected file.
        Right after a file is attached to a dataset that already has a rule, the rule still reports OK
        with the old count until the judge evaluator adds the new lock, so the state alone would end a
        wait too early. SUSPENDED counts as stuck: nothing moves until an administrator acts.
        """
        if self.state == "OK":
            if self.expected_locks is not None and self.locks_ok < self.expected_locks:
                return "waiting"
            return "ok"
        if self.state in ("STUCK", "SUSPENDED"):
            return "stuck"
        return "waiting"

    @property
    def counts(self) -> tuple[str, int, int, int]:
        """The state and the three lock counts, to detect change between polls."""
        return (self.state, self.locks_ok, self.locks_replicating, self.locks_stuck)

    def summary(self) -> str:
        """Return the progress as one line for the log."""
        expected = "?" if self.expected_locks is None else str(self.expected_locks)
        text = (
            f"rule {self.rule_id} ({self.did} -> {self.rse_expression}) {self.state}: "
            f"{self.locks_ok}/{expected} locks OK, {self.locks_replicating} replicating, "
            f"{self.locks_stuck} stuck"
        )
        if self.state == "OK" and self.verdict == "waiting":
            text += "; waiting for the judge to lock newly attached files"
        if self.error:
            text += f"; error: {self.error}"
        return text

    def to_dict(self) -> dict[str, Any]:
        """Return the progress as JSON-serialisable values."""
        return {
            "rule_id": self.rule_id,
            "did": self.did,
            "rse_expression": self.rse_expression,
            "state": self.state,
            "locks_ok": self.locks_ok,
            "locks_replicating": self.locks_replicating,
            "locks_stuck": self.locks_stuck,
            "expected_locks": self.expected_locks,
            "verdict": self.verdict,
        }


def judge_rule(rule: Mapping[str, Any], expected_files: int | None) -> RuleProgress:
    """Judge a rule dictionary as returned by the Rucio client.

    :param expected_files: files the rule must lock; each copy locks every file once, so the expected
        lock count is ``expected_files * copies``. ``None`` trusts the rule's own counts.
    """
    copies = int(rule.get("copies") or 1)
    return RuleProgress(
        rule_id=str(rule["id"]),
        did=f"{rule.get('scope')}:{rule.get('name')}",
        rse_expression=str(rule.get("rse_expression")),
        state=str(rule.get("state")),
        locks_ok=int(rule.get("locks_ok_cnt") or 0),
        locks_replicating=int(rule.get("locks_replicating_cnt") or 0),
        locks_stuck=int(rule.get("locks_stuck_cnt") or 0),
        expected_locks=None if expected_files is None else expected_files * copies,
        error=rule.get("error") or None,
    )


@dataclass(frozen=True)
class WaitOutcome:
    """The result of one poll over every watched rule."""

    done: bool
    failed: bool
    message: str


def assess_rules(
    progress: Sequence[RuleProgress], stuck_since: dict[str, float], now: float, grace_period: float
) -> WaitOutcome:
    """Decide whether a wait is over, updating ``stuck_since`` (rule id to the first time seen stuck).

    A stuck rule fails the wait only after ``grace_period`` seconds, because the judge repairer
    re-queues stuck transfers and many recover. A rule that leaves STUCK is forgotten.
    """
    for item in progress:
        if item.verdict == "stuck":
            stuck_since.setdefault(item.rule_id, now)
        else:
            stuck_since.pop(item.rule_id, None)
    expired = [
        item
        for item in progress
        if item.rule_id in stuck_since and now - stuck_since[item.rule_id] >= grace_period
    ]
    if expired:
        lines = [
            f"{item.summary()} (stuck for {now - stuck_since[item.rule_id]:.0f} s, "
            f"grace period {grace_period:.0f} s)"
            for item in expired
        ]
        return WaitOutcome(
            done=False,
            failed=True,
            message=f"{len(expired)} of {len(progress)} rules stayed STUCK past the grace period: "
            + "; ".join(lines),
        )
    ok = sum(1 for item in progress if item.verdict == "ok")
    stuck = sum(1 for item in progress if item.verdict == "stuck")
    if ok == len(progress):
        return WaitOutcome(done=True, failed=False, message=f"all {len(progress)} rules are OK")
    return WaitOutcome(
        done=False,
        failed=False,
        message=f"{ok} of {len(progress)} rules OK, {stuck} stuck within the grace period, "
        f"{len(progress) - ok - stuck} replicating",
    )


def _as_datetime(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    text = str(value)
    for pattern in (RUCIO_DATE_FORMAT, "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"):
        try:
            return datetime.strptime(text, pattern)
        except ValueError:
            continue
    raise RucioPlanError(f"date {text!r} is in no format Rucio uses")


def listing_filters(
    rules: Iterable[Mapping[str, Any]], min_group: int = 2
) -> tuple[list[dict[str, str]], list[str]]:
    """Split known rules into listing filters and single rules, to poll many rules with few calls.

    Rules of one account and scope are fetched together with ``list_replication_rules`` and the filter
    ``created_after`` set just before the oldest of them, so a poll costs one call per group and the
    response contains only rules created since then. Groups smaller than ``min_group`` are returned as
    rule ids to fetch one by one.
    """
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for rule in rules:
        groups.setdefault((str(rule["account"]), str(rule["scope"])), []).append(rule)
    filters: list[dict[str, str]] = []
    singles: list[str] = []
    for (account, scope), members in sorted(groups.items()):
        if len(members) < min_group:
            singles.extend(str(rule["id"]) for rule in members)
            continue
        created = [_as_datetime(rule.get("created_at")) for rule in members]
        known = [value for value in created if value is not None]
        group_filter = {"account": account, "scope": scope}
        if len(known) == len(created):
            oldest = min(known) - timedelta(seconds=1)
            group_filter["created_after"] = oldest.strftime(RUCIO_DATE_FORMAT)
        filters.append(group_filter)
    return filters, singles
