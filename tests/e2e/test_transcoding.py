"""WADO-RS transcoding on request (PS3.18 §8.7.3), driven by dicomweb-client and httpx.

Instances go in by STOW-RS as the factory wrote them; every expectation comes
from pydicom: its decoding of the file that was sent, and of what came back
(returned frames are decoded with pydicom's own decoders). Lossless syntaxes
must give the very same pixels, lossy ones pixels within a bound.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import (
    JPEG2000,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from tests import factory
from tests.e2e.conftest import (
    DICOM,
    DICOM_JSON,
    OCTETS,
    Archive,
    Sent,
    as_sent,
    content_type_params,
    get_parts,
    parse_multipart,
    stow_body,
    wait_for_instances,
)

pytestmark = pytest.mark.e2e

SIZE = 64
HTJ2K_LOSSLESS = "1.2.840.10008.1.2.4.201"
HTJ2K_RPCL = "1.2.840.10008.1.2.4.202"
HTJ2K = "1.2.840.10008.1.2.4.203"
JPEG_LOSSLESS = "1.2.840.10008.1.2.4.57"
LOSSY = {JPEG2000, JPEGLSNearLossless, HTJ2K, JPEGBaseline8Bit}
STUDY = {"PatientID": "TRANSCODE-1", "AccessionNumber": "TCACC1", "StudyDate": "20240505"}


def _gray8() -> Dataset:
    """An 8-bit instance (JPEG Baseline needs 8-bit samples)."""
    ds = factory.make_instance(**STUDY, SeriesNumber=2, InstanceNumber=1, rows=SIZE, columns=SIZE, Modality="OT")
    arr = (factory.pixel_array(SIZE, SIZE, seed=7) >> 4).astype(np.uint8)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    for keyword in ("RescaleIntercept", "RescaleSlope", "RescaleType", "WindowCenter", "WindowWidth"):
        del ds[keyword]
    ds.PixelData = arr.tobytes()
    ds["PixelData"].VR = "OB"
    return ds


def _report() -> Dataset:
    """A Basic Text SR: no Pixel Data at all."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    ds.file_meta.MediaStorageSOPInstanceUID = factory.uid("sr", STUDY["PatientID"])
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = factory.uid("study", STUDY["PatientID"], STUDY["AccessionNumber"], STUDY["StudyDate"])
    ds.SeriesInstanceUID = factory.uid("sr-series", STUDY["PatientID"])
    ds.PatientID = STUDY["PatientID"]
    ds.PatientName = "Trans^Code"
    ds.StudyDate = STUDY["StudyDate"]
    ds.AccessionNumber = STUDY["AccessionNumber"]
    ds.Modality = "SR"
    ds.SeriesNumber = 9
    ds.InstanceNumber = 1
    ds.ContentSequence = [Dataset()]
    ds.ContentSequence[0].TextValue = "no pixels"
    ds.preamble = b"\x00" * 128
    return ds


def _datasets() -> list[Dataset]:
    common = {**STUDY, "rows": SIZE, "columns": SIZE, "SeriesNumber": 1}
    return [
        factory.make_instance(**common, InstanceNumber=1, number_of_frames=2),  # Explicit VR LE
        factory.make_instance(**common, InstanceNumber=2, number_of_frames=3, transfer_syntax=JPEGLSLossless),
        factory.make_instance(**common, InstanceNumber=3, transfer_syntax=JPEG2000Lossless),
        factory.make_instance(**common, InstanceNumber=4, number_of_frames=2, transfer_syntax=RLELossless),
        factory.make_instance(**common, InstanceNumber=5, transfer_syntax=ImplicitVRLittleEndian),
        _gray8(),
        _report(),
    ]


@pytest.fixture(scope="module")
def sent(archive: Archive) -> list[Sent]:
    result = [as_sent(ds) for ds in _datasets()]
    body, content_type = stow_body(*(s.data for s in result))
    with archive.http() as http:
        r = http.post(
            f"{archive.url}/studies", content=body, headers={"Content-Type": content_type, "Accept": DICOM_JSON}
        )
        assert r.status_code == 200, f"{r.status_code}: {r.text[:500]}"
        wait_for_instances(http, archive.url, [str(s.ds.SOPInstanceUID) for s in result])
    return result


def pick(sent: list[Sent], syntax: str, bits: int = 16) -> Sent:
    return next(s for s in sent if s.syntax == syntax and "PixelData" in s.ds and s.ds.BitsAllocated == bits)


