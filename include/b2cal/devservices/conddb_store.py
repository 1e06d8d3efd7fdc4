"""Store the state of the development conditions database: global tags, payloads and their IoVs.

:class:`ConditionsState` enforces the rules of the real service that clients must respect:

- Global tag states change only along OPEN → TESTING | RUNNING, TESTING → VALIDATED | OPEN,
  VALIDATED → PUBLISHED | OPEN and PUBLISHED → INVALID. INVALID is final, and so is RUNNING here.
- IoVs can be added, changed and deleted freely in an OPEN tag. A RUNNING tag only takes changes
  for new runs: runs from its *frontier*, the latest start of any IoV in the tag, onwards. A new IoV
  must start at or after the frontier and must not overlap an IoV of the same payload name. An
  existing open-ended IoV may be closed, but must still cover every run before the frontier.
  Deleting IoVs of a RUNNING tag is rejected. Tags in any other state are read-only.
  NOTE: the real service's exact test for "new runs" is not public; the frontier rule is this
  service's interpretation of it.
- Payload revisions are numbered 1, 2, ... per payload name by the server, and the server stores
  the MD5 checksum of the uploaded bytes.
- Writes need the configured token, or a JWT that :meth:`ConditionsState.issue_token` signed with
  it. A JWT past its ``exp`` is refused with 401 and a message that says it expired, so clients can
  tell an expired token from a wrong one.

:class:`FaultSchedule` plans failures for tests: the n-th matching request fails, optionally after
the server carried it out (a response lost on the way back).

Errors are raised as :class:`ConditionsError` and sent as ``{"code", "reason", "message"}``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import re
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

from b2cal.devservices.common import FaultInjector, utc_now
from b2cal.devservices.config import DevServicesConfig
from b2cal.devservices.persistence import decode_bytes, decode_time, encode_bytes, encode_time
from b2cal.iov import IoV

logger = logging.getLogger(__name__)

#: Allowed state changes of a global tag.
STATE_TRANSITIONS: dict[str, tuple[str, ...]] = {
    "OPEN": ("TESTING", "RUNNING"),
    "TESTING": ("VALIDATED", "OPEN"),
    "VALIDATED": ("PUBLISHED", "OPEN"),
    "PUBLISHED": ("INVALID",),
    "INVALID": (),
    "RUNNING": (),
}
STATE_IDS = {name: index for index, name in enumerate(STATE_TRANSITIONS, start=1)}
TAG_TYPES = {"DEV": 1, "RELEASE": 2}

_TAG_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,199}$")
_PAYLOAD_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,127}$")
_MD5 = re.compile(r"^[0-9a-f]{32}$")


class ConditionsError(Exception):
    """An error response: HTTP status and a message that names the bad value and the fix."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def body(self) -> dict[str, Any]:
        """Return the JSON body of the error response."""
        return {"code": self.status, "reason": HTTPStatus(self.status).phrase, "message": self.message}


@dataclass
class GlobalTag:
    """A global tag."""

    id: int
    name: str
    description: str
    type: str
    state: str
    created: datetime
    modified: datetime


@dataclass(frozen=True)
class Payload:
    """An uploaded payload file."""

    id: int
    name: str
    revision: int
    checksum: str
    data: bytes
    created: datetime

    @property
    def url(self) -> str:
        """Path of the payload file below the file server's base URL."""
        return f"dbstore/{self.name}/dbstore_{self.name}_rev_{self.revision}.root"


@dataclass
class PayloadIovRecord:
    """An IoV of a payload in a global tag."""

    id: int
    tag_id: int
    payload_id: int
    iov: IoV
    created: datetime


@dataclass
class ScheduledFault:
    """A planned failure of the request that comes after ``after`` matching requests."""

    status: int
    path_prefix: str
    method: str | None
    after: int
    #: Carry the request out before answering with the error, as when a response is lost.
    apply: bool


