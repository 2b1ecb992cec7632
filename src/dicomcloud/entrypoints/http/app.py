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

from dicomcloud.entrypoints.http import qido, rendered, stow, wado, wado_uri
from dicomcloud.entrypoints.http.access_log import AccessLogMiddleware
from dicomcloud.errors import DicomCloudError, http_status

if TYPE_CHECKING:
    from dicomcloud.bootstrap import Archive
    from dicomcloud.usecases.access_log import AccessLog

log = logging.getLogger(__name__)


def _warning(reason: str) -> str:
    # a header value is latin-1 on the wire: anything but printable ASCII (a
    # reason may quote a client's UTF-8 or control characters) becomes "?"
    text = "".join(c if 32 <= ord(c) < 127 else "?" for c in reason)
    text = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'299 dicomcloud "{text[:500]}"'


async def on_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, DicomCloudError)
    status = http_status(exc)
    if status >= 500:
        log.error("%s %s: %s", request.method, request.url.path, exc.reason)
    return PlainTextResponse(exc.reason + "\n", status_code=status, headers={"Warning": _warning(exc.reason)})


async def health(request: Request) -> Response:
    return PlainTextResponse("ok\n")


def dicomweb_routes() -> list[BaseRoute]:
    return [*qido.routes(), *stow.routes(), *wado.routes(), *rendered.routes()]


def create_app(archive: Archive, access_log: AccessLog | None = None) -> Starlette:
    """The application; with ``access_log``, every request is recorded in it
    (outermost middleware, so CORS answers and errors are recorded too)."""
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
                default_tenant=archive.settings.default_tenant,
            )
        ]
    )
    app = Starlette(
        routes=top,
        middleware=[
            *logging_middleware,
            Middleware(
                CORSMiddleware,
                allow_origins=list(archive.settings.cors_origins),
                allow_methods=["GET", "POST", "OPTIONS"],
                allow_headers=["*"],
                expose_headers=["Warning", "Content-Location", "Content-Type", "ETag"],
                max_age=600,
            ),
        ],
        exception_handlers={DicomCloudError: on_error},
    )
    app.state.archive = archive
    return app
