"""The WadoAccessLog end to end: requests to a running ``dicomcloud up`` become one row
each in ``warehouse.wado_access_log`` of its database (server → bus → loader)."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import httpx
import pytest

from tests import factory
from tests.e2e.conftest import (
    DICOM_JSON,
    OCTETS,
    Archive,
    stow_body,
    wait_for_instances,
    wait_for_rows,
    warehouse_url,
)

pytestmark = pytest.mark.e2e


ACCESS_ROWS = (
    "SELECT * FROM warehouse.wado_access_log WHERE study_instance_uid = ANY($1::text[]) ORDER BY requested_at"
)


def test_each_request_is_one_row(archive: Archive) -> None:
    database_url = warehouse_url(archive)
    ds = factory.make_instance(PatientID="ACCESS-1", rows=16, columns=16)
    study, series, sop = ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
    unknown = factory.uid("access", uuid.uuid4().int % 10**12)
    body, content_type = stow_body(factory.part10_bytes(ds))
    sent: list[tuple[str, str, str, httpx.Response]] = []  # (tenant, route, method, response)
    with archive.http() as http:
        r = http.post(f"{archive.url}/studies/{study}", content=body, headers={"Content-Type": content_type})
        assert r.status_code == 200, r.text[:500]
        sent.append(("default", "/studies/{study}", "POST", r))
        wait_for_instances(http, archive.url, [sop])
        r = http.get(f"{archive.url}/studies/{study}/series", headers={"Accept": DICOM_JSON})
        assert r.status_code == 200
        sent.append(("default", "/studies/{study}/series", "GET", r))
        r = http.get(f"{archive.url}/studies/{study}/series/{series}/metadata", headers={"Accept": DICOM_JSON})
        assert r.status_code == 200
        sent.append(("default", "/studies/{study}/series/{series}/metadata", "GET", r))
        r = http.get(
            f"{archive.url}/studies/{study}/series/{series}/instances/{sop}/frames/1",
            headers={"Accept": OCTETS + "; transfer-syntax=*"},
        )
        assert r.status_code == 200
        sent.append(("default", "/studies/{study}/series/{series}/instances/{instance}/frames/{frames}", "GET", r))
        r = http.get(f"{archive.tenant_url('acme')}/studies/{unknown}/metadata", headers={"Accept": DICOM_JSON})
        assert r.status_code == 404
        sent.append(("acme", "/studies/{study}/metadata", "GET", r))

    rows = wait_for_rows(database_url, ACCESS_ROWS, [study, unknown], until=lambda rows: len(rows) >= len(sent))
    assert len(rows) == len(sent), rows
    for row, (tenant, route, method, response) in zip(rows, sent, strict=True):
        # Bytes as sent: compressed metadata counts as it went over the wire.
        got = (row["tenant_id"], row["route"], row["method"], row["status"], row["response_bytes"])
        assert got == (tenant, route, method, response.status_code, response.num_bytes_downloaded)
        assert row["client_address"] == "127.0.0.1" and row["subject"] == "" and row["duration_ms"] >= 0
    stow, qido, metadata, frames, missing = rows
    assert stow["request_bytes"] == len(body) and stow["service"] == "stow-rs"
    assert (qido["service"], qido["level"]) == ("qido-rs", "series")
    assert (metadata["level"], metadata["series_instance_uid"]) == ("series", series)
    assert (frames["level"], frames["sop_instance_uid"]) == ("frames", sop)
    assert (missing["study_instance_uid"], missing["level"]) == (unknown, "study")


def test_records_held_at_shutdown_are_published(start_archive: Callable[..., Archive]) -> None:
    """SIGTERM right after the requests: the server flushes its queue to the bus before
    exiting, and the loader loads it (after the restart at the latest)."""
    running = start_archive()
    database_url = warehouse_url(running)
    studies = [factory.uid("shutdown", uuid.uuid4().int % 10**12, n) for n in range(20)]
    with running.http() as http:
        for study in studies:
            assert http.get(f"{running.url}/studies/{study}/metadata").status_code == 404
    running.restart()
    rows = wait_for_rows(database_url, ACCESS_ROWS, studies, until=lambda rows: len(rows) >= len(studies))
    assert sorted(r["study_instance_uid"] for r in rows) == sorted(studies)
    assert {(r["status"], r["route"]) for r in rows} == {(404, "/studies/{study}/metadata")}
