"""DICOMweb out (and STOW-RS in), driven by dicomweb-client and plain httpx.

Instances go in over DIMSE (a pynetdicom SCU sending the factory's files as
they are, so the stored data set must equal the sent one byte for byte); every
expectation comes from pydicom reading those same bytes.
"""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    MRImageStorage,
    RLELossless,
)

from dicomcloud.domain.viewer_syntaxes import DEFAULT_VIEWER_TRANSFER_SYNTAXES, RENDITION_SYNTAXES
from tests import factory
from tests.e2e.conftest import (
    DICOM,
    DICOM_JSON,
    OCTETS,
    Archive,
    Sent,
    assert_metadata_matches,
    by_tag,
    c_store_files,
    content_type_params,
    get_parts,
    stow_body,
    value,
    values,
    wait_for_instances,
)

pytestmark = pytest.mark.e2e

SIZE = 64  # rows and columns: small, but enough for JPEG 2000


STUDY_A = {
    "PatientID": "WEB-A",
    "PatientName": "Alpha^Anna",
    "PatientBirthDate": "19650310",
    "PatientSex": "F",
    "StudyDate": "20230405",
    "StudyTime": "093000",
    "AccessionNumber": "WEBACC1",
    "StudyDescription": "CT HEAD",
}
STUDY_B = {
    "PatientID": "WEB-B",
    "PatientName": "Beta^Bob",
    "PatientBirthDate": "19501122",
    "PatientSex": "M",
    "StudyDate": "20221231",
    "StudyTime": "160000",
    "AccessionNumber": "WEBACC2",
    "StudyDescription": "CT ABDOMEN",
}


def _instances() -> list[Dataset]:
    a1 = factory.make_series(3, **STUDY_A, SeriesNumber=1, rows=SIZE, columns=SIZE)
    a1[0] = factory.make_instance(**STUDY_A, SeriesNumber=1, InstanceNumber=1, rows=SIZE, columns=SIZE, bulk_bytes=3000)
    a2 = factory.make_series(
        2,
        **STUDY_A,
        SeriesNumber=2,
        Modality="MR",
        SeriesDescription="T1",
        sop_class_uid=MRImageStorage,
        rows=SIZE,
        columns=SIZE,
        number_of_frames=2,
        transfer_syntax=RLELossless,
    )
    b = [
        factory.make_instance(
            **STUDY_B,
            SeriesNumber=1,
            InstanceNumber=i + 1,
            rows=SIZE,
            columns=SIZE,
            transfer_syntax=ts,
            number_of_frames=frames,
        )
        for i, (ts, frames) in enumerate(
            [
                (ImplicitVRLittleEndian, 1),
                (ExplicitVRBigEndian, 2),
                (DeflatedExplicitVRLittleEndian, 1),
                (JPEGLSLossless, 3),
                (JPEG2000Lossless, 1),
            ]
        )
    ]
    return a1 + a2 + b


@pytest.fixture(scope="module")
def sent(archive: Archive, tmp_path_factory: pytest.TempPathFactory) -> list[Sent]:
    """Send every instance over one association, as files (bytes unchanged)."""
    return c_store_files(archive, _instances(), tmp_path_factory.mktemp("sent"), "WEBTESTSCU")


def pick(sent: list[Sent], syntax: str) -> Sent:
    return next(s for s in sent if s.syntax == syntax)


def le_frames(s: Sent) -> list[bytes]:
    """Native frames as PS3.18 serves application/octet-stream: little endian."""
    arr = s.ds.pixel_array
    frames = arr if arr.ndim == 3 else arr[None]
    return [f.astype("<u2").tobytes() for f in frames]


# --- QIDO-RS ----------------------------------------------------------------------


