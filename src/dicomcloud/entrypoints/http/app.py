"""The DICOMweb ASGI application (PS3.18): routes, errors, CORS.

The default tenant is served at ``/dicom-web``; every tenant at
``/tenants/{tenant}/dicom-web``; WADO-URI at ``/wado`` and
``/tenants/{tenant}/wado``. Errors from the tree in ``errors.py`` become
their HTTP status with the reason as a plain-text body and a ``Warning``
header (PS3.18 §8.5); the service keeps serving.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from dicomcloud.domain.authorization import ScopeNames
from dicomcloud.entrypoints.http import qido, rendered, stow, wado, wado_uri
from dicomcloud.entrypoints.http.access_log import AccessLogMiddleware
from dicomcloud.entrypoints.http.auth import BearerAuthMiddleware
from dicomcloud.entrypoints.http.errors import error_response
from dicomcloud.errors import DicomCloudError, http_status

if TYPE_CHECKING:
    from dicomcloud.bootstrap import Archive
    from dicomcloud.usecases.access_log import AccessLog
    from dicomcloud.usecases.authenticate import TokenVerifier

log = logging.getLogger(__name__)


async def on_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, DicomCloudError)
    if http_status(exc) >= 500:
        log.error("%s %s: %s", request.method, request.url.path, exc.reason)
    return error_response(exc)


async def health(request: Request) -> Response:
    return PlainTextResponse("ok\n")


def dicomweb_routes() -> list[BaseRoute]:
    return [*qido.routes(), *stow.routes(), *wado.routes(), *rendered.routes()]


def create_app(
    archive: Archive, access_log: AccessLog | None = None, verifier: TokenVerifier | None = None
) -> Starlette:
    """The application; with ``access_log``, every request is recorded in it
    (outermost middleware, so CORS answers, refusals and errors are recorded too);
    with ``verifier``, every request but ``/healthz`` needs a bearer token it accepts
    (inside CORS, so that preflights need none and a browser can read a 401)."""
    settings = archive.settings
    routes = dicomweb_routes()
    top: list[BaseRoute] = [
        Route("/healthz", health),
        Mount("/dicom-web", routes=routes),
        Mount("/tenants/{tenant}/dicom-web", routes=routes),
        *wado_uri.routes(),  # the URI Service: /wado and /tenants/{tenant}/wado
    ]
    logging_middleware = (
        []
        if access_log is None
        else [
            Middleware(
                AccessLogMiddleware,
                access_log=access_log,
                routes=top,
                default_tenant=settings.default_tenant,
            )
        ]
    )
    auth_middleware = (
        []
        if verifier is None
        else [
            Middleware(
                BearerAuthMiddleware,
                verifier=verifier,
                scopes=ScopeNames(settings.auth_read_scope, settings.auth_write_scope, settings.auth_delete_scope),
                default_tenant=settings.default_tenant,
            )
        ]
    )
    app = Starlette(
        routes=top,
        middleware=[
            *logging_middleware,
            Middleware(
                CORSMiddleware,
                allow_origins=list(settings.cors_origins),
                allow_methods=["GET", "POST", "OPTIONS"],
                allow_headers=["*"],
                expose_headers=["Warning", "Content-Location", "Content-Type", "ETag", "WWW-Authenticate"],
                max_age=600,
            ),
            *auth_middleware,
        ],
        exception_handlers={DicomCloudError: on_error},
    )
    app.state.archive = archive
    return app
