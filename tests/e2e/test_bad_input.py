"""Bad input gets a precise error, never a crash or a fake success (ARCHITECTURE §6.4)."""

from __future__ import annotations

import socket
import struct
import uuid
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom import config as pydicom_config
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, _config
from pynetdicom.association import Association
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import CTImageStorage, Verification
from pynetdicom.status import code_to_category

from tests import factory
from tests.e2e.conftest import DICOM, DICOM_JSON, Archive, qido, stow_body, wait_for_instances

pytestmark = pytest.mark.e2e

SIZE = 32


@pytest.fixture
def lenient(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let pydicom and pynetdicom send what a broken modality would."""
    monkeypatch.setattr(pydicom_config.settings, "writing_validation_mode", pydicom_config.IGNORE)
    monkeypatch.setattr(pydicom_config.settings, "reading_validation_mode", pydicom_config.IGNORE)
    monkeypatch.setitem(_config.VALIDATORS, "UI", lambda value: (True, ""))


def associate(archive: Archive) -> Association:
    ae = AE(ae_title="BADSCU")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", archive.dimse_port, ae_title=archive.ae_title)
    assert assoc.is_established
    return assoc


@pytest.fixture
def assoc(archive: Archive) -> Iterator[Association]:
    a = associate(archive)
    yield a
    if a.is_established:
        a.release()


def store_good_and_wait(archive: Archive, patient_id: str) -> Dataset:
    """Store one valid instance and wait until it is searchable.

    Indexing is asynchronous: once a later, valid instance is visible, an
    earlier bad one would be too, had it been accepted.
    """
    ds = factory.make_instance(PatientID=patient_id, AccessionNumber=uuid.uuid4().hex[:16], rows=SIZE, columns=SIZE)
    assoc = associate(archive)
    try:
        status = assoc.send_c_store(ds)
        assert status and status.Status == 0x0000, status
    finally:
        assoc.release()
    with archive.http() as http:
        wait_for_instances(http, archive.url, [ds.SOPInstanceUID])
    return ds


def assert_nothing_stored(archive: Archive, patient_id: str, sop_fragment: str) -> None:
    with archive.http() as http:
        assert qido(http, f"{archive.url}/studies", PatientID=patient_id) == []
        assert qido(http, f"{archive.url}/instances", PatientID=patient_id) == []
    leaked = [p for p in archive.data_dir.parent.rglob("*") if sop_fragment in p.name and p.suffix == ".dcm"]
    assert leaked == []


BAD_SOP_UIDS = {
    "letters": "1.2.840.abc.1",
    "path": "../x",
    "65 characters": "1." + "2" * 63,
}


@pytest.mark.parametrize("bad_uid", BAD_SOP_UIDS.values(), ids=BAD_SOP_UIDS.keys())
def test_invalid_sop_instance_uid_fails(archive: Archive, assoc: Association, lenient: None, bad_uid: str) -> None:
    patient = f"BAD-{uuid.uuid4().hex[:8]}"
    ds = factory.make_instance(PatientID=patient, rows=SIZE, columns=SIZE, sop_uid=bad_uid)
    status = assoc.send_c_store(ds)
    assert status, f"no C-STORE response; archive log:\n{archive.output()[-3000:]}"
    assert code_to_category(status.Status) == "Failure", f"status 0x{status.Status:04X}"
    assert status.Status in (0xA900, 0xC000), f"status 0x{status.Status:04X}"
    assoc.release()
    store_good_and_wait(archive, f"GOOD-{patient}")
    assert_nothing_stored(archive, patient, bad_uid.rsplit("/", 1)[-1])
    assert not (archive.data_dir.parent / "x.dcm").exists()


def test_missing_study_instance_uid_fails(archive: Archive, assoc: Association) -> None:
    patient = f"BAD-{uuid.uuid4().hex[:8]}"
    ds = factory.make_instance(PatientID=patient, rows=SIZE, columns=SIZE)
    del ds.StudyInstanceUID
    status = assoc.send_c_store(ds)
    assert status, "no C-STORE response"
    assert status.Status in (0xA900, 0xC000), f"status 0x{status.Status:04X}"
    assoc.release()
    store_good_and_wait(archive, f"GOOD-{patient}")
    assert_nothing_stored(archive, patient, ds.SOPInstanceUID)


def _p_data(context_id: int, control: int, payload: bytes) -> bytes:
    """One P-DATA-TF PDU with one PDV (PS3.8 §9.3.5)."""
    pdv = struct.pack(">IBB", len(payload) + 2, context_id, control) + payload
    return struct.pack(">BBI", 0x04, 0x00, len(pdv)) + pdv


def _c_store_command(ds: Dataset, message_id: int = 7) -> bytes:
    """The C-STORE-RQ command set (PS3.7 §9.3.1.1), Implicit VR Little Endian."""
    cmd = Dataset()
    cmd.AffectedSOPClassUID = ds.SOPClassUID
    cmd.CommandField = 0x0001
    cmd.MessageID = message_id
    cmd.Priority = 0
    cmd.CommandDataSetType = 0x0000
    cmd.AffectedSOPInstanceUID = ds.SOPInstanceUID
    body = encode(cmd, True, True)
    assert body is not None
    group_length = struct.pack("<HHII", 0x0000, 0x0000, 4, len(body))
    return group_length + body


def test_abort_mid_instance_stores_nothing(archive: Archive, assoc: Association) -> None:
    patient = f"ABORT-{uuid.uuid4().hex[:8]}"
    ds = factory.make_instance(PatientID=patient, rows=256, columns=256)
    data = factory.dataset_bytes(factory.part10_bytes(ds))
    context = next(
        c
        for c in assoc.accepted_contexts
        if c.abstract_syntax == CTImageStorage and c.transfer_syntax[0] == ExplicitVRLittleEndian
    )
    # the whole command, then the first half of the data set, not marked last
    assoc.dul.socket.send(_p_data(context.context_id, 0x03, _c_store_command(ds)))
    assoc.dul.socket.send(_p_data(context.context_id, 0x00, data[: len(data) // 2]))
    assoc.abort()

    store_good_and_wait(archive, f"GOOD-{patient}")
    assert_nothing_stored(archive, patient, ds.SOPInstanceUID)


def test_abort_right_after_association(archive: Archive) -> None:
    for _ in range(3):
        associate(archive).abort()
    store_good_and_wait(archive, f"GOOD-{uuid.uuid4().hex[:8]}")


def test_connection_dropped_mid_instance(archive: Archive, assoc: Association) -> None:
    patient = f"DROP-{uuid.uuid4().hex[:8]}"
    ds = factory.make_instance(PatientID=patient, rows=256, columns=256)
    data = factory.dataset_bytes(factory.part10_bytes(ds))
    context = next(
        c
        for c in assoc.accepted_contexts
        if c.abstract_syntax == CTImageStorage and c.transfer_syntax[0] == ExplicitVRLittleEndian
    )
    assoc.dul.socket.send(_p_data(context.context_id, 0x03, _c_store_command(ds)))
    assoc.dul.socket.send(_p_data(context.context_id, 0x00, data[:1000]))
    raw = assoc.dul.socket.socket
    assert raw is not None
    raw.shutdown(socket.SHUT_RDWR)  # no A-ABORT reaches the archive: the connection just goes
    assoc.abort()  # lets pynetdicom's threads finish; its A-ABORT cannot be sent any more
    assoc.join(timeout=10)
    raw.close()  # pynetdicom does not close a socket that was shut down under it

    store_good_and_wait(archive, f"GOOD-{patient}")
    assert_nothing_stored(archive, patient, ds.SOPInstanceUID)


# --- HTTP ----------------------------------------------------------------------------


def test_qido_unknown_attribute_is_400(archive: Archive) -> None:
    with archive.http() as http:
        r = http.get(
            f"{archive.url}/studies",
            params={"NoSuchAttribute": "1"},
            headers={"Accept": DICOM_JSON},
        )
        assert r.status_code == 400, r.text[:300]


@pytest.mark.parametrize("bad_date", ["2024-13-45", "notadate", "20241345", "2024010"])
def test_qido_bad_date_is_400(archive: Archive, bad_date: str) -> None:
    with archive.http() as http:
        r = http.get(f"{archive.url}/studies", params={"StudyDate": bad_date}, headers={"Accept": DICOM_JSON})
        assert r.status_code == 400, f"StudyDate={bad_date}: {r.status_code} {r.text[:300]}"


def test_stow_wrong_content_type_is_415(archive: Archive) -> None:
    data = factory.part10_bytes(factory.make_instance(PatientID="STOW-415", rows=SIZE, columns=SIZE))
    with archive.http() as http:
        for content_type in ("application/json", "text/plain"):
            r = http.post(
                f"{archive.url}/studies",
                content=data,
                headers={"Content-Type": content_type, "Accept": DICOM_JSON},
            )
            assert r.status_code == 415, f"{content_type}: {r.status_code} {r.text[:300]}"
        assert qido(http, f"{archive.url}/studies", PatientID="STOW-415") == []


def test_stow_study_uid_mismatch_is_409(archive: Archive) -> None:
    ds = factory.make_instance(PatientID="STOW-409", rows=SIZE, columns=SIZE)
    other_study = pydicom.uid.generate_uid(entropy_srcs=["another study"])
    body, content_type = stow_body(factory.part10_bytes(ds))
    with archive.http() as http:
        r = http.post(
            f"{archive.url}/studies/{other_study}",
            content=body,
            headers={"Content-Type": content_type, "Accept": DICOM_JSON},
        )
        assert r.status_code == 409, f"{r.status_code}: {r.text[:500]}"
        reply = Dataset.from_json(r.json())
        failed = reply.FailedSOPSequence
        assert [item.ReferencedSOPInstanceUID for item in failed] == [ds.SOPInstanceUID]
        assert "FailureReason" in failed[0]
        assert not reply.get("ReferencedSOPSequence")
        assert qido(http, f"{archive.url}/studies", PatientID="STOW-409") == []


def test_wado_missing_study_is_404(archive: Archive) -> None:
    missing = pydicom.uid.generate_uid(entropy_srcs=["no such study"])
    with archive.http() as http:
        r = http.get(f"{archive.url}/studies/{missing}", headers={"Accept": DICOM})
        assert r.status_code == 404, r.text[:300]
        r = http.get(f"{archive.url}/studies/{missing}/metadata", headers={"Accept": DICOM_JSON})
        assert r.status_code == 404, r.text[:300]


def test_still_serving(archive: Archive, tmp_path: Path) -> None:
    assoc = associate(archive)
    try:
        assert assoc.send_c_echo().Status == 0x0000
    finally:
        assoc.release()
    store_good_and_wait(archive, "STILL-SERVING")
