"""Rendered resources and thumbnails (PS3.18 §10.4.1.1.3 and §10.4.1.1.4).

* ``…/instances/{i}/rendered``: one image. A multi-frame instance gives its
  first frame, or, as ``image/gif``, an animation of its frames (at most
  :data:`MAX_ANIMATION_FRAMES`, evenly spaced beyond that).
* ``…/frames/{f}/rendered``: one frame as one image; several frames as
  ``multipart/related; type=<image type>``, one part per frame, in the
  order asked.
* ``/studies/{s}/rendered`` and ``…/series/{se}/rendered``:
  ``multipart/related``, one part per instance (rendered as above) in the
  index's order (series number, instance number). Instances that are not
  images (or whose pixel data cannot be decoded, or that were removed) are
  left out; when none is left the answer is 406.
* ``…/thumbnail`` at all four levels: one image that fits in 128 x 128
  (never enlarged) or in ``viewport=vw,vh``. Study: the middle instance (by
  Instance Number) of the first series (by Series Number) that holds an
  image; series: its middle instance; instance: its middle frame; frames:
  the first frame listed. Cached in the read cache under the study's
  generation (kind ``thumb``), so a change to the study drops them.

Decoding, rendering and encoding run in the process pool of :mod:`.cpu`
(worker threads without one); the files are found the way WADO-RS finds
them (the index for studies and series, the storage layout for an instance).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import dcmread
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from dicomcloud.domain import frames as frames_mod
from dicomcloud.domain import render
from dicomcloud.domain.layout import InstanceKey, StudyKey, instance_path
from dicomcloud.domain.multipart import Part, encode_multipart_related, multipart_related_type, new_boundary
from dicomcloud.domain.render_query import RenderedQuery, parse_rendered_query, parse_thumbnail_query
from dicomcloud.entrypoints.http import cpu
from dicomcloud.entrypoints.http.context import (
    archive,
    instance_key,
    instances_of,
    series_key,
    study_key,
)
from dicomcloud.entrypoints.http.errors import warning_value
from dicomcloud.errors import DicomCloudError, InvalidQuery, MalformedDicom, NotAcceptable, NotFound

log = logging.getLogger(__name__)

MAX_ANIMATION_FRAMES = 300
Thumbnailer = Callable[[render.RenderOptions], Awaitable[bytes]]


# --- the work, in worker threads ---------------------------------------------------------


def read_header(path: str | Path) -> Dataset:
    """The data set of a stored instance up to Pixel Data."""
    try:
        with open(path, "rb") as fp:
            return dcmread(fp, stop_before_pixels=True)
    except FileNotFoundError as exc:
        raise NotFound(f"instance {Path(path).stem} not found") from exc
    except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError, OSError) as exc:
        raise MalformedDicom(f"the stored instance is unreadable: {type(exc).__name__}: {exc}") from exc


def _animation_numbers(count: int) -> list[int]:
    if count <= MAX_ANIMATION_FRAMES:
        return list(range(1, count + 1))
    step = count / MAX_ANIMATION_FRAMES
    return sorted({1 + int(i * step) for i in range(MAX_ANIMATION_FRAMES)})


def render_frames(path: str | Path, numbers: Sequence[int], options: render.RenderOptions) -> list[bytes]:
    """Frames ``numbers`` (1-based) of the instance at ``path``, each rendered on its own."""
    header = read_header(path)
    render.check_image(header, options.media_type)
    found = frames_mod.read_frames(str(path), numbers)
    return [render.render(header, found.transfer_syntax_uid, frame, options) for frame in found.frames]


def render_instance(path: str | Path, options: render.RenderOptions, *, representative: bool = False) -> bytes:
    """The rendering of an instance: its first frame (the middle one when ``representative``),
    or all its frames as an animated GIF when GIF is asked for a multi-frame instance."""
    header = read_header(path)
    render.check_image(header, options.media_type)
    count = render.number_of_frames(header)
    if options.media_type == render.GIF and count > 1 and not representative:
        images = []
        for number in _animation_numbers(count):  # read one stored frame at a time
            found = frames_mod.read_frames(str(path), [number])
            images.append(render.render_image(header, found.transfer_syntax_uid, found.frames[0], options))
        return render.encode_animation(images, render.frame_time(header))
    number = (count + 1) // 2 if representative else 1
    found = frames_mod.read_frames(str(path), [number])
    return render.render(header, found.transfer_syntax_uid, found.frames[0], options)


def _representative(path: str | Path, options: render.RenderOptions) -> bytes:
    return render_instance(path, options, representative=True)


def first_thumbnail(paths: Sequence[str | Path], options: render.RenderOptions) -> bytes:
    """The thumbnail of the first of ``paths`` that is an image (its middle frame)."""
    reasons: list[str] = []
    for path in paths:
        try:
            return render_instance(path, options, representative=True)
        except (NotAcceptable, NotFound) as exc:
            reasons.append(exc.reason)
    raise NotAcceptable("no instance to make a thumbnail from: " + "; ".join(reasons[:3]))


def _rendered_parts(
    paths: Sequence[str | Path], options: render.RenderOptions, left_out: list[DicomCloudError]
) -> Iterator[Part]:
    """The rendering of each instance that has one; why the others have none goes to ``left_out``.

    Iterated in worker threads; each rendering runs in the process pool (:mod:`.cpu`)."""
    for path in paths:
        try:
            data = cpu.call(render_instance, path, options)  # on every core, like one instance's
        except (NotAcceptable, NotFound, MalformedDicom, InvalidQuery) as exc:
            # Not an image, not decodable, removed meanwhile, or smaller than the viewport's
            # region: left out of a study / series rendering, which renders what it can.
            log.info("rendered: %s left out: %s", Path(path).name, exc.reason)
            left_out.append(exc)
            continue
        yield Part.of(options.media_type, data)


# --- requests ----------------------------------------------------------------------------


def _headers(query: RenderedQuery) -> dict[str, str]:
    return {"Warning": ", ".join(warning_value(w) for w in query.warnings)} if query.warnings else {}


def _path(request: Request, key: InstanceKey) -> str:
    return str(archive(request).blobs.absolute(instance_path(key)))


async def _multipart(request: Request, keys: Sequence[InstanceKey], query: RenderedQuery, what: str) -> Response:
    options = query.options
    left_out: list[DicomCloudError] = []
    parts = _rendered_parts([_path(request, k) for k in keys], options, left_out)
    first = await asyncio.to_thread(next, parts, None)  # decided before the status goes out
    if first is None:
        bad_query = [e for e in left_out if isinstance(e, InvalidQuery)]
        if bad_query:
            raise bad_query[0]
        reasons = "; ".join(sorted({e.reason for e in left_out})[:3])
        raise NotAcceptable(
            f"none of the {len(keys)} instances of {what} can be rendered as {options.media_type}: {reasons}"
        )
    boundary = new_boundary()

    def body() -> Iterator[Part]:
        yield first
        yield from parts

    # A sync iterator: Starlette runs each step in a worker thread, off the event loop.
    return StreamingResponse(
        encode_multipart_related(body(), boundary),
        media_type=multipart_related_type(options.media_type, boundary),
        headers=_headers(query),
    )


async def rendered_study(request: Request) -> Response:
    key = study_key(request)
    query = parse_rendered_query(list(request.query_params.multi_items()), request.headers.get("accept"))
    keys = await instances_of(request, key)
    return await _multipart(request, keys, query, f"study {key.study_instance_uid}")


async def rendered_series(request: Request) -> Response:
    key = series_key(request)
    query = parse_rendered_query(list(request.query_params.multi_items()), request.headers.get("accept"))
    keys = await instances_of(request, key)
    return await _multipart(request, keys, query, f"series {key.series_instance_uid}")


async def rendered_instance(request: Request) -> Response:
    key = instance_key(request)
    query = parse_rendered_query(list(request.query_params.multi_items()), request.headers.get("accept"))
    data = await cpu.run(render_instance, _path(request, key), query.options)
    return Response(data, media_type=query.options.media_type, headers=_headers(query))


async def rendered_frames(request: Request) -> Response:
    key = instance_key(request)
    numbers = frames_mod.parse_frame_list(request.path_params["frames"])
    query = parse_rendered_query(list(request.query_params.multi_items()), request.headers.get("accept"))
    options = query.options
    images = await cpu.run(render_frames, _path(request, key), numbers, options)
    if len(images) == 1:
        return Response(images[0], media_type=options.media_type, headers=_headers(query))
    boundary = new_boundary()
    parts = [Part.of(options.media_type, image) for image in images]
    body = b"".join(bytes(c) for c in encode_multipart_related(parts, boundary))
    return Response(body, media_type=multipart_related_type(options.media_type, boundary), headers=_headers(query))


# --- thumbnails --------------------------------------------------------------------------


def _middle(keys: Sequence[InstanceKey]) -> InstanceKey:
    return keys[(len(keys) - 1) // 2]  # the index lists a series by Instance Number


def _series_middles(keys: Sequence[InstanceKey]) -> list[InstanceKey]:
    """The middle instance of each series, series in the index's order (Series Number)."""
    groups: dict[str, list[InstanceKey]] = {}
    for k in keys:
        groups.setdefault(k.series_instance_uid, []).append(k)
    return [_middle(group) for group in groups.values()]


