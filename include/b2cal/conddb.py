"""Manage global tags in the conditions database: staging tags, uploads and the running update.

:class:`ConditionsDB` talks to the v2 REST API. Reads need no credentials; writes send the token
as ``X-Authorization: Bearer <token>``. The server returns errors as ``{"code", "reason",
"message"}``, and :class:`ConditionsDBError` keeps all three.

Uploads and the running update are idempotent. Each first reads what the server already has and
only sends what is missing, so after a failure the same call can simply be repeated.

Transient failures (no connection, a timeout, HTTP 429, 502, 503 or 504) are retried with a growing
pause. Reads and writes that set an absolute value are sent again as they are. A write that creates
something (a tag, a payload, an IoV) is never sent blindly a second time: before each retry the
client looks whether the first attempt took effect after all, and returns what it finds.

A token that the server refuses because it expired raises :class:`TokenExpiredError`. When the token
is a JWT, its ``exp`` claim is read (not verified) so that an expired token fails before any write
is sent, with the time it expired and where to replace it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import re
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urljoin

import requests

from b2cal.globaltags import (
    IoVToAdd,
    IoVToClose,
    PayloadIoV,
    RunningUpdatePlan,
    TagProblem,
    plan_running_update,
)
from b2cal.iov import IoV

__all__ = [
    "ConditionsDB",
    "ConditionsDBError",
    "IoVToAdd",
    "IoVToClose",
    "LocalDatabaseError",
    "LocalPayload",
    "PayloadIoV",
    "RunningUpdateError",
    "RunningUpdatePlan",
    "TokenExpiredError",
    "UploadResult",
    "read_database_folder",
    "token_expiry",
]

logger = logging.getLogger(__name__)

DATABASE_FILE = "database.txt"
#: States from which :meth:`ConditionsDB.prepare_staging_tag` can move a tag back to OPEN.
_REOPENABLE_STATES = ("TESTING", "VALIDATED")
_PAYLOAD_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
#: HTTP statuses after which the same request may succeed when sent again.
TRANSIENT_STATUSES = frozenset({429, 502, 503, 504})
#: Seconds of clock difference allowed before a token counts as expired on this side.
_EXPIRY_SKEW = 5.0
_T = TypeVar("_T")


class ConditionsDBError(Exception):
    """A failed conditions database operation.

    :ivar status: HTTP status of the response, ``None`` when there was none
    :ivar reason: the server's ``reason`` (e.g. ``"Conflict"``), if it sent one
    :ivar server_message: the server's ``message``, if it sent one
    :ivar transient: whether sending the same request again may succeed
    :ivar attempts: how many times the request was sent
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        reason: str | None = None,
        server_message: str | None = None,
        transient: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.server_message = server_message
        self.transient = transient
        self.attempts = 1


class TokenExpiredError(ConditionsDBError):
    """A bearer token that has expired; ``expired_at`` is the expiry time when the token carries one."""

    def __init__(
        self, message: str, *, expired_at: datetime | None = None, status: int | None = None
    ) -> None:
        super().__init__(message, status=status, reason="Unauthorized" if status else None)
        self.expired_at = expired_at


class RunningUpdateError(ConditionsDBError):
    """A running update that the checks forbid; ``problems`` lists why."""

    def __init__(self, message: str, problems: list[TagProblem]) -> None:
        super().__init__(message)
        self.problems = problems


class LocalDatabaseError(ValueError):
    """A local database folder that cannot be read: a malformed ``database.txt`` or a missing file."""


@dataclass(frozen=True)
class LocalPayload:
    """One line of a local ``database.txt``: a payload file and the IoV it is valid for."""

    name: str
    revision: int
    iov: IoV
    path: Path
    #: MD5 hex digest of the file, the key under which the conditions database finds a payload.
    checksum: str
    line: int


@dataclass
class UploadResult:
    """Counts and IoVs of one upload of a local database folder."""

    tag: str
    uploaded_payloads: int = 0
    skipped_payloads: int = 0
    created_iovs: int = 0
    skipped_iovs: int = 0
    #: The folder's IoVs as they are now stored in the tag.
    iovs: list[PayloadIoV] = field(default_factory=list)


