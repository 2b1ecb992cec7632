"""``dicomcloud <service>``: one CLI for every service (ARCHITECTURE §2)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from dicomcloud import __version__
from dicomcloud.bootstrap import open_archive
from dicomcloud.entrypoints.services import SERVICES, Service
from dicomcloud.errors import DicomCloudError
from dicomcloud.settings import Settings, load

log = logging.getLogger("dicomcloud")

_HELP = {
    "up": "run every service in one process on embedded defaults",
    "storescp": "C-ECHO / C-STORE SCP",
    "consumer": "index stored instances (storage_queue)",
    "loader": "load the warehouse (dicom_image_queue, dicom_state_queue, log_queue)",
    "webworker": "write series and study metadata files",
    "server": "DICOMweb: QIDO-RS, WADO-RS, STOW-RS",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dicomcloud", description="A scalable DICOMweb archive.")
    parser.add_argument("--version", action="version", version=f"dicomcloud {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="SERVICE")
    for name, text in _HELP.items():
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument(
            "--data-dir",
            help="where files, bus journal and embedded PostgreSQL live [DICOMCLOUD_DATA_DIR, ./dicomcloud-data]",
        )
        p.add_argument(
            "--database-url",
            help="postgresql://… ; empty: embedded server in the data dir [DICOMCLOUD_DATABASE_URL]",
        )
        p.add_argument(
            "--bus",
            dest="bus_url",
            help="kafka://host:port[?partitions=3&prefix=…] ; empty: embedded journal in the data dir "
            "[DICOMCLOUD_BUS_URL]",
        )
        p.add_argument(
            "--redis-url",
            help="redis://host:port/db for the read cache; empty: in-process cache [DICOMCLOUD_REDIS_URL]",
        )
        if name in ("up", "server"):
            p.add_argument("--http-host", help="[DICOMCLOUD_HTTP_HOST, 127.0.0.1]")
            p.add_argument("--http-port", type=int, help="[DICOMCLOUD_HTTP_PORT, 8080]")
            p.add_argument("--public-url", help="base URL written into BulkDataURIs [DICOMCLOUD_PUBLIC_URL]")
        if name in ("up", "storescp"):
            p.add_argument("--dimse-host", help="[DICOMCLOUD_DIMSE_HOST, 0.0.0.0]")
            p.add_argument("--dimse-port", type=int, help="[DICOMCLOUD_DIMSE_PORT, 11112]")
            p.add_argument("--ae-title", help="[DICOMCLOUD_AE_TITLE, DICOMCLOUD]")
            p.add_argument(
                "--ae-tenants",
                help="called AE → tenant map, e.g. 'CT1=hospa,MR1=hospb' [DICOMCLOUD_AE_TENANTS]",
            )
        p.add_argument("--log-level", help="[DICOMCLOUD_LOG_LEVEL, INFO]")
    return parser


async def run(services: Sequence[Service], settings: Settings) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    archive = await open_archive(settings)
    print(f"dicomcloud {__version__}: data in {settings.data_dir.resolve()}", flush=True)
    tasks = [asyncio.create_task(service(archive, stop)) for service in services]
    try:
        done, _ = await asyncio.wait([*tasks, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
        failed = [t for t in done if t in tasks and t.exception() is not None]
        stop.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for r in results:
            if isinstance(r, DicomCloudError):
                print(f"dicomcloud: {r.reason}", file=sys.stderr, flush=True)
            elif isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError):
                log.error("service failed: %r", r)
        print("dicomcloud stopped", flush=True)
        return 1 if failed else 0
    finally:
        await archive.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if k != "command"}
    try:
        settings = load(overrides)
    except ValueError as exc:
        print(f"dicomcloud: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    services = list(SERVICES.values()) if args.command == "up" else [SERVICES[args.command]]
    try:
        return asyncio.run(run(services, settings))
    except DicomCloudError as exc:
        print(f"dicomcloud: {exc.reason}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
