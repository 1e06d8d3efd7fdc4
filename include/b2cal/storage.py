"""Storage accounting: the bytes of skims, cDSTs and payloads that one bucket takes at one site.

Skims and cDSTs are counted from the site's file sources (:class:`b2cal.filesources.FileSource`),
which report each file's size: a listing of the per-run folders, over SSH or locally, or the Rucio
replicas at the site's storage element. Payloads are counted from the conditions database: the
distinct payloads of the bucket's staging tags, each weighed by the ``Content-Length`` of its file.

The experiment quotes about 10 TB of skims, 13 TB of cDSTs and 350 GB of payloads per prompt bucket
(:data:`TYPICAL_BYTES`). The pages show the measured numbers next to these.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urljoin

import requests

from b2cal.conddb import ConditionsDBError
from b2cal.filesources import FileEntry, FileSource, PathTemplateSource
from b2cal.iov import IoV
from b2cal.runs import RAW_DATA_TAG, RunKey

log = logging.getLogger(__name__)

SKIM = "skim"
CDST = "cdst"
PAYLOAD = "payload"
KINDS = (SKIM, CDST, PAYLOAD)
#: Bytes per prompt bucket that the experiment quotes, as a scale for the measured numbers.
TYPICAL_BYTES = {SKIM: 10 * 10**12, CDST: 13 * 10**12, PAYLOAD: 350 * 10**9}
#: Bytes read at most from a payload file whose size the server does not state before sending it.
_CHUNK = 1 << 20


@dataclass
class UsageLine:
    """The files and bytes of one kind of data, and of one skim for skims and cDSTs.

    :ivar unsized_files: files whose size the source did not report; ``bytes`` lacks them.
    """

    kind: str
    data_tag: str
    files: int = 0
    bytes: int = 0
    unsized_files: int = 0
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Return the line as JSON-ready data."""
        return {
            "kind": self.kind,
            "data_tag": self.data_tag,
            "files": self.files,
            "bytes": self.bytes,
            "unsized_files": self.unsized_files,
            "source": self.source,
        }


@dataclass
class StorageReport:
    """The storage that one bucket takes at one site."""

    bucket: IoV
    site: str
    lines: list[UsageLine] = field(default_factory=list)

    def total(self, kind: str) -> int:
        """Return the bytes of one kind: ``skim``, ``cdst`` or ``payload``."""
        return sum(line.bytes for line in self.lines if line.kind == kind)

    def to_dict(self) -> dict[str, Any]:
        """Return the report as JSON-ready data, with the totals per kind."""
        return {
            "bucket": self.bucket.as_list(),
            "site": self.site,
            "totals": {kind: self.total(kind) for kind in KINDS},
            "typical": dict(TYPICAL_BYTES),
            "lines": [line.to_dict() for line in self.lines],
        }

    def explain(self) -> str:
        """Return one line with the totals, e.g. ``skims 9.8 TB in 12000 files, ...``."""
        parts = []
        for kind, word in ((SKIM, "skims"), (CDST, "cDSTs"), (PAYLOAD, "payloads")):
            lines = [line for line in self.lines if line.kind == kind]
            files = sum(line.files for line in lines)
            unsized = sum(line.unsized_files for line in lines)
            text = f"{word} {format_bytes(self.total(kind))} in {files} files"
            if unsized:
                text += f" ({unsized} without a size)"
            parts.append(text)
        return f"bucket {self.bucket} at {self.site}: " + ", ".join(parts)


