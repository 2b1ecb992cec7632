"""DIMSE in: DCMTK echoscu/storescu and a pynetdicom SCU against ``dicomcloud up``."""

from __future__ import annotations

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
