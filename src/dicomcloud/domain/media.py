"""Content negotiation for WADO-RS: the Accept header and what we can serve.

PS3.18 §8.7.5 (Acceptable Media Types: media ranges, ``q`` values), §8.7.3
(DICOM media types, the ``transfer-syntax`` parameter of §8.7.3.5.2) and
§10.4 (WADO-RS). Three choices are made here:

* instances (study / series / instance): ``multipart/related;
  type="application/dicom"`` or, for one instance, single-part
  ``application/dicom`` (Table 8.7.3-2);
* frames: the part media type of the stored Transfer Syntax
  (Tables 8.7.3-4 and 8.7.3-5);
* metadata: ``application/dicom+json`` (Table 10.4.4-1) or ``application/json``.

The client's acceptable syntaxes are tried in its order of preference; the
first one that is stored, or that :mod:`dicomcloud.domain.transcode` can
produce from the stored one, wins. ``transfer-syntax=*`` means "as stored"
(the server's choice, §8.7.3.5.2). No ``transfer-syntax`` parameter means
the default of the media type (§8.7.3.4, Tables 8.7.3-2, -4 and -5):
Explicit VR Little Endian for instances and ``application/octet-stream``
frames, the lossless syntax of an image media type (``image/jls`` →
JPEG-LS Lossless...). When none fits, :class:`NotAcceptable` says why.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from dicomcloud.domain.codecs import PixelDescription
from dicomcloud.domain.multipart import MediaType, parse_media_type, split_unquoted
from dicomcloud.domain.transcode import can_transcode, name_of
from dicomcloud.domain.transfer_syntaxes import NATIVE_SYNTAXES
from dicomcloud.errors import InvalidInput, NotAcceptable

ANY_TRANSFER_SYNTAX = "*"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
APPLICATION_DICOM = "application/dicom"
APPLICATION_DICOM_JSON = "application/dicom+json"
APPLICATION_JSON = "application/json"
OCTET_STREAM = "application/octet-stream"

# Syntaxes whose Pixel Data is native (uncompressed, not encapsulated): their frames are
# served as Little Endian octets, i.e. Explicit VR Little Endian (PS3.18 §8.7.3.3.1).
NATIVE_TRANSFER_SYNTAXES = NATIVE_SYNTAXES

# Frame part media type per encapsulated Transfer Syntax (PS3.18 Tables 8.7.3-4 and
# 8.7.3-5; PS3.18 §8.7.3.5 lists video/H265 for HEVC). Syntaxes not listed (e.g. the
# retired JPEG processes) are served as application/octet-stream with their
# transfer-syntax parameter, so a frame of any stored syntax can be retrieved.
FRAME_MEDIA_TYPES: dict[str, str] = {
    "1.2.840.10008.1.2.1.98": OCTET_STREAM,  # Encapsulated Uncompressed Explicit VR LE
    "1.2.840.10008.1.2.8.1": OCTET_STREAM,  # Deflated Image Frame Compression
    "1.2.840.10008.1.2.4.50": "image/jpeg",  # JPEG Baseline (Process 1)
    "1.2.840.10008.1.2.4.51": "image/jpeg",  # JPEG Extended (Process 2 & 4)
    "1.2.840.10008.1.2.4.57": "image/jpeg",  # JPEG Lossless (Process 14)
    "1.2.840.10008.1.2.4.70": "image/jpeg",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.5": "image/dicom-rle",  # RLE Lossless
    "1.2.840.10008.1.2.4.80": "image/jls",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81": "image/jls",  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90": "image/jp2",  # JPEG 2000 Lossless Only
    "1.2.840.10008.1.2.4.91": "image/jp2",  # JPEG 2000
    "1.2.840.10008.1.2.4.92": "image/jpx",  # JPEG 2000 Part 2 Lossless Only
    "1.2.840.10008.1.2.4.93": "image/jpx",  # JPEG 2000 Part 2
    "1.2.840.10008.1.2.4.201": "image/jphc",  # HTJ2K Lossless
    "1.2.840.10008.1.2.4.202": "image/jphc",  # HTJ2K Lossless RPCL
    "1.2.840.10008.1.2.4.203": "image/jphc",  # HTJ2K
    "1.2.840.10008.1.2.4.110": "image/jxl",  # JPEG XL Lossless
    "1.2.840.10008.1.2.4.111": "image/jxl",  # JPEG XL JPEG Recompression
    "1.2.840.10008.1.2.4.112": "image/jxl",  # JPEG XL
    "1.2.840.10008.1.2.4.100": "video/mpeg",  # MPEG2 MP@ML
    "1.2.840.10008.1.2.4.100.1": "video/mpeg",
    "1.2.840.10008.1.2.4.101": "video/mpeg",  # MPEG2 MP@HL
    "1.2.840.10008.1.2.4.101.1": "video/mpeg",
    "1.2.840.10008.1.2.4.102": "video/mp4",  # MPEG-4 AVC/H.264 High Profile
    "1.2.840.10008.1.2.4.102.1": "video/mp4",
    "1.2.840.10008.1.2.4.103": "video/mp4",
    "1.2.840.10008.1.2.4.103.1": "video/mp4",
    "1.2.840.10008.1.2.4.104": "video/mp4",
    "1.2.840.10008.1.2.4.104.1": "video/mp4",
    "1.2.840.10008.1.2.4.105": "video/mp4",
    "1.2.840.10008.1.2.4.105.1": "video/mp4",
    "1.2.840.10008.1.2.4.106": "video/mp4",
    "1.2.840.10008.1.2.4.106.1": "video/mp4",
    "1.2.840.10008.1.2.4.107": "video/H265",  # HEVC/H.265 Main Profile
    "1.2.840.10008.1.2.4.108": "video/H265",  # HEVC/H.265 Main 10 Profile
}


def is_video(transfer_syntax_uid: str) -> bool:
    return FRAME_MEDIA_TYPES.get(transfer_syntax_uid, "").startswith("video/")


# The default Transfer Syntax of a frame part media type: the "D" rows of PS3.18
# Tables 8.7.3-4 and 8.7.3-5 (the lossless one where a media type has several).
DEFAULT_FRAME_TRANSFER_SYNTAXES: dict[str, str] = {
    OCTET_STREAM: EXPLICIT_VR_LITTLE_ENDIAN,
    "image/jpeg": "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "image/dicom-rle": "1.2.840.10008.1.2.5",
    "image/jls": "1.2.840.10008.1.2.4.80",
    "image/jp2": "1.2.840.10008.1.2.4.90",
    "image/jpx": "1.2.840.10008.1.2.4.92",
    "image/jphc": "1.2.840.10008.1.2.4.201",
}

Pixels = PixelDescription | None | Callable[[], PixelDescription | None]
"""The stored instance's Image Pixel attributes, or a function that reads them (called
at most once, and only when a transcoding has to be judged)."""


@dataclass(slots=True)
class _Lazy:
    source: Pixels
    _value: PixelDescription | None = None
    _done: bool = False

    def get(self) -> PixelDescription | None:
        if not self._done:
            self._value = self.source() if callable(self.source) else self.source
            self._done = True
        return self._value


def transcoding_available(
    stored_transfer_syntax_uid: str, requested_transfer_syntax_uid: str, pixels: PixelDescription | None
) -> bool:
    """Whether an instance stored in the one syntax can be sent in the other (``pixels``:
    its Image Pixel attributes, None without Pixel Data); see :func:`transcode.can_transcode`."""
    return can_transcode(stored_transfer_syntax_uid, requested_transfer_syntax_uid, pixels) is None


def frame_media_type(transfer_syntax_uid: str) -> str:
    """The part media type of frames in ``transfer_syntax_uid`` (PS3.18 Tables 8.7.3-4/-5)."""
    return stored_frame_media(transfer_syntax_uid)[0]


@dataclass(frozen=True, slots=True)
class MediaRange:
    """One element of an Accept header: a media range with parameters and weight."""

    media_type: MediaType
    q: float

    def matches(self, essence: str) -> bool:
        """Whether ``essence`` (``type/subtype``) falls inside this range."""
        main, _, sub = essence.lower().partition("/")
        mt = self.media_type
        return (mt.type == "*" or mt.type == main) and (mt.subtype == "*" or mt.subtype == sub)

    @property
    def transfer_syntax(self) -> str | None:
        value = self.media_type.param("transfer-syntax")
        return None if value is None else value.strip()


def _parse_q(value: str, text: str) -> float:
    try:
        q = float(value)
    except ValueError:
        raise InvalidInput(f"Accept q value {value!r} in {text.strip()!r} is not a number") from None
    if not 0.0 <= q <= 1.0:
        raise InvalidInput(f"Accept q value {value!r} in {text.strip()!r} is not between 0 and 1")
    return q


def parse_accept(header: str | None) -> list[MediaRange]:
    """Parse an Accept header into media ranges, best first (PS3.18 §8.7.5, RFC 9110 §12.5.1).

    A missing or empty header means ``*/*``. Ranges with ``q=0`` are dropped;
    ties keep the client's order. The ``q`` parameter is taken out of the
    media type's parameters.
    """
    if header is None or not header.strip():
        return [MediaRange(parse_media_type("*/*"), 1.0)]
    ranges: list[MediaRange] = []
    for text in split_unquoted(header, ","):
        if not text.strip():
            continue
        media = parse_media_type(text)
        q = 1.0
        if "q" in media.params:
            q = _parse_q(media.params["q"], text)
            params = {k: v for k, v in media.params.items() if k != "q"}
            media = MediaType(media.type, media.subtype, params)
        if q > 0:
            ranges.append(MediaRange(media, q))
    ranges.sort(key=lambda r: -r.q)  # stable: equal q keep header order
    return ranges