def _iov_fields(iov: IoV) -> dict[str, int]:
    return {"expStart": iov.exp_low, "runStart": iov.run_low, "expEnd": iov.exp_high, "runEnd": iov.run_high}


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_database_folder(folder: Path | str) -> list[LocalPayload]:
    """Read a local database folder: ``database.txt`` and the payload files it names.

    Each non-empty line is ``dbstore/<Name> <revision> <e1>,<r1>,<e2>,<r2>``; ``#`` starts a
    comment. The file of a line is ``dbstore_<Name>_rev_<revision>.root`` in the same folder.
    Repeated identical lines are read once.

    :raises LocalDatabaseError: naming the file and line of a malformed line or a missing file
    """
    folder = Path(folder)
    index = folder / DATABASE_FILE
    if not index.is_file():
        raise LocalDatabaseError(f"{index} does not exist: a database folder needs a {DATABASE_FILE} index")
    payloads: list[LocalPayload] = []
    seen: set[tuple[str, int, IoV]] = set()
    checksums: dict[Path, str] = {}
    for number, raw in enumerate(index.read_text(encoding="utf-8").splitlines(), start=1):
        text = raw.split("#", 1)[0].strip()
        if not text:
            continue
        where = f"{index}:{number}"
        parts = text.split()
        if len(parts) != 3:
            raise LocalDatabaseError(
                f"{where}: line {raw.strip()!r} must be 'dbstore/<Name> <revision> <e1>,<r1>,<e2>,<r2>'"
            )
        module, revision_text, iov_text = parts
        prefix, _, name = module.partition("/")
        if prefix != "dbstore" or not _PAYLOAD_NAME.match(name):
            raise LocalDatabaseError(
                f"{where}: payload {module!r} must be 'dbstore/<Name>' with a name of letters, digits and '_'"
            )
        if not revision_text.isdigit():
            raise LocalDatabaseError(f"{where}: revision {revision_text!r} must be a non-negative integer")
        revision = int(revision_text)
        try:
            iov = IoV.parse(iov_text)
        except ValueError as error:
            raise LocalDatabaseError(f"{where}: {error}") from None
        path = folder / f"dbstore_{name}_rev_{revision}.root"
        if not path.is_file():
            raise LocalDatabaseError(f"{where}: payload file {path} named by this line does not exist")
        if (name, revision, iov) in seen:
            continue
        seen.add((name, revision, iov))
        if path not in checksums:
            checksums[path] = _md5(path)
        payloads.append(LocalPayload(name, revision, iov, path, checksums[path], number))
    return payloads


def token_expiry(token: str) -> datetime | None:
    """Return the expiry time in a JWT's ``exp`` claim, or ``None`` for other tokens.

    The signature is not checked: the server does that. The time only serves to refuse an expired
    token before a write is sent, with a message that says when it expired.
    """
    parts = token.split(".")
    if len(parts) != 3:
        return None
    body = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(body.encode("ascii")))
        return datetime.fromtimestamp(float(claims["exp"]), UTC)
    except (binascii.Error, UnicodeError, ValueError, TypeError, KeyError, OverflowError):
        return None


def _payload_iovs(entries: Any) -> list[PayloadIoV]:
    """Turn a ``globalTagPayloads`` response into IoV records, sorted by payload name and first run."""
    records = []
    for entry in entries:
        payload = entry["payloadId"]
        for iov in entry["payloadIovs"]:
            records.append(
                PayloadIoV(
                    payload_id=int(payload["payloadId"]),
                    name=str(payload["basf2Module"]["name"]),
                    revision=int(payload["revision"]),
                    checksum=str(payload["checksum"]),
                    iov_id=int(iov["payloadIovId"]),
                    iov=IoV(
                        int(iov["expStart"]), int(iov["runStart"]), int(iov["expEnd"]), int(iov["runEnd"])
                    ),
                )
            )
    records.sort(key=lambda record: (record.name, record.iov.first, record.iov_id or 0))
    return records


