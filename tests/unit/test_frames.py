"""Frames sliced from Part 10 bytes, checked against pydicom's own pixel handling."""

from __future__ import annotations

import time
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, encapsulate_extended
from pydicom.uid import (
    JPEGBaseline8Bit,
    RLELossless,
    generate_uid,
)

from dicomcloud.domain.frames import frame_count, parse_frame_list, read_frames
from dicomcloud.errors import InvalidInput, InvalidQuery, MalformedDicom, NotFound

EVRLE = "1.2.840.10008.1.2.1"
IVRLE = "1.2.840.10008.1.2"
EVRBE = "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"

rng = np.random.default_rng(20240601)


def _dataset(
    rows: int,
    columns: int,
    *,
    samples: int = 1,
    bits: int = 16,
    frames: int = 1,
    tsuid: str = EVRLE,
) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = tsuid
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = "RGB" if samples == 3 else "MONOCHROME2"
    if samples == 3:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    return ds


def _encode(ds: Dataset) -> bytes:
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _native(
    rows: int,
    columns: int,
    *,
    samples: int = 1,
    bits: int = 16,
    frames: int = 1,
    tsuid: str = EVRLE,
) -> tuple[bytes, np.ndarray]:
    ds = _dataset(rows, columns, samples=samples, bits=bits, frames=frames, tsuid=tsuid)
    shape = (frames, rows, columns, samples)
    arr = rng.integers(
        0, 2 ** min(bits, 16), size=shape, dtype=np.uint8 if bits == 8 else np.uint16
    )
    if tsuid == EVRBE and bits == 16:
        ds.PixelData = arr.astype(">u2").tobytes()
    else:
        ds.PixelData = arr.tobytes()
    ds["PixelData"].VR = "OB" if bits == 8 else "OW"
    return _encode(ds), arr


def _pydicom_frames(data: bytes) -> np.ndarray:
    arr = dcmread(BytesIO(data)).pixel_array
    ds = dcmread(BytesIO(data), stop_before_pixels=True)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    return arr.reshape(frames, -1)


@pytest.mark.parametrize(
    ("bits", "samples", "frames", "tsuid"),
    [
        (8, 1, 1, EVRLE),
        (16, 1, 1, EVRLE),
        (8, 3, 1, EVRLE),
        (16, 1, 5, EVRLE),
        (8, 3, 4, EVRLE),
        (16, 1, 3, IVRLE),
        (16, 1, 3, EVRBE),
        (8, 1, 2, EVRBE),
        (16, 1, 3, DEFLATED),
    ],
)
def test_native_frames_match_pydicom(bits: int, samples: int, frames: int, tsuid: str) -> None:
    data, _ = _native(7, 9, samples=samples, bits=bits, frames=frames, tsuid=tsuid)
    expected = _pydicom_frames(data)
    wanted = list(range(frames, 0, -1))
    result = read_frames(data, wanted)
    assert result.transfer_syntax_uid == tsuid
    assert result.number_of_frames == frames
    dtype = "<u1" if bits == 8 else "<u2"
    for number, frame in zip(wanted, result.frames, strict=True):
        assert bytes(frame) == expected[number - 1].astype(dtype).tobytes()
    assert frame_count(data) == frames


def test_native_frames_from_a_path(tmp_path: Path) -> None:
    data, arr = _native(4, 6, frames=3)
    path = tmp_path / "x.dcm"
    path.write_bytes(data)
    result = read_frames(path, [2, 3])
    assert [bytes(f) for f in result.frames] == [arr[1].tobytes(), arr[2].tobytes()]
    assert all(isinstance(f, bytes) for f in result.frames)
    assert frame_count(str(path)) == 3


@pytest.mark.parametrize("tsuid", [EVRLE, DEFLATED])
def test_all_frames_when_no_numbers_are_given(tmp_path: Path, tsuid: str) -> None:
    data, arr = _native(4, 6, frames=3, tsuid=tsuid)
    path = tmp_path / "x.dcm"
    path.write_bytes(data)
    for source in (data, path):
        result = read_frames(source, None)
        assert [bytes(f) for f in result.frames] == [row.tobytes() for row in arr]


def test_frame_list() -> None:
    assert parse_frame_list("3, 1,2") == [3, 1, 2]
    for bad in ("", "0", "1,,2", "-1", "a", "1.5"):
        with pytest.raises(InvalidQuery, match="frame list"):
            parse_frame_list(bad)


def test_bits_allocated_1_packed_across_frames() -> None:
    rows, columns, frames = 3, 5, 4  # 15 bits per frame: frames start mid-byte
    ds = _dataset(rows, columns, bits=1, frames=frames)
    bits = rng.integers(0, 2, size=rows * columns * frames, dtype=np.uint8)
    packed = np.packbits(bits, bitorder="little").tobytes()
    ds.PixelData = packed + b"\x00" * (len(packed) % 2)
    ds["PixelData"].VR = "OB"
    data = _encode(ds)
    expected = _pydicom_frames(data)
    result = read_frames(data, [1, 2, 3, 4])
    for i, frame in enumerate(result.frames):
        assert bytes(frame) == np.packbits(expected[i], bitorder="little").tobytes()
        assert bytes(frame) == np.packbits(bits[i * 15 : (i + 1) * 15], bitorder="little").tobytes()


