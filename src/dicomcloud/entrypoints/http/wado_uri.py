"""WADO-URI, the URI Service (PS3.18 §9): ``GET /wado?requestType=WADO&studyUID=…``.

Mounted at ``/wado`` (default tenant) and ``/tenants/{tenant}/wado``.

* **Retrieve DICOM Instance** (§9.4), ``contentType=application/dicom``: the
  stored file, byte for byte. ``transferSyntax`` naming the stored syntax
  (or absent: the stored syntax is served, the tolerant reading of §9.4.2.4
  which names Explicit VR Little Endian) gives the file; another syntax is
  converted by ``domain.transcode.transcode_instance`` (406 with the reason
  when it cannot). ``anonymize`` is not supported (400).
* **Retrieve Rendered Instance** (§9.5), ``contentType=image/jpeg`` (also
  ``image/png``, ``image/gif``): ``frameNumber``, ``rows``/``columns``
  (each a maximum, aspect kept), ``region`` (normalized xmin,ymin,xmax,ymax),
  ``windowCenter``/``windowWidth`` (linear), ``imageQuality``;
  ``annotation``/``imageAnnotation`` are ignored with a Warning (nothing is
  burned in); presentation states are not supported (400); ``frameNumber=1``
  of a single-frame image is accepted (§9.5.2.1 would have it 400).
* Without ``contentType`` (and with ``Accept`` absent or ``*/*``) a
  single-frame image is rendered as ``image/jpeg`` and anything else sent as
  ``application/dicom``; rendering parameters (``rows``, ``windowCenter``,
  …) ask for ``image/jpeg``.

Missing or invalid parameters are 400 with the reason (also unknown ones,
the project's rule), unknown UIDs 404.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.filereader import read_file_meta_info
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from dicomcloud.domain import frames as frames_mod
from dicomcloud.domain import render
from dicomcloud.domain.layout import InstanceKey, instance_path
from dicomcloud.domain.multipart import parse_media_type, split_unquoted
from dicomcloud.domain.render_query import (
    MAX_VIEWPORT,
    annotation_warning,
    decimal,
    parse_quality,
    positive_int,
)
from dicomcloud.domain.transcode import transcode_instance
from dicomcloud.domain.uids import validate_uid
from dicomcloud.entrypoints.http import cpu
from dicomcloud.entrypoints.http.context import archive, tenant_of
from dicomcloud.entrypoints.http.errors import warning_value
from dicomcloud.entrypoints.http.rendered import read_header
from dicomcloud.errors import InvalidInput, InvalidQuery, NotAcceptable, NotFound

APPLICATION_DICOM = "application/dicom"

_COMMON = {"requestType", "studyUID", "seriesUID", "objectUID", "contentType", "charset"}
_DICOM_ONLY = {"anonymize", "transferSyntax"}
_RENDERED_ONLY = {
    "annotation",
    "imageAnnotation",
    "frameNumber",
    "rows",
    "columns",
    "region",
    "windowCenter",
    "windowWidth",
    "imageQuality",
    "presentationUID",
    "presentationSeriesUID",
}


@dataclass(frozen=True, slots=True)
class UriRequest:
    """A validated WADO-URI request. ``media_type`` None: chosen by the instance."""

    key: InstanceKey
    media_type: str | None
    transfer_syntax: str | None = None
    frame_number: int | None = None
    options: render.RenderOptions = field(default_factory=render.RenderOptions)
    warnings: tuple[str, ...] = ()


def _media_list(text: str, where: str) -> list[str]:
    """The media types of a contentType or Accept value, best first (no wildcards checked)."""
    essences: list[tuple[float, int, str]] = []
    for i, piece in enumerate(p for p in split_unquoted(text, ",") if p.strip()):
        try:
            media = parse_media_type(piece)
        except InvalidInput as exc:
            raise InvalidQuery(f"{where}: {exc.reason}") from exc
        if media.param("transfer-syntax") is not None or media.param("charset") is not None:
            raise InvalidQuery(
                f"{where}: the media type parameters transfer-syntax and charset are forbidden (PS3.18 §9.1.2.2.1)"
            )
        try:
            q = float(media.params.get("q", "1"))
        except ValueError:
            raise InvalidQuery(f"{where}: q value {media.params['q']!r} is not a number") from None
        if q > 0:
            essences.append((-q, i, media.essence))
    return [e for _, _, e in sorted(essences)]


def _choose_media(content_type: str | None, accept: str | None, supported: Sequence[str]) -> str | None:
    """application/dicom, a rendered type, or None (the instance decides; §9.3)."""
    if content_type is not None:
        listed = _media_list(content_type, "contentType")
        if not listed:
            raise InvalidQuery("contentType names no media type")
        if APPLICATION_DICOM in listed:
            if len(set(listed)) > 1:
                raise InvalidQuery(f"contentType {content_type!r} mixes application/dicom with rendered media types")
            return APPLICATION_DICOM
        for essence in listed:
            if essence in supported:
                return essence
        raise NotAcceptable(f"WADO-URI answers application/dicom or {', '.join(supported)}, not {content_type}")
    if accept is None or not accept.strip():
        return None
    for essence in _media_list(accept, "Accept"):
        if essence == "*/*":
            return None
        if essence in (APPLICATION_DICOM, "application/*"):
            return APPLICATION_DICOM
        if essence in supported:
            return essence
        if essence == "image/*":
            return render.JPEG
    raise NotAcceptable(f"WADO-URI answers application/dicom or {', '.join(supported)}, not {accept}")


def _region(text: str) -> tuple[float, float, float, float]:
    parts = text.split(",")
    if len(parts) != 4:
        raise InvalidQuery(f"region {text!r} must be four decimals xmin,ymin,xmax,ymax")
    xmin, ymin, xmax, ymax = (decimal(p, "region value") for p in parts)
    if not (0.0 <= xmin < xmax <= 1.0 and 0.0 <= ymin < ymax <= 1.0):
        raise InvalidQuery(f"region {text!r} must satisfy 0 <= xmin < xmax <= 1 and 0 <= ymin < ymax <= 1")
    return xmin, ymin, xmax, ymax


def parse_uri_request(tenant_id: str, params: Sequence[tuple[str, str]], accept: str | None) -> UriRequest:
    """Validate the query of a WADO-URI request (PS3.18 §9.1.2, §9.4.1.2, §9.5.1.2)."""
    given: dict[str, str] = {}
    for name, value in params:
        if name in given:
            raise InvalidQuery(f"query parameter {name!r} is given more than once")
        given[name] = value
    unknown = sorted(set(given) - _COMMON - _DICOM_ONLY - _RENDERED_ONLY)
    if unknown:
        raise InvalidQuery(f"unknown WADO-URI query parameter(s): {', '.join(unknown)}")
    if "requestType" not in given:
        raise InvalidQuery("requestType is missing (it must be WADO)")
    if given["requestType"] != "WADO":
        raise InvalidQuery(f"requestType {given['requestType']!r} is not supported (only WADO)")
    missing = [n for n in ("studyUID", "seriesUID", "objectUID") if not given.get(n)]
    if missing:
        raise InvalidQuery(f"missing required parameter(s): {', '.join(missing)}")
    key = InstanceKey(
        tenant_id,
        validate_uid(given["studyUID"], "studyUID"),
        validate_uid(given["seriesUID"], "seriesUID"),
        validate_uid(given["objectUID"], "objectUID"),
    )
    media = _choose_media(given.get("contentType"), accept, render.RENDERED_MEDIA_TYPES)
    dicom_params = sorted(set(given) & _DICOM_ONLY)
    rendered_params = sorted(set(given) & _RENDERED_ONLY)
    if media is None and dicom_params and rendered_params:
        raise InvalidQuery(f"{', '.join(dicom_params)} and {', '.join(rendered_params)} exclude each other")
    if media is None and rendered_params:
        media = render.JPEG
    elif media is None and dicom_params:
        media = APPLICATION_DICOM
    if media == APPLICATION_DICOM:
        if rendered_params:
            raise InvalidQuery(f"{', '.join(rendered_params)} apply only to rendered images, not application/dicom")
        return _dicom_request(key, given)
    if dicom_params:
        raise InvalidQuery(f"{', '.join(dicom_params)} apply only to application/dicom, not {media or 'images'}")
    return _rendered_request(key, media, given)


def _dicom_request(key: InstanceKey, given: dict[str, str]) -> UriRequest:
    if "anonymize" in given:
        if given["anonymize"] != "yes":
            raise InvalidQuery(f"anonymize {given['anonymize']!r} must be 'yes'")
        raise InvalidQuery("anonymize=yes is not supported: this archive does not de-identify")
    syntax = None
    if "transferSyntax" in given:
        syntax = validate_uid(given["transferSyntax"].strip(), "transferSyntax")
    return UriRequest(key, APPLICATION_DICOM, transfer_syntax=syntax)


def _rendered_request(key: InstanceKey, media: str | None, given: dict[str, str]) -> UriRequest:
    if "presentationUID" in given or "presentationSeriesUID" in given:
        raise InvalidQuery("presentation states (presentationUID, presentationSeriesUID) are not supported")
    warnings = [annotation_warning(given[n]) for n in ("annotation", "imageAnnotation") if n in given]
    frame = positive_int(given["frameNumber"], "frameNumber") if "frameNumber" in given else None
    window = None
    if ("windowCenter" in given) != ("windowWidth" in given):
        raise InvalidQuery("windowCenter and windowWidth must be given together (PS3.18 §9.5.1.2.6)")
    if "windowCenter" in given:
        center = decimal(given["windowCenter"], "windowCenter")
        window = render.Window(center, decimal(given["windowWidth"], "windowWidth"))
        problem = window.problem()
        if problem:
            raise InvalidQuery(problem)
    viewport = None
    if {"rows", "columns", "region"} & set(given):
        viewport = render.Viewport(
            width=positive_int(given["columns"], "columns", MAX_VIEWPORT) if "columns" in given else None,
            height=positive_int(given["rows"], "rows", MAX_VIEWPORT) if "rows" in given else None,
            region=_region(given["region"]) if "region" in given else None,
        )
    quality = parse_quality(given["imageQuality"]) if "imageQuality" in given else None
    options = render.RenderOptions(media or render.JPEG, window, viewport, quality)
    return UriRequest(key, media, frame_number=frame, options=options, warnings=tuple(warnings))


# --- the work, in worker threads ---------------------------------------------------------------


def retrieve_dicom(path: str, transfer_syntax: str | None) -> bytes:
    """The stored file, or the file converted to ``transfer_syntax`` (§9.4.2.4)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
        if transfer_syntax is None:  # as stored: no need to know which syntax that is
            return data
        stored = str(read_file_meta_info(path).TransferSyntaxUID)
    except FileNotFoundError as exc:
        raise NotFound(f"instance {Path(path).stem} not found") from exc
    if transfer_syntax == stored:
        return data
    return transcode_instance(data, transfer_syntax)  # NotAcceptable with the reason when it cannot


