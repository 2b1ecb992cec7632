"""DIMSE in: DCMTK echoscu/storescu, a pynetdicom SCU and a raw socket against ``dicomcloud up``."""

from __future__ import annotations

import contextlib
import socket
import struct
import subprocess
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification

from tests import factory
from tests.e2e.conftest import Archive, dcmtk_env, qido, value, wait_for_instances

pytestmark = pytest.mark.e2e


def storescu(archive: Archive, *paths: Path, calling: str = "STORESCU") -> subprocess.Popen[str]:
    """Start DCMTK storescu on one association for ``paths`` (files or directories)."""
    return subprocess.Popen(
        [
            "storescu",
            "-v",
            "-aet",
            calling,
            "-aec",
            archive.ae_title,
            "+sd",
            "+r",
            "127.0.0.1",
            str(archive.dimse_port),
            *map(str, paths),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dcmtk_env(),
    )


def assert_all_stored(proc: subprocess.Popen[str], count: int) -> str:
    out, _ = proc.communicate(timeout=120)
    successes = out.count("Received Store Response (Success)")
    assert proc.returncode == 0 and successes == count, (
        f"storescu exit {proc.returncode}, {successes}/{count} Success responses:\n{out[-4000:]}"
    )
    return out


def test_echoscu(archive: Archive, dcmtk: None) -> None:
    result = subprocess.run(
        [
            "echoscu",
            "-v",
            "-aet",
            "ECHOSCU",
            "-aec",
            archive.ae_title,
            "127.0.0.1",
            str(archive.dimse_port),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env=dcmtk_env(),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Received Echo Response (Success)" in result.stdout + result.stderr


def test_pynetdicom_echo(archive: Archive) -> None:
    ae = AE(ae_title="PYNETDICOM")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", archive.dimse_port, ae_title=archive.ae_title)
    assert assoc.is_established
    try:
        status = assoc.send_c_echo()
        assert status.Status == 0x0000
    finally:
        assoc.release()


def test_storescu_one_association(archive: Archive, dcmtk: None, tmp_path: Path) -> None:
    written = factory.write_series(
        tmp_path,
        6,
        PatientID="DIMSE-1",
        PatientName="Store^One",
        AccessionNumber="DA1",
        rows=64,
        columns=64,
    )
    assert_all_stored(storescu(archive, tmp_path), len(written))

    with archive.http() as http:
        wait_for_instances(http, archive.url, [ds.SOPInstanceUID for _, ds in written])
        study = written[0][1].StudyInstanceUID
        rows = qido(http, f"{archive.url}/studies", StudyInstanceUID=study)
        assert len(rows) == 1
        assert value(rows[0], "00100020") == "DIMSE-1"
        assert value(rows[0], "00201208") == len(written)  # NumberOfStudyRelatedInstances


def test_storescu_concurrent_associations(archive: Archive, dcmtk: None, tmp_path: Path) -> None:
    sessions = 4
    per_series = 8
    dirs = []
    expected: dict[str, int] = {}
    sop_uids = []
    for k in range(sessions):
        d = tmp_path / f"series{k}"
        written = factory.write_series(
            d,
            per_series,
            PatientID="DIMSE-2",
            PatientName="Store^Many",
            AccessionNumber="DA2",
            SeriesNumber=k + 1,
            rows=64,
            columns=64,
        )
        dirs.append(d)
        expected[written[0][1].SeriesInstanceUID] = per_series
        sop_uids += [ds.SOPInstanceUID for _, ds in written]
        study = written[0][1].StudyInstanceUID

    procs = [storescu(archive, d, calling=f"SCU{k}") for k, d in enumerate(dirs)]
    for proc in procs:
        assert_all_stored(proc, per_series)

    with archive.http() as http:
        wait_for_instances(http, archive.url, sop_uids)
        series = qido(http, f"{archive.url}/studies/{study}/series")
        got = {value(r, "0020000E"): value(r, "00201209") for r in series}
        assert got == expected  # NumberOfSeriesRelatedInstances per series
        rows = qido(http, f"{archive.url}/studies", StudyInstanceUID=study)
        assert value(rows[0], "00201206") == sessions  # NumberOfStudyRelatedSeries
        assert value(rows[0], "00201208") == sessions * per_series


def test_pynetdicom_scu_stores(archive: Archive) -> None:
    datasets = factory.make_series(
        3,
        PatientID="DIMSE-3",
        PatientName="Store^Pynetdicom",
        AccessionNumber="DA3",
        rows=32,
        columns=32,
    ) + factory.make_series(
        2,
        PatientID="DIMSE-3",
        PatientName="Store^Pynetdicom",
        AccessionNumber="DA3",
        SeriesNumber=2,
        rows=32,
        columns=32,
        transfer_syntax=ImplicitVRLittleEndian,
    )
    ae = AE(ae_title="PYNETDICOM")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.add_requested_context(CTImageStorage, ImplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", archive.dimse_port, ae_title=archive.ae_title)
    assert assoc.is_established
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            assert status and status.Status == 0x0000, f"{ds.SOPInstanceUID}: {status}"
    finally:
        assoc.release()

    with archive.http() as http:
        wait_for_instances(http, archive.url, [ds.SOPInstanceUID for ds in datasets])
        rows = qido(http, f"{archive.url}/studies/{datasets[0].StudyInstanceUID}/instances")
        assert {value(r, "00080018") for r in rows} == {ds.SOPInstanceUID for ds in datasets}


# --- limits: the maximum PDU length -------------------------------------------------


def _item(kind: int, body: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(body)) + body


def associate_rq(called: str, calling: str = "RAWPEER") -> bytes:
    """A minimal A-ASSOCIATE-RQ for Verification (PS3.8 §9.3.2), built by hand."""
    context = _item(0x30, b"1.2.840.10008.1.1") + _item(0x40, b"1.2.840.10008.1.2")
    user = _item(0x50, _item(0x51, struct.pack(">L", 16384)) + _item(0x52, b"1.2.826.0.1.3680043.9.7433.1"))
    body = (
        struct.pack(">HH", 1, 0)
        + called.ljust(16).encode()
        + calling.ljust(16).encode()
        + bytes(32)
        + _item(0x10, b"1.2.840.10008.3.1.1.1")
        + _item(0x20, bytes([1, 0, 0, 0]) + context)
        + user
    )
    return struct.pack(">BBL", 0x01, 0, len(body)) + body


def read_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def read_pdu(sock: socket.socket) -> bytes:
    header = read_exactly(sock, 6)
    assert len(header) == 6, f"connection closed, got {header!r}"
    return header + read_exactly(sock, struct.unpack(">L", header[2:])[0])


def maximum_length(associate_ac: bytes) -> int:
    """The Maximum Length Received sub-item of an A-ASSOCIATE-AC (PS3.8 D.1.1)."""
    offset = 6 + 68
    while offset < len(associate_ac):
        kind, length = associate_ac[offset], struct.unpack(">H", associate_ac[offset + 2 : offset + 4])[0]
        if kind == 0x50:
            sub = associate_ac[offset + 4 : offset + 4 + length]
            while sub:
                sub_kind, sub_length = sub[0], struct.unpack(">H", sub[2:4])[0]
                if sub_kind == 0x51:
                    value: int = struct.unpack(">L", sub[4:8])[0]
                    return value
                sub = sub[4 + sub_length :]
        offset += 4 + length
    raise AssertionError("no Maximum Length sub-item")


def until_closed(sock: socket.socket) -> bytes:
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(4096):
            data += chunk
    return data


def test_a_pdu_over_the_limit_aborts_the_association(archive: Archive, dcmtk: None) -> None:
    """A peer claims a 4 GiB PDU: it is not read (nor allocated); the association is
    aborted (A-ABORT) and the archive keeps serving."""
    limit = 16 * 1024 * 1024  # the default maximum PDU length (README)
    with socket.create_connection(("127.0.0.1", archive.dimse_port), timeout=30) as sock:
        sock.sendall(associate_rq(archive.ae_title))
        ac = read_pdu(sock)
        assert ac[0] == 0x02, f"not an A-ASSOCIATE-AC: {ac[:16].hex()}"
        assert maximum_length(ac) == limit  # what we advertise is what we enforce
        sock.sendall(struct.pack(">BBL", 0x04, 0, 0xFFFF_FFF0) + bytes(64))  # P-DATA-TF of ~4 GiB
        answer = until_closed(sock)
    assert answer[:2] == b"\x07\x00", f"not an A-ABORT: {answer.hex()}"
    with socket.create_connection(("127.0.0.1", archive.dimse_port), timeout=30) as sock:
        sock.sendall(struct.pack(">BBL", 0x01, 0, 0xFFFF_FFF0) + bytes(64))  # A-ASSOCIATE-RQ of ~4 GiB
        answer = until_closed(sock)
    assert answer[:2] == b"\x07\x00", f"not an A-ABORT: {answer.hex()}"

    result = subprocess.run(
        ["echoscu", "-v", "-aet", "ECHOSCU", "-aec", archive.ae_title, "127.0.0.1", str(archive.dimse_port)],
        capture_output=True,
        text=True,
        timeout=30,
        env=dcmtk_env(),
    )
    assert result.returncode == 0 and "Received Echo Response (Success)" in result.stdout + result.stderr
    output = archive.output()
    assert f"P-DATA-TF PDU of {0xFFFF_FFF0} bytes, over the limit of {limit} bytes" in output, output[-3000:]
    assert f"A-ASSOCIATE-RQ PDU of {0xFFFF_FFF0} bytes, over the limit of {limit} bytes" in output
