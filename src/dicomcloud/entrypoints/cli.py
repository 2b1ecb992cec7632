"""``dicomcloud <service>``: one CLI for every service (ARCHITECTURE §2)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import fields
from typing import TextIO

import orjson

from dicomcloud import __version__
from dicomcloud.bootstrap import open_archive
from dicomcloud.entrypoints.services import NEEDS_DATABASE, SERVICES, Service
from dicomcloud.errors import DicomCloudError
from dicomcloud.settings import Settings, load
from dicomcloud.usecases.dead_letters import DeadLetterEntry, list_dead_letters, replay_dead_letters
from dicomcloud.usecases.reindex import Progress, Reindex

log = logging.getLogger("dicomcloud")

_HELP = {
    "up": "run every service in one process on embedded defaults",
    "storescp": "C-ECHO / C-STORE SCP",
    "consumer": "index stored instances (storage_queue); route those the viewer cannot decode to conversion_queue "
    "[DICOMCLOUD_VIEWER_TRANSFER_SYNTAXES: comma-separated UIDs, default: what Cornerstone3D 5.x decodes]",
    "loader": "load the warehouse (dicom_image_queue, dicom_state_queue, log_queue, conversion_result_queue)",
    "converter": "write viewer-decodable renditions beside the originals (conversion_queue → conversion_result_queue)",
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
            help="redis://host:port/db[?prefix=P] for the read cache; empty: an in-process cache with the "
            "embedded bus, none with Kafka [DICOMCLOUD_REDIS_URL]",
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
                "--dimse-reuse-port",
                action="store_true",
                default=None,
                help="share the DIMSE port with other storescp processes (SO_REUSEPORT); the kernel "
                "spreads associations over them [DICOMCLOUD_DIMSE_REUSE_PORT]",
            )
            p.add_argument(
                "--ae-tenants",
                help="called AE → tenant map, e.g. 'CT1=hospa,MR1=hospb' [DICOMCLOUD_AE_TENANTS]",
            )
            p.add_argument(
                "--dimse-tenants-file",
                help="TOML file of tenants: called AE titles, allowed calling AE titles and source "
                "networks (README 'DIMSE tenants and limits') [DICOMCLOUD_DIMSE_TENANTS_FILE]",
            )
        p.add_argument("--log-level", help="[DICOMCLOUD_LOG_LEVEL, INFO]")
    _add_tools(sub)
    return parser


# --- one-shot commands: reindex, dlq ------------------------------------------------

_TOOLS = ("reindex", "dlq")
DLQ_VALUE_CHARS = 160  # of a dead letter's value shown by ``dlq list`` (--json: all of it)


def _archive_options(p: argparse.ArgumentParser, *, database: bool = True) -> None:
    p.add_argument("--data-dir", help="the archive's data dir [DICOMCLOUD_DATA_DIR, ./dicomcloud-data]")
    if database:
        p.add_argument("--database-url", help="postgresql://… ; empty: embedded server [DICOMCLOUD_DATABASE_URL]")
    p.add_argument("--bus", dest="bus_url", help="kafka://host:port[?prefix=…] ; empty: embedded [DICOMCLOUD_BUS_URL]")
    p.add_argument("--log-level", help="[DICOMCLOUD_LOG_LEVEL, INFO]")


def _add_tools(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    text = "rebuild the index, the warehouse rows and the metadata files from the files under ROOT"
    p = sub.add_parser("reindex", help=text, description=text + " (idempotent; exit 1 when a file was skipped)")
    _archive_options(p)
    p.add_argument("--tenant", help="only this tenant's folder")
    p.add_argument("--public-url", help="base URL written into BulkDataURIs, as the server's [DICOMCLOUD_PUBLIC_URL]")
    text = "list or replay dead letters (<topic>.dlq)"
    p = sub.add_parser("dlq", help=text, description=text)
    actions = p.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")
    for name, text in (
        ("list", "print the pending dead letters (commits nothing)"),
        ("replay", "publish the pending dead letters' values back to their topics, once"),
    ):
        a = actions.add_parser(name, help=text, description=text)
        _archive_options(a, database=False)
        a.add_argument(
            "--topic",
            action="append",
            default=[],
            help="an original topic, e.g. storage_queue (repeatable; default: every topic)",
        )
        if name == "list":
            a.add_argument("--json", action="store_true", help="one JSON array, values in full")


class _ProgressBar:
    """A bar redrawn on stderr when it is a terminal; otherwise a line every ``every`` files."""

    def __init__(self, stream: TextIO, every: int = 1000) -> None:
        self._stream = stream
        self._tty = stream.isatty()
        self._every = every
        self._phase = ""
        self._phase_start = time.monotonic()
        self._drawn = 0.0
        self._reported = 0
        self._finished = False

    def __call__(self, p: Progress) -> None:
        now = time.monotonic()
        if p.phase != self._phase:
            self.close()
            self._phase, self._phase_start, self._reported, self._finished = p.phase, now, 0, False
        finished = p.done >= p.total
        unit = "files" if p.phase == "index" else "studies"
        rate = p.done / (now - self._phase_start) if now > self._phase_start else 0.0
        line = f"{p.phase:<8} {p.done:>9,}/{p.total:,} {unit}  {rate:,.0f}/s  {p.skipped:,} skipped"
        if self._tty:
            if finished or now - self._drawn >= 0.1:
                width = 30
                filled = width * p.done // p.total if p.total else width
                self._stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {line}\x1b[K")
                self._stream.flush()
                self._drawn = now
        elif p.done - self._reported >= self._every or (finished and not self._finished):
            print(line, file=self._stream, flush=True)
            self._reported, self._finished = p.done, finished

    def close(self) -> None:
        if self._tty and self._drawn:
            self._stream.write("\n")
            self._stream.flush()
            self._drawn = 0.0


async def reindex_command(settings: Settings, tenant_id: str | None) -> int:
    archive = await open_archive(settings)
    try:
        bar = _ProgressBar(sys.stderr)
        reindex = Reindex(
            archive.blobs,
            archive.index,
            archive.warehouse,
            archive.metadata,
            cache=archive.cache,
            bus=archive.bus,
            viewer_transfer_syntaxes=archive.settings.viewer_transfer_syntaxes,
        )
        try:
            report = await reindex.run(tenant_id, bar)
        finally:
            bar.close()
    finally:
        await archive.close()
    print(
        f"reindex: {report.files_seen:,} files seen, {report.indexed:,} indexed, {len(report.skipped):,} skipped"
        f" ({report.studies:,} studies, {report.series:,} series"
        f"{'; metadata up to date' if not report.metadata_failed else ''})"
        f" in {report.seconds:.1f} s, {report.files_per_second:,.0f} files/s"
    )
    if report.temporary_files:
        print(f"  {report.temporary_files:,} temporary files (.tmp-*, unfinished writes) passed over")
    if report.conversions_requested:
        print(f"  {report.conversions_requested:,} instances sent to the converter (a viewer cannot decode them)")
    for skipped in report.skipped:
        print(f"  skipped {skipped.path}: {skipped.reason}")
    for failed in report.metadata_failed:
        print(f"  metadata {failed.path}: {failed.reason}")
    return 0 if report.ok else 1


def _waits(settings: Settings) -> dict[str, float]:
    """How long to wait for a consumer to join and for more records (dead_letters.py)."""
    return {"first_wait": 20.0, "idle": 1.5} if settings.bus_url.startswith("kafka://") else {}


def _show(entry: DeadLetterEntry) -> str:
    value = entry.value if len(entry.value) <= DLQ_VALUE_CHARS else entry.value[:DLQ_VALUE_CHARS] + "…"
    origin = f"{entry.topic}[{entry.partition}]@{entry.offset}" if entry.readable else "(unknown)"
    return (
        f"{entry.dlq_topic}[{entry.dlq_partition}]@{entry.dlq_offset}  from {origin}  key {entry.key}\n"
        f"  reason: {entry.reason}\n  value:  {value}"
    )


async def dlq_command(settings: Settings, action: str, topics: Sequence[str], as_json: bool) -> int:
    archive = await open_archive(settings, database=False)
    try:
        if action == "list":
            entries = await list_dead_letters(archive.bus, topics, **_waits(settings))
            if as_json:
                print(orjson.dumps([e.as_json() for e in entries], option=orjson.OPT_INDENT_2).decode())
            else:
                for entry in entries:
                    print(_show(entry))
                print(f"{len(entries)} dead letter(s) pending")
            return 0
        report = await replay_dead_letters(archive.bus, topics, **_waits(settings))
    finally:
        await archive.close()
    for entry in report.replayed:
        print(f"replayed {entry.dlq_topic}@{entry.dlq_offset} to {entry.topic} (key {entry.key}): was {entry.reason}")
    for entry in report.not_replayable:
        print(f"not replayable, passed over: {_show(entry)}")
    print(f"{len(report.replayed)} dead letter(s) replayed, {len(report.not_replayable)} not replayable")
    return 1 if report.not_replayable else 0


def _run_tool(args: argparse.Namespace, settings: Settings) -> int:
    try:
        if args.command == "reindex":
            return asyncio.run(reindex_command(settings, args.tenant))
        return asyncio.run(dlq_command(settings, args.dlq_command, args.topic, getattr(args, "json", False)))
    except DicomCloudError as exc:
        print(f"dicomcloud {args.command}: {exc.reason}", file=sys.stderr)
        embedded = not settings.bus_url.startswith("kafka://")
        if embedded and "in use by another" in exc.reason:
            print(
                f"dicomcloud {args.command}: the embedded bus belongs to the running `dicomcloud up`; "
                f"`dicomcloud {args.command}` works on it only while that is stopped: stop it, run this, start it "
                "again (over --bus kafka://… the services can keep running)",
                file=sys.stderr,
            )
        return 1
    except KeyboardInterrupt:
        print(f"dicomcloud {args.command}: interrupted", file=sys.stderr)
        return 1


async def run(services: Sequence[Service], settings: Settings) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    archive = await open_archive(settings, database=any(service in NEEDS_DATABASE for service in services))
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
    known = {f.name for f in fields(Settings)}
    overrides = {k: v for k, v in vars(args).items() if k in known}
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
    # pydicom logs a traceback for each codec plugin that fails before it tries the next;
    # the outcome (and its reason) is ours to report.
    logging.getLogger("pydicom").setLevel(logging.CRITICAL)
    if args.command in _TOOLS:
        return _run_tool(args, settings)
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
