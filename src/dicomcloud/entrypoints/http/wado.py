"""WADO-RS (PS3.18 §10.4): instances, metadata, bulk data and frames.

Instances are streamed as stored, byte for byte, unless the Accept header
asks for another Transfer Syntax (PS3.18 §8.7.3; the default is Explicit VR
Little Endian): then each instance is transcoded as the stream reaches it,
so a study is never held in memory whole. Metadata is served from the
precomputed files of the webworker (brought up to date first if stale, so
``/metadata`` lists every instance QIDO lists); frames are cut from the
stored Pixel Data and decoded / re-encoded only when another syntax is asked
for. Parsing and transcoding happen in worker threads.
"""

from __future__ import annotations

import asyncio
import functools
import gzip
import hashlib
import re
from collections.abc import Awaitable, Callable, Collection, Iterator, Sequence
from pathlib import Path

import orjson
from pydicom.filereader import dcmread, read_file_meta_info
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from dicomcloud.domain import frames as frames_mod
from dicomcloud.domain.codecs import PixelDescription
from dicomcloud.domain.layout import InstanceKey, StudyKey, instance_path
from dicomcloud.domain.media import (
    FrameMedia,
    InstanceMedia,
    choose_frame_media,
    choose_instance_media,
    choose_metadata_media,
    instance_content_type,
    parse_accept,
    stored_frame_media,
)
from dicomcloud.domain.multipart import (
    Part,
    encode_multipart_related,
    multipart_related_type,
    new_boundary,
)
from dicomcloud.domain.transcode import transcode_frames, transcode_instance
from dicomcloud.entrypoints.http.context import (
    archive,
    instance_key,
    instances_of,
    series_key,
    service_url,
    study_key,
)
from dicomcloud.errors import InvalidInput, MalformedDicom, NotFound
from dicomcloud.ports import BlobStore
from dicomcloud.usecases.convert import rendition_for

APPLICATION_DICOM = "application/dicom"
OCTET_STREAM = "application/octet-stream"

_PIXEL_TAGS = [
    "Rows",
    "Columns",
    "SamplesPerPixel",
    "BitsAllocated",
    "BitsStored",
    "PixelRepresentation",
    "PhotometricInterpretation",
    "PlanarConfiguration",
    "NumberOfFrames",
]


def _pixel_description(path: str) -> PixelDescription | None:
    """The Image Pixel attributes of a stored instance (its header only); None for non-images."""
    try:
        ds = dcmread(path, stop_before_pixels=True, specific_tags=_PIXEL_TAGS)
    except FileNotFoundError:
        raise
    except Exception as exc:  # pydicom raises many types on garbage
        raise MalformedDicom(f"unreadable DICOM header: {type(exc).__name__}: {exc}") from exc
    return PixelDescription.from_dataset(ds)


def _stored_transfer_syntax(path: str) -> str:
    try:
        return str(read_file_meta_info(path).TransferSyntaxUID).strip()
    except FileNotFoundError:
        raise
    except Exception as exc:  # not Part 10, or no TransferSyntaxUID
        raise MalformedDicom(f"unreadable file meta information: {type(exc).__name__}: {exc}") from exc


# --- instances -----------------------------------------------------------------------


def _rendition(blobs: BlobStore, key: InstanceKey) -> tuple[str, str] | None:
    """The converter's current rendition of an instance (absolute path, its syntax), if any."""
    found = rendition_for(blobs, key)
    return None if found is None else (str(blobs.absolute(found[0])), found[1])


Plan = tuple[str, str, str]  # path to read, its syntax, syntax to send


def _plan(
    blobs: BlobStore, keys: Sequence[InstanceKey], media: InstanceMedia, viewer: Collection[str]
) -> list[Plan | None]:
    """(path, its syntax, syntax to send) per instance, None when the file is gone; 406 before any byte.

    An instance stored in a syntax the viewer cannot decode is read from its rendition
    when one is current, unless the client named the stored syntax.
    """
    plans: list[Plan | None] = []
    for key in keys:
        try:
            path = str(blobs.absolute(instance_path(key)))
            stored = _stored_transfer_syntax(path)
            if stored not in viewer and stored not in media.transfer_syntaxes:
                path, stored = _rendition(blobs, key) or (path, stored)
            if media.as_stored(stored):
                plans.append((path, stored, stored))
                continue
            send = media.transfer_syntax_for(stored, functools.partial(_pixel_description, path))
            plans.append((path, stored, send))
        except FileNotFoundError:
            plans.append(None)
    return plans