def _check_pixels(got: np.ndarray, expected: np.ndarray, syntax: str, peak: int = 4095) -> None:
    assert got.shape == expected.shape
    if syntax not in LOSSY:
        assert np.array_equal(got, expected), f"{syntax}: pixels differ"
        return
    diff = np.abs(got.astype(np.int64) - expected.astype(np.int64))
    mse = float(np.mean(diff.astype(np.float64) ** 2))
    psnr = float("inf") if mse == 0 else 10 * np.log10(peak**2 / mse)
    assert psnr >= (30 if syntax == JPEGBaseline8Bit else 50), f"{syntax}: PSNR {psnr:.1f} dB, max {diff.max()}"


def _decode_frame(frame: bytes, s: Sent, syntax: str) -> np.ndarray:
    """One returned frame, decoded by pydicom alone."""
    ds = s.ds
    options: dict[str, Any] = {
        "rows": ds.Rows,
        "columns": ds.Columns,
        "samples_per_pixel": ds.SamplesPerPixel,
        "bits_allocated": ds.BitsAllocated,
        "bits_stored": ds.BitsStored,
        "pixel_representation": ds.PixelRepresentation,
        "photometric_interpretation": ds.PhotometricInterpretation,
        "number_of_frames": 1,
        "pixel_keyword": "PixelData",
    }
    source = frame if syntax == ExplicitVRLittleEndian else encapsulate([frame])
    arr, _meta = get_decoder(syntax).as_array(source, **options)
    return np.asarray(arr)


def _frames_of(s: Sent) -> np.ndarray:
    arr = s.ds.pixel_array
    return arr if int(s.ds.get("NumberOfFrames", 1) or 1) > 1 else arr[None]


# --- instances ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [
        ExplicitVRLittleEndian,
        RLELossless,
        JPEGLosslessSV1,
        JPEG_LOSSLESS,
        JPEGLSLossless,
        JPEGLSNearLossless,
        JPEG2000Lossless,
        JPEG2000,
    ],
)
def test_retrieve_instance_in_another_syntax_with_dicomweb_client(
    archive: Archive, sent: list[Sent], target: str
) -> None:
    client = archive.client()
    for source in (ExplicitVRLittleEndian, JPEGLSLossless, JPEG2000Lossless, RLELossless, ImplicitVRLittleEndian):
        s = pick(sent, source)
        ds = client.retrieve_instance(*s.uids, media_types=(("application/dicom", target),))
        assert ds.file_meta.TransferSyntaxUID == target, f"{source} -> {target}"
        assert ds.SOPInstanceUID == s.ds.SOPInstanceUID
        _check_pixels(ds.pixel_array, s.ds.pixel_array, target)
        if target in LOSSY:
            assert ds.LossyImageCompression == "01"


@pytest.mark.parametrize("target", [HTJ2K_LOSSLESS, HTJ2K_RPCL, HTJ2K])
def test_retrieve_instance_as_htj2k(archive: Archive, sent: list[Sent], target: str) -> None:
    """dicomweb-client does not know the HTJ2K UIDs yet: plain httpx."""
    s = pick(sent, JPEGLSLossless)
    with archive.http() as http:
        parts = get_parts(http, archive.url + s.resource, f"{DICOM}; transfer-syntax={target}")
    assert len(parts) == 1
    media, params = content_type_params(parts[0].headers["content-type"])
    assert (media, params.get("transfer-syntax")) == ("application/dicom", target)
    ds = factory.read(parts[0].content)
    assert ds.file_meta.TransferSyntaxUID == target
    _check_pixels(ds.pixel_array, s.ds.pixel_array, target)


def test_jpeg_baseline_for_8_bit_and_406_for_12_bit(archive: Archive, sent: list[Sent]) -> None:
    client = archive.client()
    gray = pick(sent, ExplicitVRLittleEndian, bits=8)
    ds = client.retrieve_instance(*gray.uids, media_types=(("application/dicom", JPEGBaseline8Bit),))
    assert ds.file_meta.TransferSyntaxUID == JPEGBaseline8Bit
    _check_pixels(ds.pixel_array, gray.ds.pixel_array, JPEGBaseline8Bit, peak=255)
    ct = pick(sent, JPEGLSLossless)
    with archive.http() as http:
        r = http.get(archive.url + ct.resource, headers={"Accept": f"{DICOM}; transfer-syntax={JPEGBaseline8Bit}"})
    assert r.status_code == 406, r.text
    assert "8-bit samples only; this instance has BitsStored 12" in r.text
    assert "8-bit" in r.headers["warning"]