def test_search_for_studies(archive: Archive, sent: list[Sent]) -> None:
    client = archive.client()
    rows = client.search_for_studies(search_filters={"PatientID": "WEB-A"})
    assert len(rows) == 1
    row = rows[0]
    a = [s for s in sent if s.ds.PatientID == "WEB-A"]
    expected = a[0].ds.to_json_dict()
    for tag in (
        "00100010",
        "00100020",
        "00080020",
        "00080030",
        "00080050",
        "0020000D",
        "00081030",
        "00100030",
        "00100040",
    ):
        assert row.get(tag) == expected[tag], tag
    assert value(row, "00201206") == 2  # NumberOfStudyRelatedSeries
    assert value(row, "00201208") == len(a)  # NumberOfStudyRelatedInstances
    assert set(values(row, "00080061")) == {"CT", "MR"}  # ModalitiesInStudy

    everyone = {value(r, "00100020") for r in client.search_for_studies()}
    assert {"WEB-A", "WEB-B"} <= everyone
    in_2023 = client.search_for_studies(search_filters={"StudyDate": "20230101-20231231"})
    assert [value(r, "0020000D") for r in in_2023] == [a[0].study]
    mr = client.search_for_studies(search_filters={"ModalitiesInStudy": "MR"})
    assert [value(r, "0020000D") for r in mr] == [a[0].study]
    fuzzy = client.search_for_studies(search_filters={"PatientName": "Beta*"})
    assert [value(r, "00100020") for r in fuzzy] == ["WEB-B"]
    assert client.search_for_studies(search_filters={"PatientID": "NOBODY"}) == []


def test_search_for_series(archive: Archive, sent: list[Sent]) -> None:
    client = archive.client()
    study = next(s for s in sent if s.ds.PatientID == "WEB-A").study
    rows = by_tag(client.search_for_series(study_instance_uid=study), "0020000E")
    expected_series = {s.series for s in sent if s.study == study}
    assert set(rows) == expected_series
    for uid, row in rows.items():
        members = [s for s in sent if s.series == uid]
        expected = members[0].ds.to_json_dict()
        for tag in ("00080060", "00200011", "0008103E", "0020000D"):
            assert row.get(tag) == expected[tag], (uid, tag)
        assert value(row, "00201209") == len(members)  # NumberOfSeriesRelatedInstances

    mr = client.search_for_series(search_filters={"Modality": "MR"})
    assert [value(r, "0020000E") for r in mr] == [s.series for s in sent if s.ds.Modality == "MR"][:1]


def test_search_for_instances(archive: Archive, sent: list[Sent]) -> None:
    client = archive.client()
    for study in {s.study for s in sent}:
        rows = by_tag(client.search_for_instances(study_instance_uid=study), "00080018")
        members = {s.sop: s for s in sent if s.study == study}
        assert set(rows) == set(members)
        for uid, row in rows.items():
            expected = members[uid].ds.to_json_dict()
            for tag in ("00080016", "00200013", "0020000E", "0020000D"):
                assert row.get(tag) == expected[tag], (uid, tag)
    one = sent[0]
    rows = client.search_for_instances(
        study_instance_uid=one.study,
        series_instance_uid=one.series,
        search_filters={"InstanceNumber": str(one.ds.InstanceNumber)},
    )
    assert [value(r, "00080018") for r in rows] == [one.sop]
    limited = client.search_for_instances(study_instance_uid=one.study, limit=2)
    assert len(limited) == 2


# --- WADO-RS: instances, series, studies -------------------------------------------


def test_retrieve_instance_with_dicomweb_client(archive: Archive, sent: list[Sent]) -> None:
    client = archive.client()
    for s in sent:
        ds = client.retrieve_instance(s.study, s.series, s.sop, media_types=(("application/dicom", "*"),))
        assert ds.SOPInstanceUID == s.sop
        if s.syntax in DEFAULT_VIEWER_TRANSFER_SYNTAXES:
            assert ds.file_meta.TransferSyntaxUID == s.syntax, s.syntax
        else:  # as stored, or the converter's rendition once it is there (ARCHITECTURE §8)
            assert ds.file_meta.TransferSyntaxUID in (s.syntax, *RENDITION_SYNTAXES), s.syntax
        assert np.array_equal(ds.pixel_array, s.ds.pixel_array), s.syntax
    # dicomweb-client's default asks for transfer-syntax=*: as stored
    native = pick(sent, ExplicitVRLittleEndian)
    ds = client.retrieve_instance(native.study, native.series, native.sop)
    assert np.array_equal(ds.pixel_array, native.ds.pixel_array)
    # no transfer-syntax named: Explicit VR Little Endian whatever is stored (PS3.18 §8.7.3.4)
    for s in sent:
        ds = client.retrieve_instance(s.study, s.series, s.sop, media_types=("application/dicom",))
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian, s.syntax
        assert np.array_equal(ds.pixel_array, s.ds.pixel_array), s.syntax


