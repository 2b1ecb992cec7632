"""The conversion queue's pure parts and the converter with real codecs on real files
(issue 4): which syntaxes are converted and into what, the rendition's name, the
messages, and Convert over a file store and a bus that keeps what is published."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGLSLossless,
)

from dicomcloud.adapters.filesystem import FileBlobStore
from dicomcloud.domain import viewer_syntaxes as vs
from dicomcloud.domain.layout import (
    InstanceKey,
    instance_path,
    is_rendition_name,
    parse_instance_path,
    rendition_path,
)
from dicomcloud.domain.messages import (
    CONVERSION_QUEUE,
    CONVERSION_RESULT_QUEUE,
    ConversionRequested,
    ConversionResult,
    decode,
    encode,
)
from dicomcloud.errors import InvalidInput, InvalidUID
from dicomcloud.ports import BusConsumer, Record
from dicomcloud.settings import load
from dicomcloud.usecases.convert import (
    ConversionFailed,
    Convert,
    Unsupported,
    render_rendition,
    rendition_for,
)
from tests.factory import make_instance, part10_bytes, read
from tests.renditions import corrupt, dcmtk_jpeg, deflated, j2k_part2, j2k_part2_lossy, video

UID_TEXT = st.from_regex(r"[1-9][0-9]{0,5}(\.[1-9][0-9]{0,5}){1,6}", fullmatch=True)


# --- which syntaxes, and into what ------------------------------------------------


def test_default_list_is_what_cornerstone3d_decodes() -> None:
    default = set(vs.DEFAULT_VIEWER_TRANSFER_SYNTAXES)
    decodable = ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.98", "1.2.840.10008.1.2.2"]
    decodable += ["1.2.840.10008.1.2.5", "1.2.840.10008.1.2.8.1"]
    decodable += [f"1.2.840.10008.1.2.4.{n}" for n in (50, 51, 53, 55, 57, 70, 80, 81, 90, 91, 201, 202, 203)]
    decodable += [f"1.2.840.10008.1.2.4.{n}" for n in (110, 111, 112)]
    assert default == set(decodable)
    for converted in ["1.2.840.10008.1.2.1.99"] + [
        f"1.2.840.10008.1.2.4.{n}" for n in (52, 54, 56, 58, 59, 60, 61, 62, 63, 64, 65, 66, 92, 93, 94, 95, 102)
    ]:
        assert vs.needs_conversion(converted, default), converted


def test_targets() -> None:
    image16 = vs.PixelTraits(has_pixels=True, bits_allocated=16, samples_per_pixel=1)
    default = vs.DEFAULT_VIEWER_TRANSFER_SYNTAXES
    assert vs.conversion_target(vs.JPEG_2000_MC_LOSSLESS, image16, default) == JPEGLSLossless
    assert vs.conversion_target("1.2.840.10008.1.2.4.54", image16, default) == JPEGLSLossless
    # a native source is only inflated
    assert vs.conversion_target(DeflatedExplicitVRLittleEndian, image16, default) == ExplicitVRLittleEndian
    # pixels JPEG-LS cannot hold, or none at all: native
    wide = vs.PixelTraits(has_pixels=True, bits_allocated=32)
    assert vs.conversion_target(vs.JPEG_2000_MC_LOSSLESS, wide, default) == ExplicitVRLittleEndian
    assert vs.conversion_target(vs.JPEG_2000_MC, vs.PixelTraits(False), default) == ExplicitVRLittleEndian
    rgb = vs.PixelTraits(has_pixels=True, bits_allocated=8, samples_per_pixel=3)
    assert vs.conversion_target(vs.JPEG_2000_MC, rgb, default) == JPEGLSLossless
    # a viewer without JPEG-LS, or only implicit VR
    assert vs.conversion_target(vs.JPEG_2000_MC, image16, [ExplicitVRLittleEndian]) == ExplicitVRLittleEndian
    assert vs.conversion_target(vs.JPEG_2000_MC, image16, [ImplicitVRLittleEndian]) == ImplicitVRLittleEndian


def test_pixel_traits_from_header() -> None:
    assert vs.PixelTraits.from_dataset(make_instance(rows=16, columns=16)) == vs.PixelTraits(True, 16, 1)
    sr = make_instance(rows=16, columns=16)
    del sr.Rows
    assert not vs.PixelTraits.from_dataset(sr).has_pixels


def test_lossy_marking() -> None:
    assert vs.lossy_image_compression("1.2.840.10008.1.2.4.55", None) == "01"
    assert vs.lossy_image_compression("1.2.840.10008.1.2.4.55", "00") == "01"  # the syntax is lossy
    assert vs.lossy_image_compression(vs.JPEG_2000_MC, None) == "01"
    assert vs.lossy_image_compression(vs.JPEG_2000_MC, "00") is None  # the creator says lossless
    assert vs.lossy_image_compression(vs.JPEG_2000_MC_LOSSLESS, None) is None
    assert vs.lossy_image_compression(DeflatedExplicitVRLittleEndian, None) is None


def test_setting() -> None:
    assert load(env={}).viewer_transfer_syntaxes == vs.DEFAULT_VIEWER_TRANSFER_SYNTAXES
    settings = load(env={"DICOMCLOUD_VIEWER_TRANSFER_SYNTAXES": "1.2.840.10008.1.2.1, 1.2.840.10008.1.2.4.80"})
    assert settings.viewer_transfer_syntaxes == ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.80")
    with pytest.raises(ValueError, match="not a UID"):
        load(env={"DICOMCLOUD_VIEWER_TRANSFER_SYNTAXES": "1.2.840.10008.1.2.1,jpeg"})
    with pytest.raises(ValueError, match="must include Explicit VR Little Endian"):
        load(env={"DICOMCLOUD_VIEWER_TRANSFER_SYNTAXES": "1.2.840.10008.1.2.4.80"})


# --- where a rendition lives ------------------------------------------------------------

KEY = InstanceKey("default", "1.2.3", "1.2.3.4", "1.2.3.4.5")


def test_rendition_path_beside_the_original_and_not_an_instance() -> None:
    path = rendition_path(KEY, JPEGLSLossless)
    assert path == "default/1.2.3/1.2.3.4/1.2.3.4.5.dcm.rendition-1.2.840.10008.1.2.4.80"
    assert path.rsplit("/", 1)[0] == instance_path(KEY).rsplit("/", 1)[0]
    assert is_rendition_name(path.rsplit("/", 1)[1])
    assert not is_rendition_name(instance_path(KEY).rsplit("/", 1)[1])
    assert not path.endswith(".dcm")
    with pytest.raises(InvalidInput):
        parse_instance_path(path)
    with pytest.raises(InvalidUID):
        rendition_path(KEY, "../../etc")


def test_series_listing_ignores_renditions(tmp_path: Path) -> None:
    blobs = FileBlobStore(tmp_path)
    blobs.write_atomic(instance_path(KEY), b"original")
    blobs.write_atomic(rendition_path(KEY, JPEGLSLossless), b"rendition")
    blobs.write_atomic(rendition_path(KEY, ExplicitVRLittleEndian), b"rendition")
    assert blobs.series_instance_uids(KEY.series) == [KEY.sop_instance_uid]


# --- messages ----------------------------------------------------------------------------


@given(sop=UID_TEXT, source=UID_TEXT, target=UID_TEXT, attempt=st.integers(1, 10))
def test_request_round_trip(sop: str, source: str, target: str, attempt: int) -> None:
    request = ConversionRequested("t", "1.2", "1.2.3", sop, f"t/1.2/1.2.3/{sop}.dcm", source, target, attempt, "now")
    assert decode(encode(request)) == request


@given(
    status=st.sampled_from(["success", "retrying", "failed", "unsupported"]),
    error=st.text(max_size=40),
    duration=st.floats(0, 1e6, allow_nan=False),
    reused=st.booleans(),
)
def test_result_round_trip(status: str, error: str, duration: float, reused: bool) -> None:
    result = ConversionResult(
        "t", "1.2", "1.2.3", "1.2.3.4", "1.2.840.10008.1.2.4.92", JPEGLSLossless, status, 2, duration,
        "2024-01-01T00:00:00+00:00", error, "", 0, reused,
    )  # fmt: skip
    assert decode(encode(result)) == result


def test_result_with_an_unknown_status_is_refused() -> None:
    body = encode(ConversionResult("t", "1.2", "1.2.3", "1.2.3.4", "1.2", "1.2", "success", 1, 1.0, "x"))
    with pytest.raises(InvalidInput, match="status"):
        decode(body.replace(b'"success"', b'"done"'))
    with pytest.raises(InvalidInput, match="attempt"):
        decode(body.replace(b'"attempt":1', b'"attempt":0'))


# --- rendering with the real codecs ----------------------------------------------------------


def _render(ds: object, target: str) -> tuple[object, str]:
    data, source = render_rendition(part10_bytes(ds), target)  # type: ignore[arg-type]
    return read(data), source


def test_jpeg2000_part2_to_jpeg_ls_is_lossless() -> None:
    ds, pixels = j2k_part2(rows=64, columns=64)
    out, source = _render(ds, JPEGLSLossless)
    assert source == vs.JPEG_2000_MC_LOSSLESS
    assert out.file_meta.TransferSyntaxUID == JPEGLSLossless  # type: ignore[attr-defined]
    assert np.array_equal(out.pixel_array, pixels)  # type: ignore[attr-defined]
    assert out.SOPInstanceUID == ds.SOPInstanceUID  # type: ignore[attr-defined]
    assert out.get("LossyImageCompression") != "01"  # type: ignore[attr-defined]
    assert out.PatientName == ds.PatientName  # type: ignore[attr-defined]


def test_lossy_source_is_marked() -> None:
    ds, pixels = j2k_part2_lossy(rows=64, columns=64)
    out, _ = _render(ds, JPEGLSLossless)
    assert np.array_equal(out.pixel_array, pixels)  # type: ignore[attr-defined]
    assert out.LossyImageCompression == "01"  # type: ignore[attr-defined]


def test_deflated_to_explicit_vr_little_endian() -> None:
    ds, pixels = deflated(rows=32, columns=32)
    out, _ = _render(ds, ExplicitVRLittleEndian)
    assert out.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian  # type: ignore[attr-defined]
    assert np.array_equal(out.pixel_array, pixels)  # type: ignore[attr-defined]
    assert out.PixelData == ds.PixelData  # type: ignore[attr-defined]


@pytest.mark.parametrize("option", ["+es", "+ep"])
def test_retired_jpeg_processes_from_dcmtk(option: str) -> None:
    ds, dcmtk_pixels = dcmtk_jpeg(make_instance(rows=64, columns=64), option)
    source = str(ds.file_meta.TransferSyntaxUID)
    assert source == {"+es": "1.2.840.10008.1.2.4.53", "+ep": "1.2.840.10008.1.2.4.55"}[option]
    out, _ = _render(ds, JPEGLSLossless)
    assert out.LossyImageCompression == "01"  # type: ignore[attr-defined]
    got = out.pixel_array.astype(np.int32)  # type: ignore[attr-defined]
    # Lossy DCT decoders may round differently by one; pydicom's own decode is matched exactly below.
    assert np.abs(got - dcmtk_pixels.astype(np.int32)).max() <= 1
    as_extended = read(part10_bytes(ds))
    as_extended.file_meta.TransferSyntaxUID = vs.JPEG_EXTENDED
    assert np.array_equal(out.pixel_array, as_extended.pixel_array)  # type: ignore[attr-defined]


def test_corrupt_codestream_fails_with_the_codecs_reason() -> None:
    ds, _ = j2k_part2(rows=64, columns=64)
    with pytest.raises(ConversionFailed, match="Error decoding the J2K data"):
        render_rendition(part10_bytes(corrupt(ds)), JPEGLSLossless)


def test_unsupported() -> None:
    with pytest.raises(Unsupported, match="video"):
        render_rendition(part10_bytes(video(rows=16, columns=16)), JPEGLSLossless)
    with pytest.raises(Unsupported, match="Big Endian"):
        render_rendition(part10_bytes(make_instance(rows=8, columns=8, transfer_syntax=ExplicitVRBigEndian)),
                         ExplicitVRLittleEndian)  # fmt: skip
    with pytest.raises(Unsupported, match="does not write"):
        render_rendition(part10_bytes(make_instance(rows=8, columns=8)), "1.2.840.10008.1.2.4.90")
    with pytest.raises(ConversionFailed, match="unreadable DICOM"):
        render_rendition(b"\x00" * 128 + b"DICM" + b"\x02\x00", JPEGLSLossless)


# --- the use case over a file store and a bus ----------------------------------------------


class KeepingBus:
    def __init__(self) -> None:
        self.published: list[tuple[str, str, bytes]] = []

    async def publish(self, items: Sequence[tuple[str, str, bytes]]) -> None:
        self.published.extend(items)

    def publish_blocking(self, items: Sequence[tuple[str, str, bytes]]) -> None:
        self.published.extend(items)

    def consumer(self, group: str, topics: Sequence[str]) -> BusConsumer:
        raise NotImplementedError

    async def close(self) -> None:
        return None

    def take(self, topic: str) -> list[Record]:
        mine = [(t, k, v) for t, k, v in self.published if t == topic]
        self.published = [(t, k, v) for t, k, v in self.published if t != topic]
        return [Record(t, k, v, 0, i) for i, (t, k, v) in enumerate(mine)]


def _stored(blobs: FileBlobStore, ds: object, target: str, attempt: int = 1) -> tuple[InstanceKey, Record]:
    key = InstanceKey("default", ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)  # type: ignore[attr-defined]
    blobs.write_atomic(instance_path(key), part10_bytes(ds))  # type: ignore[arg-type]
    request = ConversionRequested(
        key.tenant_id, key.study_instance_uid, key.series_instance_uid, key.sop_instance_uid, instance_path(key),
        str(ds.file_meta.TransferSyntaxUID), target, attempt,  # type: ignore[attr-defined]
    )  # fmt: skip
    return key, Record(CONVERSION_QUEUE, key.study_instance_uid, encode(request), 0, 0)


def _results(bus: KeepingBus) -> list[ConversionResult]:
    out = []
    for record in bus.take(CONVERSION_RESULT_QUEUE):
        message = decode(record.value)
        assert isinstance(message, ConversionResult)
        out.append(message)
    return out


async def test_convert_writes_once_and_reuses_on_redelivery(tmp_path: Path) -> None:
    blobs, bus = FileBlobStore(tmp_path), KeepingBus()
    convert = Convert(blobs, bus)
    ds, pixels = j2k_part2(rows=64, columns=64)
    key, record = _stored(blobs, ds, JPEGLSLossless)
    original = blobs.read(instance_path(key))
    assert rendition_for(blobs, key) is None

    assert await convert.handle([record]) == []
    (result,) = _results(bus)
    assert (result.status, result.attempt, result.reused) == ("success", 1, False)
    assert result.source_transfer_syntax_uid == vs.JPEG_2000_MC_LOSSLESS
    assert result.duration_ms > 0 and result.rendition_size > 0
    assert result.rendition_path == rendition_path(key, JPEGLSLossless)
    assert rendition_for(blobs, key) == (result.rendition_path, JPEGLSLossless)
    assert rendition_for(blobs, key, acceptable=[ExplicitVRLittleEndian]) is None
    assert np.array_equal(read(blobs.read(result.rendition_path)).pixel_array, pixels)
    assert blobs.read(instance_path(key)) == original
    written = os.stat(blobs.absolute(result.rendition_path))

    # Redelivered: nothing written again, a "reused" success.
    assert await convert.handle([record, record]) == []
    assert [(r.status, r.reused) for r in _results(bus)] == [("success", True), ("success", True)]
    again = os.stat(blobs.absolute(result.rendition_path))
    assert (again.st_ino, again.st_mtime_ns) == (written.st_ino, written.st_mtime_ns)

    # A newer copy of the instance makes the rendition stale: not offered, and made again.
    blobs.write_atomic(instance_path(key), part10_bytes(ds))
    assert rendition_for(blobs, key) is None
    assert await convert.handle([record]) == []
    assert [(r.status, r.reused) for r in _results(bus)] == [("success", False)]
    assert rendition_for(blobs, key) == (result.rendition_path, JPEGLSLossless)


async def test_failures_are_retried_then_recorded_and_do_not_block(tmp_path: Path) -> None:
    blobs, bus = FileBlobStore(tmp_path), KeepingBus()
    convert = Convert(blobs, bus, max_attempts=3)
    bad, _ = j2k_part2(rows=64, columns=64, PatientID="BAD")
    _, bad_record = _stored(blobs, corrupt(bad), JPEGLSLossless)
    good, _ = deflated(rows=16, columns=16, PatientID="GOOD")
    _, good_record = _stored(blobs, good, ExplicitVRLittleEndian)

    records = [bad_record, good_record]
    seen: list[tuple[str, int]] = []
    for _ in range(5):
        if not records:
            break
        assert await convert.handle(records) == []
        results = _results(bus)
        seen += [(r.status, r.attempt) for r in results]
        records = bus.take(CONVERSION_QUEUE)  # what was published again
    assert seen == [("retrying", 1), ("success", 1), ("retrying", 2), ("failed", 3)]
    assert records == []


async def test_unsupported_is_not_retried_and_nothing_is_read(tmp_path: Path) -> None:
    blobs, bus = FileBlobStore(tmp_path), KeepingBus()
    key, record = _stored(blobs, video(rows=16, columns=16), JPEGLSLossless)
    assert await Convert(blobs, bus).handle([record]) == []
    (result,) = _results(bus)
    assert result.status == "unsupported" and "video" in result.error
    assert bus.published == []
    assert rendition_for(blobs, key) is None


async def test_malformed_requests_are_dead_lettered(tmp_path: Path) -> None:
    blobs, bus = FileBlobStore(tmp_path), KeepingBus()
    _, record = _stored(blobs, deflated(rows=8, columns=8)[0], ExplicitVRLittleEndian)
    request = decode(record.value)
    assert isinstance(request, ConversionRequested)
    elsewhere = Record(CONVERSION_QUEUE, "k", encode(replace(request, file_path="x.dcm")), 0, 1)
    result = ConversionResult("t", "1.2", "1.2.3", "1.2.3.4", "1.2", "1.2", "success", 1, 1.0, "x")
    misplaced = Record(CONVERSION_QUEUE, "k", encode(result), 0, 2)
    garbage = Record(CONVERSION_QUEUE, "k", b"{", 0, 3)
    dead = await Convert(blobs, bus).handle([elsewhere, misplaced, garbage])
    assert [d.record.offset for d in dead] == [1, 2, 3]
    assert "storage path" in dead[0].reason and "does not belong" in dead[1].reason
    assert bus.published == []


async def test_loader_loads_results_and_refuses_requests() -> None:
    from dicomcloud.usecases.load_warehouse import LoadWarehouse

    class Kept:
        def __init__(self) -> None:
            self.conversions: list[ConversionResult] = []

        async def load_image_meta(self, rows: Sequence[object]) -> None:
            assert not rows

        async def load_state_meta(self, rows: Sequence[object]) -> None:
            assert not rows

        async def load_store_log(self, rows: Sequence[object]) -> None:
            assert not rows

        async def load_conversions(self, rows: Sequence[ConversionResult]) -> None:
            self.conversions.extend(rows)

    kept = Kept()
    result = ConversionResult("t", "1.2", "1.2.3", "1.2.3.4", "1.2", "1.2", "failed", 3, 1.0, "x", "why")
    request = ConversionRequested("t", "1.2", "1.2.3", "1.2.3.4", "t/1.2/1.2.3/1.2.3.4.dcm", "1.2", "1.2")
    records = [Record(CONVERSION_RESULT_QUEUE, "k", encode(result), 0, 0), Record(CONVERSION_RESULT_QUEUE, "k",
               encode(request), 0, 1)]  # fmt: skip
    dead = await LoadWarehouse(kept).handle(records)  # type: ignore[arg-type]
    assert kept.conversions == [result]
    assert [d.record.offset for d in dead] == [1] and "does not belong" in dead[0].reason
