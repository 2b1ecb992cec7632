"""Frames of a stored instance, sliced out of its Part 10 bytes without decoding.

PS3.18 §10.4.1.1.5 (Frames resource) needs the bytes of chosen frames, as
stored. PS3.5 §8.2 and Annex A.4 define where they are:

* native Pixel Data (7FE0,0010): frame *i* is bytes
  ``[i*size, (i+1)*size)`` with ``size = Rows x Columns x SamplesPerPixel x
  BitsAllocated / 8``; with BitsAllocated 1 the frames are packed back to
  back across byte boundaries (PS3.5 §8.1.1), so a frame may start mid-byte;
* encapsulated Pixel Data: a Basic Offset Table item, then fragments
  (PS3.5 A.4); frames found from the Extended Offset Table (7FE0,0001/0002),
  the Basic Offset Table, or — when both are empty — one fragment per
  frame, all fragments for a single frame, else pydicom's marker search.

Only the header up to Pixel Data is parsed (pydicom, ``stop_before_pixels``);
a file given by path is memory-mapped so that only the pages of the wanted
frames are read. Native frames are returned as Little Endian octets
(PS3.18 §8.7.3.3.1), so Explicit VR Big Endian frames are byte-swapped.
Deflated Explicit VR Little Endian (1.2.840.10008.1.2.1.99) files are
inflated whole by pydicom. CPU-bound: callers run this in a worker thread.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from pydicom.encaps import get_frame
from pydicom.errors import InvalidDicomError
from pydicom.filereader import dcmread
from pydicom.uid import UID

from dicomcloud.errors import DicomCloudError, InvalidInput, MalformedDicom, NotFound

Source = bytes | bytearray | memoryview | str | Path

DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
_UNDEFINED = 0xFFFFFFFF
_ITEM = 0xFFFEE000
_SEQUENCE_DELIMITER = 0xFFFEE0DD
_HEADER_TAGS = [
    "Rows",
    "Columns",
    "SamplesPerPixel",
    "BitsAllocated",
    "NumberOfFrames",
    0x7FE00001,  # Extended Offset Table
    0x7FE00002,  # Extended Offset Table Lengths
]
_LONG_LENGTH_VRS = {b"OB", b"OW", b"OD", b"OF", b"OL", b"OV", b"SQ", b"UC", b"UN", b"UR", b"UT"}

Frame = bytes | memoryview


@dataclass(frozen=True, slots=True)
class Frames:
    """The stored Transfer Syntax, the instance's frame count and the wanted frames' bytes."""

    transfer_syntax_uid: str
    number_of_frames: int
    frames: tuple[Frame, ...]


@dataclass(frozen=True, slots=True)
class _Pixels:
    transfer_syntax_uid: str
    rows: int
    columns: int
    samples_per_pixel: int
    bits_allocated: int
    number_of_frames: int
    extended_offsets: tuple[bytes, bytes] | None
    big_endian: bool
    vr: bytes  # b"" when implicit
    value: memoryview  # native: the value; encapsulated: from the Basic Offset Table item on
    encapsulated: bool


def _int(ds: Any, keyword: str, default: int | None = None) -> int:
    value = ds.get(keyword)
    if value is None or value == "":
        if default is None:
            raise MalformedDicom(f"{keyword} is missing, so frames cannot be located")
        return default
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise MalformedDicom(f"{keyword} {value!r} is not an integer") from exc


def _read_header(fp: BinaryIO) -> tuple[Any, str]:
    try:
        ds = dcmread(fp, stop_before_pixels=True, specific_tags=_HEADER_TAGS)  # type: ignore[arg-type]
    except (InvalidDicomError, EOFError, ValueError, KeyError, OSError, TypeError) as exc:
        raise MalformedDicom(f"unreadable DICOM: {exc}") from exc
    except Exception as exc:  # pydicom raises many types on garbage
        raise MalformedDicom(f"unreadable DICOM: {type(exc).__name__}: {exc}") from exc
    tsuid = str(ds.file_meta.get("TransferSyntaxUID", "") or "").strip()
    if not tsuid:
        raise MalformedDicom("file meta information has no TransferSyntaxUID (0002,0010)")
    return ds, tsuid


def _element_header(buf: memoryview, pos: int, tsuid: str) -> tuple[bytes, int, int]:
    """(VR, value length, value offset) of the element at ``pos``, which must be Pixel Data."""
    big = tsuid == EXPLICIT_VR_BIG_ENDIAN
    end = "<" if not big else ">"
    if pos + 8 > len(buf):
        raise NotFound("the instance has no PixelData (7FE0,0010)")
    group, element = struct.unpack_from(end + "HH", buf, pos)
    if (group, element) != (0x7FE0, 0x0010):
        which = {0x0008: "Float Pixel Data", 0x0009: "Double Float Pixel Data"}.get(element, "")
        if group == 0x7FE0 and which:
            raise NotFound(f"the instance has {which} (7FE0,{element:04X}), not PixelData (7FE0,0010)")
        raise NotFound("the instance has no PixelData (7FE0,0010)")
    if tsuid == IMPLICIT_VR_LITTLE_ENDIAN:
        (length,) = struct.unpack_from("<I", buf, pos + 4)
        return b"", length, pos + 8
    vr = bytes(buf[pos + 4 : pos + 6])
    if vr in _LONG_LENGTH_VRS:
        if pos + 12 > len(buf):
            raise MalformedDicom("PixelData (7FE0,0010) element header is truncated")
        (length,) = struct.unpack_from(end + "I", buf, pos + 8)
        return vr, length, pos + 12
    (length,) = struct.unpack_from(end + "H", buf, pos + 6)
    return vr, length, pos + 8


def _pixels(ds: Any, tsuid: str, buf: memoryview, pos: int) -> _Pixels:
    vr, length, start = _element_header(buf, pos, tsuid)
    encapsulated = length == _UNDEFINED
    if encapsulated:
        value = buf[start:]
    else:
        if start + length > len(buf):
            raise MalformedDicom(f"PixelData (7FE0,0010) claims {length} bytes but only {len(buf) - start} follow")
        value = buf[start : start + length]
    return _make_pixels(ds, tsuid, value, vr, encapsulated)


def _make_pixels(ds: Any, tsuid: str, value: memoryview, vr: bytes, encapsulated: bool) -> _Pixels:
    eot: tuple[bytes, bytes] | None = None
    offsets, lengths = ds.get(0x7FE00001), ds.get(0x7FE00002)
    if offsets is not None and lengths is not None and offsets.value and lengths.value:
        eot = (bytes(offsets.value), bytes(lengths.value))
    frames = _int(ds, "NumberOfFrames", 1)
    if frames < 1:
        raise MalformedDicom(f"NumberOfFrames {frames} is not a positive number")
    return _Pixels(
        transfer_syntax_uid=tsuid,
        rows=_int(ds, "Rows"),
        columns=_int(ds, "Columns"),
        samples_per_pixel=_int(ds, "SamplesPerPixel", 1),
        bits_allocated=_int(ds, "BitsAllocated"),
        number_of_frames=frames,
        extended_offsets=eot,
        big_endian=tsuid == EXPLICIT_VR_BIG_ENDIAN,
        vr=vr,
        value=value,
        encapsulated=encapsulated,
    )


@contextmanager
def _opened(source: Source) -> Iterator[tuple[_Pixels, bool]]:
    """The located Pixel Data of ``source``; the flag says frames must be copied out."""
    if isinstance(source, str | Path):
        try:
            with open(source, "rb") as fp:
                ds, tsuid = _read_header(fp)
                if tsuid == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
                    fp.seek(0)
                    yield _inflated(fp), False
                    return
                pos = fp.tell()
                if fp.seek(0, 2) <= pos:
                    raise NotFound("the instance has no PixelData (7FE0,0010)")
                mapped = mmap.mmap(fp.fileno(), 0, access=mmap.ACCESS_READ)
                try:
                    yield _pixels(ds, tsuid, memoryview(mapped), pos), True
                finally:
                    with suppress(BufferError):  # a view still alive (e.g. in a traceback):
                        mapped.close()  # the mapping then goes when it is collected
        except FileNotFoundError as exc:
            raise NotFound(f"the instance file {Path(source).name} does not exist") from exc
        return
    data = bytes(source) if not isinstance(source, bytes) else source
    stream = BytesIO(data)  # shares ``data``'s buffer: no copy
    ds, tsuid = _read_header(stream)
    if tsuid == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
        stream.seek(0)
        yield _inflated(stream), False
        return
    yield _pixels(ds, tsuid, memoryview(data), stream.tell()), False


def _inflated(fp: BinaryIO) -> _Pixels:
    """Deflated files (PS3.5 A.5): pydicom inflates the whole data set; take Pixel Data."""
    try:
        ds = dcmread(fp)
        element = ds.get(0x7FE00010)
        tsuid = DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN
        if element is None or element.value is None:
            raise NotFound("the instance has no PixelData (7FE0,0010)")
        value = memoryview(bytes(element.value))
        vr = str(element.VR).encode()
    except DicomCloudError:
        raise
    except Exception as exc:  # zlib / pydicom errors on a broken stream
        raise MalformedDicom(f"unreadable deflated DICOM: {type(exc).__name__}: {exc}") from exc
    return _make_pixels(ds, tsuid, value, vr, bool(getattr(element, "is_undefined_length", False)))


def _check_numbers(frame_numbers: Sequence[int], count: int) -> None:
    if not frame_numbers:
        raise InvalidInput("no frame numbers were given")
    for number in frame_numbers:
        if number < 1:
            raise InvalidInput(
                f"frame number {number} is not valid: frames are numbered from 1 "
                f"(the instance has {count} frame{'s' if count != 1 else ''})"
            )
        if number > count:
            plural = "s" if count != 1 else ""
            raise NotFound(f"frame {number} does not exist: the instance has {count} frame{plural}")


# --- native ---------------------------------------------------------------------------


def _native_frames(px: _Pixels, numbers: Sequence[int]) -> list[Frame]:
    if px.bits_allocated not in (1, 8, 16, 32, 64):
        raise MalformedDicom(f"BitsAllocated {px.bits_allocated} is not 1, 8, 16, 32 or 64")
    pixels_per_frame = px.rows * px.columns * px.samples_per_pixel
    total_bits = pixels_per_frame * px.number_of_frames * px.bits_allocated
    needed = (total_bits + 7) // 8
    if len(px.value) < needed:
        raise MalformedDicom(
            f"PixelData has {len(px.value)} bytes; {px.number_of_frames} frame(s) of "
            f"{px.rows}x{px.columns}x{px.samples_per_pixel} at {px.bits_allocated} bits "
            f"need {needed}"
        )
    value = px.value
    if px.big_endian and px.bits_allocated == 8 and px.vr == b"OW":
        # 8-bit samples in big endian OW are swapped in 16-bit words (PS3.5 §7.3).
        value = memoryview(np.frombuffer(value[: len(value) & ~1], ">u2").astype("<u2").tobytes())
    if px.bits_allocated == 1:
        return [_bit_frame(value, (n - 1) * pixels_per_frame, pixels_per_frame) for n in numbers]
    size = pixels_per_frame * px.bits_allocated // 8
    frames: list[Frame] = []
    for n in numbers:
        frame = value[(n - 1) * size : n * size]
        if px.big_endian and px.bits_allocated > 8:
            frame = memoryview(np.frombuffer(frame, f">u{px.bits_allocated // 8}").byteswap().tobytes())
        frames.append(frame)
    return frames


def _bit_frame(value: memoryview, first_bit: int, bits: int) -> Frame:
    """``bits`` bits from bit ``first_bit`` on, repacked to start at bit 0 (LSB first)."""
    start, shift = divmod(first_bit, 8)
    stop = (first_bit + bits + 7) // 8
    if shift == 0 and bits % 8 == 0:
        return value[start:stop]
    unpacked = np.unpackbits(np.frombuffer(value[start:stop], np.uint8), bitorder="little")
    return np.packbits(unpacked[shift : shift + bits], bitorder="little").tobytes()


# --- encapsulated ---------------------------------------------------------------------


def _items(value: memoryview) -> tuple[memoryview, list[tuple[int, int]]]:
    """The Basic Offset Table and each fragment's (value offset, length) (PS3.5 A.4)."""
    pos = 0
    fragments: list[tuple[int, int]] = []
    bot: memoryview | None = None
    size = len(value)
    while True:
        if pos + 8 > size:
            raise MalformedDicom("encapsulated PixelData ends without a Sequence Delimiter (truncated)")
        group, element, length = struct.unpack_from("<HHI", value, pos)
        tag = group << 16 | element
        if tag == _SEQUENCE_DELIMITER:
            break
        if tag != _ITEM:
            raise MalformedDicom(f"unexpected tag ({group:04X},{element:04X}) in encapsulated PixelData")
        if length == _UNDEFINED or pos + 8 + length > size:
            raise MalformedDicom("an encapsulated PixelData item is longer than the data (truncated)")
        if bot is None:
            bot = value[pos + 8 : pos + 8 + length]
        else:
            fragments.append((pos + 8, length))
        pos += 8 + length
    if bot is None:
        raise MalformedDicom("encapsulated PixelData has no Basic Offset Table item")
    return bot, fragments


