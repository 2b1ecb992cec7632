"""The WadoAccessLog through the real pieces: the HTTP app over an open archive (real
PostgreSQL, durable journal), the publisher, the bus, the loader, ``warehouse.wado_access_log``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from dicomcloud.bootstrap import open_archive
from dicomcloud.domain.messages import ACCESS_LOG_QUEUE, Source
from dicomcloud.entrypoints.http.app import create_app
from dicomcloud.settings import Settings
from dicomcloud.usecases.access_log import AccessLog
from tests.conftest import fetch_rows
from tests.factory import make_series, part10_bytes
from tests.integration.test_pipeline import drain

pytestmark = pytest.mark.integration


async def rows(database_url: str) -> list[dict[str, Any]]:
    return await fetch_rows(database_url, "SELECT * FROM warehouse.wado_access_log ORDER BY requested_at")


async def test_requests_land_in_the_warehouse_once(tmp_path: Path, database_url: str) -> None:
    archive = await open_archive(Settings(data_dir=tmp_path, database_url=database_url))
    try:
        series = make_series(2, rows=16, columns=16)
        for ds in series:
            await archive.ingest.store(part10_bytes(ds), "default", Source("dimse", "SCU", "DICOMCLOUD", "127.0.0.1"))
        await drain(archive)
        study, series_uid = series[0].StudyInstanceUID, series[0].SeriesInstanceUID

        log = AccessLog(archive.bus)
        transport = httpx.ASGITransport(app=create_app(archive, log), client=("10.0.0.7", 4242))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            search = await client.get(f"/dicom-web/studies/{study}/series", params={"Modality": "CT"})
            assert search.status_code == 200
            refused = await client.get(f"/dicom-web/studies/{study}/instances", params={"access_token": "s3cret"})
            assert refused.status_code == 400  # an unknown query parameter
            missing = await client.get("/tenants/other/dicom-web/studies/1.2.999/metadata")
            assert missing.status_code == 404
            health = await client.get("/healthz")
            assert health.status_code == 200
        assert len(log) == 3  # /healthz is not recorded
        await log.close()
        assert len(log) == 0 and log.published == 3

        loader = archive.bus.consumer("loader", [ACCESS_LOG_QUEUE])
        records = await loader.poll(100, 0)
        assert len(records) == 3
        assert await archive.load_warehouse.handle(records) == []
        await loader.commit(records)

        loaded = await rows(database_url)
        assert [(r["tenant_id"], r["route"], r["status"], r["level"], r["service"]) for r in loaded] == [
            ("default", "/studies/{study}/series", 200, "series", "qido-rs"),
            ("default", "/studies/{study}/instances", 400, "instance", "qido-rs"),
            ("other", "/studies/{study}/metadata", 404, "study", "wado-rs"),
        ]
        first = loaded[0]
        assert (first["study_instance_uid"], first["client_address"], first["method"]) == (study, "10.0.0.7", "GET")
        assert first["response_bytes"] == len(search.content) and first["subject"] == ""
        assert loaded[1]["response_bytes"] == len(refused.content)
        assert loaded[2]["response_bytes"] == len(missing.content)
        assert series_uid not in {r["series_instance_uid"] for r in loaded}
        assert all("s3cret" not in str(dict(r)) for r in loaded)

        # Redelivery (a crash before the commit) adds nothing and changes nothing.
        assert await archive.load_warehouse.handle(records) == []
        again = await rows(database_url)
        assert [dict(r) for r in again] == [dict(r) for r in loaded]
    finally:
        await archive.close()