def assert_original_or_rendition(data: bytes, s: Sent) -> None:
    """``transfer-syntax=*`` gives the stored data set, or — for a syntax viewers cannot
    decode, once the converter made it — the rendition, with the same pixels."""
    ds = factory.read(data)
    if ds.file_meta.TransferSyntaxUID == s.syntax:
        assert factory.dataset_bytes(data) == factory.dataset_bytes(s.data), f"{s.syntax}: data set differs"
        return
    assert s.syntax not in DEFAULT_VIEWER_TRANSFER_SYNTAXES, s.syntax
    assert ds.file_meta.TransferSyntaxUID in RENDITION_SYNTAXES, s.syntax
    assert np.array_equal(ds.pixel_array, s.ds.pixel_array), s.syntax


def test_retrieve_instance_bytes(archive: Archive, sent: list[Sent]) -> None:
    with archive.http() as http:
        for s in sent:
            url = archive.url + s.resource
            # "*" for what viewers decode; else the stored syntax, named (else: the rendition)
            named = "*" if s.syntax in DEFAULT_VIEWER_TRANSFER_SYNTAXES else s.syntax
            parts = get_parts(http, url, DICOM + f"; transfer-syntax={named}")
            assert len(parts) == 1
            media, _params = content_type_params(parts[0].headers["content-type"])
            assert media == "application/dicom"
            body = parts[0].content
            assert factory.dataset_bytes(body) == factory.dataset_bytes(s.data), (
                f"{s.syntax}: stored data set differs from the one sent"
            )
            assert factory.read(body).file_meta.TransferSyntaxUID == s.syntax


def test_retrieve_series_and_study(archive: Archive, sent: list[Sent]) -> None:
    client = archive.client()
    any_ts = (("application/dicom", "*"),)
    for series in {s.series for s in sent}:
        members = {s.sop: s for s in sent if s.series == series}
        study = next(iter(members.values())).study
        datasets = client.retrieve_series(study, series, media_types=any_ts)
        assert sorted(ds.SOPInstanceUID for ds in datasets) == sorted(members)
    with archive.http() as http:
        for study in {s.study for s in sent}:
            members = {s.sop: s for s in sent if s.study == study}
            datasets = client.retrieve_study(study, media_types=any_ts)
            assert sorted(ds.SOPInstanceUID for ds in datasets) == sorted(members)
            parts = get_parts(http, f"{archive.url}/studies/{study}", DICOM + "; transfer-syntax=*")
            assert len(parts) == len(members)
            for part in parts:
                sop = factory.read(part.content).SOPInstanceUID
                assert_original_or_rendition(part.content, members[sop])


# --- WADO-RS: metadata and bulk data -------------------------------------------------


def _bulk_alternatives(s: Sent) -> dict[str, list[bytes]]:
    """Accepted answers for PixelData bulk data besides the raw value."""
    if s.ds.file_meta.TransferSyntaxUID.is_compressed:
        return {"7FE00010": [b"".join(factory.frames(s.ds))]}
    return {"7FE00010": [b"".join(le_frames(s))]}


def _check_metadata(archive: Archive, objects: list[dict[str, Any]], sent: list[Sent]) -> None:
    by_sop = {value(obj, "00080018"): obj for obj in objects}
    assert sorted(by_sop) == sorted(s.sop for s in sent)
    with archive.http() as http:
        for s in sent:
            obj = by_sop[s.sop]
            assert "BulkDataURI" in obj["7FE00010"], f"{s.syntax}: PixelData is not a BulkDataURI"
            assert_metadata_matches(obj, s.ds.to_json_dict(), http, _bulk_alternatives(s))


