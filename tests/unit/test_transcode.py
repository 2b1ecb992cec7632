"""Transcoding with the real codecs, checked against pydicom's own decoding of the original.

Every (source, target) pair the installed codecs allow: sources are the
factory's syntaxes plus those only this module can write (JPEG lossless,
HTJ2K, the lossy ones), built from a factory instance; each result is read
back by pydicom and its pixels compared with pydicom's pixels of the source:
equal for lossless targets, within a bound for lossy ones.
"""

from __future__ import annotations

from dataclasses import replace
from io import BytesIO
from typing import Any

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.multival import MultiValue
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from dicomcloud.domain import codecs
from dicomcloud.domain import transcode as t
from dicomcloud.domain import transfer_syntaxes as ts
from dicomcloud.domain.frames import read_frames
from dicomcloud.errors import DicomCloudError, MalformedDicom, NotAcceptable, http_status
from tests import factory

SIZE = 48  # JPEG 2000 needs >= 32
FRAMES = 3
LOSSLESS_TARGETS = [
    ts.EXPLICIT_VR_LITTLE_ENDIAN,
    ts.RLE_LOSSLESS,
    ts.JPEG_LOSSLESS,
    ts.JPEG_LOSSLESS_SV1,
    ts.JPEG_LS_LOSSLESS,
    ts.JPEG_2000_LOSSLESS,
    ts.HTJ2K_LOSSLESS,
    ts.HTJ2K_LOSSLESS_RPCL,
]
LOSSY_TARGETS = [ts.JPEG_LS_NEAR_LOSSLESS, ts.JPEG_2000, ts.HTJ2K, ts.JPEG_BASELINE]
FACTORY_SOURCES = [str(s) for s in factory.ALL_SYNTAXES]
# every syntax this module writes, but JPEG Baseline (8-bit only: see the 8-bit tests)
WRITTEN_SOURCES = [s for s in LOSSLESS_TARGETS + LOSSY_TARGETS if s not in [*FACTORY_SOURCES, ts.JPEG_BASELINE]]
LOSSY_SOURCES = {ts.JPEG_LS_NEAR_LOSSLESS, ts.JPEG_2000, ts.HTJ2K, ts.JPEG_BASELINE}


def _read(data: bytes) -> Dataset:
    return dcmread(BytesIO(data))


def _multi(value: Any) -> list[str]:
    """The values of a possibly multi-valued attribute."""
    return [str(v) for v in value] if isinstance(value, MultiValue) else [str(value)]


def _psnr(a: np.ndarray, b: np.ndarray, peak: float) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(peak**2 / mse)


def _check(result: np.ndarray, reference: np.ndarray, target: str, bits_stored: int) -> None:
    """Lossless: equal. Lossy: the bound of the target's setting."""
    assert result.shape == reference.shape
    if target in LOSSLESS_TARGETS:
        assert np.array_equal(result, reference), f"{target}: pixels differ"
        return
    diff = int(np.abs(result.astype(np.int64) - reference.astype(np.int64)).max())
    psnr = _psnr(result, reference, 2**bits_stored - 1)
    if target == ts.JPEG_LS_NEAR_LOSSLESS:  # the NEAR parameter bounds every sample's error
        assert diff <= codecs.JLS_NEAR, f"JPEG-LS NEAR={codecs.JLS_NEAR} gave an error of {diff}"
    elif target == ts.JPEG_BASELINE:
        assert psnr >= 30.0, f"{target}: PSNR {psnr:.1f} dB (max abs diff {diff})"
    else:  # JPEG 2000 to 60 dB, HTJ2K OpenJPH's default
        assert psnr >= 50.0, f"{target}: PSNR {psnr:.1f} dB (max abs diff {diff})"


# --- sources --------------------------------------------------------------------------