def _accept_text(ranges: Sequence[MediaRange]) -> str:
    return ", ".join(str(r.media_type) for r in ranges) or "nothing (all q=0)"


# --- (a) instances ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InstanceMedia:
    """How to send instances: multipart or single part, and acceptable syntaxes.

    ``transfer_syntaxes`` are the acceptable ``transfer-syntax`` values in the
    client's order of preference: a UID, ``*`` ("as stored"), or None where a
    range named none (the default, Explicit VR Little Endian).
    """

    multipart: bool
    transfer_syntaxes: tuple[str | None, ...]

    def as_stored(self, stored_transfer_syntax_uid: str) -> bool:
        """Whether the client's first choice is the stored syntax (no pixels to look at)."""
        first = self.transfer_syntaxes[0]
        return first in (ANY_TRANSFER_SYNTAX, stored_transfer_syntax_uid) or (
            first is None and stored_transfer_syntax_uid == EXPLICIT_VR_LITTLE_ENDIAN
        )

    def transfer_syntax_for(self, stored_transfer_syntax_uid: str, pixels: Pixels) -> str:
        """The syntax to send an instance stored in ``stored_transfer_syntax_uid`` in.

        The default (no ``transfer-syntax``) is Explicit VR Little Endian
        (PS3.18 §8.7.3.4); when it cannot be produced (Pixel Data too long for
        it, or no decoder for the stored syntax, e.g. video) the instance goes
        as stored, which §8.7.3.4 Note 2 permits for lossy and over-long data,
        and its part's ``transfer-syntax`` says so.
        """
        stored = stored_transfer_syntax_uid
        lazy = _Lazy(pixels)
        reasons: list[str] = []
        for wanted in self.transfer_syntaxes:
            if wanted in (ANY_TRANSFER_SYNTAX, stored):
                return stored
            if wanted is None:
                if can_transcode(stored, EXPLICIT_VR_LITTLE_ENDIAN, lazy.get()) is None:
                    return EXPLICIT_VR_LITTLE_ENDIAN
                return stored
            reason = can_transcode(stored, wanted, lazy.get())
            if reason is None:
                return wanted
            if reason not in reasons:
                reasons.append(reason)
        raise NotAcceptable(f"the instance is stored in {name_of(stored)}: " + "; ".join(reasons))

    def part_content_type(self, stored_transfer_syntax_uid: str, pixels: Pixels) -> str:
        """``application/dicom; transfer-syntax=<uid>`` for one instance (PS3.18 §8.7.3.5.2)."""
        syntax = self.transfer_syntax_for(stored_transfer_syntax_uid, pixels)
        return instance_content_type(syntax)