def test_retrieve_instance_metadata(archive: Archive, sent: list[Sent]) -> None:
    client = archive.client()
    for s in sent:
        obj = client.retrieve_instance_metadata(s.study, s.series, s.sop)
        _check_metadata(archive, [obj], [s])


def test_retrieve_series_metadata(archive: Archive, sent: list[Sent]) -> None:
    client = archive.client()
    for series in {s.series for s in sent}:
        members = [s for s in sent if s.series == series]
        objects = client.retrieve_series_metadata(members[0].study, series)
        _check_metadata(archive, objects, members)


def test_retrieve_study_metadata_lists_what_qido_lists(archive: Archive, sent: list[Sent]) -> None:
    client = archive.client()
    for study in {s.study for s in sent}:
        members = [s for s in sent if s.study == study]
        objects = client.retrieve_study_metadata(study)
        _check_metadata(archive, objects, members)
        listed = {value(r, "00080018") for r in client.search_for_instances(study_instance_uid=study)}
        assert {value(o, "00080018") for o in objects} == listed


def test_bulk_data_uris_resolve_as_given(archive: Archive, sent: list[Sent]) -> None:
    """A client that sends a correct Host header gets URIs it can GET as they are."""
    s = pick(sent, ExplicitVRLittleEndian)
    with archive.http() as http:
        r = http.get(archive.url + s.resource + "/metadata", headers={"Accept": DICOM_JSON})
        assert r.status_code == 200, r.text[:300]
        uri = r.json()[0]["7FE00010"]["BulkDataURI"]
        assert uri.startswith(archive.url + "/"), uri
        with httpx.Client(timeout=30.0) as plain:
            parts = get_parts(plain, uri, OCTETS)
        assert [p.content for p in parts] == [b"".join(le_frames(s))]


def test_private_bulk_element_resolves(archive: Archive, sent: list[Sent]) -> None:
    s = next(s for s in sent if factory.bulk_tag() in s.ds)
    key = f"{factory.bulk_tag():08X}"
    obj = archive.client().retrieve_instance_metadata(s.study, s.series, s.sop)
    entry = obj[key]
    assert entry["vr"] == "OB"
    with archive.http() as http:
        from tests.e2e.conftest import json_binary

        assert json_binary(entry, http) == s.ds[factory.bulk_tag()].value


# --- WADO-RS: frames -------------------------------------------------------------------


def test_frames_native(archive: Archive, sent: list[Sent]) -> None:
    client = archive.client()
    for syntax in (
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
        ExplicitVRBigEndian,
        DeflatedExplicitVRLittleEndian,
    ):
        s = pick(sent, syntax)
        expected = le_frames(s)
        numbers = list(range(1, len(expected) + 1))
        got = client.retrieve_instance_frames(
            s.study,
            s.series,
            s.sop,
            frame_numbers=numbers,
            media_types=("application/octet-stream",),
        )
        assert got == expected, f"{s.syntax}: frames differ"


@pytest.mark.parametrize(
    ("syntax", "media_type"),
    [
        (RLELossless, "image/dicom-rle"),
        (JPEGLSLossless, "image/jls"),
        (JPEG2000Lossless, "image/jp2"),
    ],
)
def test_frames_encapsulated(archive: Archive, sent: list[Sent], syntax: str, media_type: str) -> None:
    s = pick(sent, syntax)
    expected = factory.frames(s.ds)
    numbers = list(range(1, len(expected) + 1))
    got = archive.client().retrieve_instance_frames(
        s.study, s.series, s.sop, frame_numbers=numbers, media_types=((media_type, syntax),)
    )
    assert got == expected
    last = archive.client().retrieve_instance_frames(
        s.study, s.series, s.sop, frame_numbers=[numbers[-1]], media_types=((media_type, syntax),)
    )
    assert last == expected[-1:]


