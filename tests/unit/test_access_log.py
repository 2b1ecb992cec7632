"""The WadoAccessLog at the HTTP edge: route templates, records, the bounded queue,
and that a failing or slow bus never fails nor slows the request it records."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Mount, Route

from dicomcloud.domain.messages import ACCESS_LOG_QUEUE, WadoAccessed, decode, encode
from dicomcloud.entrypoints.http.access_log import AccessLogMiddleware, build_record, match_route
from dicomcloud.entrypoints.http.app import create_app
from dicomcloud.errors import InvalidInput, Unavailable
from dicomcloud.settings import Settings
from dicomcloud.usecases.access_log import AccessLog, describe_route

STUDY, SERIES, SOP = "1.2.3", "1.2.3.4", "1.2.3.4.5"


@dataclass
class _Archive:
    settings: Settings


@pytest.fixture
def routes(tmp_path: Path) -> list[BaseRoute]:
    app = create_app(_Archive(Settings(data_dir=tmp_path)))  # type: ignore[arg-type]
    return list(app.routes)


def scope(method: str, path: str, query: bytes = b"") -> dict[str, object]:
    return {"type": "http", "method": method, "path": path, "root_path": "", "query_string": query, "headers": []}


@pytest.mark.parametrize(
    ("method", "path", "route", "service", "level"),
    [
        ("GET", "/dicom-web/studies", "/studies", "qido-rs", "study"),
        ("GET", f"/dicom-web/studies/{STUDY}/series", "/studies/{study}/series", "qido-rs", "series"),
        (
            "GET",
            f"/dicom-web/studies/{STUDY}/series/{SERIES}/instances",
            "/studies/{study}/series/{series}/instances",
            "qido-rs",
            "instance",
        ),
        ("GET", f"/dicom-web/studies/{STUDY}", "/studies/{study}", "wado-rs", "study"),
        ("GET", f"/dicom-web/studies/{STUDY}/metadata", "/studies/{study}/metadata", "wado-rs", "study"),
        (
            "GET",
            f"/tenants/acme/dicom-web/studies/{STUDY}/series/{SERIES}/metadata",
            "/studies/{study}/series/{series}/metadata",
            "wado-rs",
            "series",
        ),
        (
            "GET",
            f"/dicom-web/studies/{STUDY}/series/{SERIES}/instances/{SOP}/frames/1,2",
            "/studies/{study}/series/{series}/instances/{instance}/frames/{frames}",
            "wado-rs",
            "frames",
        ),
        (
            "GET",
            f"/dicom-web/studies/{STUDY}/series/{SERIES}/instances/{SOP}/bulkdata/7FE00010",
            "/studies/{study}/series/{series}/instances/{instance}/bulkdata/{tag}",
            "wado-rs",
            "bulkdata",
        ),
        (
            "GET",
            f"/dicom-web/studies/{STUDY}/series/{SERIES}/instances/{SOP}/rendered",
            "/studies/{study}/series/{series}/instances/{instance}/rendered",
            "wado-rs",
            "instance",
        ),
        (
            "GET",
            f"/dicom-web/studies/{STUDY}/series/{SERIES}/thumbnail",
            "/studies/{study}/series/{series}/thumbnail",
            "wado-rs",
            "series",
        ),
        ("POST", "/dicom-web/studies", "/studies", "stow-rs", "study"),
        ("POST", f"/tenants/acme/dicom-web/studies/{STUDY}", "/studies/{study}", "stow-rs", "study"),
        ("GET", "/wado", "/wado", "wado-uri", "instance"),
        ("GET", "/tenants/acme/wado", "/wado", "wado-uri", "instance"),
        ("DELETE", "/dicom-web/studies", "/studies", "", ""),  # 405: the route is known, no transaction
        ("HEAD", f"/dicom-web/studies/{STUDY}/metadata", "/studies/{study}/metadata", "wado-rs", "study"),
        ("GET", "/dicom-web/nothing/here", "", "", ""),
        ("GET", "/elsewhere", "", "", ""),
    ],
)
def test_route_template_service_and_level(
    routes: list[BaseRoute], method: str, path: str, route: str, service: str, level: str
) -> None:
    found = match_route(routes, scope(method, path))
    assert found.route == route
    assert describe_route(method, found.route) == (service, level)


def _record(routes: list[BaseRoute], method: str, path: str, query: bytes = b"") -> WadoAccessed:
    s = scope(method, path, query) | {"client": ("10.1.2.3", 5555)}
    return build_record(
        s,
        match_route(routes, s),
        default_tenant="default",
        requested_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        status=200,
        request_bytes=0,
        response_bytes=10,
        duration_ms=1.5,
    )


def test_record_carries_tenant_and_path_uids(routes: list[BaseRoute]) -> None:
    r = _record(routes, "GET", f"/tenants/acme/dicom-web/studies/{STUDY}/series/{SERIES}/instances/{SOP}/frames/1")
    uids = (r.study_instance_uid, r.series_instance_uid, r.sop_instance_uid)
    assert (r.tenant_id, uids) == ("acme", (STUDY, SERIES, SOP))
    assert (r.client_address, r.method, r.subject, r.status) == ("10.1.2.3", "GET", "", 200)
    assert decode(encode(r)) == r
    default = _record(routes, "GET", f"/dicom-web/studies/{STUDY}/metadata")
    assert (default.tenant_id, default.study_instance_uid, default.series_instance_uid) == ("default", STUDY, "")


def test_record_keeps_no_query_string_and_no_invalid_values(routes: list[BaseRoute]) -> None:
    path = "/tenants/bad%20tenant!/dicom-web/studies/not-a-uid\x00/metadata"
    r = _record(routes, "GET", path, b"access_token=s3cret")
    assert (r.tenant_id, r.study_instance_uid, r.route) == ("", "", "/studies/{study}/metadata")
    assert b"s3cret" not in encode(r)
    uri = _record(
        routes, "GET", "/wado", f"requestType=WADO&studyUID={STUDY}&seriesUID=x&objectUID={SOP}&token=s3cret".encode()
    )
    assert (uri.study_instance_uid, uri.series_instance_uid, uri.sop_instance_uid) == (STUDY, "", SOP)
    assert (uri.service, uri.level, uri.route) == ("wado-uri", "instance", "/wado")
    assert b"s3cret" not in encode(uri)


# --- the queue and its publisher ---------------------------------------------------


def record(n: int) -> WadoAccessed:
    return WadoAccessed(
        f"00000000-0000-0000-0000-{n:012d}", "2026-01-02T03:04:05+00:00", "default", "", "", "GET", "/studies",
        "qido-rs", "study", "", "", "", 200, 0, 1, 0.1,
    )  # fmt: skip


class RecordingBus:
    def __init__(self, failures: int = 0, delay: float = 0.0) -> None:
        self.failures = failures
        self.delay = delay
        self.published: list[tuple[str, str, bytes]] = []

    async def publish(self, items: Sequence[tuple[str, str, bytes]]) -> None:
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.failures:
            self.failures -= 1
            raise Unavailable("the bus is down")
        self.published.extend(items)

    def ids(self) -> list[str]:
        return [key for _, key, _ in self.published]


def test_full_queue_drops_the_oldest_and_counts() -> None:
    log = AccessLog(RecordingBus(), capacity=3)  # type: ignore[arg-type]
    started = time.perf_counter()
    for n in range(5):
        log.append(record(n))
    assert time.perf_counter() - started < 0.1
    assert (len(log), log.dropped) == (3, 2)
    assert [r.record_id[-1] for r in log._queue] == ["2", "3", "4"]


async def test_failed_batch_goes_back_in_order_and_is_published_later() -> None:
    bus = RecordingBus(failures=1)
    log = AccessLog(bus, batch_size=2, capacity=10)  # type: ignore[arg-type]
    for n in range(3):
        log.append(record(n))
    with pytest.raises(Unavailable):
        await log.publish_once()
    assert len(log) == 3 and bus.published == []
    await log.close()
    assert bus.ids() == [record(n).record_id for n in range(3)]
    assert {topic for topic, _, _ in bus.published} == {ACCESS_LOG_QUEUE}
    assert [decode(v) for _, _, v in bus.published] == [record(n) for n in range(3)]


async def test_failed_batch_put_back_into_a_full_queue_loses_the_oldest() -> None:
    bus = RecordingBus(failures=1, delay=0.05)
    log = AccessLog(bus, batch_size=2, capacity=3)  # type: ignore[arg-type]
    for n in range(3):
        log.append(record(n))
    publishing = asyncio.create_task(log.publish_once())
    await asyncio.sleep(0.01)  # the batch (0, 1) is out; two newer records arrive meanwhile
    log.append(record(3))
    log.append(record(4))
    with pytest.raises(Unavailable):
        await publishing
    assert [r.record_id[-1] for r in log._queue] == ["2", "3", "4"]
    assert log.dropped == 2


async def test_publisher_retries_until_the_bus_is_back() -> None:
    bus = RecordingBus(failures=3)
    log = AccessLog(bus, interval=0.01, max_backoff=0.05)  # type: ignore[arg-type]
    stop = asyncio.Event()
    task = asyncio.create_task(log.run(stop))
    for n in range(4):
        log.append(record(n))
    for _ in range(200):
        if len(bus.published) == 4:
            break
        await asyncio.sleep(0.01)
    stop.set()
    await task
    assert bus.ids() == [record(n).record_id for n in range(4)] and len(log) == 0


async def test_close_gives_up_after_its_timeout() -> None:
    log = AccessLog(RecordingBus(failures=10**6), batch_size=1)  # type: ignore[arg-type]
    log.append(record(1))
    started = time.perf_counter()
    await log.close(timeout=0.3)
    assert time.perf_counter() - started < 1.0 and len(log) == 1


# --- the middleware ------------------------------------------------------------------


async def _chunks() -> AsyncIterator[bytes]:
    for _ in range(3):
        yield b"x" * 1000
        await asyncio.sleep(0)


async def _metadata(request: Request) -> Response:
    return StreamingResponse(_chunks(), media_type="application/dicom+json")


async def _store(request: Request) -> Response:
    body = await request.body()
    return PlainTextResponse(str(len(body)))


async def _broken(request: Request) -> Response:
    raise RuntimeError("a bug")


def _app(log: AccessLog) -> Starlette:
    inner = [
        Route("/studies/{study}/series/{series}/metadata", _metadata),
        Route("/studies", _store, methods=["POST"]),
        Route("/studies/{study}", _broken),
    ]
    top: list[BaseRoute] = [Mount("/dicom-web", routes=inner), Mount("/tenants/{tenant}/dicom-web", routes=inner)]
    app = Starlette(routes=top)
    app.add_middleware(AccessLogMiddleware, access_log=log, routes=top, default_tenant="default")
    return app


def _client(app: Starlette) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40000), raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://test")


async def test_middleware_records_streamed_bytes_status_and_route() -> None:
    log = AccessLog(RecordingBus())  # type: ignore[arg-type]
    async with _client(_app(log)) as client:
        r = await client.get(f"/tenants/acme/dicom-web/studies/{STUDY}/series/{SERIES}/metadata?access_token=s3cret")
        assert r.status_code == 200 and len(r.content) == 3000
        r = await client.post("/dicom-web/studies", content=b"y" * 1234)
        assert r.status_code == 200
        r = await client.get("/dicom-web/nothing")
        assert r.status_code == 404
        r = await client.get(f"/dicom-web/studies/{STUDY}")
        assert r.status_code == 500
    metadata, stored, missing, broken = list(log._queue)
    assert (metadata.tenant_id, metadata.route, metadata.status, metadata.response_bytes) == (
        "acme", "/studies/{study}/series/{series}/metadata", 200, 3000,
    )  # fmt: skip
    assert (metadata.study_instance_uid, metadata.series_instance_uid, metadata.level) == (STUDY, SERIES, "series")
    assert b"s3cret" not in encode(metadata)
    assert (stored.service, stored.method, stored.request_bytes, stored.response_bytes) == ("stow-rs", "POST", 1234, 4)
    assert (missing.route, missing.status, missing.tenant_id) == ("", 404, "default")
    assert (broken.route, broken.status) == ("/studies/{study}", 500)
    assert all(r.duration_ms >= 0 for r in (metadata, stored, missing, broken))


@pytest.mark.parametrize("bus", [RecordingBus(failures=10**6), RecordingBus(delay=30.0)], ids=["failing", "hanging"])
async def test_a_failing_or_hanging_bus_neither_fails_nor_slows_requests(bus: RecordingBus) -> None:
    log = AccessLog(bus, batch_size=1, interval=0.01, max_backoff=0.02)  # type: ignore[arg-type]
    stop = asyncio.Event()
    publisher = asyncio.create_task(log.run(stop))
    try:
        async with _client(_app(log)) as client:
            started = time.perf_counter()
            for _ in range(20):
                r = await client.get(f"/dicom-web/studies/{STUDY}/series/{SERIES}/metadata")
                assert r.status_code == 200 and len(r.content) == 3000
            assert time.perf_counter() - started < 2.0
    finally:
        stop.set()
        publisher.cancel()
        await asyncio.gather(publisher, return_exceptions=True)
    assert bus.published == []
    assert len(log) >= 19  # still held for a later retry (one batch may be in flight)


@pytest.mark.parametrize(
    "change",
    [
        {"record_id": "not-a-uuid"},
        {"requested_at": "yesterday"},
        {"route": "/studies/\x00"},
        {"tenant_id": 7},
        {"status": "200"},
        {"response_bytes": -1},
        {"duration_ms": "fast"},
    ],
)
def test_malformed_record_is_refused_by_decode(change: dict[str, object]) -> None:
    """What the warehouse would refuse is dead-lettered by the loader, not retried forever."""
    body = orjson.loads(encode(record(1))) | change
    with pytest.raises(InvalidInput):
        decode(orjson.dumps(body))


async def test_a_failing_bus_is_retried_at_the_backoff_pace_however_busy() -> None:
    class CountingBus(RecordingBus):
        attempts = 0

        async def publish(self, items: Sequence[tuple[str, str, bytes]]) -> None:
            CountingBus.attempts += 1
            raise Unavailable("the bus is down")

    log = AccessLog(CountingBus(), batch_size=1, interval=0.01, max_backoff=0.1)  # type: ignore[arg-type]
    stop = asyncio.Event()
    task = asyncio.create_task(log.run(stop))
    for n in range(300):  # every append would wake a healthy publisher
        log.append(record(n))
        await asyncio.sleep(0.001)
    stop.set()
    await asyncio.wait_for(task, 1.0)
    assert CountingBus.attempts < 30 and len(log) == 300
