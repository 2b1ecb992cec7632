"""The store log's associations through the real pieces: the bus log, the journal bus on
``log_queue``, the loader and ``warehouse.dimse_association_log`` (migration V4)."""

from __future__ import annotations

import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest

from dicomcloud.bootstrap import open_archive
from dicomcloud.domain.messages import LOG_QUEUE, DimseAssociation, encode
from dicomcloud.ports import Record
from dicomcloud.settings import Settings
from dicomcloud.usecases.bus_log import BusLog
from tests.conftest import fetch_rows

pytestmark = pytest.mark.integration

ROW = DimseAssociation(
    association_id=str(uuid.uuid4()),
    tenant_id="hosp-a",
    calling_ae_title="CT1",
    called_ae_title="HOSPA",
    address="10.1.2.3",
    started_at="2026-01-02T03:04:05+00:00",
    ended_at="2026-01-02T03:04:09.5+00:00",
    outcome="released",
    reason="",
    instances_stored=12,
    instances_failed=2,
    failure_statuses={"0xC000": 1, "0xA900": 1},
    bytes_received=6_300_000,
)


async def rows(database_url: str) -> list[dict[str, Any]]:
    return await fetch_rows(
        database_url, "SELECT * FROM warehouse.dimse_association_log ORDER BY started_at, tenant_id"
    )


async def test_associations_land_in_the_warehouse_once(tmp_path: Path, database_url: str) -> None:
    archive = await open_archive(Settings(data_dir=tmp_path, database_url=database_url))
    try:
        rejected = replace(
            ROW,
            association_id=str(uuid.uuid4()),
            tenant_id="hosp-b",
            called_ae_title="HOSPB",
            outcome="rejected",
            reason="calling AE title 'CT1' from 10.1.2.3 is outside the source networks",
            instances_stored=0,
            instances_failed=0,
            failure_statuses={},
            bytes_received=211,
        )
        log: BusLog[DimseAssociation] = BusLog(archive.bus, LOG_QUEUE, lambda r: r.association_id, name="test")
        log.append(ROW)
        log.append(rejected)
        await log.close()
        assert log.published == 2

        loader = archive.bus.consumer("loader", [LOG_QUEUE])
        records = await loader.poll(100, 0)
        assert len(records) == 2
        assert await archive.load_warehouse.handle(records) == []
        await loader.commit(records)
        loaded = await rows(database_url)
        assert [(r["tenant_id"], r["outcome"], r["called_ae_title"]) for r in loaded] == [
            ("hosp-a", "released", "HOSPA"),
            ("hosp-b", "rejected", "HOSPB"),
        ]
        released = loaded[0]
        assert str(released["association_id"]) == ROW.association_id
        assert (released["instances_stored"], released["instances_failed"], released["bytes_received"]) == (
            12, 2, 6_300_000
        )  # fmt: skip
        assert orjson.loads(str(released["failure_statuses"])) == {"0xC000": 1, "0xA900": 1}
        assert (released["ended_at"] - released["started_at"]).total_seconds() == 4.5
        assert loaded[1]["reason"].startswith("calling AE title 'CT1' from 10.1.2.3")

        # Redelivery (a crash before the commit) adds nothing and changes nothing.
        assert await archive.load_warehouse.handle(records) == []
        assert await rows(database_url) == loaded

        # What the table would refuse is dead-lettered, not retried.
        body = orjson.loads(encode(ROW))
        body["outcome"] = "maybe"
        bad = Record(LOG_QUEUE, "k", orjson.dumps(body), 0, 99)
        [dead] = await archive.load_warehouse.handle([bad])
        assert "outcome 'maybe'" in dead.reason
    finally:
        await archive.close()