class FaultSchedule:
    """Failures planned for particular requests, e.g. "the third IoV creation fails".

    Unlike the plain failure queue of the development services, a fault here can wait for a number
    of matching requests to pass first, and can let the server carry the request out before it
    answers with the error.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[ScheduledFault] = []

    def add(
        self,
        *,
        status: int = 503,
        path_prefix: str = "/",
        method: str | None = None,
        after: int = 0,
        apply: bool = False,
        count: int = 1,
    ) -> None:
        """Make ``count`` matching requests fail with ``status`` once ``after`` of them have passed."""
        if not 400 <= status <= 599:
            raise ValueError(f"status {status} is not an HTTP error status: use 400 to 599")
        if after < 0 or count < 0:
            raise ValueError(f"after={after} and count={count} must not be negative")
        with self._lock:
            for _ in range(count):
                self._faults.append(
                    ScheduledFault(status, path_prefix, method.upper() if method else None, after, apply)
                )

    def take(self, method: str, path: str) -> ScheduledFault | None:
        """Count a request against the planned faults; return the fault it must suffer, if any."""
        with self._lock:
            matching = [
                fault
                for fault in self._faults
                if path.startswith(fault.path_prefix) and fault.method in (None, method.upper())
            ]
            if not matching:
                return None
            first = matching[0]
            if first.after > 0:
                first.after -= 1
                return None
            self._faults.remove(first)
            return first

    @property
    def pending(self) -> int:
        """Number of planned faults not yet returned."""
        with self._lock:
            return len(self._faults)

    def clear(self) -> None:
        """Drop every planned fault."""
        with self._lock:
            self._faults.clear()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _format_time(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _next_run(key: tuple[float, float]) -> tuple[float, float]:
    """Return the first run after ``key``, an ``(exp, run)`` pair as :meth:`IoV.last_key` returns it."""
    exp, run = key
    if run == float("inf"):
        return (exp + 1, 0)
    return (exp, run + 1)


def _saved_time(text: str) -> datetime:
    value = decode_time(text)
    if value is None:
        raise ValueError("a saved global tag, payload or IoV has no time")
    return value


class ConditionsState:
    """In-memory store of the development conditions database.

    Every public method takes the lock, so tests may call them from another thread while the server
    runs.
    """

    def __init__(self, config: DevServicesConfig) -> None:
        self.config = config
        self.base_url: str | None = None
        self.faults = FaultInjector()
        self.schedule = FaultSchedule()
        self._lock = threading.RLock()
        self.reset()

    def reset(self) -> None:
        """Delete every global tag, payload and IoV."""
        with self._lock:
            self._tags: dict[str, GlobalTag] = {}
            self._payloads: dict[int, Payload] = {}
            self._iovs: dict[int, PayloadIovRecord] = {}
            self._tag_payload_ids: dict[tuple[int, int], int] = {}
            self._next_tag_id = 1
            self._next_payload_id = 1
            self._next_iov_id = 1
            self.faults.clear()
            self.schedule.clear()

    # Saved state

    def export_state(self) -> dict[str, Any]:
        """Return every global tag, payload and IoV, and the id sequences, as JSON-compatible data."""
        with self._lock:
            return {
                "tags": [
                    {
                        "id": tag.id,
                        "name": tag.name,
                        "description": tag.description,
                        "type": tag.type,
                        "state": tag.state,
                        "created": encode_time(tag.created),
                        "modified": encode_time(tag.modified),
                    }
                    for tag in self.tags()
                ],
                "payloads": [
                    {
                        "id": payload.id,
                        "name": payload.name,
                        "revision": payload.revision,
                        "checksum": payload.checksum,
                        "data": encode_bytes(payload.data),
                        "created": encode_time(payload.created),
                    }
                    for payload in sorted(self._payloads.values(), key=lambda item: item.id)
                ],
                "iovs": [
                    {
                        "id": record.id,
                        "tag_id": record.tag_id,
                        "payload_id": record.payload_id,
                        "iov": [
                            record.iov.exp_low,
                            record.iov.run_low,
                            record.iov.exp_high,
                            record.iov.run_high,
                        ],
                        "created": encode_time(record.created),
                    }
                    for record in sorted(self._iovs.values(), key=lambda item: item.id)
                ],
                "tag_payload_ids": [
                    [tag_id, payload_id, number]
                    for (tag_id, payload_id), number in self._tag_payload_ids.items()
                ],
                "next_ids": {
                    "tag": self._next_tag_id,
                    "payload": self._next_payload_id,
                    "iov": self._next_iov_id,
                },
            }

    def restore_state(self, data: dict[str, Any]) -> None:
        """Replace the tags, payloads, IoVs and id sequences with what :meth:`export_state` saved.

        :raises KeyError, TypeError, ValueError: when the data is incomplete or inconsistent
        """
        tags = {}
        for item in data["tags"]:
            if item["state"] not in STATE_TRANSITIONS or item["type"] not in TAG_TYPES:
                raise ValueError(f"global tag {item['name']!r} has an unknown state or type")
            tags[str(item["name"])] = GlobalTag(
                int(item["id"]),
                str(item["name"]),
                str(item["description"]),
                str(item["type"]),
                str(item["state"]),
                _saved_time(item["created"]),
                _saved_time(item["modified"]),
            )
        payloads = {}
        for item in data["payloads"]:
            payload = Payload(
                int(item["id"]),
                str(item["name"]),
                int(item["revision"]),
                str(item["checksum"]),
                decode_bytes(item["data"]),
                _saved_time(item["created"]),
            )
            payloads[payload.id] = payload
        tag_ids = {tag.id for tag in tags.values()}
        iovs = {}
        for item in data["iovs"]:
            record = PayloadIovRecord(
                int(item["id"]),
                int(item["tag_id"]),
                int(item["payload_id"]),
                IoV(*(int(value) for value in item["iov"])),
                _saved_time(item["created"]),
            )
            if record.tag_id not in tag_ids or record.payload_id not in payloads:
                raise ValueError(f"payload IoV {record.id} names a missing global tag or payload")
            iovs[record.id] = record
        tag_payload_ids = {
            (int(tag_id), int(payload_id)): int(number)
            for tag_id, payload_id, number in data["tag_payload_ids"]
        }
        if any((record.tag_id, record.payload_id) not in tag_payload_ids for record in iovs.values()):
            raise ValueError("a payload IoV has no globalTagPayloadId")
        next_ids = data["next_ids"]
        with self._lock:
            self.reset()
            self._tags = tags
            self._payloads = payloads
            self._iovs = iovs
            self._tag_payload_ids = tag_payload_ids
            self._next_tag_id = int(next_ids["tag"])
            self._next_payload_id = int(next_ids["payload"])
            self._next_iov_id = int(next_ids["iov"])

    # Tokens

    def issue_token(self, lifetime: float, subject: str | None = None) -> str:
        """Return a JWT (HS256, signed with the configured token) valid for ``lifetime`` seconds.

        A negative lifetime gives a token that has already expired.
        """
        now = int(time.time())
        header = {"alg": "HS256", "typ": "JWT"}
        claims = {"sub": subject or self.config.conddb_username, "iat": now, "exp": now + int(lifetime)}
        signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
        return f"{signing_input}.{_b64(self._sign(signing_input))}"

    def _sign(self, signing_input: str) -> bytes:
        return hmac.new(
            self.config.conddb_token.encode(), signing_input.encode("ascii"), hashlib.sha256
        ).digest()

    def check_token(self, token: str) -> None:
        """Accept the configured token or an unexpired JWT from :meth:`issue_token`; else raise 401."""
        if hmac.compare_digest(token, self.config.conddb_token):
            return
        parts = token.split(".")
        invalid = ConditionsError(
            401, "The bearer token in X-Authorization is invalid: check the configured token"
        )
        if len(parts) != 3:
            raise invalid
        try:
            signature = _unb64(parts[2])
            claims = json.loads(_unb64(parts[1]))
            expires = float(claims["exp"])
        except (binascii.Error, UnicodeError, ValueError, TypeError, KeyError):
            raise invalid from None
        if not hmac.compare_digest(signature, self._sign(f"{parts[0]}.{parts[1]}")):
            raise invalid
        if expires < time.time():
            when = datetime.fromtimestamp(expires, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            raise ConditionsError(401, f"The bearer token expired at {when}: request a new token")

    # Global tags

    def tags(self) -> list[GlobalTag]:
        """Return every global tag in creation order."""
        with self._lock:
            return sorted(self._tags.values(), key=lambda tag: tag.id)

    def tag(self, name: str) -> GlobalTag:
        """Return the global tag with this name; raise 404 if there is none."""
        with self._lock:
            tag = self._tags.get(name)
            if tag is None:
                raise ConditionsError(404, f"Global tag {name!r} does not exist: check the name or create it")
            return tag

    def tag_by_id(self, tag_id: int) -> GlobalTag:
        """Return the global tag with this id; raise 404 if there is none."""
        with self._lock:
            for tag in self._tags.values():
                if tag.id == tag_id:
                    return tag
            raise ConditionsError(404, f"Global tag with id {tag_id} does not exist")

    def create_tag(self, tag_type: str, body: Any) -> GlobalTag:
        """Create an OPEN global tag of type DEV or RELEASE from ``{"name", "description"}``."""
        with self._lock:
            if tag_type not in TAG_TYPES:
                raise ConditionsError(
                    400, f"Global tag type {tag_type!r} is unknown: use one of {', '.join(TAG_TYPES)}"
                )
            name, description = self._name_and_description(body)
            return self._add_tag(name, description, tag_type)

    def clone_tag(self, tag_id: int, body: Any) -> GlobalTag:
        """Copy a global tag with all its IoVs into a new OPEN tag named in ``body``."""
        with self._lock:
            source = self.tag_by_id(tag_id)
            name, description = self._name_and_description(body, default_description=source.description)
            clone = self._add_tag(name, description, source.type)
            for record in sorted(self._iovs.values(), key=lambda item: item.id):
                if record.tag_id == source.id:
                    self._add_iov(clone, record.payload_id, record.iov)
            return clone

    @staticmethod
    def _name_and_description(body: Any, default_description: str = "") -> tuple[str, str]:
        if not isinstance(body, dict):
            raise ConditionsError(
                400, 'The request body must be a JSON object {"name": ..., "description": ...}'
            )
        name = body.get("name")
        if not isinstance(name, str) or not _TAG_NAME.match(name):
            raise ConditionsError(
                400,
                f"Global tag name {name!r} is invalid: use 1 to 200 letters, digits, '_', '-', '.' or '+', "
                "starting with a letter or digit",
            )
        description = body.get("description", default_description)
        if not isinstance(description, str):
            raise ConditionsError(400, f"Global tag description must be a string, got {description!r}")
        return name, description

    def _add_tag(self, name: str, description: str, tag_type: str) -> GlobalTag:
        if name in self._tags:
            raise ConditionsError(409, f"Global tag {name!r} already exists: choose another name or reuse it")
        now = utc_now()
        tag = GlobalTag(self._next_tag_id, name, description, tag_type, "OPEN", now, now)
        self._next_tag_id += 1
        self._tags[name] = tag
        return tag

    def set_state(self, name: str, state: str) -> GlobalTag:
        """Change a tag's state along an allowed transition; raise 409 for any other change."""
        with self._lock:
            tag = self.tag(name)
            target = state.upper()
            if target not in STATE_TRANSITIONS:
                raise ConditionsError(
                    400, f"Global tag state {state!r} is unknown: use one of {', '.join(STATE_TRANSITIONS)}"
                )
            allowed = STATE_TRANSITIONS[tag.state]
            if target not in allowed:
                if allowed:
                    hint = f"from {tag.state} it can only go to {' or '.join(allowed)}"
                else:
                    hint = f"{tag.state} is a final state"
                raise ConditionsError(
                    409, f"Global tag {name!r} cannot change from {tag.state} to {target}: {hint}"
                )
            tag.state = target
            tag.modified = utc_now()
            return tag

    # Payloads

    def payload(self, payload_id: int) -> Payload:
        """Return the payload with this id; raise 404 if there is none."""
        with self._lock:
            payload = self._payloads.get(payload_id)
            if payload is None:
                raise ConditionsError(404, f"Payload with id {payload_id} does not exist")
            return payload

    def payload_by_url(self, url: str) -> Payload | None:
        """Return the payload stored under a ``payloadUrl``, or ``None``."""
        with self._lock:
            for payload in self._payloads.values():
                if payload.url == url:
                    return payload
            return None

    def add_payload(self, name: str, data: bytes, checksum: str) -> Payload:
        """Store an uploaded payload under the next revision of its name.

        :raises ConditionsError: 400 if the name is invalid or ``checksum`` is not the MD5 of ``data``
        """
        with self._lock:
            if not _PAYLOAD_NAME.match(name):
                raise ConditionsError(
                    400,
                    f"Payload name {name!r} is invalid: use letters, digits and '_', starting with a letter",
                )
            if not _MD5.match(checksum.lower()):
                raise ConditionsError(
                    400,
                    f"Checksum {checksum!r} of payload {name!r} is not an MD5 hex digest of 32 characters",
                )
            actual = hashlib.md5(data).hexdigest()
            if checksum.lower() != actual:
                raise ConditionsError(
                    400,
                    f"Checksum {checksum!r} does not match the uploaded file of payload {name!r}, "
                    f"whose MD5 is {actual}: send the MD5 hex digest of the file",
                )
            revision = 1 + max(
                (payload.revision for payload in self._payloads.values() if payload.name == name), default=0
            )
            payload = Payload(self._next_payload_id, name, revision, actual, data, utc_now())
            self._next_payload_id += 1
            self._payloads[payload.id] = payload
            return payload

    def check_payloads(self, body: Any) -> list[Payload]:
        """Return the stored payloads matching any ``{"name", "checksum"}`` item of ``body``."""
        if not isinstance(body, list) or not all(
            isinstance(item, dict)
            and isinstance(item.get("name"), str)
            and isinstance(item.get("checksum"), str)
            for item in body
        ):
            raise ConditionsError(
                400, 'The request body must be a list of {"name": ..., "checksum": ...} objects'
            )
        requested = {(item["name"], item["checksum"].lower()) for item in body}
        with self._lock:
            return [
                payload
                for payload in sorted(self._payloads.values(), key=lambda item: item.id)
                if (payload.name, payload.checksum) in requested
            ]

    # IoVs

    def iovs_of(self, tag: GlobalTag) -> list[PayloadIovRecord]:
        """Return the IoVs of a tag in creation order."""
        with self._lock:
            return [
                record
                for record in sorted(self._iovs.values(), key=lambda item: item.id)
                if record.tag_id == tag.id
            ]

    def iov(self, iov_id: int) -> PayloadIovRecord:
        """Return the IoV with this id; raise 404 if there is none."""
        with self._lock:
            record = self._iovs.get(iov_id)
            if record is None:
                raise ConditionsError(404, f"Payload IoV with id {iov_id} does not exist")
            return record

    def frontier(self, tag: GlobalTag) -> tuple[int, int] | None:
        """Return the latest start of any IoV in the tag: runs from there on count as new runs."""
        with self._lock:
            starts = [record.iov.first for record in self._iovs.values() if record.tag_id == tag.id]
            return max(starts) if starts else None

    def add_iov(self, tag_id: int, payload_id: int, iov: IoV) -> PayloadIovRecord:
        """Add an IoV of a payload to a tag, applying the rules of the tag's state."""
        with self._lock:
            tag = self.tag_by_id(tag_id)
            payload = self.payload(payload_id)
            if tag.state == "RUNNING":
                self._check_running_add(tag, payload, iov)
            elif tag.state != "OPEN":
                raise ConditionsError(
                    409,
                    f"Global tag {tag.name!r} is {tag.state}: IoVs can only be added to an OPEN tag, or to a "
                    "RUNNING tag for new runs; move the tag back to OPEN first",
                )
            return self._add_iov(tag, payload.id, iov)

    def _check_running_add(self, tag: GlobalTag, payload: Payload, iov: IoV) -> None:
        frontier = self.frontier(tag)
        if frontier is not None and iov.first < frontier:
            raise ConditionsError(
                409,
                f"Global tag {tag.name!r} is RUNNING and only accepts IoVs for new runs: IoV {iov} starts "
                f"before {frontier[0]},{frontier[1]}, the latest IoV start in the tag",
            )
        for record in self._iovs.values():
            if record.tag_id != tag.id or self._payloads[record.payload_id].name != payload.name:
                continue
            if record.iov.overlaps(iov):
                raise ConditionsError(
                    409,
                    f"Global tag {tag.name!r} is RUNNING: IoV {iov} of payload {payload.name!r} overlaps IoV "
                    f"{record.iov} (id {record.id}); close that IoV before the new one starts",
                )

    def _add_iov(self, tag: GlobalTag, payload_id: int, iov: IoV) -> PayloadIovRecord:
        self._tag_payload_ids.setdefault((tag.id, payload_id), len(self._tag_payload_ids) + 1)
        record = PayloadIovRecord(self._next_iov_id, tag.id, payload_id, iov, utc_now())
        self._next_iov_id += 1
        self._iovs[record.id] = record
        tag.modified = record.created
        return record

    def change_iov(self, iov_id: int, body: Any) -> PayloadIovRecord:
        """Change an IoV's range from ``{"expStart", "runStart", "expEnd", "runEnd"}``; missing keys stay."""
        with self._lock:
            record = self.iov(iov_id)
            tag = self.tag_by_id(record.tag_id)
            if not isinstance(body, dict):
                raise ConditionsError(
                    400, 'The request body must be {"expStart", "runStart", "expEnd", "runEnd"}'
                )
            old = record.iov
            try:
                new = IoV(
                    int(body.get("expStart", old.exp_low)),
                    int(body.get("runStart", old.run_low)),
                    int(body.get("expEnd", old.exp_high)),
                    int(body.get("runEnd", old.run_high)),
                )
            except (TypeError, ValueError) as error:
                raise ConditionsError(400, f"Invalid IoV for payload IoV {iov_id}: {error}") from None
            if tag.state == "RUNNING":
                self._check_running_change(tag, record, new)
            elif tag.state != "OPEN":
                raise ConditionsError(
                    409, f"Global tag {tag.name!r} is {tag.state}: IoVs can only be changed in an OPEN tag"
                )
            record.iov = new
            tag.modified = utc_now()
            return record

    def _check_running_change(self, tag: GlobalTag, record: PayloadIovRecord, new: IoV) -> None:
        old = record.iov
        if new.first != old.first or not old.is_open_ended:
            raise ConditionsError(
                409,
                f"Global tag {tag.name!r} is RUNNING: only the end of an open-ended IoV can change, "
                f"but payload IoV {record.id} would go from {old} to {new}",
            )
        frontier = self.frontier(tag)
        if frontier is not None and _next_run(new.last_key()) < frontier:
            raise ConditionsError(
                409,
                f"Global tag {tag.name!r} is RUNNING: closing payload IoV {record.id} at {new.exp_high},"
                f"{new.run_high} would uncover runs before {frontier[0]},{frontier[1]}, the latest IoV start",
            )

    def delete_iov(self, iov_id: int) -> PayloadIovRecord:
        """Delete an IoV of an OPEN tag."""
        with self._lock:
            record = self.iov(iov_id)
            tag = self.tag_by_id(record.tag_id)
            if tag.state != "OPEN":
                raise ConditionsError(
                    409,
                    f"Global tag {tag.name!r} is {tag.state}: IoVs can only be deleted from an OPEN tag; "
                    "move it back to OPEN first, or close the IoV of a RUNNING tag instead",
                )
            del self._iovs[iov_id]
            tag.modified = utc_now()
            return record

    def iovs_at(self, tag: GlobalTag, exp: int | None, run: int | None) -> list[PayloadIovRecord]:
        """Return the tag's IoVs containing run ``(exp, run)``, or all of them when either is ``None``."""
        records = self.iovs_of(tag)
        if exp is None or run is None:
            return records
        return [record for record in records if record.iov.contains(exp, run)]

    # Representations

    def tag_json(self, tag: GlobalTag) -> dict[str, Any]:
        """Return the REST representation of a global tag."""
        return {
            "globalTagId": tag.id,
            "name": tag.name,
            "description": tag.description,
            "globalTagType": {"globalTagTypeId": TAG_TYPES[tag.type], "name": tag.type, "description": ""},
            "globalTagStatus": {
                "globalTagStatusId": STATE_IDS[tag.state],
                "name": tag.state,
                "description": "",
            },
            "isDefault": False,
            "creationDate": _format_time(tag.created),
            "modificationDate": _format_time(tag.modified),
            "modifiedBy": self.config.conddb_username,
        }

    def payload_json(self, payload: Payload, files_url: str) -> dict[str, Any]:
        """Return the REST representation of a payload."""
        return {
            "payloadId": payload.id,
            "basf2Module": {"basf2ModuleId": payload.id, "name": payload.name},
            "revision": payload.revision,
            "checksum": payload.checksum,
            "payloadUrl": payload.url,
            "baseUrl": files_url,
            "isDefault": False,
            "creationDate": _format_time(payload.created),
            "modifiedBy": self.config.conddb_username,
        }

    def iov_json(self, record: PayloadIovRecord) -> dict[str, Any]:
        """Return the REST representation of a payload IoV."""
        return {
            "payloadIovId": record.id,
            "globalTagPayloadId": self._tag_payload_ids[(record.tag_id, record.payload_id)],
            "expStart": record.iov.exp_low,
            "runStart": record.iov.run_low,
            "expEnd": record.iov.exp_high,
            "runEnd": record.iov.run_high,
            "creationDate": _format_time(record.created),
            "modifiedBy": self.config.conddb_username,
        }

    def tag_payloads_json(self, tag: GlobalTag, files_url: str) -> list[dict[str, Any]]:
        """Return a tag's contents grouped by payload, as ``globalTagPayloads`` returns them."""
        with self._lock:
            grouped: dict[int, list[PayloadIovRecord]] = {}
            for record in self.iovs_of(tag):
                grouped.setdefault(record.payload_id, []).append(record)
            return [
                {
                    "globalTagPayloadId": self._tag_payload_ids[(tag.id, payload_id)],
                    "payloadId": self.payload_json(self._payloads[payload_id], files_url),
                    "payloadIovs": [self.iov_json(record) for record in records],
                }
                for payload_id, records in grouped.items()
            ]

    def snapshot(self, files_url: str) -> dict[str, Any]:
        """Return every tag, payload and IoV, for tests and demos."""
        with self._lock:
            return {
                "globalTags": [self.tag_json(tag) for tag in self.tags()],
                "payloads": [self.payload_json(payload, files_url) for payload in self._payloads.values()],
                "payloadIovs": [
                    {**self.iov_json(record), "globalTagId": record.tag_id, "payloadId": record.payload_id}
                    for record in sorted(self._iovs.values(), key=lambda item: item.id)
                ],
            }