def test_rle_from_pydicom_encoder() -> None:
    data, arr = _native(16, 16, frames=3)
    ds = dcmread(BytesIO(data))
    ds.compress(RLELossless, arr.reshape(3, 16, 16))
    encoded = _encode(ds)
    result = read_frames(encoded, [3, 1])
    assert result.transfer_syntax_uid == RLELossless
    fragments = [bytes(f) for f in result.frames]
    from pydicom.encaps import generate_frames

    expected = list(generate_frames(ds.PixelData, number_of_frames=3))
    assert fragments == [expected[2], expected[0]]


def _encapsulated(pixel_data: bytes, frames: int, tsuid: str = JPEGBaseline8Bit) -> Dataset:
    ds = _dataset(8, 8, bits=8, frames=frames, tsuid=tsuid)
    ds.PixelData = pixel_data
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    return ds


def _fake_frames(count: int) -> list[bytes]:
    # JPEG-like: SOI ... EOI, so that frame ends can be found without an offset table.
    return [
        b"\xff\xd8" + rng.integers(0, 255, size=40 + 2 * i, dtype=np.uint8).tobytes() + b"\xff\xd9"
        for i in range(count)
    ]


@pytest.mark.parametrize(
    ("fragments_per_frame", "has_bot"),
    [(1, True), (1, False), (3, True), (3, False)],
)
def test_encapsulated_frames(fragments_per_frame: int, has_bot: bool) -> None:
    frames = _fake_frames(4)
    # 0xFF bytes are replaced so only the real EOI ends a frame.
    frames = [f[:2] + f[2:-2].replace(b"\xff", b"\x00") + f[-2:] for f in frames]
    ds = _encapsulated(encapsulate(frames, fragments_per_frame, has_bot=has_bot), 4)
    data = _encode(ds)
    result = read_frames(data, [4, 2, 1, 3])
    assert [bytes(f) for f in result.frames] == [frames[3], frames[1], frames[0], frames[2]]


def test_single_frame_in_many_fragments() -> None:
    (frame,) = _fake_frames(1)
    ds = _encapsulated(encapsulate([frame], 5, has_bot=False), 1)
    assert bytes(read_frames(_encode(ds), [1]).frames[0]) == frame


def test_extended_offset_table(tmp_path: Path) -> None:
    frames = _fake_frames(3)
    pixel_data, offsets, lengths = encapsulate_extended(frames)
    ds = _encapsulated(pixel_data, 3)
    ds.ExtendedOffsetTable = offsets
    ds.ExtendedOffsetTableLengths = lengths
    data = _encode(ds)
    assert [bytes(f) for f in read_frames(data, [2, 3]).frames] == frames[1:]
    path = tmp_path / "eot.dcm"
    path.write_bytes(data)
    assert [bytes(f) for f in read_frames(path, [1]).frames] == frames[:1]


def test_frame_numbers_out_of_range() -> None:
    data, _ = _native(4, 4, frames=3)
    with pytest.raises(InvalidInput, match=r"numbered from 1 .*has 3 frames"):
        read_frames(data, [0])
    with pytest.raises(InvalidInput):
        read_frames(data, [-1])
    with pytest.raises(NotFound, match="frame 4 does not exist: the instance has 3 frames"):
        read_frames(data, [1, 4])
    with pytest.raises(InvalidInput, match="no frame numbers"):
        read_frames(data, [])


def test_no_pixel_data() -> None:
    ds = _dataset(4, 4)
    data = _encode(ds)
    with pytest.raises(NotFound, match="no PixelData"):
        read_frames(data, [1])


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="does not exist"):
        read_frames(tmp_path / "nope.dcm", [1])


def test_garbage_and_truncated() -> None:
    with pytest.raises(MalformedDicom):
        read_frames(b"\x00" * 64, [1])
    data, _ = _native(16, 16, frames=2)
    with pytest.raises(MalformedDicom):
        read_frames(data[:-100], [1])
    frames = _fake_frames(2)
    encaps = _encode(_encapsulated(encapsulate(frames), 2))
    with pytest.raises(MalformedDicom, match="truncated"):
        read_frames(encaps[:-20], [1])


def test_single_frame_512x512_is_fast() -> None:
    data, arr = _native(512, 512)
    best = min(_timed(data) for _ in range(20))
    assert bytes(read_frames(data, [1]).frames[0]) == arr.tobytes()
    assert best < 0.002, f"best of 20 runs took {best * 1000:.2f} ms"


def _timed(data: bytes) -> float:
    started = time.perf_counter()
    read_frames(data, [1])
    return time.perf_counter() - started
