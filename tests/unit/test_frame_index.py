"""The frame index: built once per file, reused, renewed when the file is replaced.

Every frame served from the index is checked against pydicom's own frames
(``tests.factory.frames``) for multi-frame instances of hundreds of frames.
"""

from __future__ import annotations

import os
import struct
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, encapsulate_extended
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGLSLossless,
    RLELossless,
)

from dicomcloud.domain import frame_index
from dicomcloud.domain.frame_index import (
    Deflated,
    EncapsulatedIndex,
    NativeIndex,
)
from dicomcloud.domain.frame_index_cache import FrameIndexCache
from dicomcloud.domain.frames import frame_count, read_frames
from dicomcloud.errors import MalformedDicom
from tests.factory import frames, make_instance, part10_bytes

MANY = 300


def _write(path: Path, ds: Dataset) -> Path:
    path.write_bytes(part10_bytes(ds))
    return path


def _replace(path: Path, ds: Dataset) -> None:
    """Write ``ds`` beside ``path`` and rename it over ``path``, as the archive stores files."""
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(part10_bytes(ds))
    os.replace(tmp, path)


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every pydicom parse the frame index makes."""
    calls: list[Any] = []
    real = frame_index.dcmread

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(frame_index, "dcmread", counting)
    return calls


def _little_endian(ds: Dataset) -> list[bytes]:
    """pydicom's frames as WADO-RS returns them: native frames Little Endian."""
    out = frames(ds)
    if ds.file_meta.TransferSyntaxUID == ExplicitVRBigEndian:
        return [np.frombuffer(f, ">u2").astype("<u2").tobytes() for f in out]
    return out


# --- built once, reused, renewed ------------------------------------------------------


def test_index_is_built_once_and_reused(tmp_path: Path, parses: list[Any]) -> None:
    ds = make_instance(rows=4, columns=4, number_of_frames=50)
    path = _write(tmp_path / "i.dcm", ds)
    expected = frames(ds)
    cache = FrameIndexCache()
    for n in (1, 50, 25, 1, 50):
        assert read_frames(path, [n], cache=cache).frames == (expected[n - 1],)
    assert frame_count(path, cache=cache) == 50
    assert read_frames(str(path), range(1, 51), cache=cache).frames == tuple(expected)
    assert (cache.builds, cache.hits, len(cache)) == (1, 6, 1)
    assert len(parses) == 1  # one pydicom parse in all


def test_warm_reads_do_not_parse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = make_instance(rows=4, columns=4, number_of_frames=20, transfer_syntax=JPEGLSLossless)
    path = _write(tmp_path / "i.dcm", ds)
    cache = FrameIndexCache()
    read_frames(path, [1], cache=cache)

    def no_parse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a warm read parsed the file")

    monkeypatch.setattr(frame_index, "dcmread", no_parse)
    monkeypatch.setattr(frame_index, "_items", no_parse)
    assert read_frames(path, [20, 3], cache=cache).frames == (frames(ds)[19], frames(ds)[2])


def test_replaced_file_is_reindexed(tmp_path: Path) -> None:
    path = tmp_path / "i.dcm"
    first = make_instance(rows=4, columns=4, number_of_frames=3, InstanceNumber=1)
    _write(path, first)
    cache = FrameIndexCache()
    assert read_frames(path, [2], cache=cache).frames == (frames(first)[1],)
    # same size and header, other pixels: only the new inode / mtime tells
    second = make_instance(rows=4, columns=4, number_of_frames=3, InstanceNumber=1, WindowCenter="41")
    second.PixelData = bytes(reversed(second.PixelData))
    _replace(path, second)
    assert path.stat().st_size == len(part10_bytes(first))
    assert read_frames(path, [2], cache=cache).frames == (frames(second)[1],)
    # another frame count and syntax
    third = make_instance(rows=4, columns=4, number_of_frames=7, transfer_syntax=RLELossless)
    _replace(path, third)
    result = read_frames(path, [7], cache=cache)
    assert (result.number_of_frames, result.transfer_syntax_uid) == (7, RLELossless)
    assert result.frames == (frames(third)[6],)
    assert cache.builds == 3
    assert len(cache) == 1  # the replaced files' entries were dropped


