"""Frame index: where each frame of a stored instance lies in its Part 10 bytes.

PS3.5 §8.2 and Annex A.4 say where frames are; this module works it out once
per file so that a frame retrieve (PS3.18 §10.4.1.1.5) is then one read of
known byte ranges — no pydicom parse, no walk over fragment items:

* native Pixel Data (7FE0,0010): frame *n* is bytes
  ``[(n-1)*size, n*size)`` of the value, ``size = Rows x Columns x
  SamplesPerPixel x BitsAllocated / 8``; with BitsAllocated 1 frames are
  packed back to back across byte boundaries (PS3.5 §8.1.1). The index keeps
  the value's absolute offset and the frame size: one range per frame, by
  arithmetic (:class:`NativeIndex`);
* encapsulated Pixel Data: a Basic Offset Table item, then fragment items
  (PS3.5 A.4). The index keeps, per frame, the absolute offsets and lengths
  of its fragment values (:class:`EncapsulatedIndex`), found from the
  Extended Offset Table (7FE0,0001/0002, PS3.3 C.7.6.3.1.8), the Basic Offset
  Table, or — when both are empty — one fragment per frame, all fragments for
  a single frame, else the JPEG EOI/EOC marker search pydicom does.

An offset that does not point at an item, or too few frame ends, is not an
error of the whole file: the index records how many frames it could locate
and why the rest cannot be, and asking for one of those is
:class:`MalformedDicom` (tolerant when reading). Deflated files
(1.2.840.10008.1.2.1.99, PS3.5 A.5) have no stable byte offsets: they get a
:class:`Deflated` marker and are inflated whole on each read.

:mod:`~dicomcloud.domain.frame_index_cache` keeps indexes in a bounded,
thread-safe LRU keyed by the file's identity, so a file replaced by rename is
indexed anew. CPU-bound: run off the event loop.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from io import BytesIO
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt
from pydicom.errors import InvalidDicomError
from pydicom.filereader import dcmread

from dicomcloud.errors import DicomCloudError, MalformedDicom, NotFound

DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
_UNDEFINED = 0xFFFFFFFF
_ITEM = 0xFFFEE000
_SEQUENCE_DELIMITER = 0xFFFEE0DD
_EOI = b"\xff\xd9"  # JPEG EOI / JPEG 2000 EOC: the last bytes of a frame
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
_ITEM_HEADER = struct.Struct("<HHI")

U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class NativeIndex:
    """Native Pixel Data: frame *n* is one byte range of the value (PS3.5 §8.1.1, §8.2)."""

    transfer_syntax_uid: str
    number_of_frames: int
    bits_allocated: int
    frame_bits: int  # Rows x Columns x SamplesPerPixel x BitsAllocated
    value_offset: int  # absolute offset of the Pixel Data value
    value_length: int
    big_endian: bool
    swap_words: bool  # 8-bit samples in Explicit VR Big Endian OW: swapped in 16-bit words (PS3.5 §7.3)
    problem: str = ""  # why no frame can be served; "" when every frame can

    @property
    def located(self) -> int:
        """How many frames (1 .. located) can be served."""
        return 0 if self.problem else self.number_of_frames

    @property
    def nbytes(self) -> int:
        return 256

    def byte_range(self, number: int) -> tuple[int, int]:
        """(absolute offset, length) of the whole bytes holding frame ``number`` (1-based)."""
        first_bit = (number - 1) * self.frame_bits
        start = first_bit // 8
        stop = (first_bit + self.frame_bits + 7) // 8
        return self.value_offset + start, stop - start


@dataclass(frozen=True, slots=True, eq=False)
class EncapsulatedIndex:
    """Encapsulated Pixel Data: per frame, the fragment value ranges to join (PS3.5 A.4).

    Frame *n* (1-based) is fragments ``starts[n-1]`` up to ``starts[n]``:
    ``offsets`` are absolute offsets of fragment values (after the 8-byte item
    header), ``lengths`` the bytes to take from each.
    """

    transfer_syntax_uid: str
    number_of_frames: int
    offsets: U64
    lengths: U64
    starts: I64
    problem: str = ""  # why frames after ``located`` cannot be served

    @property
    def located(self) -> int:
        return len(self.starts) - 1

    @property
    def nbytes(self) -> int:
        return 256 + self.offsets.nbytes + self.lengths.nbytes + self.starts.nbytes

    def ranges(self, number: int) -> list[tuple[int, int]]:
        """(absolute offset, length) of each fragment value of frame ``number`` (1-based)."""
        lo, hi = int(self.starts[number - 1]), int(self.starts[number])
        return [(int(o), int(n)) for o, n in zip(self.offsets[lo:hi], self.lengths[lo:hi], strict=True)]


@dataclass(frozen=True, slots=True)
class Deflated:
    """A Deflated Explicit VR Little Endian file: not indexed, inflated whole on each read."""

    transfer_syntax_uid: str = DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN

    @property
    def nbytes(self) -> int:
        return 64


FrameIndex = NativeIndex | EncapsulatedIndex
Entry = NativeIndex | EncapsulatedIndex | Deflated


# --- header ---------------------------------------------------------------------------


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


def read_header(fp: BinaryIO) -> tuple[Any, str]:
    """The data set up to Pixel Data (the attributes frames need) and the Transfer Syntax UID."""
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
    end = ">" if tsuid == EXPLICIT_VR_BIG_ENDIAN else "<"
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


@dataclass(frozen=True, slots=True)
class _Image:
    tsuid: str
    rows: int
    columns: int
    samples_per_pixel: int
    bits_allocated: int
    number_of_frames: int
    extended_offsets: tuple[bytes, bytes] | None

    @classmethod
    def of(cls, ds: Any, tsuid: str) -> _Image:
        eot: tuple[bytes, bytes] | None = None
        offsets, lengths = ds.get(0x7FE00001), ds.get(0x7FE00002)
        if offsets is not None and lengths is not None and offsets.value and lengths.value:
            eot = (bytes(offsets.value), bytes(lengths.value))
        frames = _int(ds, "NumberOfFrames", 1)
        if frames < 1:
            raise MalformedDicom(f"NumberOfFrames {frames} is not a positive number")
        return cls(
            tsuid,
            _int(ds, "Rows"),
            _int(ds, "Columns"),
            _int(ds, "SamplesPerPixel", 1),
            _int(ds, "BitsAllocated"),
            frames,
            eot,
        )


# --- building -------------------------------------------------------------------------


def index_file(fd: int, size: int) -> Entry:
    """Index the Part 10 file open as ``fd`` (``size`` bytes long)."""
    with open(fd, "rb", closefd=False) as fp:
        ds, tsuid = read_header(fp)
        if tsuid == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
            return Deflated()
        pos = fp.tell()
    if size <= pos:
        raise NotFound("the instance has no PixelData (7FE0,0010)")
    mapped = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
    try:
        return index_pixel_data(ds, tsuid, memoryview(mapped), pos)
    finally:
        with suppress(BufferError):  # a view still alive (e.g. in a traceback):
            mapped.close()  # the mapping then goes when it is collected


def index_bytes(data: bytes) -> Entry:
    """Index a Part 10 file given as bytes; offsets are into ``data``."""
    stream = BytesIO(data)  # shares ``data``'s buffer: no copy
    ds, tsuid = read_header(stream)
    if tsuid == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
        return Deflated()
    return index_pixel_data(ds, tsuid, memoryview(data), stream.tell())


def index_inflated(fp: BinaryIO) -> tuple[FrameIndex, bytes]:
    """A deflated file (PS3.5 A.5), inflated whole by pydicom: the Pixel Data value and its index."""
    try:
        ds = dcmread(fp)
        element = ds.get(0x7FE00010)
        if element is None or element.value is None:
            raise NotFound("the instance has no PixelData (7FE0,0010)")
        value = bytes(element.value)
        image = _Image.of(ds, DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN)
        if getattr(element, "is_undefined_length", False):
            return _encapsulated(image, memoryview(value), 0), value
        return _native(image, str(element.VR).encode(), 0, len(value)), value
    except DicomCloudError:
        raise
    except Exception as exc:  # zlib / pydicom errors on a broken stream
        raise MalformedDicom(f"unreadable deflated DICOM: {type(exc).__name__}: {exc}") from exc


def index_pixel_data(ds: Any, tsuid: str, buf: memoryview, pos: int) -> FrameIndex:
    """Index the Pixel Data element that starts at ``pos`` of ``buf`` (the whole file)."""
    vr, length, start = _element_header(buf, pos, tsuid)
    image = _Image.of(ds, tsuid)
    if length == _UNDEFINED:
        return _encapsulated(image, buf, start)
    if start + length > len(buf):
        raise MalformedDicom(f"PixelData (7FE0,0010) claims {length} bytes but only {len(buf) - start} follow")
    return _native(image, vr, start, length)


def _native(image: _Image, vr: bytes, start: int, length: int) -> NativeIndex:
    bits = image.bits_allocated
    frame_bits = image.rows * image.columns * image.samples_per_pixel * bits
    big = image.tsuid == EXPLICIT_VR_BIG_ENDIAN
    problem = ""
    if bits not in (1, 8, 16, 32, 64):
        problem = f"BitsAllocated {bits} is not 1, 8, 16, 32 or 64"
    else:
        needed = (frame_bits * image.number_of_frames + 7) // 8
        if length < needed:
            problem = (
                f"PixelData has {length} bytes; {image.number_of_frames} frame(s) of "
                f"{image.rows}x{image.columns}x{image.samples_per_pixel} at {bits} bits need {needed}"
            )
    return NativeIndex(
        transfer_syntax_uid=image.tsuid,
        number_of_frames=image.number_of_frames,
        bits_allocated=bits,
        frame_bits=frame_bits,
        value_offset=start,
        value_length=length,
        big_endian=big,
        swap_words=big and bits == 8 and vr == b"OW",
        problem=problem,
    )


def _items(buf: memoryview, start: int) -> tuple[tuple[int, int], list[int], list[int]]:
    """The Basic Offset Table's (offset, length), then each fragment value's offset and length."""
    pos, size = start, len(buf)
    offsets: list[int] = []
    lengths: list[int] = []
    bot: tuple[int, int] | None = None
    unpack = _ITEM_HEADER.unpack_from
    while True:
        if pos + 8 > size:
            raise MalformedDicom("encapsulated PixelData ends without a Sequence Delimiter (truncated)")
        group, element, length = unpack(buf, pos)
        tag = group << 16 | element
        if tag == _SEQUENCE_DELIMITER:
            break
        if tag != _ITEM:
            raise MalformedDicom(f"unexpected tag ({group:04X},{element:04X}) in encapsulated PixelData")
        if length == _UNDEFINED or pos + 8 + length > size:
            raise MalformedDicom("an encapsulated PixelData item is longer than the data (truncated)")
        if bot is None:
            bot = (pos + 8, length)
        else:
            offsets.append(pos + 8)
            lengths.append(length)
        pos += 8 + length
    if bot is None:
        raise MalformedDicom("encapsulated PixelData has no Basic Offset Table item")
    return bot, offsets, lengths


def _encapsulated(image: _Image, buf: memoryview, start: int) -> EncapsulatedIndex:
    def index(offsets: U64, lengths: U64, starts: I64, problem: str = "") -> EncapsulatedIndex:
        for array in (offsets, lengths, starts):
            array.flags.writeable = False
        return EncapsulatedIndex(image.tsuid, image.number_of_frames, offsets, lengths, starts, problem)

    def unlocated(problem: str) -> EncapsulatedIndex:
        return index(np.zeros(0, np.uint64), np.zeros(0, np.uint64), np.zeros(1, np.int64), problem)

    try:
        (bot_at, bot_length), offset_list, length_list = _items(buf, start)
    except MalformedDicom as exc:
        return unlocated(exc.reason)
    offsets = np.array(offset_list, np.uint64)
    lengths = np.array(length_list, np.uint64)
    tags = offsets - np.uint64(8)  # where each fragment's item tag is
    first = bot_at + bot_length  # table offsets count from the first fragment's item tag
    count = image.number_of_frames

    if image.extended_offsets is not None:
        raw_offsets, raw_lengths = image.extended_offsets
        if len(raw_offsets) % 8 or len(raw_lengths) % 8:
            return unlocated("Extended Offset Table (Lengths) is not a whole number of 64-bit values")
        table = np.frombuffer(raw_offsets, "<u8").astype(np.uint64)
        frame_lengths = np.frombuffer(raw_lengths, "<u8").astype(np.uint64)
        if len(table) != count or len(frame_lengths) != count:
            return unlocated(
                f"Extended Offset Table has {len(table)} offsets and {len(frame_lengths)} lengths for {count} frames"
            )
        which, good = _at_items(table, first, tags, len(buf))
        if len(lengths):
            good &= frame_lengths <= lengths[which]
        located = int(np.argmin(good)) if not good.all() else count
        problem = (
            f"Extended Offset Table entry for frame {located + 1} does not point at an item holding that many bytes"
            if located < count
            else ""
        )
        return index(offsets[which[:located]], frame_lengths[:located], np.arange(located + 1, dtype=np.int64), problem)

    if bot_length:
        if bot_length % 4:
            return unlocated(f"Basic Offset Table length {bot_length} is not a multiple of 4")
        table = np.frombuffer(buf[bot_at : bot_at + bot_length], "<u4").astype(np.uint64)
        if len(table) != count:
            return unlocated(f"Basic Offset Table has {len(table)} entries for {count} frames")
        which, good = _at_items(table, first, tags, len(buf))
        good[1:] &= table[1:] > table[:-1]
        if good.all():
            return index(offsets, lengths, np.append(which, len(offsets)).astype(np.int64))
        bad = int(np.argmin(good))  # frame bad+1's entry is wrong, so frame bad's end is unknown
        problem = f"Basic Offset Table entry for frame {bad + 1} does not point at an item after the previous one"
        return index(offsets, lengths, which[:bad].astype(np.int64), problem) if bad else unlocated(problem)

    every = np.arange(len(offsets) + 1, dtype=np.int64)
    if len(offsets) == count:
        return index(offsets, lengths, every)
    if count == 1:
        return index(offsets, lengths, every[[0, -1]])
    if len(offsets) < count:
        return unlocated(f"encapsulated PixelData has {len(offsets)} fragments for {count} frames")
    return _by_markers(buf, offsets, lengths, count, index)


def _at_items(table: U64, first: int, tags: U64, size: int) -> tuple[I64, npt.NDArray[np.bool_]]:
    """For each table offset: the fragment whose item it points at, and whether it does."""
    in_range = table < np.uint64(size)
    wanted = np.where(in_range, table, 0) + np.uint64(first)
    which = np.searchsorted(tags, wanted).astype(np.int64)
    clipped = np.minimum(which, max(len(tags) - 1, 0))
    good = in_range & (which < len(tags))
    if len(tags):
        good &= tags[clipped] == wanted
    return clipped, good


def _by_markers(
    buf: memoryview,
    offsets: U64,
    lengths: U64,
    count: int,
    index: Callable[[U64, U64, I64, str], EncapsulatedIndex],
) -> EncapsulatedIndex:
    """Several fragments per frame and no offset table: a frame ends in a fragment whose
    last ten bytes hold an EOI/EOC marker (as ``pydicom.encaps.get_frame`` decides)."""
    starts = [0]
    for i, (offset, length) in enumerate(zip(offsets.tolist(), lengths.tolist(), strict=True)):
        if _EOI in bytes(buf[max(offset, offset + length - 10) : offset + length]):
            starts.append(i + 1)
    if starts[-1] != len(offsets):
        starts.append(len(offsets))  # fragments left over without a marker: the last frame
    starts = starts[: count + 1]
    located = len(starts) - 1
    problem = (
        f"only {located} frame ends (JPEG EOI/EOC markers) were found in {len(offsets)} fragments "
        "and there is no offset table"
        if located < count
        else ""
    )
    return index(offsets, lengths, np.array(starts, np.int64), problem)
