"""Each service of ARCHITECTURE §2 as a coroutine over an open Archive.

``dicomcloud <service>`` runs one; ``dicomcloud up`` runs them all in one
process over the embedded bus. Every service stops when ``stop`` is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import uvicorn

from dicomcloud.bootstrap import Archive
from dicomcloud.domain.messages import (
    DICOM_IMAGE_QUEUE,
    DICOM_STATE_QUEUE,
    LOG_QUEUE,
    STORAGE_QUEUE,
)
from dicomcloud.entrypoints.http.app import create_app
from dicomcloud.entrypoints.storescp import StoreSCP
from dicomcloud.errors import Unavailable
from dicomcloud.usecases.consume import consume

log = logging.getLogger(__name__)
Service = Callable[[Archive, asyncio.Event], Coroutine[Any, Any, None]]


async def storescp(archive: Archive, stop: asyncio.Event) -> None:
    scp = StoreSCP(archive.settings, archive.ingest, asyncio.get_running_loop())
    s = archive.settings
    try:
        await asyncio.to_thread(scp.start)
    except OSError as exc:
        raise Unavailable(
            f"the DICOM listener could not listen on {s.dimse_host}:{s.dimse_port}: {exc.strerror}"
        ) from exc
    print(f"DIMSE  C-ECHO/C-STORE SCP  AE {s.ae_title} on {s.dimse_host}:{s.dimse_port}", flush=True)
    try:
        await stop.wait()
    finally:
        await asyncio.to_thread(scp.stop)


async def consumer(archive: Archive, stop: asyncio.Event) -> None:
    await consume(archive.bus, "consumer", [STORAGE_QUEUE], archive.index_instances.handle, stop, linger=0.25)


async def loader(archive: Archive, stop: asyncio.Event) -> None:
    await consume(
        archive.bus,
        "loader",
        [DICOM_IMAGE_QUEUE, DICOM_STATE_QUEUE, LOG_QUEUE],
        archive.load_warehouse.handle,
        stop,
        linger=0.5,
    )


async def webworker(archive: Archive, stop: asyncio.Event) -> None:
    """Periodic scan for series whose metadata is behind their index state."""
    while not stop.is_set():
        try:
            built = await archive.metadata.run_once(quiet_seconds=archive.settings.webworker_quiet_seconds)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("webworker scan failed; retrying")
            built = 0
        if not built:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), archive.settings.webworker_interval)


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # Signals belong to the process (see cli.run); uvicorn must not re-raise them.
        yield


async def server(archive: Archive, stop: asyncio.Event) -> None:
    s = archive.settings
    config = uvicorn.Config(
        create_app(archive),
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
    try:
        await stop.wait()
    finally:
        http.should_exit = True
        await task


SERVICES: dict[str, Service] = {
    "storescp": storescp,
    "consumer": consumer,
    "loader": loader,
    "webworker": webworker,
    "server": server,
}
