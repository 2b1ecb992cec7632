"""STOW-RS: store instances sent over HTTP (PS3.18 §10.5).

``POST /studies`` and ``POST /studies/{study}`` take
``multipart/related; type="application/dicom"`` (a missing ``type`` is
tolerated when the parts are ``application/dicom``) or one single-part
``application/dicom`` instance. The whole body is received (bounded by
``max_stow_bytes``) before anything is stored, so a client that disconnects
mid-body stores nothing. Each part goes through the shared :class:`Ingest`
use case, a few at a time.

The response is a Store Instances Response Module (PS3.18 §10.5.3, Annex
I) in ``application/dicom+json``; failure reasons are also sent as
``Warning: 299`` headers. Status (Table 10.5.3-1): 200 all stored, 202 some
failed, 409 none stored — or 503 when every failure was the archive being
unavailable (§8.5) — and 400 for a body that is not a multipart message.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from io import BytesIO
from typing import Any

import orjson
from pydicom.filereader import dcmread
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from dicomcloud.domain.media import APPLICATION_DICOM, APPLICATION_DICOM_JSON
from dicomcloud.domain.messages import Source
from dicomcloud.domain.multipart import (
    MediaType,
    Part,
    parse_content_type,
    parse_multipart_related,
)
from dicomcloud.domain.uids import validate_uid
from dicomcloud.entrypoints.http.context import archive, path_uid, service_url, tenant_of
from dicomcloud.entrypoints.http.errors import warning_value
from dicomcloud.errors import (
    DicomCloudError,
    InvalidInput,
    InvalidUID,
    PayloadTooLarge,
    RequestTimeout,
    Unavailable,
    UnsupportedMediaType,
    dimse_status,
)
from dicomcloud.usecases.ingest import StoredInstance

CONCURRENCY = 4  # parts stored at once per request
MAX_WARNINGS = 10  # Warning headers per response; the JSON body has every failure


@dataclass(frozen=True, slots=True)
class _Failure:
    error: DicomCloudError
    sop_class_uid: str | None
    sop_instance_uid: str | None


def _json(vr: str, *values: Any) -> dict[str, Any]:
    return {"vr": vr, "Value": list(values)}


async def _read_body(request: Request, limit: int, idle_timeout: float) -> bytearray:
    """The whole body, refused as soon as it passes ``limit`` bytes (413) or sends
    nothing for ``idle_timeout`` seconds (408: a stalled or slow-loris client does not
    hold a worker and its memory for ever)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            length = int(declared)
        except ValueError:
            raise InvalidInput(f"Content-Length {declared!r} is not a number") from None
        if length > limit:
            raise PayloadTooLarge(f"the request body of {length} bytes exceeds the STOW-RS limit of {limit}")
    body = bytearray()
    chunks = request.stream().__aiter__()
    try:
        while True:
            try:
                async with asyncio.timeout(idle_timeout):
                    chunk = await anext(chunks)
            except StopAsyncIteration:
                break
            body += chunk
            if len(body) > limit:
                raise PayloadTooLarge(f"the request body exceeds the STOW-RS limit of {limit} bytes")
    except ClientDisconnect:
        raise InvalidInput("the client disconnected before the request body was complete") from None
    except TimeoutError:
        raise RequestTimeout(f"the request body stalled: nothing received for {idle_timeout:g} s") from None
    return body


def _check_request_type(media: MediaType) -> None:
    if media.essence == APPLICATION_DICOM:
        return
    if media.essence != "multipart/related":
        raise UnsupportedMediaType(
            f'STOW-RS accepts multipart/related; type="application/dicom" or application/dicom, not {media.essence}'
        )
    part_type = media.param("type")
    if part_type is not None and part_type.strip().lower() != APPLICATION_DICOM:
        raise UnsupportedMediaType(
            f'multipart/related; type="{part_type}" is not supported: STOW-RS here takes '
            'type="application/dicom" (metadata and bulk data parts are not accepted)'
        )


def _parts(body: bytearray, content_type: str, media: MediaType) -> list[Part]:
    if media.essence == APPLICATION_DICOM:
        return [Part({"content-type": APPLICATION_DICOM}, memoryview(body))]
    parts = parse_multipart_related(body, content_type)
    if not parts:
        raise InvalidInput("the multipart body contains no parts")
    return parts