def _size_part(options: render.RenderOptions) -> str:
    v = options.viewport
    return "default" if v is None or not v.upscale else f"{v.width}x{v.height}"


async def _thumbnail(request: Request, study: StudyKey, parts: list[str], make: Thumbnailer) -> Response:
    """A thumbnail from the read cache; on a miss ``make(options)`` computes it."""
    query = parse_thumbnail_query(list(request.query_params.multi_items()), request.headers.get("accept"))
    options = query.options

    async def compute() -> bytes:
        return await make(options)

    data = await archive(request).cache.fetch(
        study.tenant_id,
        study.study_instance_uid,
        "thumb",
        [*parts, options.media_type, _size_part(options)],
        compute,
    )
    return Response(data, media_type=options.media_type)


async def thumbnail_study(request: Request) -> Response:
    key = study_key(request)

    async def make(options: render.RenderOptions) -> bytes:
        keys = await instances_of(request, key)
        paths = [_path(request, k) for k in _series_middles(keys)]
        return await cpu.run(first_thumbnail, paths, options)

    return await _thumbnail(request, key, ["study"], make)


async def thumbnail_series(request: Request) -> Response:
    key = series_key(request)

    async def make(options: render.RenderOptions) -> bytes:
        keys = await instances_of(request, key)
        return await cpu.run(_representative, _path(request, _middle(keys)), options)

    return await _thumbnail(request, key.study, ["series", key.series_instance_uid], make)


