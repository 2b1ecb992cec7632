"""Tenants never see each other (ARCHITECTURE §6.3): DIMSE tenant from the called AE title,
each tenant's calling AE titles and source networks admitted at A-ASSOCIATE time, and every
association (admitted or not) in the store log."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import CTImageStorage

from tests import factory
from tests.e2e.conftest import (
    DICOM,
    Archive,
    dcmtk_env,
    qido,
    running_archive,
    wait_for_instances,
    wait_for_rows,
    warehouse_url,
)

pytestmark = pytest.mark.e2e


def test_called_ae_title_selects_the_tenant(start_archive: Callable[..., Archive], dcmtk: None, tmp_path: Path) -> None:
    archive = start_archive({"DICOMCLOUD_AE_TENANTS": "TENANTB=b"})
    written = factory.write_series(
        tmp_path / "b", 3, PatientID="TENANT-B", PatientName="Tenant^Bee", rows=32, columns=32
    )
    result = subprocess.run(
        [
            "storescu",
            "-v",
            "-aet",
            "SCU",
            "-aec",
            "TENANTB",
            "+sd",
            "127.0.0.1",
            str(archive.dimse_port),
            str(tmp_path / "b"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=dcmtk_env(),
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0 and out.count("Received Store Response (Success)") == 3, out

    default_ds = factory.make_instance(PatientID="TENANT-DEFAULT", rows=32, columns=32)
    default_file = tmp_path / "default.dcm"
    default_file.write_bytes(factory.part10_bytes(default_ds))
    result = subprocess.run(
        [
            "storescu",
            "-v",
            "-aet",
            "SCU",
            "-aec",
            archive.ae_title,
            "127.0.0.1",
            str(archive.dimse_port),
            str(default_file),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=dcmtk_env(),
    )
    assert result.returncode == 0, result.stdout + result.stderr

    b_url = archive.tenant_url("b")
    ds = written[0][1]
    with archive.http() as http:
        wait_for_instances(http, b_url, [d.SOPInstanceUID for _, d in written])
        wait_for_instances(http, archive.url, [default_ds.SOPInstanceUID])

        assert qido(http, f"{archive.url}/studies", PatientID="TENANT-B") == []
        assert qido(http, f"{archive.url}/instances", SOPInstanceUID=ds.SOPInstanceUID) == []
        assert qido(http, f"{b_url}/studies", PatientID="TENANT-DEFAULT") == []
        assert len(qido(http, f"{b_url}/studies", PatientID="TENANT-B")) == 1

        path = f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
        accept = {"Accept": DICOM + "; transfer-syntax=*"}
        assert http.get(b_url + path, headers=accept).status_code == 200
        assert http.get(archive.url + path, headers=accept).status_code == 404
        assert http.get(archive.url + path + "/metadata").status_code == 404
        assert http.get(archive.tenant_url("c") + "/studies/" + ds.StudyInstanceUID, headers=accept).status_code == 404

    client_b = archive.client(b_url)
    assert [r["00100020"]["Value"][0] for r in client_b.search_for_studies()] == ["TENANT-B"]
    files = list((archive.data_dir).rglob(f"{ds.SOPInstanceUID}.dcm"))
    assert len(files) == 1 and "/b/" in files[0].as_posix(), files


# --- admission: each tenant's calling AE titles and source networks -----------------

TENANTS_FILE = """
[tenants.hosp-a]
called_ae_titles = ["HOSPA"]
calling_ae_titles = ["CT1"]

[tenants.hosp-b]
called_ae_titles = ["HOSPB"]
source_networks = ["10.99.0.0/16"]  # not 127.0.0.1
"""


@pytest.fixture(scope="module")
def admitting(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    """An archive with the tenants file above (module-wide: each test uses its own patients)."""
    base = tmp_path_factory.mktemp("admission")
    tenants = base / "tenants.toml"
    tenants.write_text(TENANTS_FILE)
    with running_archive(base, env={"DICOMCLOUD_DIMSE_TENANTS_FILE": str(tenants)}) as running:
        yield running


def storescu(archive: Archive, calling: str, called: str, folder: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["storescu", "-v", "-aet", calling, "-aec", called, "+sd", "127.0.0.1", str(archive.dimse_port), str(folder)],
        capture_output=True,
        text=True,
        timeout=60,
        env=dcmtk_env(),
    )


def assert_rejected_calling_ae(result: subprocess.CompletedProcess[str]) -> None:
    """DCMTK's words for A-ASSOCIATE-RJ rejected-permanent / service-user / reason 3."""
    out = result.stdout + result.stderr
    assert result.returncode != 0, out
    assert "Association Rejected" in out, out
    assert "Result: Rejected Permanent, Source: Service User" in out, out
    assert "Reason: Calling AE Title Not Recognized" in out, out
    assert "Store Response" not in out, out


def pynetdicom_associate(archive: Archive, calling: str, called: str) -> Association:
    ae = AE(ae_title=calling)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    return ae.associate("127.0.0.1", archive.dimse_port, ae_title=called)


