"""Hook that talks to Rucio through rucio-clients, configured from an Airflow connection alone.

The connection (default id ``rucio_default``):

``host``
    The Rucio server's base URL, e.g. ``https://rucio.example.org`` (``port`` is appended when set).
``login`` / ``password``
    The userpass identity and its password; with the extra ``auth_type`` ``token``, ``password`` contains
    a Rucio token instead and ``login`` is unused.
extras
    ``account`` (default: ``login``), ``auth_host`` (default: ``host``), ``auth_type`` (``userpass``
    or ``token``), ``scope`` (default ``b2cal``), ``vo``, ``ca_cert`` (a CA bundle path, for https),
    ``timeout`` (seconds per HTTP request, default 60), ``metadata`` (``json`` or ``columns``, see
    :func:`b2cal.rucio.rucio_metadata`; default ``json``) and ``poll_interval`` (seconds between two
    polls while an operator waits for rules, unless the operator sets one; default 60).

No ``rucio.cfg`` is needed. Each hook keeps its token in a private temporary folder instead of the
per-user folder that the Rucio client shares by default. In the shared folder, a valid token of one
connection would be used by another connection of the same account, whose credentials would then
never be checked.
"""

from __future__ import annotations

import getpass
import logging
import os
import shutil
import tempfile
import time
import uuid
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlparse

from airflow.sdk import BaseHook

from b2cal.rucio import (
    METADATA_STYLES,
    Did,
    RegistrationPlan,
    RucioPlanError,
    RuleRequest,
    file_checksums,
    find_reusable_rule,
    lifetime_to_extend,
    lifetime_to_shorten,
    rucio_metadata,
    rule_differences,
)

if TYPE_CHECKING:
    from rucio.client import Client

AUTH_TYPES = ("userpass", "token")
# Requests per call for the bulk endpoints; keeps request bodies small.
CHUNK = 500
# Characters of DIDs per GET request: lfns2pfns sends them in the URL, and gunicorn's default limit
# for a request line is 4094 bytes (larger requests get HTTP 414).
URL_BUDGET = 3000


class RucioCredentialsError(RuntimeError):
    """Rucio rejected the connection's credentials; retrying cannot help."""


@dataclass(frozen=True)
class RucioSettings:
    """Client settings read from a connection."""

    conn_id: str
    host: str
    auth_host: str
    account: str
    auth_type: str
    username: str | None
    secret: str
    scope: str
    vo: str | None
    ca_cert: str | None
    timeout: float
    metadata_style: str
    #: Seconds between two polls while operators wait for rules, or ``None`` for the operator's default.
    poll_interval: float | None = None

    def describe(self) -> str:
        """Return the settings without the secret, for messages."""
        identity = f"identity {self.username!r}, " if self.auth_type == "userpass" else ""
        return (
            f"connection {self.conn_id!r} ({self.host}, account {self.account!r}, {identity}{self.auth_type})"
        )


def _full_url(value: str | None, port: int | None, conn_id: str, field_name: str) -> str:
    url = (value or "").strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ValueError(
            f"connection {conn_id!r} has {field_name} {value!r}; Rucio needs a full URL such as "
            "'https://rucio.example.org:443'"
        )
    if port and urlparse(url).port is None:
        url = f"{url}:{port}"
    return url


def _poll_interval(value: Any, conn_id: str) -> float | None:
    """Return the extra ``poll_interval`` in seconds, or ``None`` when the connection does not set it."""
    if value is None:
        return None
    message = f"connection {conn_id!r} has poll_interval {value!r}; use a positive number of seconds"
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ValueError(message) from None
    if not seconds > 0:
        raise ValueError(message)
    return seconds


def _chunks_by_length(records: Sequence[Any], budget: int) -> list[Sequence[Any]]:
    """Split records into runs whose DIDs, URL-quoted, fit in ``budget`` characters together."""
    chunks: list[Sequence[Any]] = []
    start, used = 0, 0
    for index, record in enumerate(records):
        size = len(quote(str(record.did), safe="")) + 8
        if index > start and used + size > budget:
            chunks.append(records[start:index])
            start, used = index, 0
        used += size
    if start < len(records):
        chunks.append(records[start:])
    return chunks


