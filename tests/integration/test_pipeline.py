"""Ingest → consumer → loader → webworker on real PostgreSQL and the durable journal."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import orjson
import pytest

from dicomcloud.bootstrap import open_archive
from dicomcloud.domain.layout import InstanceKey, SeriesKey, StudyKey, instance_path
from dicomcloud.domain.messages import Source
from dicomcloud.settings import Settings
from tests.factory import make_series, part10_bytes

pytestmark = pytest.mark.integration
SOURCE = Source("dimse", "SCU", "DICOMCLOUD", "127.0.0.1")


async def drain(archive) -> list:
    """Run consumer and loader until the bus has nothing left (every batch must succeed);
    return what the consumer got."""
    from dicomcloud.domain.messages import (
        DICOM_IMAGE_QUEUE,
        DICOM_STATE_QUEUE,
        LOG_QUEUE,
        STORAGE_QUEUE,
    )

    seen: list = []

    for group, topics, handler in (
        ("consumer", [STORAGE_QUEUE], archive.index_instances.handle),
        (
            "loader",
            [DICOM_IMAGE_QUEUE, DICOM_STATE_QUEUE, LOG_QUEUE],
            archive.load_warehouse.handle,
        ),
    ):
        consumer = archive.bus.consumer(group, topics)
        try:
            while records := await consumer.poll(1000, 0):
                assert await handler(records) == []
                await consumer.commit(records)
                if group == "consumer":
                    seen.extend(records)
        finally:
            await consumer.close()
    return seen


async def test_store_index_metadata_and_redelivery(tmp_path: Path, database_url: str) -> None:
    settings = Settings(data_dir=tmp_path, database_url=database_url)
    archive = await open_archive(settings)
    try:
        series = make_series(5, rows=64, columns=64)
        for ds in series:
            await archive.ingest.store(part10_bytes(ds), "default", SOURCE)
        handled = await drain(archive)
        key = InstanceKey(
            "default",
            series[0].StudyInstanceUID,
            series[0].SeriesInstanceUID,
            series[0].SOPInstanceUID,
        )
        state = await archive.index.series_state(key.series)
        assert state is not None and state.number_of_series_related_instances == 5
        study = await archive.index.study_state(key.series.study)
        assert study is not None and study.number_of_study_related_instances == 5
        assert len(await archive.index.instances(key.series)) == 5

        path = await archive.metadata.ensure_series(key.series)
        objects = orjson.loads(archive.blobs.read(path))
        assert [o["00080018"]["Value"][0] for o in objects] == [d.SOPInstanceUID for d in series]
        assert objects[0]["7FE00010"]["BulkDataURI"].endswith(
            f"/instances/{series[0].SOPInstanceUID}/bulkdata/7FE00010"
        )
        study_path = await archive.metadata.ensure_study(key.series.study)
        assert len(orjson.loads(archive.blobs.read(study_path))) == 5
        before = archive.blobs.read(path)

        # Redelivery of the whole batch (a crash before the commit) changes nothing.
        assert len(handled) == 5
        await archive.index_instances.handle(handled)
        await drain(archive)
        state = await archive.index.series_state(key.series)
        assert state is not None and state.number_of_series_related_instances == 5
        assert state.revision == state.metadata_revision  # nothing new: metadata still current
        await archive.metadata.ensure_series(key.series)
        assert archive.blobs.read(path) == before
    finally:
        await archive.close()

    # Reopen: state and the consumer group's offsets survived.
    archive = await open_archive(settings)
    try:
        consumer = archive.bus.consumer("consumer", ["storage_queue"])
        assert await consumer.poll(1000, 0) == []
        state = await archive.index.series_state(key.series)
        assert state is not None and state.number_of_series_related_instances == 5
        study = await archive.index.study_state(StudyKey("default", key.study_instance_uid))
        assert study is not None and study.number_of_study_related_series == 1
        assert study.number_of_study_related_instances == 5
    finally:
        await archive.close()


async def test_unreadable_file_is_dead_lettered_not_blocking(
    tmp_path: Path, database_url: str
) -> None:
    archive = await open_archive(Settings(data_dir=tmp_path, database_url=database_url))
    try:
        good, bad = make_series(2, rows=16, columns=16)
        await archive.ingest.store(part10_bytes(bad), "default", SOURCE)
        # The file is damaged after acknowledgement (disk fault): a poison message.
        bad_key = InstanceKey(
            "default", bad.StudyInstanceUID, bad.SeriesInstanceUID, bad.SOPInstanceUID
        )
        archive.blobs.absolute(instance_path(bad_key)).write_bytes(b"garbage")
        await archive.ingest.store(part10_bytes(good), "default", SOURCE)
        consumer = archive.bus.consumer("consumer", ["storage_queue"])
        records = await consumer.poll(100, 0)
        dead = await archive.index_instances.handle(records)
        assert [d.record.offset for d in dead] == [records[0].offset]
        assert "unreadable" in dead[0].reason
        state = await archive.index.series_state(
            SeriesKey("default", good.StudyInstanceUID, good.SeriesInstanceUID)
        )
        assert state is not None and state.number_of_series_related_instances == 1
    finally:
        await archive.close()


async def test_concurrent_publishers_share_fsync(tmp_path: Path, database_url: str) -> None:
    archive = await open_archive(replace(Settings(), data_dir=tmp_path, database_url=database_url))
    try:
        series = make_series(20, rows=16, columns=16)
        await asyncio.gather(
            *(archive.ingest.store(part10_bytes(d), "default", SOURCE) for d in series)
        )
        await drain(archive)
        state = await archive.index.series_state(
            SeriesKey("default", series[0].StudyInstanceUID, series[0].SeriesInstanceUID)
        )
        assert state is not None and state.number_of_series_related_instances == 20
    finally:
        await archive.close()