def _instance_bytes(plan: Plan) -> bytes:
    path, stored, send = plan
    data = _read(path)
    return data if send == stored else transcode_instance(data, send)


async def _instances_response(request: Request, keys: Sequence[InstanceKey], *, single: bool) -> Response:
    a = archive(request)
    media = choose_instance_media(request.headers.get("accept"), single_part_allowed=single)
    # Decide every part's source and syntax (or 406) before the first byte is sent.
    plans = await asyncio.to_thread(_plan, a.blobs, keys, media, a.settings.viewer_transfer_syntaxes)
    if len(keys) == 1:
        plan = plans[0]
        if plan is None:
            raise NotFound(f"instance {keys[0].sop_instance_uid} not found")
        try:
            data = await asyncio.to_thread(_instance_bytes, plan)
        except FileNotFoundError as exc:
            raise NotFound(f"instance {keys[0].sop_instance_uid} not found") from exc
        content_type = instance_content_type(plan[2])
        if not media.multipart:
            return Response(data, media_type=content_type)
        boundary = new_boundary()
        body = b"".join(bytes(c) for c in encode_multipart_related([Part.of(content_type, data)], boundary))
        return Response(body, media_type=multipart_related_type(APPLICATION_DICOM, boundary))
    boundary = new_boundary()

    def parts() -> Iterator[Part]:
        # One instance at a time: read (and transcode) as the stream reaches it. A
        # failure past the first byte can only abort the stream (no closing boundary).
        for plan in plans:
            if plan is None:
                continue
            try:
                data = _instance_bytes(plan)
            except FileNotFoundError:
                continue  # removed meanwhile; the others still go out
            yield Part.of(instance_content_type(plan[2]), data)

    # A sync iterator: Starlette runs it in a worker thread, off the event loop.
    return StreamingResponse(
        encode_multipart_related(parts(), boundary),
        media_type=multipart_related_type(APPLICATION_DICOM, boundary),
    )


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


async def retrieve_study(request: Request) -> Response:
    key = study_key(request)
    keys = await instances_of(request, key)
    return await _instances_response(request, keys, single=False)


async def retrieve_series(request: Request) -> Response:
    key = series_key(request)
    keys = await instances_of(request, key)
    return await _instances_response(request, keys, single=False)


async def retrieve_instance(request: Request) -> Response:
    return await _instances_response(request, [instance_key(request)], single=True)


# --- metadata ------------------------------------------------------------------------
#
# Series and study metadata are answered from the read cache when warm (no database,
# no file): the entry is the ETag and the gzip bytes as served under the request's
# base URL, stored under the study's generation (usecases/read_cache.py).


def metadata_etag(stored_gz: bytes, base: str) -> str:
    """A weak entity-tag (RFC 9110 §8.8.3) of a metadata answer: a hash of the stored
    ``.json.gz`` and the base its BulkDataURIs are written under. Content only, so
    every server process gives the same one, with or without a cache. Weak: the
    gzip and identity encodings of one answer share it."""
    h = hashlib.blake2b(digest_size=16)
    h.update(base.encode())
    h.update(b"\0")
    h.update(stored_gz)
    return f'W/"{h.hexdigest()}"'


_ENTITY_TAG = re.compile(r'(?:W/)?"[^"]*"')


def none_match(if_none_match: str | None, etag: str) -> bool:
    """Whether ``If-None-Match`` matches ``etag`` by weak comparison (RFC 9110 §13.1.2)."""
    if if_none_match is None:
        return False
    if if_none_match.strip() == "*":
        return True
    opaque = etag.removeprefix("W/")
    return any(m.group(0).removeprefix("W/") == opaque for m in _ENTITY_TAG.finditer(if_none_match))


