"""The query of a rendered or thumbnail request (PS3.18 §8.3.3.1, §8.3.5, §8.7.4-8.7.8).

Parsed strictly: a supported parameter with an invalid value is 400 with the
reason (PS3.18 §8.3), and so is a parameter we do not know (the project's
rule; PS3.18 §8.3 would have it ignored). ``annotation`` is accepted and
ignored with the ``Warning`` PS3.18 §8.3.5.1.1 prescribes (we burn nothing
in); ``charset`` is accepted and ignored (images carry no text);
``iccprofile`` is accepted only as ``no``.

Media type (PS3.18 §8.7.8.1): the highest-priority supported type of the
``accept`` query parameter, else of the Accept header (``multipart/related;
type=...`` counts as its part type), else the default ``image/jpeg`` when
the header has a wildcard matching images; else 406.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from dicomcloud.domain.multipart import MediaType, parse_media_type, split_unquoted
from dicomcloud.domain.render import (
    GIF,
    JPEG,
    RENDERED_MEDIA_TYPES,
    RenderOptions,
    Viewport,
    VoiFunction,
    Window,
)
from dicomcloud.errors import InvalidInput, InvalidQuery, NotAcceptable

THUMBNAIL_SIZE = 128  # default bounding box of a thumbnail, pixels
MAX_VIEWPORT = 8192  # larger viewports are refused: they would only cost memory

DICOM_MEDIA_TYPES = frozenset(
    {
        "application/dicom",
        "application/dicom+json",
        "application/dicom+xml",
        "application/octet-stream",
    }
)
_WINDOW_FUNCTIONS = {
    "linear": VoiFunction.LINEAR,
    "linear-exact": VoiFunction.LINEAR_EXACT,
    "linear_exact": VoiFunction.LINEAR_EXACT,  # tolerated spelling of VOI LUT Function
    "sigmoid": VoiFunction.SIGMOID,
}
_ANNOTATION_KEYWORD = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
_DECIMAL = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


@dataclass(frozen=True, slots=True)
class RenderedQuery:
    """What a rendered / thumbnail request asked for, validated."""

    options: RenderOptions
    warnings: tuple[str, ...] = ()  # for Warning header fields (PS3.18 §8.3.5.1.1)


# --- values ----------------------------------------------------------------------------


def decimal(text: str, what: str) -> float:
    text = text.strip()
    if not _DECIMAL.fullmatch(text):
        raise InvalidQuery(f"{what} {text!r} is not a decimal number")
    value = float(text)
    if not math.isfinite(value):
        raise InvalidQuery(f"{what} {text!r} is not a finite number")
    return value


def positive_int(text: str, what: str, maximum: int | None = None) -> int:
    text = text.strip()
    if not text.isdigit() or int(text) < 1:
        raise InvalidQuery(f"{what} {text!r} is not a positive integer")
    value = int(text)
    if maximum is not None and value > maximum:
        raise InvalidQuery(f"{what} {value} is larger than the supported maximum {maximum}")
    return value


def parse_window(text: str) -> Window:
    """``window=center,width,function`` (PS3.18 §8.3.5.1.4); all three are required."""
    parts = text.split(",")
    if len(parts) != 3 or not all(p.strip() for p in parts):
        raise InvalidQuery(f"window {text!r} must be center,width,function (e.g. 40,400,linear)")
    center = decimal(parts[0], "window center")
    width = decimal(parts[1], "window width")
    name = parts[2].strip()
    if name not in _WINDOW_FUNCTIONS:
        raise InvalidQuery(f"window function {name!r} is not one of linear, linear-exact, sigmoid")
    window = Window(center, width, _WINDOW_FUNCTIONS[name])
    problem = window.problem()
    if problem:
        raise InvalidQuery(problem)
    return window


def parse_viewport(text: str, *, size_only: bool) -> Viewport:
    """``viewport=vw,vh[,sx,sy,sw,sh]`` (PS3.18 §8.3.5.1.3); thumbnails allow vw,vh only."""
    parts = text.split(",")
    if len(parts) < 2 or not parts[0].strip() or not parts[1].strip():
        raise InvalidQuery(f"viewport {text!r} must start with the width and height, vw,vh")
    if size_only and len(parts) != 2:
        raise InvalidQuery(f"viewport {text!r}: a thumbnail takes only vw,vh (PS3.18 §8.3.5.1.3)")
    if len(parts) > 6:
        raise InvalidQuery(f"viewport {text!r} has more than six values (vw,vh,sx,sy,sw,sh)")
    if parts[-1].strip() == "" and len(parts) > 2:
        raise InvalidQuery(f"viewport {text!r}: trailing elided values take no comma (PS3.18 §8.3.5.1.3)")
    width = positive_int(parts[0], "viewport width", MAX_VIEWPORT)
    height = positive_int(parts[1], "viewport height", MAX_VIEWPORT)
    region: list[float | None] = [None, None, None, None]
    for i, part in enumerate(parts[2:]):
        if part.strip():
            region[i] = decimal(part, ("sx", "sy", "sw", "sh")[i])
    sx, sy, sw, sh = region
    if sw == 0 or sh == 0:
        raise InvalidQuery(f"viewport {text!r}: the source region has no area")
    return Viewport(width, height, sx, sy, sw, sh)


def parse_quality(text: str) -> int:
    """``quality``: an integer 1..100 (PS3.18 §8.3.5.1.2)."""
    text = text.strip()
    if not text.isdigit() or not 1 <= int(text) <= 100:
        raise InvalidQuery(f"quality {text!r} is not an integer between 1 and 100")
    return int(text)


def annotation_warning(text: str) -> str:
    """Validate ``annotation`` (PS3.18 §8.3.5.1.1) and return the Warning text for it.

    No annotation is supported (nothing is burned in): the values are ignored
    and named in the warning. Values that are not keywords are 400.
    """
    values = [v.strip() for v in text.split(",")]
    if not values or not all(values):
        raise InvalidQuery(f"annotation {text!r} must be a comma-separated list of keywords (patient, technique)")
    for value in values:
        if not _ANNOTATION_KEYWORD.fullmatch(value):
            raise InvalidQuery(f"annotation value {value!r} is not a keyword")
    return f"The following annotation values are not supported: {','.join(values)}"


def _iccprofile(text: str) -> None:
    values = [v.strip() for v in text.split(",")]
    if values != ["no"]:
        raise InvalidQuery(f"iccprofile {text!r}: only 'no' is supported (no ICC profile is embedded)")


# --- media types -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Range:
    media: MediaType
    q: float


def _ranges(text: str, where: str) -> list[_Range]:
    ranges: list[_Range] = []
    for piece in split_unquoted(text, ","):
        if not piece.strip():
            continue
        try:
            media = parse_media_type(piece)
        except InvalidInput as exc:
            raise InvalidQuery(f"{where}: {exc.reason}") from exc
        q = 1.0
        if "q" in media.params:
            try:
                q = float(media.params["q"])
            except ValueError:
                raise InvalidQuery(f"{where}: q value {media.params['q']!r} is not a number") from None
            if not 0.0 <= q <= 1.0:
                raise InvalidQuery(f"{where}: q value {media.params['q']!r} is not between 0 and 1")
        if q > 0:
            ranges.append(_Range(media, q))
    ranges.sort(key=lambda r: -r.q)  # stable: equal weights keep the client's order
    return ranges


def _essence(r: _Range) -> str:
    """The media type a range asks for; a multipart range asks for its part type."""
    media = r.media
    if media.essence in ("multipart/related", "multipart/*"):
        part = media.param("type")
        if part is None:
            return "*/*"
        try:
            return parse_media_type(part).essence
        except InvalidInput:
            return ""
    return media.essence


def _check_not_mixed(essences: Iterable[str], where: str) -> None:
    listed = list(essences)
    dicom = [e for e in listed if e in DICOM_MEDIA_TYPES]
    rendered = [e for e in listed if e not in DICOM_MEDIA_TYPES and e not in ("*/*", "")]
    if dicom and rendered:
        raise InvalidQuery(
            f"{where} mixes DICOM media types ({', '.join(dicom)}) with rendered ones "
            f"({', '.join(rendered)}) (PS3.18 §8.7.5)"
        )


def choose_rendered_media(
    accept_header: str | None, accept_param: str | None, supported: Sequence[str] = RENDERED_MEDIA_TYPES
) -> str:
    """The Selected Media Type of a rendered resource (PS3.18 §8.7.8.1)."""
    if accept_param is not None:
        ranges = _ranges(accept_param, "accept parameter")
        if not ranges:
            raise InvalidQuery("the accept parameter names no media type")
        essences = [_essence(r) for r in ranges]
        wild = [e for e in essences if "*" in e]
        if wild:
            raise InvalidQuery(f"the accept parameter may not hold wildcards ({', '.join(wild)}) (PS3.18 §8.3.3.1)")
        _check_not_mixed(essences, "the accept parameter")
        for essence in essences:
            if essence in supported:
                return essence
    header = accept_header if accept_header is not None and accept_header.strip() else "*/*"
    ranges = _ranges(header, "Accept")
    essences = [_essence(r) for r in ranges]
    _check_not_mixed(essences, "Accept")
    for essence in essences:
        if essence in supported:
            return essence
        if essence in ("*/*", "image/*"):
            return JPEG
    offered = ", ".join(supported)
    asked = accept_param if accept_param is not None else header
    raise NotAcceptable(f"rendered images are available as {offered}, not {asked.strip() or 'nothing'}")


# --- whole queries -----------------------------------------------------------------------


def _single(params: Sequence[tuple[str, str]]) -> dict[str, str]:
    seen: dict[str, str] = {}
    for name, value in params:
        if name in seen:
            raise InvalidQuery(f"query parameter {name!r} is given more than once")
        seen[name] = value
    return seen


def parse_rendered_query(
    params: Sequence[tuple[str, str]], accept_header: str | None, *, gif: bool = True
) -> RenderedQuery:
    """The parameters of ``/rendered`` (PS3.18 Table 8.3.5-1)."""
    given = _single(params)
    unknown = sorted(set(given) - {"accept", "annotation", "charset", "quality", "viewport", "window", "iccprofile"})
    if unknown:
        raise InvalidQuery(
            f"unknown query parameter(s) {', '.join(unknown)} for a rendered resource "
            "(accept, annotation, charset, quality, viewport, window, iccprofile)"
        )
    supported = RENDERED_MEDIA_TYPES if gif else tuple(t for t in RENDERED_MEDIA_TYPES if t != GIF)
    media = choose_rendered_media(accept_header, given.get("accept"), supported)
    warnings: list[str] = []
    if "annotation" in given:
        warnings.append(annotation_warning(given["annotation"]))
    if "iccprofile" in given:
        _iccprofile(given["iccprofile"])
    window = parse_window(given["window"]) if "window" in given else None
    viewport = parse_viewport(given["viewport"], size_only=False) if "viewport" in given else None
    quality = parse_quality(given["quality"]) if "quality" in given else None
    return RenderedQuery(RenderOptions(media, window, viewport, quality), tuple(warnings))


def parse_thumbnail_query(params: Sequence[tuple[str, str]], accept_header: str | None) -> RenderedQuery:
    """The parameters of ``/thumbnail`` (PS3.18 Table 8.3.5-2): accept, charset, viewport=vw,vh.

    Without a viewport a thumbnail fits in 128 x 128 and is never enlarged.
    """
    given = _single(params)
    unknown = sorted(set(given) - {"accept", "charset", "viewport"})
    if unknown:
        raise InvalidQuery(
            f"unknown query parameter(s) {', '.join(unknown)} for a thumbnail (accept, charset, viewport)"
        )
    media = choose_rendered_media(accept_header, given.get("accept"))
    if "viewport" in given:
        viewport = parse_viewport(given["viewport"], size_only=True)
    else:
        viewport = Viewport(THUMBNAIL_SIZE, THUMBNAIL_SIZE, upscale=False)
    return RenderedQuery(RenderOptions(media, None, viewport, None))