def instance_content_type(transfer_syntax_uid: str) -> str:
    return f"{APPLICATION_DICOM}; transfer-syntax={transfer_syntax_uid}"


def _instance_packaging(r: MediaRange, single_part_allowed: bool) -> bool | None:
    """True for multipart, False for single part, None when ``r`` cannot carry instances."""
    mt = r.media_type
    if mt.essence in ("*/*", "multipart/*", "multipart/related"):
        part_type = (mt.param("type") or APPLICATION_DICOM).strip().lower()
        if part_type in (APPLICATION_DICOM, "application/*", "*/*"):
            return True
        return None
    if single_part_allowed and r.matches(APPLICATION_DICOM) and mt.essence != "*/*":
        return False
    return None


def choose_instance_media(accept: str | None, *, single_part_allowed: bool) -> InstanceMedia:
    """Choose the representation of a WADO-RS instance retrieve (PS3.18 §10.4.1.1.1-3).

    ``single_part_allowed`` is true when exactly one instance is addressed.
    ``*/*`` gives ``multipart/related; type="application/dicom"``. An absent
    ``transfer-syntax`` parameter is kept as None: the media type's default,
    Explicit VR Little Endian (PS3.18 §8.7.3.4, Table 8.7.3-2, §8.7.8.2).
    """
    ranges = parse_accept(accept)
    chosen: bool | None = None
    syntaxes: list[str | None] = []
    for r in ranges:
        packaging = _instance_packaging(r, single_part_allowed)
        if packaging is None:
            continue
        if chosen is None:
            chosen = packaging
        if packaging == chosen:
            syntax = r.transfer_syntax or None
            if syntax not in syntaxes:
                syntaxes.append(syntax)
    if chosen is None:
        offered = 'multipart/related; type="application/dicom"' + (
            " or application/dicom" if single_part_allowed else ""
        )
        raise NotAcceptable(f"instances are available as {offered}, not {_accept_text(ranges)}")
    return InstanceMedia(chosen, tuple(syntaxes))