def _metadata_entry(path: Path, base: str, stored_base: str) -> bytes:
    """ETag, newline, gzip bytes of the answer under ``base`` (from one read of the
    ``.json.gz``, so that the tag always describes the body)."""
    stored_gz = path.with_name(path.name + ".gz").read_bytes()
    gz = stored_gz
    if base != stored_base:
        data = gzip.decompress(stored_gz)
        data = data.replace(f'"BulkDataURI":"{stored_base}/'.encode(), f'"BulkDataURI":"{base}/'.encode())
        gz = gzip.compress(data, 1, mtime=0)
    return metadata_etag(stored_gz, base).encode() + b"\n" + gz


def _not_modified(etag: str) -> Response:
    return Response(status_code=304, headers={"ETag": etag, "Cache-Control": "no-cache", "Vary": "Accept-Encoding"})


async def _metadata_answer(request: Request, media: str, entry: bytes) -> Response:
    tag, _, gz = entry.partition(b"\n")
    etag = tag.decode()
    if none_match(request.headers.get("if-none-match"), etag):
        return _not_modified(etag)
    headers = {"ETag": etag, "Cache-Control": "no-cache", "Vary": "Accept-Encoding"}
    if "gzip" in request.headers.get("accept-encoding", ""):
        return Response(gz, media_type=media, headers={**headers, "Content-Encoding": "gzip"})
    data = await asyncio.to_thread(gzip.decompress, gz) if len(gz) > 64 * 1024 else gzip.decompress(gz)
    return Response(data, media_type=media, headers=headers)


async def _stored_metadata(
    request: Request, study: StudyKey, parts: list[str], ensure: Callable[[], Awaitable[str]]
) -> Response:
    """A study's or series' metadata: from the read cache, else from the file ``ensure()`` brings up to date."""
    a = archive(request)
    media = choose_metadata_media(request.headers.get("accept"))
    base, stored_base = service_url(request), a.stored_service_url(study.tenant_id)

    async def compute() -> bytes:
        path = await ensure()
        return await asyncio.to_thread(_metadata_entry, a.blobs.absolute(path), base, stored_base)

    entry = await a.cache.fetch(study.tenant_id, study.study_instance_uid, "md", [*parts, base], compute)
    return await _metadata_answer(request, media, entry)


async def study_metadata(request: Request) -> Response:
    key = study_key(request)
    return await _stored_metadata(request, key, ["study"], lambda: archive(request).metadata.ensure_study(key))


async def series_metadata(request: Request) -> Response:
    key = series_key(request)
    parts = ["series", key.series_instance_uid]
    return await _stored_metadata(request, key.study, parts, lambda: archive(request).metadata.ensure_series(key))


async def instance_metadata(request: Request) -> Response:
    a = archive(request)
    key = instance_key(request)
    media = choose_metadata_media(request.headers.get("accept"))
    obj = await asyncio.to_thread(a.metadata.read_instance_json, key)
    data = orjson.dumps([obj])
    stored_base, base = a.stored_service_url(key.tenant_id), service_url(request)
    if base != stored_base:
        data = data.replace(f'"BulkDataURI":"{stored_base}/'.encode(), f'"BulkDataURI":"{base}/'.encode())
    etag = f'W/"{hashlib.blake2b(data, digest_size=16).hexdigest()}"'
    if none_match(request.headers.get("if-none-match"), etag):
        return _not_modified(etag)
    return Response(data, media_type=media, headers={"ETag": etag, "Cache-Control": "no-cache"})


# --- bulk data and frames ------------------------------------------------------------


def _frames_answer(
    path: str, numbers: Sequence[int] | None, accept: str | None, single: bool
) -> tuple[FrameMedia, list[bytes | memoryview]]:
    """The chosen representation and the frames in it (all frames when ``numbers`` is None).

    Frames are cut as stored; the Image Pixel attributes are read (and the
    frames decoded and re-encoded) only when another syntax is chosen.
    """
    found = frames_mod.read_frames(path, numbers)  # None: all of them, from one read of the index
    pixels = functools.cache(functools.partial(_pixel_description, path))  # read at most once, if at all
    media = choose_frame_media(accept, found.transfer_syntax_uid, single_part_allowed=single, pixels=pixels)
    _media_type, stored = stored_frame_media(found.transfer_syntax_uid)
    if media.transfer_syntax_uid == stored:
        return media, list(found.frames)
    px = pixels()
    if px is None:
        raise MalformedDicom("the instance has Pixel Data but no Rows and Columns")
    return media, list(transcode_frames(found.frames, px, stored, media.transfer_syntax_uid))