def test_lru_is_bounded(tmp_path: Path) -> None:
    cache = FrameIndexCache(max_entries=2)
    paths = [_write(tmp_path / f"{i}.dcm", make_instance(rows=2, columns=2, InstanceNumber=i)) for i in range(3)]
    for path in paths:
        read_frames(path, [1], cache=cache)
    assert len(cache) == 2
    read_frames(paths[2], [1], cache=cache)
    assert cache.builds == 3
    read_frames(paths[0], [1], cache=cache)  # evicted first: built again
    assert cache.builds == 4


def test_concurrent_first_access_builds_once(tmp_path: Path, parses: list[Any]) -> None:
    ds = make_instance(rows=4, columns=4, number_of_frames=MANY, transfer_syntax=JPEGLSLossless)
    path = _write(tmp_path / "i.dcm", ds)
    expected = frames(ds)
    cache = FrameIndexCache()
    numbers = [(i * 37) % MANY + 1 for i in range(400)]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda n: read_frames(path, [n], cache=cache).frames[0], numbers))
    assert results == [expected[n - 1] for n in numbers]
    assert cache.builds == 1
    assert len(parses) == 1


# --- every frame of large multi-frame instances ---------------------------------------


@pytest.mark.parametrize(
    "transfer_syntax",
    [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian],
)
def test_native_many_frames_match_pydicom(tmp_path: Path, transfer_syntax: str) -> None:
    ds = make_instance(rows=6, columns=5, number_of_frames=MANY, transfer_syntax=transfer_syntax)
    path = _write(tmp_path / "n.dcm", ds)
    expected = _little_endian(ds)
    cache = FrameIndexCache()
    numbers = list(range(MANY, 0, -1))
    result = read_frames(path, numbers, cache=cache)
    assert (result.transfer_syntax_uid, result.number_of_frames) == (transfer_syntax, MANY)
    assert list(result.frames) == [expected[n - 1] for n in numbers]
    assert all(isinstance(f, bytes) for f in result.frames)
    (entry,) = cache.snapshot().values()
    assert isinstance(entry, Deflated if transfer_syntax == DeflatedExplicitVRLittleEndian else NativeIndex)


@pytest.mark.parametrize("transfer_syntax", [RLELossless, JPEGLSLossless])
def test_encapsulated_many_frames_match_pydicom(tmp_path: Path, transfer_syntax: str) -> None:
    ds = make_instance(rows=6, columns=5, number_of_frames=MANY, transfer_syntax=transfer_syntax)
    path = _write(tmp_path / "e.dcm", ds)
    expected = frames(ds)
    cache = FrameIndexCache()
    numbers = list(range(1, MANY + 1))
    assert list(read_frames(path, numbers, cache=cache).frames) == expected
    assert list(read_frames(part10_bytes(ds), numbers).frames) == expected  # from bytes: memoryviews


def _reencapsulated(layout: str, fragments_per_frame: int) -> tuple[Dataset, list[bytes]]:
    """A JPEG-LS instance whose frames are put in items another way (PS3.5 A.4)."""
    ds = make_instance(rows=6, columns=5, number_of_frames=MANY, transfer_syntax=JPEGLSLossless)
    encoded = frames(ds)
    if layout == "eot":
        ds.PixelData, ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths = encapsulate_extended(encoded)
    else:
        ds.PixelData = encapsulate(encoded, fragments_per_frame, has_bot=layout == "bot")
    return ds, encoded