# --- (b) frames --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FrameMedia:
    """The representation of frames: part media type and Transfer Syntax (PS3.18 §8.7.3.3)."""

    media_type: str
    transfer_syntax_uid: str
    multipart: bool = True

    @property
    def part_content_type(self) -> str:
        return f"{self.media_type}; transfer-syntax={self.transfer_syntax_uid}"


def stored_frame_media(stored_transfer_syntax_uid: str) -> tuple[str, str]:
    """(media type, syntax) that frames of an instance stored in ``stored_...`` have as is.

    Native frames are Little Endian octets, i.e. Explicit VR Little Endian
    (PS3.18 Table 8.7.3-4); encapsulated frames keep their syntax.
    """
    if stored_transfer_syntax_uid in NATIVE_TRANSFER_SYNTAXES:
        return OCTET_STREAM, EXPLICIT_VR_LITTLE_ENDIAN
    return FRAME_MEDIA_TYPES.get(stored_transfer_syntax_uid, OCTET_STREAM), stored_transfer_syntax_uid


def _frame_part(r: MediaRange, single_part_allowed: bool) -> tuple[MediaRange, bool] | None:
    """(the part media range, multipart?) that Accept range ``r`` asks frames in, if any."""
    mt = r.media_type
    if mt.essence in ("*/*", "multipart/*", "multipart/related"):
        part_type = (mt.param("type") or "*/*").strip().lower()
        return MediaRange(parse_media_type(part_type), 1.0), True
    if single_part_allowed and mt.type != "multipart":
        return MediaRange(parse_media_type(mt.essence), 1.0), False
    return None