def test_default_syntax_is_explicit_vr_little_endian(archive: Archive, sent: list[Sent]) -> None:
    """No transfer-syntax parameter: Explicit VR Little Endian (PS3.18 §8.7.3.4, Table 8.7.3-2)."""
    client = archive.client()
    with archive.http() as http:
        for s in sent:
            for accept in (DICOM, "*/*", None):
                headers = {"Accept": accept} if accept else {}
                r = http.get(archive.url + s.resource, headers=headers)
                assert r.status_code == 200, r.text
                (part,) = parse_multipart(r)
                _media, params = content_type_params(part.headers["content-type"])
                assert params.get("transfer-syntax") == ExplicitVRLittleEndian, (s.syntax, accept)
                ds = factory.read(part.content)
                assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
                if "PixelData" in s.ds:
                    assert np.array_equal(ds.pixel_array, s.ds.pixel_array), s.syntax
                if s.syntax == ExplicitVRLittleEndian:
                    assert part.content == s.data  # nothing to do: the stored bytes
            single = http.get(archive.url + s.resource, headers={"Accept": "application/dicom"})
            assert single.headers["content-type"] == f"application/dicom; transfer-syntax={ExplicitVRLittleEndian}"
            star = get_parts(http, archive.url + s.resource, f"{DICOM}; transfer-syntax=*")
            assert star[0].content == s.data  # "*": as stored, byte for byte
            assert content_type_params(star[0].headers["content-type"])[1]["transfer-syntax"] == s.syntax
    jls = pick(sent, JPEGLSLossless)
    ds = client.retrieve_instance(*jls.uids)  # dicomweb-client asks for transfer-syntax=* by default
    assert ds.file_meta.TransferSyntaxUID == JPEGLSLossless
    ds = client.retrieve_instance(*jls.uids, media_types=("application/dicom",))  # no syntax named
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian


def test_retrieve_study_and_series_in_jpeg_ls(archive: Archive, sent: list[Sent]) -> None:
    """A whole study in one syntax, streamed part by part; the SR only changes its label."""
    study = str(sent[0].ds.StudyInstanceUID)
    by_sop = {str(s.ds.SOPInstanceUID): s for s in sent}
    with archive.http() as http:
        parts = get_parts(http, f"{archive.url}/studies/{study}", f"{DICOM}; transfer-syntax={JPEGLSLossless}")
    assert len(parts) == len(sent)
    for part in parts:
        assert content_type_params(part.headers["content-type"])[1]["transfer-syntax"] == JPEGLSLossless
        ds = factory.read(part.content)
        s = by_sop[str(ds.SOPInstanceUID)]
        assert ds.file_meta.TransferSyntaxUID == JPEGLSLossless
        if "PixelData" in s.ds:
            assert np.array_equal(ds.pixel_array, s.ds.pixel_array), s.syntax
        else:
            assert ds.ContentSequence[0].TextValue == "no pixels"
    series = sent[0].ds.SeriesInstanceUID
    datasets = archive.client().retrieve_series(
        study, str(series), media_types=(("application/dicom", JPEG2000Lossless),)
    )
    members = [s for s in sent if s.ds.SeriesInstanceUID == series]
    assert sorted(d.SOPInstanceUID for d in datasets) == sorted(s.ds.SOPInstanceUID for s in members)
    for d in datasets:
        assert d.file_meta.TransferSyntaxUID == JPEG2000Lossless
        assert np.array_equal(d.pixel_array, by_sop[str(d.SOPInstanceUID)].ds.pixel_array)