async def thumbnail_instance(request: Request) -> Response:
    key = instance_key(request)

    async def make(options: render.RenderOptions) -> bytes:
        return await cpu.run(_representative, _path(request, key), options)

    parts = ["instance", key.series_instance_uid, key.sop_instance_uid]
    return await _thumbnail(request, key.series.study, parts, make)


async def thumbnail_frames(request: Request) -> Response:
    key = instance_key(request)
    number = frames_mod.parse_frame_list(request.path_params["frames"])[0]  # "Only a single image shall be returned"

    async def make(options: render.RenderOptions) -> bytes:
        images = await cpu.run(render_frames, _path(request, key), [number], options)
        return images[0]

    parts = ["frame", key.series_instance_uid, key.sop_instance_uid, str(number)]
    return await _thumbnail(request, key.series.study, parts, make)


def routes() -> list[Route]:
    s = "/studies/{study}"
    se = s + "/series/{series}"
    i = se + "/instances/{instance}"
    f = i + "/frames/{frames}"
    return [
        Route(s + "/rendered", rendered_study, methods=["GET"]),
        Route(se + "/rendered", rendered_series, methods=["GET"]),
        Route(i + "/rendered", rendered_instance, methods=["GET"]),
        Route(f + "/rendered", rendered_frames, methods=["GET"]),
        Route(s + "/thumbnail", thumbnail_study, methods=["GET"]),
        Route(se + "/thumbnail", thumbnail_series, methods=["GET"]),
        Route(i + "/thumbnail", thumbnail_instance, methods=["GET"]),
        Route(f + "/thumbnail", thumbnail_frames, methods=["GET"]),
    ]
