"""Each service of ARCHITECTURE §2 as a coroutine over an open Archive.

``dicomcloud <service>`` runs one; ``dicomcloud up`` runs them all in one
process over the embedded bus. Every service stops when ``stop`` is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import uvicorn

from dicomcloud.bootstrap import Archive, token_verifier
from dicomcloud.domain.messages import (
    ACCESS_LOG_QUEUE,
    CONVERSION_QUEUE,
    CONVERSION_RESULT_QUEUE,
    DICOM_IMAGE_QUEUE,
    DICOM_STATE_QUEUE,
    LOG_QUEUE,
    STORAGE_QUEUE,
    DimseAssociation,
)
from dicomcloud.entrypoints.http import cpu
from dicomcloud.entrypoints.http.app import create_app
from dicomcloud.entrypoints.storescp import StoreSCP
from dicomcloud.errors import Unavailable
from dicomcloud.usecases.access_log import AccessLog
from dicomcloud.usecases.bus_log import BusLog
from dicomcloud.usecases.consume import consume
from dicomcloud.usecases.schedule_metadata import MetadataSchedule

log = logging.getLogger(__name__)
Service = Callable[[Archive, asyncio.Event], Coroutine[Any, Any, None]]


async def storescp(archive: Archive, stop: asyncio.Event) -> None:
    """The SCP, and beside it the publisher of its association log (log_queue), flushed
    once the SCP has stopped."""
    associations: BusLog[DimseAssociation] = BusLog(
        archive.bus, LOG_QUEUE, _association_id, name="association log"
    )
    scp = StoreSCP(archive.settings, archive.ingest, asyncio.get_running_loop(), associations)
    s = archive.settings
    try:
        await asyncio.to_thread(scp.start)
    except OSError as exc:
        raise Unavailable(
            f"the DICOM listener could not listen on {s.dimse_host}:{s.dimse_port}: {exc.strerror}"
        ) from exc
    print(f"DIMSE  C-ECHO/C-STORE SCP  AE {s.ae_title} on {s.dimse_host}:{s.dimse_port}", flush=True)
    async with associations.running():  # flushed once the SCP has stopped
        try:
            await stop.wait()
        finally:
            await asyncio.to_thread(scp.stop)


def _association_id(record: DimseAssociation) -> str:
    return record.association_id


async def consumer(archive: Archive, stop: asyncio.Event) -> None:
    await consume(archive.bus, "consumer", [STORAGE_QUEUE], archive.index_instances.handle, stop, linger=0.1)


async def loader(archive: Archive, stop: asyncio.Event) -> None:
    await consume(
        archive.bus,
        "loader",
        [DICOM_IMAGE_QUEUE, DICOM_STATE_QUEUE, LOG_QUEUE, CONVERSION_RESULT_QUEUE, ACCESS_LOG_QUEUE],
        archive.load_warehouse.handle,
        stop,
        linger=0.1,
    )


async def converter(archive: Archive, stop: asyncio.Event) -> None:
    """Renditions for what the viewer cannot decode (usecases/convert.py). Small batches:
    a conversion takes tens of milliseconds to seconds, and offsets are committed per batch."""
    await consume(archive.bus, "converter", [CONVERSION_QUEUE], archive.convert.handle, stop, max_records=8)


async def webworker(archive: Archive, stop: asyncio.Event) -> None:
    """Metadata files, built soon after each series' last change (dicom_state_queue events,
    debounced per series), with a periodic scan of the index as the safety net."""
    s = archive.settings
    schedule = MetadataSchedule(s.webworker_quiet_seconds, s.webworker_max_delay_seconds)
    events = asyncio.create_task(consume(archive.bus, "webworker", [DICOM_STATE_QUEUE], schedule.handle, stop))
    next_scan = 0.0
    try:
        while not stop.is_set() and not events.done():
            due = schedule.due()
            try:
                # ensure_study brings every stale series of the study up to date first
                for study in dict.fromkeys(key.study for key in due):
                    await archive.metadata.ensure_study(study)
                if time.monotonic() >= next_scan:
                    next_scan = time.monotonic() + s.webworker_interval
                    await archive.metadata.run_once(
                        quiet_seconds=s.webworker_quiet_seconds, max_delay_seconds=s.webworker_max_delay_seconds
                    )
            except asyncio.CancelledError:
                raise
            except Exception:
                # The index still says these series are behind: the next scan retries them.
                log.exception("webworker: building metadata failed; the scan retries")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.05)
    finally:
        await events


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # Signals belong to the process (see cli.run); uvicorn must not re-raise them.
        yield


async def server(archive: Archive, stop: asyncio.Event) -> None:
    """DICOMweb over uvicorn. Every request is recorded in the access log, whose
    publisher runs beside the server and is flushed once the server has stopped."""
    s = archive.settings
    access_log = AccessLog(archive.bus)
    verifier = token_verifier(s)
    config = uvicorn.Config(
        create_app(archive, access_log, verifier),
        host=s.http_host,
        port=s.http_port,
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_keep_alive=30,
        server_header=False,
    )
    try:
        # Probe the address first, so that a port in use is our error rather than
        # uvicorn's sys.exit(). (uvicorn binds it itself: given a ready socket, its
        # uvloop transports would leave Nagle's algorithm on — 40 ms per response.)
        family = socket.getaddrinfo(s.http_host, s.http_port, type=socket.SOCK_STREAM)[0][0]
        socket.create_server((s.http_host, s.http_port), family=family).close()
    except OSError as exc:
        raise Unavailable(f"the HTTP server could not listen on {s.http_host}:{s.http_port}: {exc.strerror}") from exc
    cpu.configure((os.cpu_count() or 1) if s.render_workers < 0 else s.render_workers)
    try:
        # the access log is flushed once the server has answered its last request
        async with access_log.running():
            http = _Server(config)
            task = asyncio.create_task(http.serve())
            while not http.started and not task.done():
                await asyncio.sleep(0.02)
            if task.done():
                await task
                raise Unavailable(f"the HTTP server on {s.http_host}:{s.http_port} stopped at start")
            print(
                f"HTTP   DICOMweb  {s.base_url}/dicom-web   (tenants: {s.base_url}/tenants/<tenant>/dicom-web)",
                flush=True,
            )
            if verifier is not None:
                print(f"       OAuth2 bearer tokens of {s.auth_issuer} (audience {s.auth_audience})", flush=True)
                await verifier.prefetch()
            else:
                print("       no authentication (DICOMCLOUD_AUTH_ISSUER is not set)", flush=True)
            try:
                await stop.wait()
            finally:
                http.should_exit = True
                await task
                cpu.stop()
    finally:
        if verifier is not None:
            await verifier.close()


SERVICES: dict[str, Service] = {
    "storescp": storescp,
    "consumer": consumer,
    "loader": loader,
    "converter": converter,
    "webworker": webworker,
    "server": server,
}
# Every service but storescp and converter (files and bus only) reads or writes the index or warehouse.
NEEDS_DATABASE = frozenset(SERVICES[name] for name in ("consumer", "loader", "webworker", "server"))
