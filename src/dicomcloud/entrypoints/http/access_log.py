"""The access-log middleware: one :class:`WadoAccessed` per HTTP request (issue 5).

A plain ASGI middleware (not Starlette's ``BaseHTTPMiddleware``, which buffers
streamed bodies): it wraps ``receive`` and ``send`` to count the bytes of the
request and of the response as they pass, takes the status from
``http.response.start``, and when the response is finished (or the
application raised) appends the record to the :class:`AccessLog` queue —
a call that never blocks and never raises into the request.

What is recorded of the URL: the route template (matched here against the
application's routes, relative to the tenant's service root), the tenant and
the Study/Series/SOP Instance UIDs from the path (for WADO-URI, the
``studyUID``/``seriesUID``/``objectUID`` parameters). No query string, no
header (``Authorization`` included) is ever recorded. Values that are not a
valid tenant or UID are recorded as "" (a fuzzer's path never reaches the warehouse).
``/healthz`` is not recorded.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

from starlette.routing import BaseRoute, Match, Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dicomcloud.domain.messages import WadoAccessed
from dicomcloud.domain.uids import validate_tenant, validate_uid
from dicomcloud.entrypoints.http.auth import SUBJECT
from dicomcloud.errors import DicomCloudError
from dicomcloud.usecases.access_log import AccessLog, describe_route

log = logging.getLogger(__name__)
_SERVICE_ROOTS = ("/dicom-web", "/tenants/{tenant}/dicom-web")
_NOT_LOGGED = frozenset({"/healthz"})
_URI_PARAMS = {"studyUID": "study", "seriesUID": "series", "objectUID": "instance"}


@dataclass(frozen=True, slots=True)
class RouteMatch:
    route: str  # template relative to the service root; "" when nothing matched
    params: dict[str, Any]


def match_route(routes: Sequence[BaseRoute], scope: Scope) -> RouteMatch:
    """The route the router will pick for ``scope`` (first full match, else the first
    partial one: a wrong method), walked like Starlette's router without touching ``scope``."""
    partial: RouteMatch | None = None
    for route in routes:
        found, child = route.matches(scope)
        if found is Match.NONE:
            continue
        inner = {**scope, **child}
        if isinstance(route, Mount):
            sub = match_route(route.routes, inner)
            if not sub.route:
                continue
            result = RouteMatch(sub.route if route.path in _SERVICE_ROOTS else route.path + sub.route, sub.params)
        elif isinstance(route, Route):
            path = route.path.removeprefix("/tenants/{tenant}")  # WADO-URI: /wado for every tenant
            result = RouteMatch(path, dict(inner.get("path_params", {})))
        else:
            continue
        if found is Match.FULL:
            return result
        partial = partial or result
    return partial or RouteMatch("", {})


def _tenant(params: dict[str, Any], default_tenant: str) -> str:
    raw = params.get("tenant")
    if raw is None:
        return default_tenant
    try:
        return validate_tenant(str(raw))
    except DicomCloudError:
        return ""


def _uid(raw: Any, keyword: str) -> str:
    if not isinstance(raw, str):
        return ""
    try:
        return validate_uid(raw, keyword)
    except DicomCloudError:
        return ""


def _client(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0])[:64] if client else ""


def build_record(
    scope: Scope,
    found: RouteMatch,
    *,
    default_tenant: str,
    requested_at: datetime,
    status: int,
    request_bytes: int,
    response_bytes: int,
    duration_ms: float,
) -> WadoAccessed:
    method = str(scope.get("method", ""))[:16]
    service, level = describe_route(method, found.route)
    params = found.params
    if service == "wado-uri":
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        params = {**params, **{name: query.get(key) for key, name in _URI_PARAMS.items()}}
    return WadoAccessed(
        record_id=str(uuid.uuid4()),
        requested_at=requested_at.isoformat(),
        tenant_id=_tenant(params, default_tenant),
        subject=str(scope.get(SUBJECT, ""))[:256],  # the token's ``sub`` (entrypoints/http/auth.py)
        client_address=_client(scope),
        method=method if method.isalpha() else "",
        route=found.route,
        service=service,
        level=level,
        study_instance_uid=_uid(params.get("study"), "StudyInstanceUID"),
        series_instance_uid=_uid(params.get("series"), "SeriesInstanceUID"),
        sop_instance_uid=_uid(params.get("instance"), "SOPInstanceUID"),
        status=status,
        request_bytes=request_bytes,
        response_bytes=response_bytes,
        duration_ms=round(duration_ms, 3),
    )


class AccessLogMiddleware:
    """Records every HTTP request of ``app`` (routes ``routes``) into ``access_log``."""

    def __init__(self, app: ASGIApp, access_log: AccessLog, routes: Sequence[BaseRoute], default_tenant: str) -> None:
        self.app = app
        self._log = access_log
        self._routes = routes
        self._default_tenant = default_tenant

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in _NOT_LOGGED:
            await self.app(scope, receive, send)
            return
        requested_at = datetime.now(UTC)
        start = time.perf_counter()
        found = match_route(self._routes, dict(scope))
        status = 0
        request_bytes = 0
        response_bytes = 0
        finished: float | None = None

        async def counting_receive() -> Message:
            nonlocal request_bytes
            message = await receive()
            if message["type"] == "http.request":
                request_bytes += len(message.get("body", b""))
            return message

        async def counting_send(message: Message) -> None:
            nonlocal status, response_bytes, finished
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body":
                response_bytes += len(message.get("body", b""))
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                finished = time.perf_counter()

        try:
            await self.app(scope, counting_receive, counting_send)
        except BaseException:
            if status == 0:
                status = 500  # what ServerErrorMiddleware answers
            raise
        finally:
            self._record(scope, found, requested_at, status, request_bytes, response_bytes, start, finished)

    def _record(
        self,
        scope: Scope,
        found: RouteMatch,
        requested_at: datetime,
        status: int,
        request_bytes: int,
        response_bytes: int,
        start: float,
        finished: float | None,
    ) -> None:
        try:
            record = build_record(
                scope,
                found,
                default_tenant=self._default_tenant,
                requested_at=requested_at,
                status=status,
                request_bytes=request_bytes,
                response_bytes=response_bytes,
                duration_ms=((finished or time.perf_counter()) - start) * 1000.0,
            )
            self._log.append(record)
        except Exception:  # a log record is never worth failing the request it describes
            log.exception("access log: could not record %s %s", scope.get("method"), found.route)