@pytest.mark.parametrize(
    ("layout", "fragments_per_frame"),
    [("bot", 1), ("bot", 3), ("none", 1), ("none", 3), ("eot", 1)],
)
def test_encapsulated_layouts(tmp_path: Path, layout: str, fragments_per_frame: int) -> None:
    ds, encoded = _reencapsulated(layout, fragments_per_frame)
    path = _write(tmp_path / "e.dcm", ds)
    cache = FrameIndexCache()
    numbers = [MANY, 1, *range(2, MANY)]
    got = read_frames(path, numbers, cache=cache).frames
    assert [bytes(f) for f in got] == [encoded[n - 1] for n in numbers]
    (entry,) = cache.snapshot().values()
    assert isinstance(entry, EncapsulatedIndex)
    assert (entry.located, entry.problem) == (MANY, "")
    # one range per fragment, absolute offsets into the file
    data = path.read_bytes()
    ranges = entry.ranges(MANY)
    assert len(ranges) == fragments_per_frame
    assert b"".join(data[o : o + n] for o, n in ranges) == encoded[-1]


def test_native_big_endian_8_bit_ow_word_swapped(tmp_path: Path) -> None:
    frames_, rows, columns = 5, 3, 3  # 9-byte frames: most start mid-word
    arr = np.arange(frames_ * rows * columns, dtype=np.uint8).reshape(frames_, rows * columns)
    little = arr.tobytes() + b"\x00"
    ds = make_instance(rows=rows, columns=columns, number_of_frames=frames_, transfer_syntax=ExplicitVRBigEndian)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = np.frombuffer(little, "<u2").astype(">u2").tobytes()  # OW in Big Endian
    ds["PixelData"].VR = "OW"
    path = _write(tmp_path / "be.dcm", ds)
    assert list(read_frames(path, range(1, frames_ + 1)).frames) == [row.tobytes() for row in arr]


def test_bits_allocated_1_from_a_path(tmp_path: Path) -> None:
    rows, columns, count = 3, 5, 40  # 15 bits per frame: frames start mid-byte
    bits = np.random.default_rng(7).integers(0, 2, size=rows * columns * count, dtype=np.uint8)
    ds = make_instance(rows=rows, columns=columns, number_of_frames=count)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 1, 0
    packed = np.packbits(bits, bitorder="little").tobytes()
    ds.PixelData = packed + b"\x00" * (len(packed) % 2)
    ds["PixelData"].VR = "OB"
    path = _write(tmp_path / "b.dcm", ds)
    got = read_frames(path, range(1, count + 1)).frames
    for i, frame in enumerate(got):
        assert frame == np.packbits(bits[i * 15 : (i + 1) * 15], bitorder="little").tobytes()


# --- corrupt offsets: a clear error, the frames before it still served -----------------


def _patch_table(data: bytes, entries: dict[int, int], fmt: str, table_at: int) -> bytes:
    out = bytearray(data)
    size = struct.calcsize(fmt)
    for i, value in entries.items():
        struct.pack_into(fmt, out, table_at + i * size, value)
    return bytes(out)


def _bot_at(data: bytes) -> int:
    """Where the Basic Offset Table's entries start: after the Pixel Data and first item headers."""
    pixel_data = data.rindex(b"\xe0\x7f\x10\x00OB\x00\x00\xff\xff\xff\xff")
    assert data[pixel_data + 12 : pixel_data + 16] == b"\xfe\xff\x00\xe0"
    return pixel_data + 20


def test_basic_offset_table_pointing_inside_a_fragment(tmp_path: Path) -> None:
    ds, encoded = _reencapsulated("bot", 1)
    data = part10_bytes(ds)
    at = _bot_at(data)
    (tenth,) = struct.unpack_from("<I", data, at + 9 * 4)
    path = tmp_path / "c.dcm"
    path.write_bytes(_patch_table(data, {9: tenth + 3}, "<I", at))  # frame 10's entry, 3 bytes off
    assert read_frames(path, [8]).frames == (encoded[7],)
    for n in (9, 10, MANY):  # frame 9 ends where frame 10's entry points
        with pytest.raises(MalformedDicom, match=rf"frame {n} .*cannot be located: .*entry for frame 10"):
            read_frames(path, [n])
    assert frame_count(path) == MANY