def choose_frame_media(
    accept: str | None,
    stored_transfer_syntax_uid: str,
    *,
    single_part_allowed: bool = False,
    pixels: Pixels = None,
) -> FrameMedia:
    """Choose how to send frames of an instance stored in ``stored_transfer_syntax_uid``.

    PS3.18 §10.4.1.1.5 / §8.7.3.3: ``multipart/related; type=<part>[;
    transfer-syntax=<uid>]``, ranges tried best first. ``transfer-syntax=*``
    and ``*/*`` give the stored representation; a part type without a syntax
    gives the stored one when it is of that type (an ``image/jpeg`` request
    for JPEG Baseline frames), else the type's default syntax (Tables
    8.7.3-4/-5: ``application/octet-stream`` → Explicit VR Little Endian,
    ``image/jls`` → JPEG-LS Lossless...). A syntax other than the stored one
    is produced when :func:`transcode.can_transcode` allows it for
    ``pixels`` (the instance's Image Pixel attributes; without them, only
    the stored representation is offered). ``single_part_allowed`` (one
    frame requested) also lets a bare ``image/jpeg`` etc. select a
    single-part response.
    """
    if is_video(stored_transfer_syntax_uid):
        raise NotAcceptable(
            f"frames of a video instance ({stored_transfer_syntax_uid}) cannot be sent one by one; "
            "retrieve the instance or its rendered video"
        )
    media_type, syntax = stored_frame_media(stored_transfer_syntax_uid)
    ranges = parse_accept(accept)
    lazy = _Lazy(pixels)
    reasons: list[str] = []
    for r in ranges:
        found = _frame_part(r, single_part_allowed)
        if found is None:
            continue
        part, multipart = found
        wanted = r.transfer_syntax
        if wanted in (ANY_TRANSFER_SYNTAX, syntax) or (wanted is None and part.matches(media_type)):
            return FrameMedia(media_type, syntax, multipart=multipart)
        if wanted is None:
            wanted = DEFAULT_FRAME_TRANSFER_SYNTAXES.get(part.media_type.essence)
            if wanted is None:
                continue
        description = lazy.get() if pixels is not None else None
        reason: str | None = (
            f"transcoding from {name_of(syntax)} to {name_of(wanted)} is not available here"
            if description is None
            else can_transcode(syntax, wanted, description)
        )
        if reason is None:
            return FrameMedia(frame_media_type(wanted), wanted, multipart=multipart)
        if reason not in reasons:
            reasons.append(reason)
    if reasons:
        raise NotAcceptable(f"frames are stored as {media_type} in {name_of(syntax)}: " + "; ".join(reasons))
    raise NotAcceptable(
        f'frames are available as multipart/related; type="{media_type}"; '
        f"transfer-syntax={syntax}, "
        f"not {_accept_text(ranges)}"
    )


# --- (c) metadata ------------------------------------------------------------------


def choose_metadata_media(accept: str | None) -> str:
    """``application/dicom+json`` (the default, PS3.18 Table 10.4.4-1) or ``application/json``.

    The XML form (``multipart/related; type="application/dicom+xml"``) is not offered.
    """
    ranges = parse_accept(accept)
    for r in ranges:
        if r.media_type.essence == APPLICATION_JSON:
            return APPLICATION_JSON
        if r.matches(APPLICATION_DICOM_JSON):
            return APPLICATION_DICOM_JSON
    raise NotAcceptable(f"metadata is available as application/dicom+json, not {_accept_text(ranges)}")