class ConditionsDB:
    """Client of the conditions database v2 REST API.

    :param base_url: URL below which ``v2/`` lies, e.g. ``http://127.0.0.1:8092``
    :param token: bearer token for writes; reads work without one
    :param timeout: seconds to wait for each response
    :param session: a ``requests.Session`` to reuse; a new one by default
    :param retries: how many times a request that failed transiently is sent again
    :param backoff: seconds to wait before the first retry; the pause doubles for each further one
    :param token_source: where the token comes from, named in error messages, e.g. "the password of
        the Airflow connection 'b2cal_conddb'"
    :param sleep: the function that waits between retries; tests pass one that does not
    """

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        timeout: float = 30.0,
        session: requests.Session | None = None,
        *,
        retries: int = 3,
        backoff: float = 1.0,
        token_source: str = "the token given to ConditionsDB",
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"conditions database URL {base_url!r} must start with http:// or https://")
        if retries < 0:
            raise ValueError(f"retries is {retries}; use 0 for no retries or a positive number")
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.session = session or requests.Session()
        self.retries = retries
        self.backoff = backoff
        self.token_source = token_source
        self._sleep = sleep

    # HTTP

    def _check_token(self, method: str, path: str) -> str:
        if not self.token:
            raise ConditionsDBError(
                f"{method} v2/{path} is a write and needs a token: create ConditionsDB with token=..."
            )
        expires = token_expiry(self.token)
        if expires is not None and expires.timestamp() < time.time() - _EXPIRY_SKEW:
            raise TokenExpiredError(
                f"the conditions database token ({self.token_source}) expired at {expires:%Y-%m-%d %H:%M:%S} "
                f"UTC, so {method} v2/{path} was not sent: ask a conditions database manager for a new "
                f"token and replace it there",
                expired_at=expires,
            )
        return self.token

    def _send(self, method: str, path: str, *, write: bool = False, **kwargs: Any) -> requests.Response:
        """Send one request to ``v2/<path>``; raise :class:`ConditionsDBError` for any status >= 300."""
        url = f"{self.base_url}/v2/{path}"
        headers = {"Accept": "application/json"}
        if write:
            headers["X-Authorization"] = f"Bearer {self._check_token(method, path)}"
        try:
            response = self.session.request(method, url, headers=headers, timeout=self.timeout, **kwargs)
        except requests.RequestException as error:
            raise ConditionsDBError(
                f"{method} {url} failed: {error}; "
                f"check that the conditions database at {self.base_url} is reachable",
                transient=True,
            ) from error
        if response.status_code < 300:
            return response
        try:
            body = response.json()
            reason, message = str(body.get("reason", "")), str(body.get("message", ""))
        except (ValueError, AttributeError):
            reason, message = response.reason, response.text.strip()[:300]
        if write and response.status_code == 401:
            self._raise_unauthorized(method, path, reason, message)
        raise ConditionsDBError(
            f"{method} v2/{path} returned {response.status_code} {reason}: {message}",
            status=response.status_code,
            reason=reason,
            server_message=message,
            transient=response.status_code in TRANSIENT_STATUSES,
        )

    def _raise_unauthorized(self, method: str, path: str, reason: str, message: str) -> None:
        expires = token_expiry(self.token or "")
        if "expired" in message.lower() or (expires is not None and expires.timestamp() < time.time()):
            when = f" at {expires:%Y-%m-%d %H:%M:%S} UTC" if expires else ""
            error: ConditionsDBError = TokenExpiredError(
                f"the conditions database refused {method} v2/{path} because the token "
                f"({self.token_source}) expired{when}: ask a conditions database manager for a new token "
                f"and replace it there (server: {message})",
                expired_at=expires,
                status=401,
            )
        else:
            error = ConditionsDBError(
                f"the conditions database refused the token ({self.token_source}) for {method} v2/{path}: "
                f"{message}; check that the token is the one issued for this server",
                status=401,
                reason=reason,
            )
        error.server_message = message
        raise error

    def _request(self, method: str, path: str, *, write: bool = False, **kwargs: Any) -> requests.Response:
        """Send a request that is safe to repeat, retrying transient failures."""
        return self._retry(f"{method} v2/{path}", lambda: self._send(method, path, write=write, **kwargs))

    def _retry(self, what: str, send: Callable[[], _T], find: Callable[[], _T | None] | None = None) -> _T:
        """Call ``send`` until it succeeds, it fails for good, or the retries are used up.

        :param find: for a write that creates something: looks before each retry whether the failed
            attempt took effect after all, and returns what it created, or ``None``
        """
        attempts = self.retries + 1
        for attempt in range(1, attempts + 1):
            try:
                return send()
            except ConditionsDBError as error:
                error.attempts = attempt
                if not error.transient or attempt == attempts:
                    raise
                delay = self.backoff * 2 ** (attempt - 1)
                logger.warning(
                    "%s failed on attempt %d/%d (%s); retrying in %.1f s",
                    what,
                    attempt,
                    attempts,
                    error,
                    delay,
                )
                self._sleep(delay)
                if find is not None:
                    found = find()
                    if found is not None:
                        logger.info("%s took effect before it failed; it is not sent again", what)
                        return found
        raise AssertionError("unreachable: the last attempt returns or raises")

    # Global tags

    def list_global_tags(self) -> list[dict[str, Any]]:
        """Return every global tag."""
        return list(self._request("GET", "globalTags").json())

    def get_global_tag(self, name: str) -> dict[str, Any] | None:
        """Return the global tag called ``name``, or ``None`` if there is none."""
        try:
            return dict(self._request("GET", f"globalTag/{quote(name, safe='')}").json())
        except ConditionsDBError as error:
            if error.status == 404:
                return None
            raise

    def _require_tag(self, name: str) -> dict[str, Any]:
        tag = self.get_global_tag(name)
        if tag is None:
            raise ConditionsDBError(
                f"global tag {name!r} does not exist: check the name or create it first", status=404
            )
        return tag

    @staticmethod
    def tag_state(tag: dict[str, Any]) -> str:
        """Return the state name (OPEN, RUNNING, ...) of a global tag as returned by the API."""
        return str(tag["globalTagStatus"]["name"]).upper()

    def create_global_tag(self, name: str, description: str, tag_type: str = "DEV") -> dict[str, Any]:
        """Create an OPEN global tag of type DEV or RELEASE and return it."""
        path = f"globalTag/{quote(tag_type.upper(), safe='')}"
        body = {"name": name, "description": description}
        tag = dict(
            self._retry(
                f"POST v2/{path} ({name})",
                lambda: self._send("POST", path, write=True, json=body).json(),
                lambda: self.get_global_tag(name),
            )
        )
        logger.info("Created global tag %s (id %s, %s)", name, tag.get("globalTagId"), tag_type)
        return tag

    def clone_global_tag(self, name: str, new_name: str, description: str | None = None) -> dict[str, Any]:
        """Copy global tag ``name`` with all its IoVs into a new OPEN tag ``new_name``."""
        source = self._require_tag(name)
        body: dict[str, Any] = {"name": new_name}
        if description is not None:
            body["description"] = description
        path = f"globalTags/{source['globalTagId']}"
        tag = dict(
            self._retry(
                f"POST v2/{path} ({new_name})",
                lambda: self._send("POST", path, write=True, json=body).json(),
                lambda: self.get_global_tag(new_name),
            )
        )
        logger.info("Cloned global tag %s into %s (id %s)", name, new_name, tag.get("globalTagId"))
        return tag

    def set_global_tag_state(self, name: str, state: str) -> dict[str, Any]:
        """Move a global tag to ``state``; a tag already in that state is returned unchanged.

        :raises ConditionsDBError: with status 409 when the state machine forbids the change
        """
        tag = self._require_tag(name)
        target = state.upper()
        if self.tag_state(tag) == target:
            return tag
        path = f"globalTag/{quote(name, safe='')}/updateGlobalTagStatus/{quote(target, safe='')}"

        def already_changed() -> dict[str, Any] | None:
            current = self._require_tag(name)
            return current if self.tag_state(current) == target else None

        updated = dict(
            self._retry(f"PUT v2/{path}", lambda: self._send("PUT", path, write=True).json(), already_changed)
        )
        logger.info("Global tag %s: %s -> %s", name, self.tag_state(tag), target)
        return updated

    def global_tag_payloads(self, name: str) -> list[PayloadIoV]:
        """Return every IoV of a global tag, sorted by payload name and first run."""
        return _payload_iovs(
            self._request("GET", f"globalTag/{quote(name, safe='')}/globalTagPayloads").json()
        )

    def iov_payloads(self, name: str, exp: int | None = None, run: int | None = None) -> list[PayloadIoV]:
        """Return the IoVs of a global tag valid for run ``(exp, run)``, or all when either is ``None``."""
        params: dict[str, Any] = {"gtName": name}
        if exp is not None and run is not None:
            params.update(expNumber=exp, runNumber=run)
        entries = self._request("GET", "iovPayloads", params=params).json()
        grouped = [{"payloadId": entry["payload"], "payloadIovs": [entry["payloadIov"]]} for entry in entries]
        return _payload_iovs(grouped)

    def prepare_staging_tag(self, name: str, description: str) -> dict[str, Any]:
        """Return an empty OPEN staging tag called ``name``, creating or emptying it as needed.

        An existing tag in TESTING or VALIDATED is moved back to OPEN, then all its IoVs are deleted.

        :raises ConditionsDBError: if the tag is PUBLISHED, INVALID or RUNNING, which cannot be emptied
        """
        tag = self.get_global_tag(name)
        if tag is None:
            return self.create_global_tag(name, description)
        state = self.tag_state(tag)
        if state in _REOPENABLE_STATES:
            tag = self.set_global_tag_state(name, "OPEN")
        elif state != "OPEN":
            raise ConditionsDBError(
                f"staging tag {name!r} is {state} and cannot be emptied or reused: "
                "choose a new staging tag name"
            )
        iovs = self.global_tag_payloads(name)
        for item in iovs:
            if item.iov_id is not None:
                self.delete_iov(item.iov_id)
        if iovs:
            logger.info("Emptied staging tag %s: deleted %d IoVs", name, len(iovs))
        return self._require_tag(name)

    # Payloads and IoVs

    def check_payloads(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], dict[str, Any]]:
        """Return the stored payload for each ``(name, md5 checksum)`` the database already has.

        When several payloads share name and checksum, the oldest (lowest id) is returned.
        """
        query = [{"name": name, "checksum": checksum} for name, checksum in sorted(set(keys))]
        if not query:
            return {}
        found: dict[tuple[str, str], dict[str, Any]] = {}
        for payload in sorted(
            self._request("POST", "checkPayloads", json=query).json(), key=lambda item: item["payloadId"]
        ):
            found.setdefault((payload["basf2Module"]["name"], payload["checksum"]), payload)
        return found

    def download_payloads(self, keys: Iterable[tuple[str, str]]) -> dict[int, bytes]:
        """Download the stored file of each ``(name, md5 checksum)`` payload; return them by payload id.

        A payload's file lies at its ``payloadUrl`` below its ``baseUrl``. Keys the database does not
        have are left out.
        """
        files: dict[int, bytes] = {}
        for payload in self.check_payloads(keys).values():
            url = urljoin(str(payload.get("baseUrl") or f"{self.base_url}/"), str(payload["payloadUrl"]))
            if not url.startswith(("http://", "https://")):
                raise ConditionsDBError(
                    f"payload {payload['payloadId']} has the file URL {url!r}, not http(s)"
                )

            def fetch(url: str = url) -> bytes:
                try:
                    response = self.session.get(url, timeout=self.timeout)
                except requests.RequestException as error:
                    raise ConditionsDBError(f"GET {url} failed: {error}", transient=True) from error
                if response.status_code >= 300:
                    raise ConditionsDBError(
                        f"GET {url} returned {response.status_code}",
                        status=response.status_code,
                        transient=response.status_code in TRANSIENT_STATUSES,
                    )
                return response.content

            files[int(payload["payloadId"])] = self._retry(f"GET {url}", fetch)
        return files

    def upload_payload(self, name: str, path: Path, checksum: str | None = None) -> dict[str, Any]:
        """Upload one payload file; the server assigns its revision. Return the stored payload."""
        digest = checksum or _md5(path)
        url_path = f"package/dbstore/module/{quote(name, safe='')}/payload"

        def send() -> dict[str, Any]:
            with open(path, "rb") as handle:
                return dict(
                    self._send(
                        "POST",
                        url_path,
                        write=True,
                        files={"file": (path.name, handle, "application/x-root")},
                        data={"checksum": digest},
                    ).json()
                )

        return self._retry(
            f"POST v2/{url_path} ({path.name})",
            send,
            lambda: self.check_payloads([(name, digest)]).get((name, digest)),
        )

    def create_iov(
        self, tag_id: int, payload_id: int, iov: IoV, tag_name: str | None = None
    ) -> dict[str, Any]:
        """Add an IoV of a payload to the global tag with id ``tag_id``.

        :param tag_name: the tag's name, if the caller knows it; before a retry the client looks in
            the tag for the IoV, and needs the name for that
        """
        path = f"globalTagPayload/{tag_id},{payload_id}/payloadIov/{iov.as_text()}"

        def find() -> dict[str, Any] | None:
            name = tag_name or self._tag_name(tag_id)
            for record in self.global_tag_payloads(name):
                if record.payload_id == payload_id and record.iov == iov:
                    return {"payloadIovId": record.iov_id, **_iov_fields(iov)}
            return None

        return self._retry(f"POST v2/{path}", lambda: dict(self._send("POST", path, write=True).json()), find)

    def _tag_name(self, tag_id: int) -> str:
        for tag in self.list_global_tags():
            if int(tag["globalTagId"]) == tag_id:
                return str(tag["name"])
        raise ConditionsDBError(f"global tag with id {tag_id} does not exist", status=404)

    def change_iov(self, iov_id: int, iov: IoV) -> dict[str, Any]:
        """Change the range of the IoV with id ``iov_id``; sending it twice gives the same result."""
        return dict(self._request("PUT", f"payloadIov/{iov_id}", write=True, json=_iov_fields(iov)).json())

    def delete_iov(self, iov_id: int) -> None:
        """Delete the IoV with id ``iov_id``; only OPEN tags allow it.

        When a retried delete finds the IoV gone, the failed attempt deleted it, and that counts as
        success.
        """
        try:
            self._request("DELETE", f"payloadIov/{iov_id}", write=True)
        except ConditionsDBError as error:
            if error.status == 404 and error.attempts > 1:
                return
            raise

    read_database_folder = staticmethod(read_database_folder)

    def upload_database_folder(self, folder: Path | str, tag: str) -> UploadResult:
        """Upload a local database folder to global tag ``tag``, skipping what is already there.

        Payloads are matched by name and MD5 checksum, so a file the database has (from any tag) is
        not uploaded again. IoVs are matched by payload and range, so none is created twice. Running
        it again after a failure completes the upload; running it after a success changes nothing,
        and then needs no write access and no particular tag state.

        :raises LocalDatabaseError: if the folder cannot be read
        :raises ConditionsDBError: if the tag is missing, or is not OPEN or RUNNING while something
            is missing from it, or a request fails
        """
        payloads = read_database_folder(folder)
        info = self._require_tag(tag)
        result = UploadResult(tag=tag)
        stored = self.check_payloads((item.name, item.checksum) for item in payloads)
        existing = {(record.payload_id, record.iov): record for record in self.global_tag_payloads(tag)}
        missing = [
            item
            for item in payloads
            if (item.name, item.checksum) not in stored
            or (int(stored[(item.name, item.checksum)]["payloadId"]), item.iov) not in existing
        ]
        state = self.tag_state(info)
        if missing and state not in ("OPEN", "RUNNING"):
            raise ConditionsDBError(
                f"global tag {tag!r} is {state}: uploads need an OPEN tag; "
                f"{len(missing)} IoVs of {folder} are missing from it; "
                "prepare it with prepare_staging_tag or move it back to OPEN first"
            )

        for item in payloads:
            key = (item.name, item.checksum)
            if key in stored:
                continue
            stored[key] = self.upload_payload(item.name, item.path, item.checksum)
            result.uploaded_payloads += 1
            logger.info(
                "Uploaded %s (local revision %d, md5 %s) as payload %s revision %s",
                item.name,
                item.revision,
                item.checksum,
                stored[key]["payloadId"],
                stored[key]["revision"],
            )
        result.skipped_payloads = (
            len({(item.name, item.checksum) for item in payloads}) - result.uploaded_payloads
        )

        for item in payloads:
            payload = stored[(item.name, item.checksum)]
            payload_id = int(payload["payloadId"])
            record = existing.get((payload_id, item.iov))
            if record is None:
                created = self.create_iov(int(info["globalTagId"]), payload_id, item.iov, tag_name=tag)
                record = PayloadIoV(
                    payload_id,
                    item.name,
                    int(payload["revision"]),
                    item.checksum,
                    int(created["payloadIovId"]),
                    item.iov,
                )
                existing[(payload_id, item.iov)] = record
                result.created_iovs += 1
            else:
                result.skipped_iovs += 1
            result.iovs.append(record)
        logger.info(
            "Upload of %s to %s: %d payloads uploaded, %d already stored; "
            "%d IoVs created, %d already present",
            folder,
            tag,
            result.uploaded_payloads,
            result.skipped_payloads,
            result.created_iovs,
            result.skipped_iovs,
        )
        return result

    # Running update

    def running_update(
        self,
        staging: str,
        running: str,
        first_run: tuple[int, int],
        dry_run: bool = True,
        approved: Iterable[str] | None = None,
    ) -> RunningUpdatePlan:
        """Merge the VALIDATED tag ``staging`` into the RUNNING tag ``running`` from ``first_run`` on.

        The running tag's open-ended IoVs of the staged payloads are closed just before the first
        run, and the staging IoVs are added; :mod:`b2cal.globaltags` describes the rules. A dry run
        only returns the plan, including any problems. A real run raises :class:`RunningUpdateError`
        when the plan has problems, or when ``approved`` is given and the plan holds an operation
        that is not in it. Otherwise it applies the plan and checks that nothing remains.

        The operations are applied payload by payload: the running tag's IoV of a payload is closed,
        then the payload's staging IoVs are added, before the next payload is touched. A failure
        therefore leaves at most one payload without an IoV for the new runs, and every other
        payload either fully old or fully new. Because the plan is computed from the current contents
        of both tags, repeating a real run after a partial failure completes it without duplicates.
        The update cannot be undone, so do a dry run first.

        :param approved: keys of the operations someone approved (see
            :meth:`RunningUpdatePlan.operation_keys`); ``None`` skips that check
        :raises ConditionsDBError: if a tag is missing or in the wrong state, or a request fails
        :raises RunningUpdateError: for a real run whose plan has problems or unapproved operations
        """
        for name, required, fix in (
            (running, "RUNNING", "set the running tag to RUNNING"),
            (staging, "VALIDATED", "validate the staging tag"),
        ):
            state = self.tag_state(self._require_tag(name))
            if state != required:
                raise ConditionsDBError(
                    f"global tag {name!r} is {state}, but the running update needs it {required}: {fix}"
                )
        running_tag = self._require_tag(running)
        staging_iovs = self.global_tag_payloads(staging)
        plan = plan_running_update(self.global_tag_payloads(running), staging_iovs, first_run)
        plan.staging_tag, plan.running_tag, plan.dry_run = staging, running, dry_run
        logger.info("%s", plan.summary())
        if dry_run:
            return plan
        if plan.problems:
            lines = "; ".join(problem.message for problem in plan.problems)
            raise RunningUpdateError(
                f"running update of {running} with {staging} rejected because of "
                f"{len(plan.problems)} problems: {lines}",
                plan.problems,
            )
        if approved is not None and (extra := plan.unapproved(approved)):
            raise RunningUpdateError(
                f"running update of {running} with {staging} holds {len(extra)} operations that were not "
                f"approved: {'; '.join(extra)}; make a new readiness report and sign off again",
                [],
            )

        closes: dict[str, list[IoVToClose]] = defaultdict(list)
        adds: dict[str, list[IoVToAdd]] = defaultdict(list)
        for close in plan.to_close:
            closes[close.name].append(close)
        for add in plan.to_add:
            adds[add.name].append(add)
        for name in sorted(set(closes) | set(adds)):
            for close in closes[name]:
                self._close_running_iov(running, close)
            for add in adds[name]:
                created = self.create_iov(int(running_tag["globalTagId"]), add.payload_id, add.iov, running)
                logger.info(
                    "Added %s revision %d to %s: IoV %s (id %s)",
                    add.name,
                    add.revision,
                    running,
                    add.iov,
                    created["payloadIovId"],
                )

        remaining = plan_running_update(self.global_tag_payloads(running), staging_iovs, first_run)
        if not remaining.is_empty or remaining.problems:
            raise ConditionsDBError(
                f"running update of {running} is incomplete after applying it: {remaining.summary()}; "
                "run it again to finish"
            )
        plan.applied = True
        logger.info("Running update applied: %s", plan.summary())
        return plan

    def _close_running_iov(self, running: str, close: IoVToClose) -> None:
        if close.iov_id is None:
            raise ConditionsDBError(
                f"IoV {close.old} of {close.name} in {running} has no id and cannot be closed"
            )
        self.change_iov(close.iov_id, close.new)
        logger.info(
            "Closed %s revision %d in %s: %s -> %s", close.name, close.revision, running, close.old, close.new
        )