def _frames_response(media: FrameMedia, frames: Sequence[bytes | memoryview]) -> Response:
    if not media.multipart:
        return Response(bytes(frames[0]), media_type=media.part_content_type)
    boundary = new_boundary()
    parts = [Part.of(media.part_content_type, f) for f in frames]
    body = b"".join(bytes(c) for c in encode_multipart_related(parts, boundary))
    return Response(body, media_type=multipart_related_type(media.media_type, boundary))


def _frames_source(blobs: BlobStore, key: InstanceKey, accept: str | None) -> str:
    """The file to cut frames from: the rendition, if there is one, unless the stored syntax is named.

    Only instances a viewer cannot decode have a rendition, so this costs a few ``stat``
    calls and no read for the others."""
    path = str(blobs.absolute(instance_path(key)))
    rendition = _rendition(blobs, key)
    if rendition is None:
        return path
    named = [r.transfer_syntax for r in parse_accept(accept)] if accept else []
    return path if _stored_transfer_syntax(path) in named else rendition[0]


async def retrieve_frames(request: Request) -> Response:
    a = archive(request)
    key = instance_key(request)
    numbers = frames_mod.parse_frame_list(request.path_params["frames"])
    accept = request.headers.get("accept")

    def answer() -> tuple[FrameMedia, list[bytes | memoryview]]:
        return _frames_answer(_frames_source(a.blobs, key, accept), numbers, accept, len(numbers) == 1)

    media, frames = await asyncio.to_thread(answer)
    return _frames_response(media, frames)


def _bulk_value(path: str, tag: int) -> bytes:
    ds = dcmread(path)
    if tag not in ds:
        raise NotFound(f"the instance has no attribute {tag:08X}")
    value = ds[tag].value
    if not isinstance(value, (bytes, bytearray)):
        raise NotFound(f"attribute {tag:08X} is not bulk data")
    return bytes(value)


async def retrieve_bulkdata(request: Request) -> Response:
    a = archive(request)
    key = instance_key(request)
    tag_text = request.path_params["tag"]
    if len(tag_text) != 8 or any(c not in "0123456789abcdefABCDEF" for c in tag_text):
        raise InvalidInput(f"bulk data tag {tag_text!r} must be 8 hexadecimal digits")
    tag = int(tag_text, 16)
    path = str(a.blobs.absolute(instance_path(key)))
    if tag == 0x7FE00010:
        # Pixel Data: its frames, each with its transfer syntax (PS3.18 §10.4.1.1.4).
        media, frames = await asyncio.to_thread(_frames_answer, path, None, request.headers.get("accept"), False)
        return _frames_response(media, frames)
    try:
        value = await asyncio.to_thread(_bulk_value, path, tag)
    except FileNotFoundError as exc:
        raise NotFound(f"instance {key.sop_instance_uid} not found") from exc
    boundary = new_boundary()
    body = b"".join(bytes(c) for c in encode_multipart_related([Part.of(OCTET_STREAM, value)], boundary))
    return Response(body, media_type=multipart_related_type(OCTET_STREAM, boundary))


def routes() -> list[Route]:
    i = "/studies/{study}/series/{series}/instances/{instance}"
    return [
        Route("/studies/{study}", retrieve_study, methods=["GET"]),
        Route("/studies/{study}/metadata", study_metadata, methods=["GET"]),
        Route("/studies/{study}/series/{series}", retrieve_series, methods=["GET"]),
        Route("/studies/{study}/series/{series}/metadata", series_metadata, methods=["GET"]),
        Route(i, retrieve_instance, methods=["GET"]),
        Route(i + "/metadata", instance_metadata, methods=["GET"]),
        Route(i + "/frames/{frames}", retrieve_frames, methods=["GET"]),
        Route(i + "/bulkdata/{tag}", retrieve_bulkdata, methods=["GET"]),
    ]
