"""The OAuth2 resource server: every DICOMweb request carries a bearer token (RFC 6750).

An ASGI middleware in front of the routes (inside CORS, so a browser sees the
CORS headers on a 401 and preflights need no token; inside the access log, so
refusals are recorded). For each HTTP request but ``/healthz``:

1. ``Authorization: Bearer <token>`` (RFC 6750 §2.1 only: a token in the query
   or a form body would end up in logs). Missing → 401 with a bare
   challenge; unreadable → 400 ``invalid_request``; not verifying → 401
   ``invalid_token`` (:mod:`usecases.authenticate`).
2. The tenant of the path (``/tenants/{tenant}/…``, else the default tenant)
   must be in the token's tenant claim, and the scope for the method's action
   must be granted (:mod:`domain.authorization`) → else 403.
3. The token's ``sub`` is left in the scope (``dicomcloud.subject``) for the
   access log.

When the provider's keys cannot be fetched, requests fail closed with 503.
"""

from __future__ import annotations

import logging
import re

from starlette.types import ASGIApp, Receive, Scope, Send

from dicomcloud.domain.authorization import ScopeNames, action_for, authorize
from dicomcloud.domain.uids import validate_tenant
from dicomcloud.entrypoints.http.errors import error_response
from dicomcloud.errors import DicomCloudError, InvalidAuthorization, Unauthenticated
from dicomcloud.usecases.authenticate import TokenVerifier

log = logging.getLogger(__name__)
SUBJECT = "dicomcloud.subject"  # the scope key the access log reads
_OPEN_PATHS = frozenset({"/healthz"})
_TENANT_PATH = re.compile(r"^/tenants/([^/]*)(?:/|$)")


def bearer_token(headers: list[tuple[bytes, bytes]]) -> str:
    values = [value for name, value in headers if name.lower() == b"authorization"]
    if not values:
        raise Unauthenticated("this service needs a bearer token (Authorization: Bearer …)", error="")
    if len(values) > 1:
        raise InvalidAuthorization("more than one Authorization header")
    scheme, _, token = values[0].decode("latin-1").strip().partition(" ")
    if scheme.lower() != "bearer":
        raise Unauthenticated("only the Bearer authentication scheme is accepted", error="")
    token = token.strip()
    if not token or " " in token:
        raise InvalidAuthorization("the Authorization header does not hold one bearer token")
    return token


def path_tenant(path: str, default_tenant: str) -> str:
    found = _TENANT_PATH.match(path)
    return default_tenant if found is None else validate_tenant(found.group(1))


class BearerAuthMiddleware:
    def __init__(self, app: ASGIApp, verifier: TokenVerifier, scopes: ScopeNames, default_tenant: str) -> None:
        self.app = app
        self._verifier = verifier
        self._scopes = scopes
        self._default_tenant = default_tenant

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in _OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        try:
            token = bearer_token(scope.get("headers", []))
            principal = await self._verifier.verify(token)
            scope[SUBJECT] = principal.subject
            tenant_id = path_tenant(str(scope.get("path", "")), self._default_tenant)
            authorize(principal, tenant_id, action_for(str(scope.get("method", ""))), self._scopes)
        except DicomCloudError as exc:
            if isinstance(exc, InvalidAuthorization | Unauthenticated):
                log.info("%s %s refused: %s", scope.get("method"), scope.get("path"), exc.reason)
            response = error_response(exc)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