def _encapsulated_frames(px: _Pixels, numbers: Sequence[int]) -> list[Frame]:
    value = px.value
    bot, fragments = _items(value)
    first = len(bot) + 8  # offsets count from the first fragment's item tag
    count = px.number_of_frames
    if px.extended_offsets is not None:
        offsets = np.frombuffer(px.extended_offsets[0], "<u8")
        lengths = np.frombuffer(px.extended_offsets[1], "<u8")
        if len(offsets) != count or len(lengths) != count:
            raise MalformedDicom(f"Extended Offset Table has {len(offsets)} entries for {count} frames")
        return [
            value[first + int(offsets[n - 1]) + 8 : first + int(offsets[n - 1]) + 8 + int(lengths[n - 1])]
            for n in numbers
        ]
    if len(bot):
        if len(bot) % 4:
            raise MalformedDicom(f"Basic Offset Table length {len(bot)} is not a multiple of 4")
        starts = [first + int(o) for o in np.frombuffer(bot, "<u4")]
        if len(starts) != count:
            raise MalformedDicom(f"Basic Offset Table has {len(starts)} entries for {count} frames")
        bounds = [*starts, first + sum(8 + length for _, length in fragments)]
        index = {pos - 8: i for i, (pos, _) in enumerate(fragments)}
        out: list[Frame] = []
        for n in numbers:
            lo, hi = bounds[n - 1], bounds[n]
            if lo not in index:
                raise MalformedDicom(f"Basic Offset Table entry for frame {n} does not point at an item")
            pieces = []
            i = index[lo]
            while i < len(fragments) and fragments[i][0] - 8 < hi:
                pieces.append(fragments[i])
                i += 1
            out.append(_join(value, pieces))
        return out
    if len(fragments) == count:
        return [_join(value, [fragments[n - 1]]) for n in numbers]
    if count == 1:
        return [_join(value, fragments)]
    if len(fragments) < count:
        raise MalformedDicom(f"encapsulated PixelData has {len(fragments)} fragments for {count} frames")
    # Several fragments per frame and no offset table: pydicom finds frame boundaries.
    buffer = BytesIO(value)
    try:
        return [get_frame(buffer, n - 1, number_of_frames=count) for n in numbers]
    except ValueError as exc:
        raise MalformedDicom(f"frames of the encapsulated PixelData cannot be located: {exc}") from exc