def transient_errors() -> tuple[type[BaseException], ...]:
    """Return the exceptions that mean "Rucio is unreachable or busy right now, try again later"."""
    import requests
    from rucio.common.exception import DatabaseException, ServerConnectionException

    return (
        ServerConnectionException,
        DatabaseException,
        requests.exceptions.ConnectionError,
        requests.exceptions.Timeout,
        ConnectionError,
        TimeoutError,
    )


def credential_errors() -> tuple[type[BaseException], ...]:
    """Return the exceptions that mean the credentials are wrong, which no retry fixes."""
    from rucio.common.exception import CannotAuthenticate, NoAuthInformation

    return (CannotAuthenticate, NoAuthInformation, RucioCredentialsError)


def _make_client(settings: RucioSettings, token_folder: str) -> Client:
    from rucio.client import Client
    from rucio.common.exception import CannotAuthenticate

    class _PrivateTokenClient(Client):
        # The base client builds its token path from the class attribute TOKEN_PATH_PREFIX. An instance
        # attribute set before the base __init__ runs moves the token into the hook's own folder.
        def __init__(self, **kwargs: Any) -> None:
            self.TOKEN_PATH_PREFIX = os.path.join(token_folder, ".rucio_")
            super().__init__(**kwargs)

    if settings.auth_type == "token":
        # The client reads a cached token before it authenticates, so a token placed there is used as
        # is. When the server rejects it, the client falls back to userpass with an empty password,
        # which fails with CannotAuthenticate instead of prompting for anything.
        token_path = os.path.join(token_folder, ".rucio_" + getpass.getuser())
        os.makedirs(token_path, mode=0o700, exist_ok=True)
        token_file = os.path.join(token_path, f"{Client.TOKEN_PREFIX}for_account_{settings.account}")
        with open(os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as handle:
            handle.write(settings.secret)
        creds = {"username": settings.account, "password": ""}
    else:
        creds = {"username": settings.username, "password": settings.secret}
    try:
        client = _PrivateTokenClient(
            rucio_host=settings.host,
            auth_host=settings.auth_host,
            account=settings.account,
            auth_type="userpass",
            creds=creds,
            ca_cert=settings.ca_cert,
            timeout=settings.timeout,
            vo=settings.vo,
            user_agent="b2cal-airflow",
        )
        if settings.auth_type == "token":
            # Userpass authenticates while the client is built; a token is only tried by a first call.
            client.whoami()
        return client
    except CannotAuthenticate as exc:
        fix = (
            "put a valid token in the connection's password field"
            if settings.auth_type == "token"
            else "correct the login and password"
        )
        raise RucioCredentialsError(
            f"Rucio rejected the credentials of {settings.describe()}: {exc}; {fix}"
        ) from exc


class RucioHook(BaseHook):
    """Give a Rucio client built from an Airflow connection, plus the idempotent steps the operators need.

    :param rucio_conn_id: the connection id.
    """

    conn_name_attr = "rucio_conn_id"
    default_conn_name = "rucio_default"
    conn_type = "rucio"
    hook_name = "Rucio"

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """Return the labels of the connection form."""
        return {
            "hidden_fields": ["schema"],
            "relabeling": {
                "host": "Rucio server URL",
                "login": "Username (userpass)",
                "password": "Password or token",
            },
            "placeholders": {
                "host": "https://rucio.example.org",
                "extra": '{"account": "b2cal", "auth_type": "userpass", "scope": "b2cal"}',
            },
        }

    def __init__(self, rucio_conn_id: str = default_conn_name) -> None:
        super().__init__()
        self.rucio_conn_id = rucio_conn_id
        self._client: Client | None = None
        self._token_folder: str | None = None

    @cached_property
    def settings(self) -> RucioSettings:
        """The connection's settings, checked."""
        conn = self.get_connection(self.rucio_conn_id)
        extra = conn.extra_dejson

        host = _full_url(conn.host, conn.port, self.rucio_conn_id, "host")
        auth_host = (
            _full_url(extra["auth_host"], None, self.rucio_conn_id, "extra auth_host")
            if extra.get("auth_host")
            else host
        )
        auth_type = str(extra.get("auth_type", "userpass"))
        if auth_type not in AUTH_TYPES:
            raise ValueError(
                f"connection {self.rucio_conn_id!r} has auth_type {auth_type!r}; use 'userpass' or 'token'"
            )

        account = str(extra.get("account") or conn.login or "")
        if not account:
            raise ValueError(
                f"connection {self.rucio_conn_id!r} names no Rucio account: set the extra 'account'"
            )
        if not conn.password:
            secret_name = "token" if auth_type == "token" else "password"
            raise ValueError(
                f"connection {self.rucio_conn_id!r} has no {secret_name}: put it in the password field"
            )
        if auth_type == "userpass" and not conn.login:
            raise ValueError(
                f"connection {self.rucio_conn_id!r} has no login: put the userpass identity there"
            )

        style = str(extra.get("metadata", "json"))
        if style not in METADATA_STYLES:
            raise ValueError(
                f"connection {self.rucio_conn_id!r} has metadata {style!r}; "
                f"use one of {', '.join(METADATA_STYLES)}"
            )

        poll_interval = _poll_interval(extra.get("poll_interval"), self.rucio_conn_id)

        return RucioSettings(
            conn_id=self.rucio_conn_id,
            host=host,
            auth_host=auth_host,
            account=account,
            auth_type=auth_type,
            username=conn.login,
            secret=conn.password,
            scope=str(extra.get("scope", "b2cal")),
            vo=extra.get("vo"),
            ca_cert=extra.get("ca_cert"),
            timeout=float(extra.get("timeout", 60)),
            metadata_style=style,
            poll_interval=poll_interval,
        )

    @property
    def scope(self) -> str:
        """The default scope of the connection."""
        return self.settings.scope

    def get_conn(self) -> Client:
        """Return the client, authenticating on first use."""
        if self._client is None:
            if self._token_folder is None:
                self._token_folder = tempfile.mkdtemp(prefix="b2cal-rucio-token-")
                weakref.finalize(self, shutil.rmtree, self._token_folder, True)
            self._client = _make_client(self.settings, self._token_folder)
        return self._client

    def close(self) -> None:
        """Drop the client and delete its token."""
        self._client = None
        if self._token_folder:
            shutil.rmtree(self._token_folder, ignore_errors=True)
            self._token_folder = None

    def test_connection(self) -> tuple[bool, str]:
        """Authenticate and return whether it worked, for the connection form's Test button."""
        try:
            account = self.get_conn().whoami()
        except Exception as exc:  # noqa: BLE001 - the form shows any failure as text
            return False, str(exc)
        return True, f"authenticated as account {account.get('account')!r}"

    # -- rules ---------------------------------------------------------------------------------------

    def get_rule(self, rule_id: str) -> dict[str, Any]:
        """Return one rule."""
        return dict(self.get_conn().get_replication_rule(rule_id))

    def list_rules(self, filters: dict[str, Any]) -> list[dict[str, Any]]:
        """Return the rules that match ``filters`` (account, scope, created_after...), in one call."""
        return [dict(rule) for rule in self.get_conn().list_replication_rules(dict(filters))]

    def list_did_rules(self, did: Did) -> list[dict[str, Any]]:
        """Return the rules of one DID."""
        return [dict(rule) for rule in self.get_conn().list_did_rules(did.scope, did.name)]

    def count_files(self, did: Did) -> int:
        """Return how many files a DID contains; a file counts as one."""
        info = self.get_conn().get_did(did.scope, did.name, dynamic_depth="FILE")
        if info.get("type", "").upper() == "FILE":
            return 1
        return int(info.get("length") or 0)

    def expire_rules(self, did: Did, lifetime: int) -> list[dict[str, Any]]:
        """Give the account's rules of ``did`` an end ``lifetime`` seconds from now, so Rucio drops them.

        A rule that already ends sooner is left as it is, so a second call changes nothing. A DID that
        does not exist has no rules. Once a rule has expired, Rucio's cleaner removes it, and replicas
        that no other rule locks may then be deleted.

        :return: one entry per rule of the account: ``id``, ``rse_expression``, ``expires_at`` (before
            the call) and ``shortened``.
        """
        from rucio.common.exception import DataIdentifierNotFound

        client = self.get_conn()
        try:
            rules = [rule for rule in self.list_did_rules(did) if rule.get("account") == client.account]
        except DataIdentifierNotFound:
            return []
        now = datetime.now(UTC).replace(tzinfo=None)
        result = []
        for rule in rules:
            shorten = lifetime_to_shorten(rule, lifetime, now)
            if shorten:
                client.update_replication_rule(str(rule["id"]), {"lifetime": lifetime})
                self.log.info(
                    "Rule %s of %s at %s now ends in %d s",
                    rule["id"],
                    did,
                    rule.get("rse_expression"),
                    lifetime,
                )
            result.append(
                {
                    "id": str(rule["id"]),
                    "rse_expression": rule.get("rse_expression"),
                    "expires_at": rule.get("expires_at"),
                    "shortened": shorten,
                }
            )
        return result

    def ensure_rule(self, request: RuleRequest) -> dict[str, Any]:
        """Add a replication rule, or reuse the identical one that exists.

        A reused rule keeps its activity; its lifetime is raised to the requested one if shorter.

        :return: the rule's ``id``, ``scope``, ``name``, ``account``, ``rse_expression``, ``created_at``
            (exact for a reused rule, a lower bound for a new one) and ``created`` (whether it is new).
        """
        from rucio.common.exception import RucioException

        client = self.get_conn()
        account = client.account
        # A lower bound of the new rule's creation time, with room for clock skew against the server.
        before = datetime.now(UTC).replace(tzinfo=None) - timedelta(minutes=5)
        existing = find_reusable_rule(self.list_did_rules(request.did), request, account)
        if existing is None:
            try:
                rule_id = str(client.add_replication_rule(**request.add_rule_arguments())[0])
            except RucioException:
                # Another task may have added the same rule since the listing above. The server reports
                # that as DuplicateRule, or on PostgreSQL sometimes as a plain error about a unique key.
                existing = find_reusable_rule(self.list_did_rules(request.did), request, account)
                if existing is None:
                    raise
            else:
                self.log.info("Added rule %s: %s -> %s", rule_id, request.did, request.rse_expression)
                return {
                    "id": rule_id,
                    **request.did.as_dict(),
                    "account": account,
                    "rse_expression": request.rse_expression,
                    "created_at": before,
                    "created": True,
                }
        return self._reuse(existing, request, account)

    def _reuse(
        self, existing: dict[str, Any], request: RuleRequest, account: str, level: int = logging.INFO
    ) -> dict[str, Any]:
        """Log the reuse of an existing rule, raise its lifetime if needed and describe it."""
        rule_id = str(existing["id"])
        differences = rule_differences(existing, request)
        self.log.log(
            level,
            "Reusing rule %s of %s at %s (state %s)%s",
            rule_id,
            request.did,
            request.rse_expression,
            existing.get("state"),
            f"; it differs: {', '.join(differences)}" if differences else "",
        )
        extend, lifetime = lifetime_to_extend(existing, request, datetime.now(UTC).replace(tzinfo=None))
        if extend:
            self.get_conn().update_replication_rule(rule_id, {"lifetime": lifetime})
            self.log.info("Extended the lifetime of rule %s to %s", rule_id, lifetime or "unlimited")
        return {
            "id": rule_id,
            **request.did.as_dict(),
            "account": account,
            "rse_expression": request.rse_expression,
            "created_at": existing.get("created_at"),
            "created": False,
        }

    def ensure_rules(self, requests: Sequence[RuleRequest]) -> list[dict[str, Any]]:
        """Do :meth:`ensure_rule` for many requests with one listing and one adding call per group.

        Requests are grouped by scope and rule settings. Each group lists the account's rules of that
        scope and RSE expression once, reuses the matching ones and adds the others with one
        ``add_replication_rule`` call, which creates one rule per DID. When that call fails, for
        example because another task added one of the rules meanwhile, the group falls back to
        :meth:`ensure_rule` request by request.

        :return: one dictionary per request, in order, as :meth:`ensure_rule` returns.
        """
        from rucio.common.exception import RucioException

        client = self.get_conn()
        account = client.account
        results: dict[int, dict[str, Any]] = {}
        groups: dict[tuple[Any, ...], list[int]] = {}
        for index, request in enumerate(requests):
            key = (request.did.scope, request.rse_expression, request.copies, request.lifetime)
            key += (request.activity, request.grouping, request.comment)
            groups.setdefault(key, []).append(index)
        for (scope, rse_expression, *_), indices in groups.items():
            filters = {"account": account, "scope": scope, "rse_expression": rse_expression}
            existing = self.list_rules(filters)
            missing = []
            for index in indices:
                reusable = find_reusable_rule(existing, requests[index], account)
                if reusable is None:
                    missing.append(index)
                else:
                    results[index] = self._reuse(dict(reusable), requests[index], account, logging.DEBUG)
            self.log.info("Reusing %d existing rules to %s", len(indices) - len(missing), rse_expression)
            if not missing:
                continue
            before = datetime.now(UTC).replace(tzinfo=None) - timedelta(minutes=5)
            arguments = requests[missing[0]].add_rule_arguments()
            arguments["dids"] = [requests[index].did.as_dict() for index in missing]
            try:
                rule_ids = client.add_replication_rule(**arguments)
            except RucioException as exc:
                self.log.info(
                    "Adding %d rules at once failed (%s); adding them one by one", len(missing), exc
                )
                for index in missing:
                    results[index] = self.ensure_rule(requests[index])
                continue
            self.log.info("Added %d rules to %s", len(rule_ids), rse_expression)
            for index, rule_id in zip(missing, rule_ids, strict=True):
                results[index] = {
                    "id": str(rule_id),
                    **requests[index].did.as_dict(),
                    "account": account,
                    "rse_expression": rse_expression,
                    "created_at": before,
                    "created": True,
                }
        return [results[index] for index in range(len(requests))]

    def list_datasets(self, scope: str, pattern: str, created_after: datetime | None = None) -> list[Did]:
        """Return the datasets of ``scope`` whose name matches the wildcard ``pattern``."""
        filters: dict[str, Any] = {"name": pattern}
        if created_after is not None:
            filters["created_after"] = created_after
        names = self.get_conn().list_dids(scope, [filters], did_type="dataset")
        return sorted(Did(scope, name if isinstance(name, str) else name["name"]) for name in names)

    # -- registration --------------------------------------------------------------------------------

    def register(self, plan: RegistrationPlan, metadata_style: str | None = None) -> dict[str, Any]:
        """Register a plan's files at its RSE, create its datasets and container, attach, set metadata.

        Every step checks what exists first, so running it again registers nothing twice: a file
        already registered with the same checksum is skipped, and one registered with another checksum
        is an error. Files are copied into the RSE's ``file`` protocol path first, unless an identical
        file lies there already.

        :param metadata_style: ``json`` or ``columns``; default: the connection's extra ``metadata``.
        :return: the plan summary plus the counts ``registered`` and ``already_registered``.
        """
        style = metadata_style or self.settings.metadata_style
        files = plan.files
        dids = [record.did for record in files]
        if len(set(dids)) != len(dids):
            raise RucioPlanError(f"the registration plan for {plan.rse} names a file twice")

        existing = self._existing_replicas(dids)
        to_register = []
        for record in files:
            found = existing.get(record.did)
            if found is None:
                to_register.append(record)
                continue
            if found["adler32"] != record.adler32 or int(found["bytes"] or -1) != record.bytes:
                raise RucioPlanError(
                    f"{record.did} is registered with {found['bytes']} bytes and adler32 "
                    f"{found['adler32']}, but {record.path} has {record.bytes} bytes and adler32 "
                    f"{record.adler32}: a different file has the same name; rename the new file "
                    "or remove the registered one"
                )
            if found["states"].get(plan.rse) != "AVAILABLE":
                to_register.append(record)
        if to_register:
            self._copy_to_rse(plan.rse, to_register)
            self._add_replicas(plan.rse, to_register, existing)
        self.log.info(
            "Registered %d files at %s; %d were registered already",
            len(to_register),
            plan.rse,
            len(files) - len(to_register),
        )

        collections = [(dataset.did, "DATASET") for dataset in plan.datasets]
        attachments = [(dataset.did, [record.did for record in dataset.files]) for dataset in plan.datasets]
        if plan.container is not None:
            collections.append((plan.container, "CONTAINER"))
            attachments.append((plan.container, [dataset.did for dataset in plan.datasets]))
        self._ensure_collections(collections)
        self._attach(attachments)

        entries = [(record.did, record.metadata) for record in files]
        entries += [(dataset.did, dataset.metadata) for dataset in plan.datasets]
        if plan.container is not None:
            entries.append((plan.container, plan.container_metadata))
        self._set_metadata(entries, style)
        return {
            **plan.summary(),
            "registered": len(to_register),
            "already_registered": len(files) - len(to_register),
        }

    def _existing_replicas(self, dids: Sequence[Did]) -> dict[Did, dict[str, Any]]:
        client = self.get_conn()
        found: dict[Did, dict[str, Any]] = {}
        for start in range(0, len(dids), CHUNK):
            chunk = [did.as_dict() for did in dids[start : start + CHUNK]]
            for replica in client.list_replicas(chunk, all_states=True, ignore_availability=True):
                found[Did(replica["scope"], replica["name"])] = {
                    "adler32": replica.get("adler32"),
                    "bytes": replica.get("bytes"),
                    "states": dict(replica.get("states") or {}),
                }
        return found

    def _copy_to_rse(self, rse: str, records: Sequence[Any]) -> None:
        """Copy files to their path on ``rse``; only RSEs with a ``file`` protocol are supported."""
        from rucio.common.exception import RSEProtocolNotSupported

        client = self.get_conn()
        for chunk in _chunks_by_length(records, URL_BUDGET):
            try:
                pfns = client.lfns2pfns(
                    rse, [str(record.did) for record in chunk], operation="write", scheme="file"
                )
            except RSEProtocolNotSupported as exc:
                raise RucioPlanError(
                    f"RSE {rse} has no 'file' protocol to write with ({exc}): this hook copies files "
                    "on a shared file system only; upload them with a transfer tool first"
                ) from exc
            for record in chunk:
                target = Path(urlparse(pfns[str(record.did)]).path)
                if target.resolve() == Path(record.path).resolve():
                    continue
                if target.exists() and file_checksums(target)[:2] == (record.bytes, record.adler32):
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                # Each copy writes its own hidden file, so two tasks registering the same file at once
                # never rename each other's copy away; the last rename wins with identical content.
                partial = target.with_name(f".{target.name}.{uuid.uuid4().hex}.partial")
                try:
                    shutil.copyfile(record.path, partial)
                    os.replace(partial, target)
                finally:
                    partial.unlink(missing_ok=True)

    def _add_replicas(self, rse: str, records: Sequence[Any], existing: dict[Did, dict[str, Any]]) -> None:
        from rucio.common.exception import RucioException

        client = self.get_conn()
        new = [record for record in records if rse not in existing.get(record.did, {}).get("states", {})]
        unavailable = [record for record in records if record not in new]
        for start in range(0, len(new), CHUNK):
            chunk = new[start : start + CHUNK]
            try:
                client.add_replicas(rse, [record.replica() for record in chunk])
            except RucioException as exc:
                # Another task may have registered some of them since the check. The server reports that
                # as Duplicate or, on PostgreSQL, as a plain error about a unique key.
                self.log.info(
                    "Adding %d replicas at %s failed (%s); adding them one by one", len(chunk), rse, exc
                )
                for record in chunk:
                    self._tolerate_race(
                        lambda record=record: client.add_replicas(rse, [record.replica()]),
                        lambda record=record: (
                            rse in self._existing_replicas([record.did]).get(record.did, {}).get("states", {})
                        ),
                    )
        if unavailable:
            # A replica row exists but is not AVAILABLE (e.g. after an interrupted transfer). The file is
            # in place now, so mark it available; Rucio's generic policy allows this for root and admins.
            client.update_replicas_states(
                rse, [{**record.did.as_dict(), "state": "A"} for record in unavailable]
            )

    def _tolerate_race(self, action: Any, done: Any) -> None:
        """Run ``action``; when it fails, accept the failure only if ``done()`` shows another task did it."""
        from rucio.common.exception import RucioException

        try:
            action()
        except RucioException:
            if not done():
                raise

    def _ensure_collections(self, collections: Sequence[tuple[Did, str]]) -> None:
        """Create the datasets and containers that do not exist yet, in bulk."""
        from rucio.common.exception import DataIdentifierNotFound, RucioException

        client = self.get_conn()
        existing: set[Did] = set()
        for start in range(0, len(collections), CHUNK):
            chunk = [did.as_dict() for did, _ in collections[start : start + CHUNK]]
            existing |= {Did(item["scope"], item["name"]) for item in client.get_metadata_bulk(chunk)}
        missing = [(did, did_type) for did, did_type in collections if did not in existing]
        if not missing:
            return

        def exists(did: Did) -> bool:
            try:
                client.get_did(did.scope, did.name)
            except DataIdentifierNotFound:
                return False
            return True

        for start in range(0, len(missing), CHUNK):
            batch = missing[start : start + CHUNK]
            try:
                client.add_dids([{**did.as_dict(), "type": did_type} for did, did_type in batch])
            except RucioException:
                # Another task may have created some of them since the check: create the rest one by one.
                for did, did_type in batch:
                    add = client.add_dataset if did_type == "DATASET" else client.add_container
                    self._tolerate_race(
                        lambda add=add, did=did: add(did.scope, did.name), lambda did=did: exists(did)
                    )
        self.log.info("Created %d datasets and containers", len(missing))

    def _attach(self, attachments: Sequence[tuple[Did, Sequence[Did]]], attempts: int = 3) -> None:
        """Attach content to collections in bulk; content attached already is skipped by the server."""
        from rucio.common.exception import RucioException

        client = self.get_conn()
        batches: list[list[dict[str, Any]]] = [[]]
        size = 0
        for parent, children in attachments:
            for start in range(0, len(children), CHUNK):
                part = children[start : start + CHUNK]
                if size + len(part) > CHUNK and batches[-1]:
                    batches.append([])
                    size = 0
                batches[-1].append({**parent.as_dict(), "dids": [child.as_dict() for child in part]})
                size += len(part)
        for batch in batches:
            for attempt in range(1, attempts + 1):
                try:
                    client.attach_dids_to_dids(batch, ignore_duplicate=True)
                    break
                except RucioException as exc:
                    # Two tasks attaching the same DIDs at once can still collide on a unique key.
                    if attempt == attempts:
                        raise
                    self.log.warning("Attaching failed (attempt %d/%d): %s", attempt, attempts, exc)
                    time.sleep(0.2 * attempt)
        self.log.info("Attached the content of %d datasets and containers", len(attachments))

    def _set_metadata(self, entries: Sequence[tuple[Did, Any]], style: str, attempts: int = 3) -> None:
        from rucio.common.exception import InvalidMetadata, RucioException

        client = self.get_conn()
        items = [{**did.as_dict(), "meta": rucio_metadata(meta, style)} for did, meta in entries if meta]
        for start in range(0, len(items), CHUNK):
            chunk = items[start : start + CHUNK]
            for attempt in range(1, attempts + 1):
                try:
                    client.set_dids_metadata_bulk(chunk)
                    break
                except InvalidMetadata as exc:
                    raise RucioPlanError(
                        f"Rucio rejected the metadata ({exc}); a server without JSON metadata (SQLite) "
                        f'needs the extra "metadata": "columns" in connection {self.rucio_conn_id!r}'
                    ) from exc
                except RucioException as exc:
                    # Two tasks writing the metadata of one DID at once can collide in the database.
                    # Setting metadata overwrites, so trying again is safe.
                    if attempt == attempts:
                        raise
                    self.log.warning(
                        "Setting metadata of %d DIDs failed (attempt %d/%d): %s",
                        len(chunk),
                        attempt,
                        attempts,
                        exc,
                    )
                    time.sleep(0.2 * attempt)