def retrieve_rendered(path: str, request: UriRequest) -> tuple[str, bytes]:
    """(media type, bytes): the rendered frame, or the file when the instance chose DICOM."""
    header = read_header(path)
    count = render.number_of_frames(header)
    if request.media_type is None and (not render.is_image(header) or count > 1):
        return APPLICATION_DICOM, retrieve_dicom(path, None)
    options = request.options
    render.check_image(header, options.media_type)
    number = request.frame_number or 1
    if number > count:
        raise InvalidQuery(f"frameNumber {number} is past the instance's {count} frame{'s' if count != 1 else ''}")
    found = frames_mod.read_frames(path, [number])
    return options.media_type, render.render(header, found.transfer_syntax_uid, found.frames[0], options)


async def wado(request: Request) -> Response:
    """``GET /wado`` (PS3.18 §9.4, §9.5)."""
    uri = parse_uri_request(tenant_of(request), list(request.query_params.multi_items()), request.headers.get("accept"))
    path = str(archive(request).blobs.absolute(instance_path(uri.key)))
    if uri.media_type == APPLICATION_DICOM:
        data = await asyncio.to_thread(retrieve_dicom, path, uri.transfer_syntax)
        return Response(data, media_type=APPLICATION_DICOM)
    media, data = await cpu.run(retrieve_rendered, path, uri)
    headers: dict[str, Any] = {}
    if uri.warnings and media != APPLICATION_DICOM:
        headers["Warning"] = ", ".join(warning_value(w) for w in uri.warnings)
    return Response(data, media_type=media, headers=headers)


def routes() -> list[Route]:
    """The URI Service of the default tenant and of every tenant."""
    return [
        Route("/wado", wado, methods=["GET"]),
        Route("/tenants/{tenant}/wado", wado, methods=["GET"]),
    ]
