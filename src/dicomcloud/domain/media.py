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

We never transcode yet: :func:`transcoding_available` is the one hook a
later transcoder will answer; until then a request that only accepts a
syntax other than the stored one gets :class:`NotAcceptable` with a reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dicomcloud.domain.multipart import MediaType, parse_media_type, split_unquoted
from dicomcloud.errors import InvalidInput, NotAcceptable

ANY_TRANSFER_SYNTAX = "*"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
APPLICATION_DICOM = "application/dicom"
APPLICATION_DICOM_JSON = "application/dicom+json"
APPLICATION_JSON = "application/json"
OCTET_STREAM = "application/octet-stream"

# Syntaxes whose Pixel Data is native (uncompressed, not encapsulated): their frames are
# served as Little Endian octets, i.e. Explicit VR Little Endian (PS3.18 §8.7.3.3.1).
NATIVE_TRANSFER_SYNTAXES = frozenset(
    {
        "1.2.840.10008.1.2",  # Implicit VR Little Endian
        "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
        "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
        "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (retired)
    }
)

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


def transcoding_available(stored_transfer_syntax_uid: str, requested_transfer_syntax_uid: str) -> bool:
    """Whether we can convert between the two syntaxes. THE hook for a later transcoder.

    No transcoder exists yet, so only identical syntaxes qualify.
    """
    return stored_transfer_syntax_uid == requested_transfer_syntax_uid


def _no_transcoding(stored: str, requested: str) -> str:
    return f"transcoding from {stored} to {requested} is not available"


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
    client's order of preference; ``*`` means "as stored".
    """

    multipart: bool
    transfer_syntaxes: tuple[str, ...]

    def transfer_syntax_for(self, stored_transfer_syntax_uid: str) -> str:
        """The syntax to send an instance stored in ``stored_transfer_syntax_uid`` in."""
        for wanted in self.transfer_syntaxes:
            if wanted in (ANY_TRANSFER_SYNTAX, stored_transfer_syntax_uid):
                return stored_transfer_syntax_uid
            if transcoding_available(stored_transfer_syntax_uid, wanted):
                return wanted
        raise NotAcceptable(_no_transcoding(stored_transfer_syntax_uid, " or ".join(self.transfer_syntaxes)))

    def part_content_type(self, stored_transfer_syntax_uid: str) -> str:
        """``application/dicom; transfer-syntax=<uid>`` for one instance (PS3.18 §8.7.3.5.2)."""
        syntax = self.transfer_syntax_for(stored_transfer_syntax_uid)
        return f"{APPLICATION_DICOM}; transfer-syntax={syntax}"


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
    ``transfer-syntax`` parameter is read as "as stored": PS3.18 §8.7.3.5.2
    names Explicit VR Little Endian as the default, which would need
    transcoding; serving the stored bytes is the tolerant reading.
    """
    ranges = parse_accept(accept)
    chosen: bool | None = None
    syntaxes: list[str] = []
    for r in ranges:
        packaging = _instance_packaging(r, single_part_allowed)
        if packaging is None:
            continue
        if chosen is None:
            chosen = packaging
        if packaging == chosen:
            syntax = r.transfer_syntax or ANY_TRANSFER_SYNTAX
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


def _frame_range_fits(r: MediaRange, media_type: str, syntax: str) -> tuple[bool, str | None]:
    """(fits, syntax the range asks for that we lack) for one Accept range and multipart."""
    mt = r.media_type
    if mt.essence not in ("*/*", "multipart/*", "multipart/related"):
        return False, None
    part_type = (mt.param("type") or "*/*").strip().lower()
    part = MediaRange(parse_media_type(part_type), 1.0)
    wanted = r.transfer_syntax
    if wanted in (ANY_TRANSFER_SYNTAX, syntax):
        return True, None  # "*" means as stored, whatever the part type says
    if wanted is None:
        if part.matches(media_type):
            return True, None
        # octet-stream without a syntax means Explicit VR Little Endian (§8.7.3.3.1).
        return False, EXPLICIT_VR_LITTLE_ENDIAN if part_type == OCTET_STREAM else None
    if transcoding_available(syntax, wanted):
        return True, None
    return False, wanted


def choose_frame_media(
    accept: str | None, stored_transfer_syntax_uid: str, *, single_part_allowed: bool = False
) -> FrameMedia:
    """Choose how to send frames of an instance stored in ``stored_transfer_syntax_uid``.

    PS3.18 §10.4.1.1.5 / §8.7.3.3: ``multipart/related; type=<part>[;
    transfer-syntax=<uid>]``. ``transfer-syntax=*`` and ``*/*`` give the
    stored representation; a part type without a syntax fits when it is the
    stored syntax's media type. ``single_part_allowed`` (one frame
    requested) also lets a bare ``image/jpeg`` etc. select a single-part
    response.
    """
    if is_video(stored_transfer_syntax_uid):
        raise NotAcceptable(
            f"frames of a video instance ({stored_transfer_syntax_uid}) cannot be sent one by one; "
            "retrieve the instance or its rendered video"
        )
    media_type, syntax = stored_frame_media(stored_transfer_syntax_uid)
    ranges = parse_accept(accept)
    missing: list[str] = []
    for r in ranges:
        fits, lacking = _frame_range_fits(r, media_type, syntax)
        if fits:
            return FrameMedia(media_type, syntax, multipart=True)
        if single_part_allowed and r.media_type.type != "multipart" and r.matches(media_type):
            wanted = r.transfer_syntax
            if wanted in (None, ANY_TRANSFER_SYNTAX, syntax):
                return FrameMedia(media_type, syntax, multipart=False)
            lacking = wanted
        if lacking and lacking not in missing:
            missing.append(lacking)
    if missing:
        raise NotAcceptable(
            f"frames are stored as {media_type} in {syntax}; " + _no_transcoding(syntax, " or ".join(missing))
        )
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
