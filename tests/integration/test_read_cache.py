"""The read cache on real PostgreSQL and real Redis, through the real use cases and routes.

Instances go in through Ingest, the consumer's and the loader's handlers
(as tests/integration/test_pipeline.py drives them); answers come out of the
DICOMweb application itself (httpx over ASGI). Five reads are watched: the
series of the study (QIDO, index), the instances of the series and of the
study across the tenant (QIDO, warehouse; study and tenant generations), and
the series and study metadata.

The shared test Redis (``DICOMCLOUD_TEST_REDIS``) serves the ordinary cases,
under a key prefix per test; outages and restarts use a ``redis-server`` of
the test's own (tests/redis_server.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom.dataset import Dataset
from redis.asyncio import Redis

from dicomcloud.adapters.redis_cache import RedisCache, split_prefix
from dicomcloud.bootstrap import Archive, open_archive
from dicomcloud.domain.layout import SeriesKey, series_metadata_path
from dicomcloud.domain.messages import (
    DICOM_IMAGE_QUEUE,
    DICOM_STATE_QUEUE,
    LOG_QUEUE,
    STORAGE_QUEUE,
    Source,
)
from dicomcloud.entrypoints.http.app import create_app
from dicomcloud.ports import Record
from dicomcloud.settings import Settings
from dicomcloud.usecases.index_instances import IndexInstances
from dicomcloud.usecases.load_warehouse import LoadWarehouse
from dicomcloud.usecases.read_cache import ReadCache
from tests.factory import make_instance, make_series, part10_bytes
from tests.integration.test_pipeline import drain
from tests.redis_server import ThrowawayRedis, free_port, needs_redis, needs_redis_server, test_redis_url, with_prefix

pytestmark = pytest.mark.integration
SOURCE = Source("dimse", "SCU", "DICOMCLOUD", "127.0.0.1")
BASE = "http://127.0.0.1:8080"  # the archive's own base: BulkDataURIs as stored
LOADER_TOPICS = [DICOM_IMAGE_QUEUE, DICOM_STATE_QUEUE, LOG_QUEUE]


@dataclass
class Series:
    patient_id: str
    datasets: list[Dataset]

    @property
    def study(self) -> str:
        return str(self.datasets[0].StudyInstanceUID)

    @property
    def series(self) -> str:
        return str(self.datasets[0].SeriesInstanceUID)

    def one_more(self) -> Dataset:
        ds = make_instance(PatientID=self.patient_id, InstanceNumber=len(self.datasets) + 1, rows=16, columns=16)
        self.datasets.append(ds)
        return ds


def new_series(n: int) -> Series:
    patient_id = f"RC{uuid.uuid4().hex[:8]}"
    return Series(patient_id, make_series(n, PatientID=patient_id, rows=16, columns=16))


@contextlib.asynccontextmanager
async def opened(tmp_path: Path, database_url: str, redis_url: str) -> AsyncIterator[Archive]:
    archive = await open_archive(Settings(data_dir=tmp_path / "data", database_url=database_url, redis_url=redis_url))
    try:
        yield archive
    finally:
        await archive.close()


async def store(archive: Archive, *datasets: Dataset) -> None:
    for ds in datasets:
        await archive.ingest.store(part10_bytes(ds), "default", SOURCE)


async def poll(archive: Archive, group: str, topics: list[str]) -> tuple[Any, list[Record]]:
    consumer = archive.bus.consumer(group, topics)
    return consumer, await consumer.poll(1000, 0)


class Reader:
    """The five watched reads through the DICOMweb application."""

    def __init__(self, archive: Archive, s: Series, base: str = BASE) -> None:
        self.archive, self.s = archive, s
        self.http = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(archive)), base_url=base)

    async def get(self, path: str, **headers: str) -> httpx.Response:
        r = await self.http.get(f"/dicom-web{path}", headers=headers)
        assert r.status_code in (200, 204, 304), f"GET {path}: {r.status_code} {r.text[:300]}"
        return r

    async def counts(self) -> dict[str, int]:
        st, se = self.s.study, self.s.series
        series = (await self.get(f"/studies/{st}/series")).json()
        md = await self.get(f"/studies/{st}/series/{se}/metadata")
        return {
            "series QIDO": series[0]["00201209"]["Value"][0],  # NumberOfSeriesRelatedInstances
            "instance QIDO": len((await self.get(f"/studies/{st}/series/{se}/instances")).json()),
            "tenant instance QIDO": len((await self.get(f"/instances?StudyInstanceUID={st}")).json()),
            "series metadata": len(md.json()),
            "study metadata": len((await self.get(f"/studies/{st}/metadata")).json()),
        }

    async def close(self) -> None:
        await self.http.aclose()


def all_(n: int) -> dict[str, int]:
    return dict.fromkeys(
        ("series QIDO", "instance QIDO", "tenant instance QIDO", "series metadata", "study metadata"), n
    )


@contextlib.asynccontextmanager
async def with_series(
    tmp_path: Path, database_url: str, redis_url: str, n: int
) -> AsyncIterator[tuple[Archive, Series, Reader]]:
    """An archive holding a new series of ``n`` instances, indexed and loaded, and its reader."""
    async with opened(tmp_path, database_url, redis_url) as archive:
        s = new_series(n)
        await store(archive, *s.datasets)
        await drain(archive)
        reader = Reader(archive, s)
        try:
            yield archive, s, reader
        finally:
            await reader.close()


async def redis_keys(url: str) -> list[str]:
    plain, prefix = split_prefix(url)
    client = Redis.from_url(plain)
    try:
        return sorted([k.decode()[len(prefix) :] async for k in client.scan_iter(match=f"{prefix}*")])
    finally:
        await client.aclose()


# --- the ordinary life of a cached answer ------------------------------------------------


@needs_redis
async def test_cached_answers_follow_new_instances(tmp_path: Path, database_url: str) -> None:
    url = test_redis_url()
    async with with_series(tmp_path, database_url, url, 3) as (archive, s, reader):
        assert await reader.counts() == all_(3)
        stats = archive.cache.stats
        assert (stats.hits, stats.misses) == (0, 5)
        assert await reader.counts() == all_(3)
        assert (stats.hits, stats.misses) == (5, 5)
        keys = await redis_keys(url)
        assert len([k for k in keys if k.startswith("dc:default:md:")]) == 2
        assert len([k for k in keys if k.startswith("dc:default:qido:")]) == 3

        # A warm hit reads no file: gone from disk, still answered.
        md_path = f"/studies/{s.study}/series/{s.series}/metadata"
        first = await reader.get(md_path)
        stored = archive.blobs.absolute(series_metadata_path(SeriesKey("default", s.study, s.series)))
        stored.unlink()
        stored.with_name(stored.name + ".gz").unlink()
        again = await reader.get(md_path)
        assert again.content == first.content and again.headers["etag"] == first.headers["etag"]

        await store(archive, s.one_more())
        consumer, records = await poll(archive, "consumer", [STORAGE_QUEUE])
        assert await archive.index_instances.handle(records) == []
        await consumer.commit(records)
        # Indexed, not yet in the warehouse: instance searches (cached again now) lag.
        assert await reader.counts() == {**all_(4), "instance QIDO": 3, "tenant instance QIDO": 3}
        await drain(archive)  # the loader's turn: its invalidation moves them
        assert await reader.counts() == all_(4)
        assert (await reader.get(md_path)).headers["etag"] != first.headers["etag"]
        assert await reader.counts() == all_(4)
        assert (stats.hits, stats.misses) == (5 + 2 + 1 + 5, 5 + 5 + 5)


@needs_redis
async def test_etag_is_the_same_with_and_without_the_cache(tmp_path: Path, database_url: str) -> None:
    async with with_series(tmp_path, database_url, test_redis_url(), 2) as (archive, s, reader):
        paths = [f"/studies/{s.study}/series/{s.series}/metadata", f"/studies/{s.study}/metadata"]
        cached = [(await reader.get(p)).headers["etag"] for p in paths]
        cached_hit = [(await reader.get(p)).headers["etag"] for p in paths]
        archive.cache = ReadCache(None, 3600)  # another process, without a cache
        uncached = [(await reader.get(p)).headers["etag"] for p in paths]
        assert cached == cached_hit == uncached
        assert all(e.startswith('W/"') for e in cached)


@needs_redis
async def test_answers_under_another_base_url_are_kept_apart(tmp_path: Path, database_url: str) -> None:
    async with with_series(tmp_path, database_url, test_redis_url(), 2) as (archive, s, own):
        proxied = Reader(archive, s, base="http://viewer.example:9000")
        try:
            for _ in range(2):  # the second round comes from the cache
                for reader, base in ((own, BASE), (proxied, "http://viewer.example:9000")):
                    md = (await reader.get(f"/studies/{s.study}/series/{s.series}/metadata")).json()
                    assert md[0]["7FE00010"]["BulkDataURI"].startswith(f"{base}/dicom-web/studies/")
                    rows = (await reader.get(f"/studies/{s.study}/instances")).json()
                    assert rows[0]["00081190"]["Value"][0].startswith(f"{base}/dicom-web/studies/")
            assert archive.cache.stats.hits == 4
        finally:
            await proxied.close()


# --- a writer cut off from the cache ----------------------------------------------------


@needs_redis
async def test_a_writer_cut_off_from_redis_keeps_indexing_and_pays_when_back(
    tmp_path: Path, database_url: str
) -> None:
    url = test_redis_url()
    async with with_series(tmp_path, database_url, url, 2) as (archive, s, reader):
        assert await reader.counts() == all_(2)
        # A consumer and a loader that cannot reach Redis (a partition: only they).
        unreachable = ReadCache(RedisCache(f"redis://127.0.0.1:{free_port()}/0"), 3600, retry_seconds=0.05)
        blind_consumer = IndexInstances(archive.blobs, archive.index, archive.bus, unreachable)
        blind_loader = LoadWarehouse(archive.warehouse, unreachable)

        await store(archive, s.one_more())
        consumer, records = await poll(archive, "consumer", [STORAGE_QUEUE])
        assert await blind_consumer.handle(records) == []  # indexed: no waiting for the cache
        await consumer.commit(records)
        loader, loads = await poll(archive, "loader", LOADER_TOPICS)
        assert await blind_loader.handle(loads) == []
        await loader.commit(loads)
        assert unreachable.owes_epoch_bump
        assert (await reader.counts())["series QIDO"] == 2  # the window a partition opens

        # The partition heals: the writer's background retry reaches Redis and bumps the epoch.
        assert unreachable._cache is not None
        await unreachable._cache.close()
        unreachable._cache = RedisCache(url)
        for _ in range(100):
            if not unreachable.owes_epoch_bump:
                break
            await asyncio.sleep(0.05)
        assert not unreachable.owes_epoch_bump
        assert await reader.counts() == all_(3)
        await unreachable.close()


# --- outages ---------------------------------------------------------------------------


async def handle_without_cache(archive: Archive) -> None:
    """Consumer and loader batches whose invalidation fails: handled and committed all the same."""
    for group, topics, handler in (
        ("consumer", [STORAGE_QUEUE], archive.index_instances.handle),
        ("loader", LOADER_TOPICS, archive.load_warehouse.handle),
    ):
        consumer, records = await poll(archive, group, topics)
        assert records
        assert await handler(records) == []
        await consumer.commit(records)
        await consumer.close()
    assert archive.cache.owes_epoch_bump


@needs_redis_server
async def test_reads_survive_a_dead_redis_and_a_restart_from_a_snapshot(
    tmp_path: Path, database_url: str, throwaway: ThrowawayRedis
) -> None:
    url = with_prefix(throwaway.url)
    async with with_series(tmp_path, database_url, url, 2) as (archive, s, reader):
        assert await reader.counts() == all_(2)
        assert await reader.counts() == all_(2)
        assert archive.cache.stats.hits == 5
        throwaway.save()  # the snapshot holds these answers and generations
        throwaway.kill()

        await store(archive, s.one_more())
        await handle_without_cache(archive)
        started = time.monotonic()
        assert await reader.counts() == all_(3)  # from PostgreSQL and the files
        assert await reader.counts() == all_(3)
        assert time.monotonic() - started < 3.0
        assert archive.cache.stats.bypasses >= 10

        throwaway.start()  # back, from the snapshot: stale answers under current-looking keys
        # Another process that saw no error: the new incarnation alone makes it bump.
        archive.cache = ReadCache(RedisCache(url), 3600)
        assert await reader.counts() == all_(3)
        assert archive.cache.stats.epoch_bumps == 1
        assert archive.cache.stats.misses == 5
        assert await reader.counts() == all_(3)
        assert archive.cache.stats.hits == 5
        await archive.cache.close()


@needs_redis_server
async def test_answers_cached_before_an_outage_are_not_served_after_it(
    tmp_path: Path, database_url: str, throwaway: ThrowawayRedis
) -> None:
    """A paused Redis keeps its data: only the epoch bump after the error protects."""
    async with with_series(tmp_path, database_url, with_prefix(throwaway.url), 2) as (archive, s, reader):
        try:
            assert await reader.counts() == all_(2)
            throwaway.pause()
            await store(archive, s.one_more())
            await handle_without_cache(archive)  # INCRs time out: the stale answers stay current-looking
            assert await reader.counts() == all_(3)
            throwaway.resume()
            await asyncio.sleep(1.1)  # the breaker lets requests through again
            bumps = archive.cache.stats.epoch_bumps
            assert await reader.counts() == all_(3)
            assert archive.cache.stats.epoch_bumps >= bumps + 1  # the writer's owed bump, or the reader's
            assert not archive.cache.owes_epoch_bump
            await drain(archive)
            assert await reader.counts() == all_(3)
        finally:
            throwaway.resume()