def test_preference_order_and_fallback(archive: Archive, sent: list[Sent]) -> None:
    ct = pick(sent, JPEG2000Lossless)
    accept = (
        f"{DICOM}; transfer-syntax={JPEGBaseline8Bit}, "  # impossible for 12 bits
        f"{DICOM}; transfer-syntax={RLELossless}; q=0.8, "
        f"{DICOM}; transfer-syntax=*; q=0.1"
    )
    with archive.http() as http:
        (part,) = get_parts(http, archive.url + ct.resource, accept)
        assert content_type_params(part.headers["content-type"])[1]["transfer-syntax"] == RLELossless
        both = f"{DICOM}; transfer-syntax={JPEGBaseline8Bit}, {DICOM}; transfer-syntax=*; q=0.5"
        (part,) = get_parts(http, archive.url + ct.resource, both)
        assert part.content == ct.data


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        (ImplicitVRLittleEndian, "shall not be used with DICOM web services"),
        ("1.2.840.10008.1.2.4.92", "is not supported"),
        (JPEGBaseline8Bit, "8-bit samples only"),
    ],
)
def test_not_acceptable_says_why(archive: Archive, sent: list[Sent], target: str, reason: str) -> None:
    ct = pick(sent, ExplicitVRLittleEndian)
    study = ct.ds.StudyInstanceUID
    with archive.http() as http:
        for url in (archive.url + ct.resource, f"{archive.url}/studies/{study}"):
            r = http.get(url, headers={"Accept": f"{DICOM}; transfer-syntax={target}"})
            assert r.status_code == 406, (url, r.status_code, r.text[:300])
            assert reason in r.text


# --- frames -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("media_type", "target"),
    [
        ("application/octet-stream", ExplicitVRLittleEndian),
        ("image/jls", JPEGLSLossless),
        ("image/jls", JPEGLSNearLossless),
        ("image/jp2", JPEG2000Lossless),
        ("image/jp2", JPEG2000),
        ("image/jpeg", JPEGLosslessSV1),
        ("image/dicom-rle", RLELossless),
    ],
)
def test_frames_in_another_syntax_with_dicomweb_client(
    archive: Archive, sent: list[Sent], media_type: str, target: str
) -> None:
    client = archive.client()
    for source in (ExplicitVRLittleEndian, JPEGLSLossless, JPEG2000Lossless, RLELossless):
        s = pick(sent, source)
        expected = _frames_of(s)
        numbers = list(range(len(expected), 0, -1))
        got = client.retrieve_instance_frames(*s.uids, frame_numbers=numbers, media_types=((media_type, target),))
        assert len(got) == len(numbers)
        for frame, number in zip(got, numbers, strict=True):
            _check_pixels(_decode_frame(frame, s, target), expected[number - 1], target)


def test_frames_htj2k_and_defaults_with_httpx(archive: Archive, sent: list[Sent]) -> None:
    s = pick(sent, JPEGLSLossless)
    expected = _frames_of(s)
    with archive.http() as http:
        url = f"{archive.url}{s.resource}/frames/1,3"
        for accept, media_type, syntax in [
            ('multipart/related; type="image/jphc"', "image/jphc", HTJ2K_LOSSLESS),  # the type's default
            (f'multipart/related; type="image/jphc"; transfer-syntax={HTJ2K}', "image/jphc", HTJ2K),
            (OCTETS, "application/octet-stream", ExplicitVRLittleEndian),  # Table 8.7.3-4 default
            ('multipart/related; type="image/jls"', "image/jls", JPEGLSLossless),  # stored: as is
        ]:
            parts = get_parts(http, url, accept)
            for part, number in zip(parts, [1, 3], strict=True):
                assert part.headers["content-type"] == f"{media_type}; transfer-syntax={syntax}", accept
                _check_pixels(_decode_frame(part.content, s, syntax), expected[number - 1], syntax)
        single = http.get(f"{archive.url}{s.resource}/frames/2", headers={"Accept": "application/octet-stream"})
        assert single.status_code == 200, single.text
        assert single.headers["content-type"] == f"application/octet-stream; transfer-syntax={ExplicitVRLittleEndian}"
        assert single.content == expected[1].astype("<u2").tobytes()


def test_frames_406_and_bulkdata_decoded(archive: Archive, sent: list[Sent]) -> None:
    s = pick(sent, JPEG2000Lossless)
    with archive.http() as http:
        r = http.get(
            f"{archive.url}{s.resource}/frames/1",
            headers={"Accept": f'multipart/related; type="image/jpeg"; transfer-syntax={JPEGBaseline8Bit}'},
        )
        assert r.status_code == 406
        assert "8-bit samples only" in r.text
        parts = get_parts(http, f"{archive.url}{s.resource}/bulkdata/7FE00010", OCTETS)
        assert [p.content for p in parts] == [f.astype("<u2").tobytes() for f in _frames_of(s)]
        assert content_type_params(parts[0].headers["content-type"])[1]["transfer-syntax"] == ExplicitVRLittleEndian