def _ct(syntax: str, **kw: Any) -> bytes:
    """A 12-bit CT (in 16 bits), FRAMES frames, in ``syntax``; written by the factory or by us."""
    if syntax in FACTORY_SOURCES:
        ds = factory.make_instance(rows=SIZE, columns=SIZE, number_of_frames=FRAMES, transfer_syntax=syntax, **kw)
        return factory.part10_bytes(ds)
    base = factory.make_instance(rows=SIZE, columns=SIZE, number_of_frames=FRAMES, **kw)
    return t.transcode_instance(factory.part10_bytes(base), syntax)


_SOURCES: dict[str, bytes] = {}


def ct_source(syntax: str) -> bytes:
    if syntax not in _SOURCES:
        _SOURCES[syntax] = _ct(syntax, bulk_bytes=64)
    return _SOURCES[syntax]


def _image(
    rows: int,
    columns: int,
    arr: np.ndarray,
    *,
    samples: int = 1,
    bits: int = 8,
    stored: int | None = None,
    signed: bool = False,
    photometric: str = "MONOCHROME2",
    frames: int = 1,
    syntax: str = ExplicitVRLittleEndian,
) -> bytes:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[str(arr.sum()), photometric])
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.PatientID = "TRANSCODE"
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = photometric
    if samples > 1:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = bits
    ds.BitsStored = stored or bits
    ds.HighBit = (stored or bits) - 1
    ds.PixelRepresentation = int(signed)
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
    ds["PixelData"].VR = "OB" if bits == 8 else "OW"
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _smooth(shape: tuple[int, ...], high: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    steps = rng.integers(-3, 4, size=shape)
    walk = np.cumsum(np.cumsum(steps, axis=-1), axis=-2) if len(shape) < 4 else np.cumsum(steps, axis=-2)
    lo, hi = walk.min(), walk.max()
    return ((walk - lo) * high // max(hi - lo, 1)).astype(np.int64)


def gray8(frames: int = 2) -> bytes:
    arr = _smooth((frames, 40, 40), 255, 1).astype(np.uint8)
    return _image(40, 40, arr, frames=frames)


def rgb8() -> bytes:
    arr = _smooth((2, 40, 40, 3), 255, 2).astype(np.uint8)
    return _image(40, 40, arr, samples=3, photometric="RGB", frames=2)


def signed_ct() -> bytes:
    arr = (_smooth((2, 40, 40), 4000, 3) - 2000).astype(np.int16)  # HU-like, -2000..2000
    return _image(40, 40, arr, bits=16, stored=12, signed=True, frames=2)


def _unchanged_elements(before: Dataset, after: Dataset) -> None:
    """Every element but Pixel Data and what transcoding must change is kept."""
    changed = {
        0x7FE00010,
        0x7FE00001,
        0x7FE00002,
        0x00280004,  # PhotometricInterpretation
        0x00280006,  # PlanarConfiguration
        0x00282110,  # LossyImageCompression
        0x00282112,  # LossyImageCompressionRatio
        0x00282114,  # LossyImageCompressionMethod
    }
    old = {e.tag: e.value for e in before if e.tag not in changed}
    new = {e.tag: e.value for e in after if e.tag not in changed}
    assert new == old


# --- the matrix -----------------------------------------------------------------------


def test_the_codecs_of_the_codecs_extra_are_found() -> None:
    assert codecs.encodable_transfer_syntaxes() == {*LOSSLESS_TARGETS, *LOSSY_TARGETS}


@pytest.mark.parametrize("target", LOSSLESS_TARGETS + LOSSY_TARGETS)
@pytest.mark.parametrize("source", FACTORY_SOURCES + WRITTEN_SOURCES)
def test_instance_pairs_12_bit_ct(source: str, target: str) -> None:
    data = ct_source(source)
    original = _read(data)
    pixels = codecs.PixelDescription.from_dataset(original)
    reason = t.can_transcode(source, target, pixels)
    if target == ts.JPEG_BASELINE:
        assert reason is not None and "8-bit samples only" in reason
        with pytest.raises(NotAcceptable, match="8-bit samples only"):
            t.transcode_instance(data, target)
        return
    assert reason is None
    out = t.transcode_instance(data, target)
    if source == target:
        assert out is data
        return
    result = _read(out)
    assert result.file_meta.TransferSyntaxUID == target
    assert result.SOPInstanceUID == original.SOPInstanceUID
    assert int(result.NumberOfFrames) == FRAMES
    _check(result.pixel_array, original.pixel_array, target, 12)
    _unchanged_elements(original, result)
    if target in LOSSY_TARGETS:
        assert result.LossyImageCompression == "01"
        methods = _multi(result.LossyImageCompressionMethod)
        expected = {ts.JPEG_LS_NEAR_LOSSLESS: "ISO_14495_1", ts.JPEG_2000: "ISO_15444_1", ts.HTJ2K: "ISO_15444_15"}
        assert methods[-1] == expected[target]
        ratios = _multi(result.LossyImageCompressionRatio)
        assert len(ratios) == len(methods) and float(ratios[-1]) > 1
    elif source in LOSSY_SOURCES:
        assert result.LossyImageCompression == "01"  # once lossy, always lossy
    else:
        assert "LossyImageCompression" not in result
    if target != ts.EXPLICIT_VR_LITTLE_ENDIAN:
        fragments = list(generate_frames(result.PixelData, number_of_frames=FRAMES))
        assert len(fragments) == FRAMES


@pytest.mark.parametrize("target", LOSSLESS_TARGETS + LOSSY_TARGETS)
@pytest.mark.parametrize("source", FACTORY_SOURCES + WRITTEN_SOURCES)
def test_frame_pairs_12_bit_ct(source: str, target: str) -> None:
    """The /frames path: frames as read_frames cuts them, re-encoded one by one."""
    data = ct_source(source)
    original = _read(data)
    pixels = codecs.PixelDescription.from_dataset(original)
    found = read_frames(data, [3, 1])
    if target == ts.JPEG_BASELINE:
        with pytest.raises(NotAcceptable, match="8-bit"):
            t.transcode_frames(found.frames, pixels, found.transfer_syntax_uid, target)
        return
    encoded = t.transcode_frames(found.frames, pixels, found.transfer_syntax_uid, target)
    reference = original.pixel_array
    decoded = pixels.decoded()
    for frame, number in zip(encoded, [3, 1], strict=True):
        back = t.decode_frame(frame, decoded, target)
        _check(back, reference[number - 1], target, 12)


def _j2k_markers(codestream: bytes) -> tuple[int, int, bool]:
    """(progression order, decomposition levels, TLM present) of a JPEG 2000 main header."""
    cod = codestream.index(b"\xff\x52")
    sot = codestream.index(b"\xff\x90")
    return codestream[cod + 5], codestream[cod + 9], b"\xff\x55" in codestream[:sot]


@pytest.mark.parametrize(("rows", "columns"), [(48, 48), (16, 4100)])
def test_htj2k_rpcl_codestream(rows: int, columns: int) -> None:
    """PS3.5 §10.18: RPCL progression, TLM markers, a base resolution of at most 64."""
    pixels = codecs.PixelDescription(rows, columns, bits_stored=12)
    frame = (np.arange(rows * columns, dtype=np.uint16) % 4096).reshape(rows, columns)
    (stream,) = t.transcode_frames([frame.tobytes()], pixels, ts.EXPLICIT_VR_LITTLE_ENDIAN, ts.HTJ2K_LOSSLESS_RPCL)
    progression, levels, tlm = _j2k_markers(stream)
    assert progression == 2  # RPCL
    assert tlm
    assert -(-max(rows, columns) // 2**levels) <= 64
    assert np.array_equal(t.decode_frame(stream, pixels, ts.HTJ2K_LOSSLESS_RPCL), frame)


def test_lossy_after_lossy_appends_ratio_and_method() -> None:
    once = _read(ct_source(ts.JPEG_2000))
    twice = _read(t.transcode_instance(ct_source(ts.JPEG_2000), ts.HTJ2K))
    assert _multi(twice.LossyImageCompressionMethod) == ["ISO_15444_1", "ISO_15444_15"]
    assert _multi(twice.LossyImageCompressionRatio)[0] == _multi(once.LossyImageCompressionRatio)[0]
    assert len(_multi(twice.LossyImageCompressionRatio)) == 2


EIGHT_BIT_SOURCES = [
    ts.EXPLICIT_VR_LITTLE_ENDIAN,
    ts.RLE_LOSSLESS,
    ts.JPEG_LOSSLESS_SV1,
    ts.JPEG_LS_LOSSLESS,
    ts.JPEG_2000_LOSSLESS,
    ts.HTJ2K_LOSSLESS,
    ts.JPEG_BASELINE,
]


@pytest.mark.parametrize("target", LOSSLESS_TARGETS + LOSSY_TARGETS)
@pytest.mark.parametrize("source", EIGHT_BIT_SOURCES)
def test_8_bit_gray(source: str, target: str) -> None:
    data = t.transcode_instance(gray8(), source)
    original = _read(data)
    result = _read(t.transcode_instance(data, target))
    assert result.file_meta.TransferSyntaxUID == target
    assert result.PhotometricInterpretation == "MONOCHROME2"
    _check(result.pixel_array, original.pixel_array, target, 8)
    if target == ts.JPEG_BASELINE and source != target:
        assert _multi(result.LossyImageCompressionMethod)[-1] == "ISO_10918_1"


@pytest.mark.parametrize("target", LOSSLESS_TARGETS + LOSSY_TARGETS)
@pytest.mark.parametrize("source", EIGHT_BIT_SOURCES)
def test_8_bit_rgb(source: str, target: str) -> None:
    data = t.transcode_instance(rgb8(), source)
    original = _read(data)
    result = _read(t.transcode_instance(data, target))
    expected_photometric = "YBR_FULL_422" if target == ts.JPEG_BASELINE else "RGB"
    assert result.PhotometricInterpretation == expected_photometric
    assert result.PlanarConfiguration == 0
    _check(result.pixel_array, original.pixel_array, target, 8)  # pydicom decodes both as RGB
    if source == ts.JPEG_BASELINE:
        assert result.LossyImageCompression == "01"  # decoded YBR_FULL_422 is written as RGB


@pytest.mark.parametrize("target", LOSSLESS_TARGETS + LOSSY_TARGETS)
@pytest.mark.parametrize("source", [ts.EXPLICIT_VR_LITTLE_ENDIAN, ts.RLE_LOSSLESS, ts.JPEG_BASELINE])
def test_rgb_frames(source: str, target: str) -> None:
    data = t.transcode_instance(rgb8(), source)
    original = _read(data)
    pixels = codecs.PixelDescription.from_dataset(original)
    assert pixels is not None
    found = read_frames(data, [2])
    (frame,) = t.transcode_frames(found.frames, pixels, found.transfer_syntax_uid, target)
    encoded = pixels.decoded()
    if target == ts.JPEG_BASELINE:  # color JPEG Baseline is YCbCr, JFIF
        encoded = replace(encoded, photometric_interpretation="YBR_FULL_422")
    _check(t.decode_frame(frame, encoded, target), original.pixel_array[1], target, 8)


@pytest.mark.parametrize("target", [s for s in LOSSLESS_TARGETS + LOSSY_TARGETS if s != ts.JPEG_BASELINE])
def test_signed_pixels(target: str) -> None:
    data = signed_ct()
    original = _read(data)
    pixels = codecs.PixelDescription.from_dataset(original)
    reason = t.can_transcode(ts.EXPLICIT_VR_LITTLE_ENDIAN, target, pixels)
    if target == ts.JPEG_LS_NEAR_LOSSLESS:
        assert reason is not None and "signed" in reason
        return
    assert reason is None
    result = _read(t.transcode_instance(data, target))
    assert result.pixel_array.dtype.kind == "i"
    assert original.pixel_array.min() < 0
    _check(result.pixel_array, original.pixel_array, target, 12)


def test_big_endian_other_words_are_swapped() -> None:
    words = np.array([1, 2, 0x1234, 65535], dtype=">u2").tobytes()
    ds = factory.make_instance(rows=SIZE, columns=SIZE, transfer_syntax=ExplicitVRBigEndian)
    ds.add_new(0x00091010, "OW", words)  # an OW element besides Pixel Data
    ds.add_new(0x00090010, "LO", "DICOMCLOUD TEST")
    data = factory.part10_bytes(ds)
    result = _read(t.transcode_instance(data, ts.EXPLICIT_VR_LITTLE_ENDIAN))
    assert result[0x00091010].value == np.array([1, 2, 0x1234, 65535], dtype="<u2").tobytes()
    assert np.array_equal(result.pixel_array, _read(data).pixel_array)
    assert result.Rows == SIZE


@pytest.mark.parametrize("source", [ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian])
def test_native_to_explicit_little_endian_keeps_everything(source: str) -> None:
    data = factory.part10_bytes(
        factory.make_instance(rows=SIZE, columns=SIZE, number_of_frames=2, transfer_syntax=source, bulk_bytes=100)
    )
    original = _read(data)
    result = _read(t.transcode_instance(data, ts.EXPLICIT_VR_LITTLE_ENDIAN))
    assert result.file_meta.TransferSyntaxUID == ts.EXPLICIT_VR_LITTLE_ENDIAN
    assert np.array_equal(result.pixel_array, original.pixel_array)
    _unchanged_elements(original, result)


def test_an_instance_without_pixel_data_only_changes_its_syntax() -> None:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.PatientID = "SR"
    ds.ContentSequence = [Dataset()]
    ds.ContentSequence[0].TextValue = "no pixels here"
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    for target in (ts.EXPLICIT_VR_LITTLE_ENDIAN, ts.JPEG_LS_LOSSLESS, ts.HTJ2K):
        assert t.can_transcode(ImplicitVRLittleEndian, target, None) is None
        result = _read(t.transcode_instance(out.getvalue(), target))
        assert result.file_meta.TransferSyntaxUID == target
        assert result.ContentSequence[0].TextValue == "no pixels here"
        assert "PixelData" not in result


# --- refusals and errors --------------------------------------------------------------

CT = codecs.PixelDescription(512, 512, bits_allocated=16, bits_stored=12)


@pytest.mark.parametrize(
    ("source", "target", "pixels", "reason"),
    [
        (JPEGLSLossless, ts.JPEG_BASELINE, CT, "8-bit samples only; this instance has BitsStored 12"),
        (JPEGLSLossless, ImplicitVRLittleEndian, CT, "shall not be used with DICOM web services"),
        (JPEGLSLossless, ExplicitVRBigEndian, CT, "shall not be used with DICOM web services"),
        (JPEGLSLossless, DeflatedExplicitVRLittleEndian, CT, "is not supported"),
        (JPEGLSLossless, "1.2.840.10008.1.2.4.92", CT, "is not supported"),
        (JPEGLSLossless, "1.2.3.4", CT, "transcoding to 1.2.3.4 is not supported"),
        ("1.2.840.10008.1.2.4.102", ExplicitVRLittleEndian, CT, "no decoder for MPEG-4 AVC/H.264"),
        ("1.2.840.10008.1.2.4.110", RLELossless, CT, "no decoder for"),
        (
            ExplicitVRLittleEndian,
            ts.JPEG_2000,
            codecs.PixelDescription(8, 8, bits_allocated=8, bits_stored=8, photometric_interpretation="PALETTE COLOR"),
            "lossy and would change PALETTE COLOR indices",
        ),
        (ExplicitVRLittleEndian, RLELossless, codecs.PixelDescription(8, 8, bits_allocated=32, bits_stored=32), "32"),
        (
            ExplicitVRLittleEndian,
            JPEG2000Lossless,
            codecs.PixelDescription(8, 8, samples_per_pixel=4),
            "SamplesPerPixel 4",
        ),
        (
            JPEG2000Lossless,
            ExplicitVRLittleEndian,
            codecs.PixelDescription(8192, 8192, bits_allocated=16, number_of_frames=40),
            "too long for Explicit VR Little Endian",
        ),
    ],
)
def test_refusals_say_why(source: str, target: str, pixels: codecs.PixelDescription, reason: str) -> None:
    got = t.can_transcode(source, target, pixels)
    assert got is not None and reason in got, got


def test_no_encoder_installed_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(codecs.TARGETS, ts.HTJ2K_LOSSLESS)
    reason = t.can_transcode(ExplicitVRLittleEndian, ts.HTJ2K_LOSSLESS, CT)
    assert reason is not None and reason.startswith("no encoder for High-Throughput JPEG 2000")


def _corrupt_codestream(data: bytes) -> bytes:
    ds = _read(data)
    frames = list(generate_frames(ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames", 1))))
    frames[1] = frames[1][:4] + bytes(range(256)) * 2  # a header, then noise, no end marker
    ds.PixelData = encapsulate(frames)
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.mark.parametrize("source", [JPEGLSLossless, JPEG2000Lossless, ts.JPEG_LOSSLESS_SV1, ts.HTJ2K_LOSSLESS])
def test_corrupt_compressed_data_is_a_clear_error(source: str) -> None:
    data = _corrupt_codestream(ct_source(source))
    with pytest.raises(MalformedDicom, match="cannot be decoded") as caught:
        t.transcode_instance(data, ts.EXPLICIT_VR_LITTLE_ENDIAN)
    assert http_status(caught.value) == 400
    pixels = codecs.PixelDescription.from_dataset(_read(data))
    assert pixels is not None
    found = read_frames(data, [2])
    with pytest.raises(MalformedDicom, match="a frame cannot be decoded"):
        t.transcode_frames(found.frames, pixels, source, ts.EXPLICIT_VR_LITTLE_ENDIAN)


def test_garbage_is_malformed() -> None:
    with pytest.raises(MalformedDicom, match="unreadable DICOM"):
        t.transcode_instance(b"\x00" * 300, ts.EXPLICIT_VR_LITTLE_ENDIAN)
    with pytest.raises(MalformedDicom):
        t.decode_frame(b"\xff\xd8 not a JPEG", CT, ts.JPEG_LOSSLESS_SV1)


def test_encoder_failure_is_a_server_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(frame: np.ndarray, px: codecs.PixelDescription) -> tuple[bytes, str]:
        raise RuntimeError("codec exploded")

    monkeypatch.setitem(codecs.TARGETS, ts.RLE_LOSSLESS, codecs.Target(ts.RLE_LOSSLESS, broken, 1, 16))
    with pytest.raises(DicomCloudError, match=r"encoding a frame as RLE Lossless .* failed: codec exploded") as caught:
        t.transcode_instance(ct_source(JPEGLSLossless), ts.RLE_LOSSLESS)
    assert http_status(caught.value) == 500


def test_ct_description_from_a_header() -> None:
    ds = factory.make_instance(rows=64, columns=32, number_of_frames=5, sop_class_uid=CTImageStorage)
    pixels = codecs.PixelDescription.from_dataset(ds)
    assert pixels == codecs.PixelDescription(64, 32, 1, 16, 12, 0, "MONOCHROME2", 0, 5)
    assert pixels.native_frame_length == 64 * 32 * 2
    assert codecs.PixelDescription.from_dataset(Dataset()) is None
