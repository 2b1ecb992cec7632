"""Frames of a stored instance, read from its Part 10 bytes without decoding.

PS3.18 §10.4.1.1.5 (Frames resource) needs the bytes of chosen frames, as
stored. :mod:`dicomcloud.domain.frame_index` finds where each frame lies
(PS3.5 §8.2, Annex A.4) once per file; here a frame is then one positioned
read (``os.pread``) of its bytes — for an encapsulated frame in several
fragments, one read spanning them, the item headers cut out. The index of a
file given by path is kept in :data:`~dicomcloud.domain.frame_index_cache.frame_indexes`
(keyed by path, inode, size and mtime); a file given as bytes is indexed on
each call (it has no identity to key on).

Native frames are returned as Little Endian octets (PS3.18 §8.7.3.3.1), so
Explicit VR Big Endian frames are byte-swapped; BitsAllocated 1 frames,
packed across byte boundaries (PS3.5 §8.1.1), are repacked to start at bit 0.
Deflated Explicit VR Little Endian (1.2.840.10008.1.2.1.99) files are not
indexed: pydicom inflates them whole on each call. CPU-bound: callers run
this in a worker thread; it is safe to call from many at once.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import numpy as np
from pydicom.uid import UID

from dicomcloud.domain.frame_index import (
    Deflated,
    EncapsulatedIndex,
    FrameIndex,
    NativeIndex,
    index_bytes,
    index_file,
    index_inflated,
)
from dicomcloud.domain.frame_index_cache import FileKey, FrameIndexCache, frame_indexes
from dicomcloud.errors import InvalidInput, InvalidQuery, MalformedDicom, NotFound

Source = bytes | bytearray | memoryview | str | Path
Frame = bytes | memoryview
Read = Callable[[int, int], Frame]  # (absolute offset, length) -> those bytes


@dataclass(frozen=True, slots=True)
class Frames:
    """The stored Transfer Syntax, the instance's frame count and the wanted frames' bytes."""

    transfer_syntax_uid: str
    number_of_frames: int
    frames: tuple[Frame, ...]


# --- public ---------------------------------------------------------------------------


def parse_frame_list(text: str) -> list[int]:
    """The ``{frames}`` path segment: comma-separated frame numbers from 1 (PS3.18 §10.4.1.1.5)."""
    numbers = []
    for item in text.split(","):
        item = item.strip()
        if not item.isdigit() or int(item) < 1:
            raise InvalidQuery(f"frame list {text!r} must be comma-separated numbers from 1")
        numbers.append(int(item))
    return numbers


def read_frames(source: Source, frame_numbers: Sequence[int] | None, *, cache: FrameIndexCache | None = None) -> Frames:
    """The bytes of frames ``frame_numbers`` (1-based; None: all) of a Part 10 file, as stored.

    ``source`` is the file's bytes or its path. Frames from ``bytes`` may be
    memoryviews into them; frames from a path are ``bytes``. Raises
    :class:`NotFound` for a missing file, no Pixel Data or a frame number
    past NumberOfFrames, :class:`InvalidInput` for a number below 1, and
    :class:`MalformedDicom` when the file (or the wanted frame) cannot be read.
    """
    if isinstance(source, str | Path):
        fd, key = _open(source)
        try:
            entry = (frame_indexes if cache is None else cache).get_or_build(key, lambda: index_file(fd, key.size))
            if isinstance(entry, Deflated):
                index, value = _inflate_fd(fd)
                return _serve(index, _slicer(memoryview(value)), frame_numbers, copy=True)
            return _serve(entry, _preader(fd), frame_numbers, copy=False)
        finally:
            os.close(fd)
    data = source if isinstance(source, bytes) else bytes(source)
    entry = index_bytes(data)
    if isinstance(entry, Deflated):
        index, value = index_inflated(BytesIO(data))
        return _serve(index, _slicer(memoryview(value)), frame_numbers, copy=False)
    return _serve(entry, _slicer(memoryview(data)), frame_numbers, copy=False)


def frame_count(source: Source, *, cache: FrameIndexCache | None = None) -> int:
    """NumberOfFrames (0028,0008) of an instance with Pixel Data (1 when absent)."""
    if isinstance(source, str | Path):
        fd, key = _open(source)
        try:
            entry = (frame_indexes if cache is None else cache).get_or_build(key, lambda: index_file(fd, key.size))
            return (_inflate_fd(fd)[0] if isinstance(entry, Deflated) else entry).number_of_frames
        finally:
            os.close(fd)
    data = source if isinstance(source, bytes) else bytes(source)
    entry = index_bytes(data)
    return (index_inflated(BytesIO(data))[0] if isinstance(entry, Deflated) else entry).number_of_frames


# --- sources --------------------------------------------------------------------------


def _open(path: str | Path) -> tuple[int, FileKey]:
    """An open descriptor and the identity of the file it reads (from the descriptor, so they agree)."""
    try:
        fd = os.open(path, os.O_RDONLY)  # not inherited by child processes (PEP 446)
    except FileNotFoundError as exc:
        raise NotFound(f"the instance file {Path(path).name} does not exist") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotFound(f"the instance file {Path(path).name} is not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd, FileKey.of(os.fspath(path), st)


def _inflate_fd(fd: int) -> tuple[FrameIndex, bytes]:
    with open(fd, "rb", closefd=False) as fp:
        fp.seek(0)
        return index_inflated(fp)


def _preader(fd: int) -> Read:
    def read(offset: int, length: int) -> bytes:
        data = os.pread(fd, length, offset)
        while len(data) < length:  # regular files only read short at their end
            more = os.pread(fd, length - len(data), offset + len(data))
            if not more:
                raise MalformedDicom(
                    f"the instance file ends at byte {offset + len(data)}, inside a frame (truncated in place?)"
                )
            data += more
        return data

    return read


def _slicer(buf: memoryview) -> Read:
    def read(offset: int, length: int) -> memoryview:
        return buf[offset : offset + length]

    return read


# --- frames ---------------------------------------------------------------------------


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


def _serve(index: FrameIndex, read: Read, numbers: Sequence[int] | None, *, copy: bool) -> Frames:
    if numbers is None:
        numbers = range(1, index.number_of_frames + 1)
    _check_numbers(numbers, index.number_of_frames)
    if isinstance(index, NativeIndex):
        if index.problem:
            raise MalformedDicom(index.problem)
        frames = [_native_frame(index, read, n) for n in numbers]
    else:
        frames = [_encapsulated_frame(index, read, n) for n in numbers]
    if copy:
        frames = [bytes(f) if isinstance(f, memoryview) else f for f in frames]
    return Frames(str(UID(index.transfer_syntax_uid)), index.number_of_frames, tuple(frames))


def _native_frame(index: NativeIndex, read: Read, number: int) -> Frame:
    offset, length = index.byte_range(number)
    if index.bits_allocated == 1:
        data = read(offset, length)
        shift = (number - 1) * index.frame_bits % 8
        if shift == 0 and index.frame_bits % 8 == 0:
            return data
        unpacked = np.unpackbits(np.frombuffer(data, np.uint8), bitorder="little")
        return np.packbits(unpacked[shift : shift + index.frame_bits], bitorder="little").tobytes()
    if index.swap_words:
        # 8-bit samples in big endian OW are swapped in 16-bit words (PS3.5 §7.3): read whole words.
        start = offset - index.value_offset
        lo = start & ~1
        hi = min((start + length + 1) & ~1, index.value_length & ~1)
        words = np.frombuffer(read(index.value_offset + lo, hi - lo), ">u2").astype("<u2").tobytes()
        return words[start - lo : start - lo + length]
    data = read(offset, length)
    if index.big_endian and index.bits_allocated > 8:
        return np.frombuffer(data, f">u{index.bits_allocated // 8}").byteswap().tobytes()
    return data


def _encapsulated_frame(index: EncapsulatedIndex, read: Read, number: int) -> Frame:
    if number > index.located:
        raise MalformedDicom(f"frame {number} of the encapsulated PixelData cannot be located: {index.problem}")
    ranges = index.ranges(number)
    if len(ranges) == 1:
        return read(*ranges[0])
    if not ranges:
        return b""
    # The fragments of one frame are consecutive items: one read, item headers cut out.
    first = ranges[0][0]
    span = memoryview(read(first, ranges[-1][0] + ranges[-1][1] - first))
    return b"".join(span[o - first : o - first + n] for o, n in ranges)