def test_each_tenant_admits_its_calling_ae_titles_and_networks(
    admitting: Archive, dcmtk: None, tmp_path: Path
) -> None:
    refused = factory.write_series(tmp_path / "refused", 2, PatientID="ADMIT-REFUSED", rows=16, columns=16)
    assert_rejected_calling_ae(storescu(admitting, "OTHER", "HOSPA", tmp_path / "refused"))  # calling AE
    assert_rejected_calling_ae(storescu(admitting, "CT1", "HOSPB", tmp_path / "refused"))  # 127.0.0.1
    assoc = pynetdicom_associate(admitting, "CT1", "HOSPB")
    assert assoc.is_rejected and not assoc.is_established
    rj = assoc.acceptor.primitive
    assert (rj.result, rj.result_source, rj.diagnostic) == (1, 1, 3)

    written = factory.write_series(tmp_path / "a", 3, PatientID="ADMIT-A", rows=16, columns=16)
    result = storescu(admitting, "CT1", "HOSPA", tmp_path / "a")
    out = result.stdout + result.stderr
    assert result.returncode == 0 and out.count("Received Store Response (Success)") == 3, out

    a_url = admitting.tenant_url("hosp-a")
    with admitting.http() as http:
        # Indexing keeps order: once these are searchable, the refused ones would be too.
        wait_for_instances(http, a_url, [ds.SOPInstanceUID for _, ds in written])
        assert len(qido(http, f"{a_url}/studies", PatientID="ADMIT-A")) == 1
        for url in (admitting.url, admitting.tenant_url("hosp-b")):
            assert qido(http, f"{url}/studies", PatientID="ADMIT-A") == []
        for url in (admitting.url, a_url, admitting.tenant_url("hosp-b")):
            assert qido(http, f"{url}/studies", PatientID="ADMIT-REFUSED") == []
    for _, ds in refused:
        assert list(admitting.data_dir.parent.rglob(f"{ds.SOPInstanceUID}.dcm")) == []
    assert "'OTHER' is not allowed to associate with called AE title 'HOSPA'" in admitting.output()
    assert "'CT1' from 127.0.0.1 is outside the source networks allowed for called AE title 'HOSPB'" in (
        admitting.output()
    )


def test_associations_are_recorded_in_the_store_log(admitting: Archive, dcmtk: None, tmp_path: Path) -> None:
    database_url = warehouse_url(admitting)
    since = datetime.now(UTC)  # the archive runs on this machine: one clock
    factory.write_series(tmp_path / "s", 1, PatientID="LOG-REFUSED", rows=16, columns=16)
    assert_rejected_calling_ae(storescu(admitting, "LOG-OTHER", "HOSPA", tmp_path / "s"))
    assert pynetdicom_associate(admitting, "LOG-B", "HOSPB").is_rejected

    good = factory.make_series(2, PatientID="LOG-A", rows=16, columns=16)
    bad = factory.make_instance(PatientID="LOG-A", rows=16, columns=16)
    del bad.StudyInstanceUID
    assoc = pynetdicom_associate(admitting, "CT1", "HOSPA")
    assert assoc.is_established
    try:
        statuses = [assoc.send_c_store(ds).Status for ds in (good[0], bad, good[1])]
    finally:
        assoc.release()
    assert statuses[0] == statuses[2] == 0x0000 and statuses[1] in (0xA900, 0xC000), statuses

    rows = wait_for_rows(
        database_url,
        "SELECT * FROM warehouse.dimse_association_log WHERE started_at >= $1 ORDER BY started_at",
        since,
        until=lambda rows: len(rows) >= 3,
    )
    by_calling = {r["calling_ae_title"]: r for r in rows}
    assert sorted(by_calling) == ["CT1", "LOG-B", "LOG-OTHER"], rows

    other, b, ct1 = by_calling["LOG-OTHER"], by_calling["LOG-B"], by_calling["CT1"]
    assert (other["tenant_id"], other["called_ae_title"], other["outcome"]) == ("hosp-a", "HOSPA", "rejected")
    assert "'LOG-OTHER'" in other["reason"] and "'HOSPA'" in other["reason"]
    assert (b["tenant_id"], b["called_ae_title"], b["outcome"]) == ("hosp-b", "HOSPB", "rejected")
    assert "from 127.0.0.1 is outside the source networks" in b["reason"]
    for row in (other, b):
        assert (row["instances_stored"], row["instances_failed"], row["address"]) == (0, 0, "127.0.0.1")

    assert (ct1["tenant_id"], ct1["called_ae_title"], ct1["outcome"], ct1["reason"]) == (
        "hosp-a", "HOSPA", "released", ""
    )  # fmt: skip
    assert (ct1["instances_stored"], ct1["instances_failed"]) == (2, 1)
    assert json.loads(ct1["failure_statuses"]) == {f"0x{statuses[1]:04X}": 1}
    sent = sum(len(factory.part10_bytes(ds)) for ds in good)
    assert ct1["bytes_received"] > sent, ct1
    assert ct1["started_at"] <= ct1["ended_at"] and ct1["address"] == "127.0.0.1"