def _identify(data: bytes | memoryview) -> tuple[str | None, str | None]:
    """SOP Class and Instance UIDs of a part, if its header is readable at all."""
    try:
        ds = dcmread(BytesIO(data), stop_before_pixels=True, specific_tags=["SOPClassUID", "SOPInstanceUID"])
        sop_class = ds.get("SOPClassUID") or ds.file_meta.get("MediaStorageSOPClassUID")
        sop_instance = ds.get("SOPInstanceUID") or ds.file_meta.get("MediaStorageSOPInstanceUID")
    except Exception:  # best effort for the failure report only
        return None, None
    # a damaged part may carry garbage there: report only what is a UID, so that the
    # response stays valid DICOM JSON that clients can parse
    return _uid_or_none(sop_class), _uid_or_none(sop_instance)


def _uid_or_none(value: object) -> str | None:
    try:
        return validate_uid(str(value)) if value else None
    except InvalidUID:
        return None


async def _store_part(
    request: Request, part: Part, index: int, study: str | None, gate: asyncio.Semaphore
) -> StoredInstance | _Failure:
    async with gate:
        try:
            media = part.media_type()
            if media is not None and media.essence != APPLICATION_DICOM:
                raise UnsupportedMediaType(f"part {index} is {media.essence}; only application/dicom parts are stored")
            client = request.client
            source = Source(kind="stow", address=f"{client.host}:{client.port}" if client else "")
            return await archive(request).ingest.store(
                part.content, tenant_of(request), source, expected_study_instance_uid=study
            )
        except DicomCloudError as error:
            sop_class, sop_instance = await asyncio.to_thread(_identify, part.content)
            return _Failure(error, sop_class, sop_instance)


def _instance_url(base: str, stored: StoredInstance) -> str:
    key = stored.key
    return f"{base}/studies/{key.study_instance_uid}/series/{key.series_instance_uid}/instances/{key.sop_instance_uid}"


def _response_body(
    base: str, study: str | None, stored: Sequence[StoredInstance], failed: Sequence[_Failure]
) -> dict[str, Any]:
    body: dict[str, Any] = {}
    studies = {s.key.study_instance_uid for s in stored}
    known_study = study or (studies.pop() if len(studies) == 1 else None)
    if known_study:
        body["00081190"] = _json("UR", f"{base}/studies/{known_study}")
    if failed:
        items = []
        for failure in failed:
            item: dict[str, Any] = {}
            if failure.sop_class_uid:
                item["00081150"] = _json("UI", failure.sop_class_uid)
            if failure.sop_instance_uid:
                item["00081155"] = _json("UI", failure.sop_instance_uid)
            item["00081197"] = _json("US", dimse_status(failure.error))
            items.append(item)
        body["00081198"] = _json("SQ", *items)
    if stored:
        body["00081199"] = _json(
            "SQ",
            *(
                {
                    "00081150": _json("UI", s.sop_class_uid),
                    "00081155": _json("UI", s.key.sop_instance_uid),
                    "00081190": _json("UR", _instance_url(base, s)),
                }
                for s in stored
            ),
        )
    return dict(sorted(body.items()))


def _status(stored: Sequence[StoredInstance], failed: Sequence[_Failure]) -> int:
    if not failed:
        return 200
    if stored:
        return 202
    if all(isinstance(f.error, Unavailable) for f in failed):
        return 503
    return 409


async def store_instances(request: Request) -> Response:
    """PS3.18 §10.5 Store Instances; the Target Resource is all studies or one study."""
    study = path_uid(request, "study", "StudyInstanceUID") if "study" in request.path_params else None
    content_type = request.headers.get("content-type")
    media = parse_content_type(content_type)
    _check_request_type(media)
    settings = archive(request).settings
    body = await _read_body(request, settings.max_stow_bytes, settings.http_body_timeout)
    parts = _parts(body, content_type or "", media)

    gate = asyncio.Semaphore(CONCURRENCY)
    results = await asyncio.gather(*(_store_part(request, part, i, study, gate) for i, part in enumerate(parts, 1)))
    stored = [r for r in results if isinstance(r, StoredInstance)]
    failed = [r for r in results if isinstance(r, _Failure)]

    response = Response(
        orjson.dumps(_response_body(service_url(request), study, stored, failed)),
        status_code=_status(stored, failed),
        media_type=APPLICATION_DICOM_JSON,
    )
    host = request.url.netloc or "dicomcloud"
    for failure in failed[:MAX_WARNINGS]:
        who = failure.sop_instance_uid or "an instance"
        response.headers.append("Warning", warning_value(f"{who}: {failure.error.reason}"[:300], host))
    if len(failed) > MAX_WARNINGS:
        response.headers.append("Warning", warning_value(f"{len(failed) - MAX_WARNINGS} more failures", host))
    return response


def routes() -> list[Route]:
    """Relative routes; the server mounts them under each DICOMweb base path."""
    return [
        Route("/studies", store_instances, methods=["POST"]),
        Route("/studies/{study}", store_instances, methods=["POST"]),
    ]
