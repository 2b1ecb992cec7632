"""Tenants never see each other (ARCHITECTURE §6.3): DIMSE tenant from the called AE title."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests import factory
from tests.e2e.conftest import DICOM, Archive, dcmtk_env, qido, wait_for_instances

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