def _join(value: memoryview, pieces: Sequence[tuple[int, int]]) -> Frame:
    if len(pieces) == 1:
        pos, length = pieces[0]
        return value[pos : pos + length]
    return b"".join(value[pos : pos + length] for pos, length in pieces)


# --- public ---------------------------------------------------------------------------


def read_frames(source: Source, frame_numbers: Sequence[int]) -> Frames:
    """The bytes of frames ``frame_numbers`` (1-based) of a Part 10 file, as stored.

    ``source`` is the file's bytes or its path. Frames from ``bytes`` may be
    memoryviews into them; frames from a path are ``bytes``. Raises
    :class:`NotFound` for a missing file, no Pixel Data or a frame number
    past NumberOfFrames, :class:`InvalidInput` for a number below 1, and
    :class:`MalformedDicom` when the file cannot be read.
    """
    with _opened(source) as (px, copy):
        _check_numbers(frame_numbers, px.number_of_frames)
        frames = _encapsulated_frames(px, frame_numbers) if px.encapsulated else _native_frames(px, frame_numbers)
        if copy:
            frames = [bytes(f) if isinstance(f, memoryview) else f for f in frames]
        return Frames(str(UID(px.transfer_syntax_uid)), px.number_of_frames, tuple(frames))


def frame_count(source: Source) -> int:
    """NumberOfFrames (0028,0008) of an instance with Pixel Data (1 when absent)."""
    with _opened(source) as (px, _copy):
        return px.number_of_frames
