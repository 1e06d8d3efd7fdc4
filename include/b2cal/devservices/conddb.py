"""Serve an in-memory conditions database with the v2 REST API for local development and tests.

The API is served below ``/v2/``, so the base URL is ``http://127.0.0.1:<port>``. It is also
served below ``/b2s/rest/v2/``, the path of the real service, so a base URL copied from a
production configuration works too. Reads are open. Writes need the header
``X-Authorization: Bearer <token>`` with the configured token, else they get 401.
``POST v2/checkPayloads`` only reads, so it needs no token. Errors are
``{"code", "reason", "message"}`` with the HTTP status in ``code``. Payload files can be
downloaded below ``/files/`` (the ``baseUrl`` of every payload). The rules for global tag states
and IoVs are in :mod:`b2cal.devservices.conddb_store`.

Development endpoints: ``GET /_dev/state``, ``POST /_dev/reset``, ``POST /_dev/faults`` and
``POST /_dev/tokens``. A fault body ``{"count", "status", "path_prefix"}`` fails the next matching
requests; adding ``"after": n`` lets ``n`` matching requests pass first, ``"method"`` limits it to
one HTTP method, and ``"apply": true`` carries the request out before answering with the error.
``/_dev/tokens`` with ``{"lifetime": seconds}`` returns ``{"token": <JWT>}``, accepted for writes until
it expires; a negative lifetime gives an expired one.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from b2cal.devservices.common import base_url_of, install_request_logging, set_log_ids
from b2cal.devservices.conddb_store import STATE_IDS, TAG_TYPES, ConditionsError, ConditionsState
from b2cal.iov import IoV

__all__ = ["API_PREFIX", "ConditionsError", "ConditionsState", "create_app"]

logger = logging.getLogger(__name__)

#: Path of the REST API on the real service; the API is served below it and below the root.
API_PREFIX = "/b2s/rest"


def _int_value(text: str, subject: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ConditionsError(400, f"{subject} {text!r} is not an integer") from None


def _parse_iov_path(text: str) -> IoV:
    parts = text.split(",")
    if len(parts) != 4:
        raise ConditionsError(400, f"IoV {text!r} in the URL must be four integers e1,r1,e2,r2")
    numbers = [_int_value(part, "IoV value") for part in parts]
    try:
        return IoV(*numbers)
    except ValueError as error:
        raise ConditionsError(400, str(error)) from None


def _parse_upload(content_type: str, body: bytes, name: str) -> tuple[bytes, str]:
    """Return the file bytes and the checksum field of a multipart payload upload.

    Both ``multipart/form-data`` (a file part and a ``checksum`` field) and the ``multipart/mixed``
    body that basf2 sends (a file part and a ``json`` part with ``{"checksum": ...}``) are accepted.
    """
    if not content_type.lower().startswith("multipart/"):
        raise ConditionsError(
            400,
            f"Payload upload for {name!r} must be multipart with a file part and a 'checksum' field, "
            f"got Content-Type {content_type or 'none'!r}",
        )
    message = BytesParser(policy=policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
    )
    if not isinstance(message, EmailMessage) or not message.is_multipart():
        raise ConditionsError(400, f"Payload upload for {name!r} is not a valid multipart body")
    data: bytes | None = None
    checksum: str | None = None
    for part in message.iter_parts():
        field_name = part.get_param("name", header="content-disposition")
        content = part.get_payload(decode=True)
        if not isinstance(content, bytes):
            content = b""
        if part.get_filename() is not None or field_name in ("file", "payload"):
            data = content
        elif field_name == "checksum":
            checksum = content.decode("ascii", errors="replace").strip()
        elif field_name == "json":
            try:
                checksum = str(json.loads(content).get("checksum", "")) or None
            except (ValueError, AttributeError):
                raise ConditionsError(
                    400, f"The 'json' part of the upload for {name!r} is not a JSON object"
                ) from None
    if data is None:
        raise ConditionsError(400, f"Payload upload for {name!r} has no file part: send the payload file")
    if not checksum:
        raise ConditionsError(
            400, f"Payload upload for {name!r} has no checksum: add a 'checksum' field with the file's MD5"
        )
    return data, checksum


def create_app(state: ConditionsState) -> FastAPI:
    """Build the FastAPI application of the development conditions database around ``state``."""
    app = FastAPI(title="b2cal development conditions database (v2)", docs_url=None, redoc_url=None)
    install_request_logging(app, logger, state.faults)

    @app.exception_handler(ConditionsError)
    async def conditions_error(request: Request, error: ConditionsError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        message = f"{request.method} {request.url.path}: {error.detail}"
        return JSONResponse(ConditionsError(error.status_code, message).body(), status_code=error.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(item) for item in problem['loc'])}: {problem['msg']}"
            for problem in error.errors()
        )
        return JSONResponse(ConditionsError(400, f"Invalid request: {problems}").body(), status_code=400)

    router = APIRouter()

    def files_url(request: Request) -> str:
        return f"{base_url_of(request, state.base_url)}/files/"

    def require_token(request: Request) -> None:
        header = request.headers.get("x-authorization", "")
        scheme, _, token = header.partition(" ")
        if not header:
            raise ConditionsError(
                401,
                "Writes need the header 'X-Authorization: Bearer <token>': add a conditions database token",
            )
        if scheme.lower() != "bearer":
            raise ConditionsError(
                401, "The bearer token in X-Authorization is invalid: check the configured token"
            )
        state.check_token(token.strip())

    @app.middleware("http")
    async def scheduled_faults(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        fault = state.schedule.take(request.method, request.url.path)
        if fault is None:
            return await call_next(request)
        if fault.apply:
            served = await call_next(request)
            async for _ in served.body_iterator:  # type: ignore[attr-defined]
                pass
        logger.warning(
            "%s %s -> %d (scheduled failure%s)",
            request.method,
            request.url.path,
            fault.status,
            " after carrying it out" if fault.apply else "",
        )
        error = ConditionsError(
            fault.status, f"scheduled failure: HTTP {fault.status} from the development service"
        )
        return JSONResponse(error.body(), status_code=fault.status)

    async def json_body(request: Request) -> Any:
        try:
            return json.loads(await request.body() or b"null")
        except ValueError:
            raise ConditionsError(400, "The request body is not valid JSON") from None

    @router.api_route("/globalTags", methods=["GET", "HEAD"])
    async def list_tags() -> list[dict[str, Any]]:
        return [state.tag_json(tag) for tag in state.tags()]

    @router.get("/globalTagStatus")
    async def list_states() -> list[dict[str, Any]]:
        return [{"globalTagStatusId": number, "name": name} for name, number in STATE_IDS.items()]

    @router.get("/globalTagType")
    async def list_types() -> list[dict[str, Any]]:
        return [{"globalTagTypeId": number, "name": name} for name, number in TAG_TYPES.items()]

    @router.get("/globalTag/{name}")
    async def get_tag(request: Request, name: str) -> dict[str, Any]:
        tag = state.tag(name)
        set_log_ids(request, f"tag={tag.name} id={tag.id} state={tag.state}")
        return state.tag_json(tag)

    @router.post("/globalTag/{tag_type}", status_code=201)
    async def create_tag(request: Request, tag_type: str) -> dict[str, Any]:
        require_token(request)
        tag = state.create_tag(tag_type.upper(), await json_body(request))
        set_log_ids(request, f"tag={tag.name} id={tag.id}")
        return state.tag_json(tag)

    @router.post("/globalTags/{tag_id}", status_code=201)
    async def clone_tag(request: Request, tag_id: str) -> dict[str, Any]:
        require_token(request)
        tag = state.clone_tag(_int_value(tag_id, "Global tag id"), await json_body(request))
        set_log_ids(request, f"source={tag_id} tag={tag.name} id={tag.id}")
        return state.tag_json(tag)

    @router.put("/globalTag/{name}/updateGlobalTagStatus/{new_state}")
    async def update_state(request: Request, name: str, new_state: str) -> dict[str, Any]:
        require_token(request)
        tag = state.set_state(name, new_state)
        set_log_ids(request, f"tag={tag.name} state={tag.state}")
        return state.tag_json(tag)

    @router.get("/globalTag/{name}/globalTagPayloads")
    async def tag_payloads(request: Request, name: str) -> list[dict[str, Any]]:
        tag = state.tag(name)
        set_log_ids(request, f"tag={tag.name}")
        return state.tag_payloads_json(tag, files_url(request))

    @router.get("/iovPayloads")
    async def iov_payloads(request: Request) -> list[dict[str, Any]]:
        parameters = request.query_params
        name = parameters.get("gtName")
        if not name:
            raise ConditionsError(400, "The query parameter gtName is required: name the global tag")
        exp = parameters.get("expNumber")
        run = parameters.get("runNumber")
        tag = state.tag(name)
        records = state.iovs_at(
            tag,
            _int_value(exp, "expNumber") if exp is not None else None,
            _int_value(run, "runNumber") if run is not None else None,
        )
        set_log_ids(request, f"tag={tag.name} found={len(records)}")
        return [
            {
                "payload": state.payload_json(state.payload(record.payload_id), files_url(request)),
                "payloadIov": state.iov_json(record),
            }
            for record in records
        ]

    @router.post("/checkPayloads")
    async def check_payloads(request: Request) -> list[dict[str, Any]]:
        found = state.check_payloads(await json_body(request))
        set_log_ids(request, f"found={','.join(str(payload.id) for payload in found) or '-'}")
        return [state.payload_json(payload, files_url(request)) for payload in found]

    @router.post("/package/dbstore/module/{name}/payload", status_code=201)
    async def upload_payload(request: Request, name: str) -> dict[str, Any]:
        require_token(request)
        data, checksum = _parse_upload(request.headers.get("content-type", ""), await request.body(), name)
        payload = state.add_payload(name, data, checksum)
        set_log_ids(request, f"payload={payload.name} id={payload.id} revision={payload.revision}")
        return state.payload_json(payload, files_url(request))

    @router.post("/globalTagPayload/{ids}/payloadIov/{iov_text}", status_code=201)
    async def create_iov(request: Request, ids: str, iov_text: str) -> dict[str, Any]:
        require_token(request)
        parts = ids.split(",")
        if len(parts) != 2:
            raise ConditionsError(400, f"{ids!r} in the URL must be '<globalTagId>,<payloadId>'")
        tag_id = _int_value(parts[0], "Global tag id")
        payload_id = _int_value(parts[1], "Payload id")
        record = state.add_iov(tag_id, payload_id, _parse_iov_path(iov_text))
        set_log_ids(request, f"tag={tag_id} payload={payload_id} iov={record.id} ({record.iov})")
        return state.iov_json(record)

    @router.put("/payloadIov/{iov_id}")
    async def change_iov(request: Request, iov_id: str) -> dict[str, Any]:
        require_token(request)
        record = state.change_iov(_int_value(iov_id, "Payload IoV id"), await json_body(request))
        set_log_ids(request, f"iov={record.id} ({record.iov})")
        return state.iov_json(record)

    @router.delete("/payloadIov/{iov_id}", status_code=204)
    async def delete_iov(request: Request, iov_id: str) -> Response:
        require_token(request)
        record = state.delete_iov(_int_value(iov_id, "Payload IoV id"))
        set_log_ids(request, f"iov={record.id} ({record.iov})")
        return Response(status_code=204)

    app.include_router(router, prefix="/v2")
    app.include_router(router, prefix=f"{API_PREFIX}/v2")

    @app.get("/files/{path:path}")
    async def download(path: str) -> Response:
        payload = state.payload_by_url(path)
        if payload is None:
            raise ConditionsError(404, f"No payload file at {path!r}")
        return Response(payload.data, media_type="application/x-root")

    @app.get("/_dev/state")
    async def dev_state(request: Request) -> dict[str, Any]:
        return state.snapshot(files_url(request))

    @app.post("/_dev/reset", status_code=204)
    async def dev_reset() -> Response:
        state.reset()
        logger.info("Conditions database state reset: every tag, payload and IoV deleted")
        return Response(status_code=204)

    @app.post("/_dev/faults", status_code=204)
    async def dev_faults(request: Request) -> Response:
        body = await json_body(request) or {}
        try:
            count, status = int(body.get("count", 1)), int(body.get("status", 503))
            path_prefix = str(body.get("path_prefix", "/"))
            if {"after", "apply", "method"} & set(body):
                state.schedule.add(
                    status=status,
                    path_prefix=path_prefix,
                    method=body.get("method"),
                    after=int(body.get("after", 0)),
                    apply=bool(body.get("apply", False)),
                    count=count,
                )
            else:
                state.faults.fail_next(count, status, path_prefix)
        except (TypeError, ValueError) as error:
            raise ConditionsError(400, str(error)) from None
        return Response(status_code=204)

    @app.post("/_dev/tokens")
    async def dev_tokens(request: Request) -> dict[str, str]:
        body = await json_body(request) or {}
        try:
            lifetime = float(body.get("lifetime", 3600))
        except (TypeError, ValueError):
            raise ConditionsError(
                400, f"lifetime {body.get('lifetime')!r} must be a number of seconds"
            ) from None
        return {"token": state.issue_token(lifetime, body.get("subject"))}

    return app