def format_bytes(count: float) -> str:
    """Return a byte count in decimal units, e.g. ``13.2 TB``."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(count) < 1000 or unit == "TB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    raise AssertionError("unreachable")


def measure_files(
    source: FileSource, kind: str, data_tags: Iterable[str], runs: Sequence[RunKey]
) -> list[UsageLine]:
    """Count the files and bytes of each data tag for ``runs`` in ``source``, one line per tag."""
    tags = list(data_tags)
    if isinstance(source, PathTemplateSource):
        listed = _list_template_folders(source, tags, runs)
    else:
        listed = {tag: source.list_files(tag, runs) for tag in tags}
    lines = []
    for tag in tags:
        line = UsageLine(kind, tag, source=source.description)
        for entries in listed[tag].values():
            for entry in entries:
                line.files += 1
                if entry.size is None:
                    line.unsized_files += 1
                else:
                    line.bytes += entry.size
        lines.append(line)
    return lines


def _list_template_folders(
    source: PathTemplateSource, tags: Sequence[str], runs: Sequence[RunKey]
) -> dict[str, dict[RunKey, list[FileEntry]]]:
    """List the folders of every tag and run in one call of the lister, which is one command over SSH."""
    folders = {source.folder(tag, key): (tag, key) for tag in tags for key in runs}
    listing = source.lister.list_directories(list(folders), source.pattern)
    found: dict[str, dict[RunKey, list[FileEntry]]] = {tag: {} for tag in tags}
    for folder, files in listing.items():
        owner = folders.get(folder.rstrip("/"))
        if owner is None or not files:
            continue
        tag, key = owner
        found[tag][key] = [FileEntry(f"{folder}/{name}", None, size) for name, size in files]
    return found


class PayloadSource(Protocol):
    """The part of :class:`b2cal.conddb.ConditionsDB` that payload accounting uses."""

    base_url: str
    timeout: float
    session: requests.Session

    def global_tag_payloads(self, name: str) -> Sequence[Any]:
        """Return the payload IoVs of a global tag."""
        ...

    def check_payloads(self, keys: Iterable[tuple[str, str]]) -> Mapping[tuple[str, str], Mapping[str, Any]]:
        """Return the stored payload of each ``(name, checksum)``."""
        ...


def measure_payloads(client: PayloadSource, tags: Iterable[str]) -> UsageLine:
    """Count the distinct payloads of ``tags`` and the bytes of their files.

    A payload in several tags, or with several IoVs, counts once. A tag that does not exist counts
    nothing. Each file's size comes from a ``HEAD`` request, or from the headers of a ``GET`` whose
    body is read only when the server states no ``Content-Length``.
    """
    tag_names = [tag for tag in dict.fromkeys(tags) if tag]
    line = UsageLine(PAYLOAD, "", source=f"conditions database {client.base_url} tags {', '.join(tag_names)}")
    keys: set[tuple[str, str]] = set()
    for tag in tag_names:
        try:
            keys.update((item.name, item.checksum) for item in client.global_tag_payloads(tag))
        except ConditionsDBError as exc:
            if exc.status != 404:
                raise
            log.info("Global tag %s not found; it adds no payloads", tag)
    for payload in client.check_payloads(keys).values():
        url = urljoin(str(payload.get("baseUrl") or f"{client.base_url}/"), str(payload["payloadUrl"]))
        size = _file_size(client.session, url, client.timeout)
        line.files += 1
        if size is None:
            line.unsized_files += 1
        else:
            line.bytes += size
    return line


def _file_size(session: requests.Session, url: str, timeout: float) -> int | None:
    """Return the size of the file at ``url``, or ``None`` when it cannot be read."""
    try:
        response = session.head(url, timeout=timeout, allow_redirects=True)
        if response.status_code < 300 and response.headers.get("Content-Length"):
            return int(response.headers["Content-Length"])
        with session.get(url, timeout=timeout, stream=True) as response:
            if response.status_code >= 300:
                log.warning(
                    "Payload file %s returned HTTP %s; its size is unknown", url, response.status_code
                )
                return None
            if response.headers.get("Content-Length"):
                return int(response.headers["Content-Length"])
            return sum(len(chunk) for chunk in response.iter_content(_CHUNK))
    except (requests.RequestException, ValueError) as exc:
        log.warning("The size of payload file %s could not be read: %s", url, exc)
        return None


def measure_bucket(
    bucket: IoV,
    site: str,
    runs: Sequence[RunKey],
    data_tags: Iterable[str],
    *,
    skim_source: FileSource | None = None,
    cdst_source: FileSource | None = None,
    payloads: PayloadSource | None = None,
    staging_tags: Iterable[str] = (),
) -> StorageReport:
    """Measure the skims, cDSTs and payloads of one bucket at one site.

    :param runs: the bucket's runs.
    :param data_tags: the skims to count; cDSTs are counted for them and for the raw data.
    :param skim_source: where the site's skims lie; skims are not counted without it.
    :param cdst_source: where the site's cDSTs lie; cDSTs are not counted without it.
    :param payloads: the conditions database; payloads are not counted without it.
    :param staging_tags: the staging tags of the bucket's requests at the site.
    """
    tags = list(dict.fromkeys(data_tags))
    report = StorageReport(bucket, site)
    keys = [key for key in runs if bucket.contains(*key)]
    if skim_source is not None:
        report.lines += measure_files(skim_source, SKIM, tags, keys)
    if cdst_source is not None:
        report.lines += measure_files(cdst_source, CDST, [RAW_DATA_TAG, *tags], keys)
    if payloads is not None:
        report.lines.append(measure_payloads(payloads, staging_tags))
    log.info("Storage of %s", report.explain())
    return report