def test_frames_as_stored_carry_their_transfer_syntax(archive: Archive, sent: list[Sent]) -> None:
    with archive.http() as http:
        for s in sent:
            expected = factory.frames(s.ds) if s.ds.file_meta.TransferSyntaxUID.is_compressed else le_frames(s)
            numbers = ",".join(str(i) for i in range(1, len(expected) + 1))
            url = f"{archive.url}{s.resource}/frames/{numbers}"
            parts = get_parts(http, url, 'multipart/related; type="*/*"; transfer-syntax=*')
            assert [p.content for p in parts] == expected, s.syntax
            for p in parts:
                _media, params = content_type_params(p.headers["content-type"])
                if s.ds.file_meta.TransferSyntaxUID.is_compressed:
                    assert params.get("transfer-syntax") == s.syntax, p.headers


# --- STOW-RS ---------------------------------------------------------------------------


def test_store_instances_with_dicomweb_client(archive: Archive, sent: list[Sent]) -> None:
    new = factory.make_series(
        3,
        PatientID="WEB-D",
        AccessionNumber="WEBACC4",
        SeriesNumber=7,
        SeriesDescription="STOW",
        rows=SIZE,
        columns=SIZE,
    )
    client = archive.client()
    response = client.store_instances(new)
    referenced = [item.ReferencedSOPInstanceUID for item in response.ReferencedSOPSequence]
    assert sorted(referenced) == sorted(ds.SOPInstanceUID for ds in new)
    assert "FailedSOPSequence" not in response

    with archive.http() as http:
        wait_for_instances(http, archive.url, [ds.SOPInstanceUID for ds in new])
    study = new[0].StudyInstanceUID
    rows = client.search_for_studies(search_filters={"PatientID": "WEB-D"})
    assert [value(r, "0020000D") for r in rows] == [study]
    assert value(rows[0], "00201208") == 3
    series = client.search_for_series(study_instance_uid=study)
    assert [value(r, "00201209") for r in series] == [3]
    retrieved = client.retrieve_series(study, new[0].SeriesInstanceUID)
    assert sorted(ds.SOPInstanceUID for ds in retrieved) == sorted(ds.SOPInstanceUID for ds in new)


def test_stow_bytes_are_kept(archive: Archive, sent: list[Sent]) -> None:
    ds = factory.make_instance(
        PatientID="WEB-C",
        PatientName="Gamma^Gina",
        AccessionNumber="WEBACC3",
        rows=SIZE,
        columns=SIZE,
        transfer_syntax=JPEGLSLossless,
        number_of_frames=2,
        bulk_bytes=1500,
    )
    data = factory.part10_bytes(ds)
    body, content_type = stow_body(data)
    with archive.http() as http:
        r = http.post(
            f"{archive.url}/studies", content=body, headers={"Content-Type": content_type, "Accept": DICOM_JSON}
        )
        assert r.status_code == 200, f"{r.status_code}: {r.text[:500]}"
        reply = pydicom.Dataset.from_json(r.json())
        assert [i.ReferencedSOPInstanceUID for i in reply.ReferencedSOPSequence] == [ds.SOPInstanceUID]
        wait_for_instances(http, archive.url, [ds.SOPInstanceUID])
        url = f"{archive.url}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
        parts = get_parts(http, url, DICOM + "; transfer-syntax=*")
        assert factory.dataset_bytes(parts[0].content) == factory.dataset_bytes(data)
        assert parts[0].content == data, "the received Part 10 file was not kept as it came"
        frames = get_parts(http, url + "/frames/2", OCTETS + "; transfer-syntax=*")
        assert [p.content for p in frames] == factory.frames(ds)[1:]


def test_cors_preflight_and_exposed_headers(archive: Archive, sent: list[Sent]) -> None:
    """A browser viewer (OHIF) on another origin may search and read."""
    origin = "http://viewer.example"
    with archive.http() as http:
        pre = http.request(
            "OPTIONS",
            f"{archive.url}/studies",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "accept, authorization",
            },
        )
        assert pre.status_code == 200, pre.text
        assert pre.headers["access-control-allow-origin"] in ("*", origin)
        assert "GET" in pre.headers["access-control-allow-methods"]
        got = http.get(f"{archive.url}/studies", headers={"Origin": origin, "Accept": DICOM_JSON})
        assert got.status_code == 200
        assert got.headers["access-control-allow-origin"] in ("*", origin)
        assert "warning" in got.headers["access-control-expose-headers"].lower()