def test_basic_offset_table_not_increasing_or_past_the_end(tmp_path: Path) -> None:
    ds, _ = _reencapsulated("bot", 1)
    data = part10_bytes(ds)
    at = _bot_at(data)
    for entries in ({1: 0}, {1: 2**32 - 8}, {0: 2**31}):
        path = tmp_path / "c.dcm"
        path.write_bytes(_patch_table(data, entries, "<I", at))
        with pytest.raises(MalformedDicom, match="Basic Offset Table entry"):
            read_frames(path, [MANY])
        os.unlink(path)


def test_extended_offset_table_corrupt(tmp_path: Path) -> None:
    ds, encoded = _reencapsulated("eot", 1)
    offsets = list(struct.unpack(f"<{MANY}Q", ds.ExtendedOffsetTable))
    lengths = list(struct.unpack(f"<{MANY}Q", ds.ExtendedOffsetTableLengths))
    cases: list[tuple[list[int], list[int], str]] = [
        ([*offsets[:5], 2**63, *offsets[6:]], lengths, "entry for frame 6"),
        (offsets, [*lengths[:5], 10**6, *lengths[6:]], "entry for frame 6"),
        ([*offsets[:5], offsets[5] + 2, *offsets[6:]], lengths, "entry for frame 6"),
        (offsets[:-1], lengths[:-1], f"{MANY - 1} offsets"),
    ]
    for table, table_lengths, message in cases:
        ds.ExtendedOffsetTable = struct.pack(f"<{len(table)}Q", *table)
        ds.ExtendedOffsetTableLengths = struct.pack(f"<{len(table_lengths)}Q", *table_lengths)
        path = _write(tmp_path / "c.dcm", ds)
        with pytest.raises(MalformedDicom, match=message):
            read_frames(path, [MANY])
        if "frame 6" in message:
            assert read_frames(path, [5]).frames == (encoded[4],)
        os.unlink(path)


def test_too_few_frame_ends_without_offset_table(tmp_path: Path) -> None:
    ds, encoded = _reencapsulated("none", 3)
    cut = [f[:-2] + b"\x00\x00" if i == 99 else f for i, f in enumerate(encoded)]  # frame 100 loses its EOI
    ds.PixelData = encapsulate(cut, 3, has_bot=False)
    path = _write(tmp_path / "c.dcm", ds)
    assert read_frames(path, [99]).frames == (encoded[98],)
    with pytest.raises(MalformedDicom, match=rf"frame {MANY} .*only {MANY - 1} frame ends"):
        read_frames(path, [MANY])


def test_truncated_encapsulated_file(tmp_path: Path) -> None:
    ds = make_instance(rows=4, columns=4, number_of_frames=10, transfer_syntax=RLELossless)
    path = tmp_path / "t.dcm"
    path.write_bytes(part10_bytes(ds)[:-30])
    assert frame_count(path) == 10
    with pytest.raises(MalformedDicom, match="truncated"):
        read_frames(path, [1])


def test_native_problem_is_raised_when_frames_are_read(tmp_path: Path) -> None:
    ds = make_instance(rows=4, columns=4, number_of_frames=3)
    ds.BitsAllocated = 12
    path = _write(tmp_path / "b.dcm", ds)
    assert frame_count(path) == 3
    with pytest.raises(MalformedDicom, match="BitsAllocated 12"):
        read_frames(path, [1])
    ds = make_instance(rows=4, columns=4, number_of_frames=3)
    ds.PixelData = ds.PixelData[:-32]
    path = _write(tmp_path / "s.dcm", ds)
    with pytest.raises(MalformedDicom, match="PixelData has 64 bytes; 3 frame"):
        read_frames(path, [1])
