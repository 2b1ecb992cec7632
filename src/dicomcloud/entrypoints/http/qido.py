"""QIDO-RS routes (PS3.18 §10.6): Search for Studies, Series and Instances.

Relative paths; the application mounts them under ``/dicom-web`` and
``/tenants/{tenant}/dicom-web``. Responses (PS3.18 §10.6.3):

- 200 with an ``application/dicom+json`` array of matches (PS3.18 Annex F);
- 204 No Content, with no body, when nothing matches — what PS3.18 §8.3.4.4.1
  prescribes today (CP-2473, not yet final, proposes 200 with an empty payload;
  flip :data:`EMPTY_STATUS` when it is);
- ``Warning: 299 {host}: "There are additional results that can be requested"``
  when the page was cut by ``limit`` (PS3.18 §10.6.3.3 / §8.3.4.4.1).

Only DICOM JSON is offered: an Accept that excludes ``application/dicom+json``,
``application/json`` and their wildcards (e.g. only
``multipart/related; type="application/dicom+xml"``) gets 406 with the reason.
The ``accept`` query parameter (PS3.18 §8.3.3.1), when present, overrides the
header.

Answers go through the read cache (``usecases/read_cache.py``), under the
generation of the study in the path, or of the tenant for ``/studies``,
``/series`` and ``/instances``; the key holds the canonical query, the media
type and the service URL the Retrieve URLs are written under.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from dicomcloud.domain.attributes import Level
from dicomcloud.domain.qido import QidoQuery, format_qido, parse_qido
from dicomcloud.entrypoints.http import context
from dicomcloud.errors import NotAcceptable
from dicomcloud.usecases.search import search

DICOM_JSON = "application/dicom+json"
JSON = "application/json"
EMPTY_STATUS = 204
MORE_RESULTS = "There are additional results that can be requested"


def _media_ranges(accept: str) -> list[str]:
    """The media ranges of an Accept value with a non-zero q (RFC 9110 §12.5.1)."""
    ranges = []
    for item in accept.split(","):
        media, *params = (part.strip() for part in item.split(";"))
        if not media:
            continue
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if q > 0:
            ranges.append(media.lower())
    return ranges


def negotiate(accept_values: list[str]) -> str:
    """The response media type for the given Accept values, or :class:`NotAcceptable`."""
    ranges = [r for value in accept_values for r in _media_ranges(value)]
    if not ranges:
        return DICOM_JSON
    if any(r in (DICOM_JSON, "application/*", "*/*") for r in ranges):
        return DICOM_JSON
    if JSON in ranges:
        return JSON
    raise NotAcceptable(
        f"QIDO-RS answers {DICOM_JSON} (or {JSON}); none is acceptable in Accept: {', '.join(accept_values)[:200]!r}"
    )


def _warning(request: Request) -> str:
    agent = request.url.netloc or "dicomcloud"
    return f'299 {agent}: "{MORE_RESULTS}"'


def _canonical(query: QidoQuery) -> list[str]:
    """What a search answer depends on in ``query``, in one order whatever the
    order of the request's parameters (each key appears once, PS3.18 §8.3.4.1)."""
    return [
        query.level.value,
        query.study_instance_uid or "",
        query.series_instance_uid or "",
        *sorted(f"{name}={value}" for name, value in format_qido(query)),
    ]


def _handler(level: Level) -> Callable[[Request], Awaitable[Response]]:
    async def handle(request: Request) -> Response:
        items = request.query_params.multi_items()
        accept_params = [v for k, v in items if k == "accept"]
        params = [(k, v) for k, v in items if k != "accept"]
        header = request.headers.get("accept")
        media_type = negotiate(accept_params or ([header] if header else []))
        study = request.path_params.get("study")
        series = request.path_params.get("series")
        archive = context.archive(request)
        query = parse_qido(
            level,
            context.tenant_of(request),
            params,
            study_instance_uid=(None if study is None else context.path_uid(request, "study", "StudyInstanceUID")),
            series_instance_uid=(None if series is None else context.path_uid(request, "series", "SeriesInstanceUID")),
            default_limit=archive.settings.qido_default_limit,
            max_limit=archive.settings.qido_max_limit,
        )
        retrieve_base = context.service_url(request)

        async def compute() -> bytes:
            result = await search(archive.index, archive.warehouse, query, retrieve_base)
            return (b"1" if result.more else b"0") + (orjson.dumps(result.matches) if result.matches else b"")

        answer = await archive.cache.fetch(
            query.tenant_id,
            query.study_instance_uid,  # a study in the path: the study's generation
            "qido",
            [*_canonical(query), media_type, retrieve_base],
            compute,
        )
        headers = {"Warning": _warning(request)} if answer[:1] == b"1" else {}
        if len(answer) == 1:
            return Response(status_code=EMPTY_STATUS, headers=headers)
        return Response(answer[1:], media_type=media_type, headers=headers)

    handle.__name__ = f"search_for_{level.name.lower()}"
    return handle


def routes() -> list[Route]:
    """GET routes of the Search transaction (PS3.18 §10.6.1, Table 10.6.1-2)."""
    studies, series, instances = (
        _handler(Level.STUDY),
        _handler(Level.SERIES),
        _handler(Level.INSTANCE),
    )
    return [
        Route("/studies", studies, methods=["GET"]),
        Route("/series", series, methods=["GET"]),
        Route("/instances", instances, methods=["GET"]),
        Route("/studies/{study}/series", series, methods=["GET"]),
        Route("/studies/{study}/instances", instances, methods=["GET"]),
        Route("/studies/{study}/series/{series}/instances", instances, methods=["GET"]),
    ]
