"""The WadoAccessLog end to end: requests to a running ``dicomcloud up`` become one row
each in ``warehouse.wado_access_log`` of its database (server → bus → loader)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import asyncpg
import httpx
import pytest

from tests import factory
from tests.conftest import run_sync
from tests.e2e.conftest import DICOM_JSON, OCTETS, SEARCH_TIMEOUT, Archive, wait_for_instances

pytestmark = pytest.mark.e2e


def access_rows(database_url: str, studies: list[str]) -> list[dict[str, Any]]:
    async def fetch() -> list[dict[str, Any]]:
        conn = await asyncpg.connect(database_url)
        try:
            rows = await conn.fetch(
                "SELECT * FROM warehouse.wado_access_log WHERE study_instance_uid = ANY($1::text[]) "
                "ORDER BY requested_at",
                studies,
            )
            return [dict(r) for r in rows]
        finally:
            await conn.close()

    return run_sync(fetch())


def test_each_request_is_one_row(archive: Archive) -> None:
    if not archive.database_url:
        pytest.skip("the archive runs its embedded PostgreSQL; set DICOMCLOUD_TEST_DATABASE_URL")
    ds = factory.make_instance(PatientID="ACCESS-1", rows=16, columns=16)
    study, series, sop = ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
    unknown = factory.uid("access", uuid.uuid4().int % 10**12)
    data = factory.part10_bytes(ds)
    boundary = uuid.uuid4().hex
    body = (
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data + f"\r\n--{boundary}--\r\n".encode()
    )
    sent: list[tuple[str, str, str, httpx.Response]] = []  # (tenant, route, method, response)
    with archive.http() as http:
        r = http.post(
            f"{archive.url}/studies/{study}",
            content=body,
            headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'},
        )
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

    deadline = time.monotonic() + SEARCH_TIMEOUT
    rows = access_rows(archive.database_url, [study, unknown])
    while len(rows) < len(sent) and time.monotonic() < deadline:
        time.sleep(0.2)
        rows = access_rows(archive.database_url, [study, unknown])
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
    if not running.database_url:
        pytest.skip("the archive runs its embedded PostgreSQL; set DICOMCLOUD_TEST_DATABASE_URL")
    studies = [factory.uid("shutdown", uuid.uuid4().int % 10**12, n) for n in range(20)]
    with running.http() as http:
        for study in studies:
            assert http.get(f"{running.url}/studies/{study}/metadata").status_code == 404
    running.restart()
    deadline = time.monotonic() + SEARCH_TIMEOUT
    rows = access_rows(running.database_url, studies)
    while len(rows) < len(studies) and time.monotonic() < deadline:
        time.sleep(0.2)
        rows = access_rows(running.database_url, studies)
    assert sorted(r["study_instance_uid"] for r in rows) == sorted(studies)
    assert {(r["status"], r["route"]) for r in rows} == {(404, "/studies/{study}/metadata")}
