"""Rebuild the index, the warehouse rows and the metadata files from the files under ROOT.

For disaster recovery (the database is lost, the files are not) and for
migrating an existing archive laid out as ``<TenantID>/<Study>/<Series>/<SOP>.dcm``
(``domain/layout.py``). Every instance file becomes the InstanceStored event
Ingest would have published for it — filed by the same :func:`parse_part10`,
TransferSyntaxUID from its File Meta Information, its size, and its mtime as
the received time — and the events go in batches through the very handlers the
services run: :class:`IndexInstances` (header → index), then
:class:`LoadWarehouse` (the DicomImageMeta / DicomStateMeta it produced → the
warehouse), then :class:`MetadataBuilder` for every study touched.

**Directly, not through the bus.** The handlers are called in this process,
and what IndexInstances publishes is collected in memory and handed to
LoadWarehouse at once, because

- a one-shot command has to know each file's outcome to report it and to
  choose its exit code; through the bus the outcome would surface in the
  consumer's log and a dead-letter topic, some time later, in another process;
- it needs no service running, and does not replay a whole archive through
  the journal (one fsync'ed record per instance, kept until every group
  committed it) or through Kafka topics other consumers share;
- nothing is appended to ``log_queue``: the store log records receptions, and
  a reindex receives nothing, so it is left as it was.

**Idempotent.** The index counts an instance once and takes a copy as newer
only when its received time is later (the mtime does not change between
runs, and an instance indexed when it arrived has a later time than its
file's mtime); warehouse loads are upserts (a second run rewrites equal rows,
only their ``loaded_at`` moves); a metadata file is rewritten only when its
series' revision moved or the file is missing. A second run changes no
answer, revision or file.

**Skipped, with the reason:** a file not at ``<tenant>/<study>/<series>/<sop>.dcm``
with valid UIDs, a file that is not DICOM or cannot be read, a file whose
UIDs differ from its path (indexing it would point to a file that is not
there), a header lacking what the index needs. Temporary files of
:meth:`FileBlobStore.write_atomic` (``.tmp-*``), the converter's renditions
(``<SOP>.dcm.rendition-<TransferSyntaxUID>``, the same instances in another
syntax: ``domain/layout.py``) and the ``<tenant>/metadata`` folders are not
instance files and are passed over, not counted as skipped. A study
whose metadata file cannot be built (``MetadataBuilder`` lists the ``.dcm`` files
of a series folder, so a damaged one there breaks its series) is reported and
the other studies go on.

Speed: the files are filed (``parse_part10`` on the first 64 KiB) by a pool
of threads while the previous batch is indexed; IndexInstances parses the
full header of a batch in a thread of its own (ARCHITECTURE: heavy CPU work
runs off the event loop). Both are pydicom, pure Python under one GIL, so the
threads overlap file reads and database round trips but parse on one core.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from dicomcloud.domain.layout import (
    INSTANCE_SUFFIX,
    METADATA_DIR,
    InstanceKey,
    StudyKey,
    is_rendition_name,
    parse_instance_path,
    study_metadata_path,
)
from dicomcloud.domain.messages import CONVERSION_QUEUE, STORAGE_QUEUE, InstanceStored, Source, encode
from dicomcloud.domain.part10 import normalize_part10, parse_part10
from dicomcloud.domain.uids import validate_tenant
from dicomcloud.errors import DatasetMismatch, DicomCloudError, InvalidInput, NotFound
from dicomcloud.ports import BlobStore, Bus, BusConsumer, Index, Record, Warehouse
from dicomcloud.usecases.build_metadata import MetadataBuilder
from dicomcloud.usecases.index_instances import IndexInstances
from dicomcloud.usecases.ingest import instance_stored
from dicomcloud.usecases.load_warehouse import LoadWarehouse
from dicomcloud.usecases.read_cache import ReadCache

TMP_PREFIX = ".tmp-"  # FileBlobStore.write_atomic's temporary names (adapters/filesystem.py)
HEAD_BYTES = 64 * 1024  # enough for the header up to (0020,000E) of nearly every file
SOURCE = Source("reindex")
_KEY_FIELDS = ("tenant_id", "study_instance_uid", "series_instance_uid", "sop_instance_uid")
_KEY_NAMES = ("TenantID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


@dataclass(frozen=True, slots=True)
class Skipped:
    path: str  # relative to ROOT
    reason: str


@dataclass(frozen=True, slots=True)
class Progress:
    """Where a run is: ``phase`` is "index" (files) or "metadata" (studies)."""

    phase: str
    done: int
    total: int
    skipped: int


@dataclass
class ReindexReport:
    files_seen: int = 0
    indexed: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    temporary_files: int = 0
    renditions: int = 0  # the converter's renditions, passed over
    conversions_requested: int = 0  # instances a viewer cannot decode, sent to the converter
    metadata_failed: list[Skipped] = field(default_factory=list)  # study metadata files not built
    studies: int = 0
    series: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.skipped and not self.metadata_failed

    @property
    def files_per_second(self) -> float:
        return self.files_seen / self.seconds if self.seconds > 0 else 0.0


@dataclass
class _Scan:
    files: list[tuple[str, InstanceKey]] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    temporary_files: int = 0
    renditions: int = 0


def scan(root: Path, tenant_id: str | None = None) -> _Scan:
    """The instance files under ROOT (or one tenant's folder), in path order (blocking).

    Files that cannot be instances by their path alone are skipped here.
    """
    result = _Scan()
    top = root / tenant_id if tenant_id else root
    for dirpath, dirnames, filenames in os.walk(top):
        here = Path(dirpath)
        rel_dir = here.relative_to(root).as_posix()
        depth = 0 if rel_dir == "." else rel_dir.count("/") + 1
        if depth == 1 and METADATA_DIR in dirnames:
            dirnames.remove(METADATA_DIR)  # derived files (build_metadata.py)
        dirnames.sort()
        for name in sorted(filenames):
            if name.startswith(TMP_PREFIX):
                result.temporary_files += 1
                continue
            if is_rendition_name(name):
                result.renditions += 1
                continue
            rel = name if depth == 0 else f"{rel_dir}/{name}"
            if not name.endswith(INSTANCE_SUFFIX):
                result.skipped.append(Skipped(rel, f"not an instance file (<SOPInstanceUID>{INSTANCE_SUFFIX})"))
                continue
            if depth != 3:
                result.skipped.append(Skipped(rel, "not at <TenantID>/<Study>/<Series>/<SOP>.dcm"))
                continue
            try:
                key = parse_instance_path(rel)
            except InvalidInput as exc:
                result.skipped.append(Skipped(rel, f"not a storage path: {exc.reason}"))
                continue
            result.files.append((rel, key))
    return result


def _mismatch(found: InstanceKey, expected: InstanceKey) -> str:
    for attr, name in zip(_KEY_FIELDS, _KEY_NAMES, strict=True):
        got, want = getattr(found, attr), getattr(expected, attr)
        if got != want:
            return f"its {name} {got} differs from {want} in its path"
    return "its UIDs differ from its path"


def read_event(root: Path, rel: str, key: InstanceKey) -> InstanceStored | Skipped:
    """The InstanceStored event of one stored file, or why it is skipped (blocking; a thread)."""
    path = root / rel
    try:
        stat = os.stat(path)
        with open(path, "rb") as f:
            head = f.read(HEAD_BYTES)
        try:
            parsed = parse_part10(normalize_part10(head), key.tenant_id, whole=False)
        except DicomCloudError:
            if len(head) == stat.st_size:
                raise
            parsed = parse_part10(normalize_part10(path.read_bytes()), key.tenant_id, whole=False)  # a long header
        if parsed.key != key:
            raise DatasetMismatch(_mismatch(parsed.key, key))
    except DicomCloudError as exc:
        return Skipped(rel, exc.reason)
    except OSError as exc:
        return Skipped(rel, f"unreadable: {exc.strerror or exc}")
    except Exception as exc:  # pydicom on a damaged file; the same outcome as in IndexInstances
        return Skipped(rel, f"unreadable DICOM: {type(exc).__name__}: {exc}")
    received_at = datetime.fromtimestamp(stat.st_mtime_ns / 1e9, UTC).isoformat()
    return instance_stored(parsed, stat.st_size, received_at, SOURCE)


class _Collected:
    """A Bus that keeps what is published, so that LoadWarehouse gets it directly."""

    def __init__(self) -> None:
        self._items: list[tuple[str, str, bytes]] = []

    async def publish(self, items: Sequence[tuple[str, str, bytes]]) -> None:
        self._items.extend(items)

    def publish_blocking(self, items: Sequence[tuple[str, str, bytes]]) -> None:
        self._items.extend(items)

    def consumer(self, group: str, topics: Sequence[str]) -> BusConsumer:
        raise NotImplementedError("reindex hands the records over directly")

    async def close(self) -> None:
        return None

    def take(self) -> list[Record]:
        items, self._items = self._items, []
        return [Record(topic, key, value, 0, i) for i, (topic, key, value) in enumerate(items)]


class Reindex:
    """The use case; ``run`` is the whole command."""

    def __init__(
        self,
        blobs: BlobStore,
        index: Index,
        warehouse: Warehouse,
        metadata: MetadataBuilder,
        *,
        batch_size: int = 256,
        threads: int = 4,
        cache: ReadCache | None = None,
        bus: Bus | None = None,
        viewer_transfer_syntaxes: Sequence[str] | None = None,
    ) -> None:
        self._blobs = blobs
        self._collected = _Collected()
        # Conversion requests (instances a viewer cannot decode) go to the real bus, for
        # the converter; everything else IndexInstances publishes is loaded here directly.
        self._bus = bus
        # With the cache: servers running meanwhile must not keep answers from before.
        self._index_instances = IndexInstances(
            blobs, index, self._collected, cache, viewer_transfer_syntaxes if bus is not None else None
        )
        self._load_warehouse = LoadWarehouse(warehouse, cache)
        self._metadata = metadata
        self._batch_size = batch_size
        self._threads = threads

    async def run(
        self, tenant_id: str | None = None, progress: Callable[[Progress], None] | None = None
    ) -> ReindexReport:
        started = time.monotonic()
        root = self._blobs.root
        if tenant_id is not None:
            validate_tenant(tenant_id)
            if not (root / tenant_id).is_dir():
                raise NotFound(f"there is no folder of tenant {tenant_id} under {root}")
        found = await asyncio.to_thread(scan, root, tenant_id)
        report = ReindexReport(
            files_seen=len(found.files) + len(found.skipped),
            skipped=list(found.skipped),
            temporary_files=found.temporary_files,
            renditions=found.renditions,
        )

        def tell(phase: str, done: int, total: int) -> None:
            if progress is not None:
                progress(Progress(phase, done, total, len(report.skipped)))

        done = len(found.skipped)
        tell("index", done, report.files_seen)
        studies: set[StudyKey] = set()
        series: set[tuple[str, str, str]] = set()
        batches = [found.files[i : i + self._batch_size] for i in range(0, len(found.files), self._batch_size)]
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(self._threads, thread_name_prefix="reindex") as pool:

            async def read(batch: list[tuple[str, InstanceKey]]) -> list[InstanceStored | Skipped]:
                return await asyncio.gather(
                    *(loop.run_in_executor(pool, read_event, root, rel, key) for rel, key in batch)
                )

            pending = asyncio.ensure_future(read(batches[0])) if batches else None
            try:
                for i in range(len(batches)):
                    assert pending is not None
                    results = await pending
                    # File the next batch while this one is indexed.
                    pending = asyncio.ensure_future(read(batches[i + 1])) if i + 1 < len(batches) else None
                    indexed = await self._apply(results, report)
                    for event in indexed:
                        studies.add(StudyKey(event.tenant_id, event.study_instance_uid))
                        series.add((event.tenant_id, event.study_instance_uid, event.series_instance_uid))
                    done += len(results)
                    tell("index", done, report.files_seen)
            finally:
                if pending is not None:
                    pending.cancel()
                    await asyncio.gather(pending, return_exceptions=True)

        report.studies, report.series = len(studies), len(series)
        ordered = sorted(studies, key=lambda k: (k.tenant_id, k.study_instance_uid))
        report.metadata_failed = await self._build_metadata(ordered, tell)
        report.seconds = time.monotonic() - started
        return report

    async def _apply(self, results: list[InstanceStored | Skipped], report: ReindexReport) -> list[InstanceStored]:
        """Index one batch and load its warehouse rows; the events indexed."""
        events: list[InstanceStored] = []
        for result in results:
            if isinstance(result, Skipped):
                report.skipped.append(result)
            else:
                events.append(result)
        if not events:
            return []
        records = [Record(STORAGE_QUEUE, e.study_instance_uid, encode(e), 0, i) for i, e in enumerate(events)]
        dead = await self._index_instances.handle(records)
        refused = {d.record.offset for d in dead}
        for d in dead:
            report.skipped.append(Skipped(events[d.record.offset].file_path, d.reason))
        rows = self._collected.take()
        conversions = [r for r in rows if r.topic == CONVERSION_QUEUE]
        if conversions and self._bus is not None:
            await self._bus.publish([(r.topic, r.key, r.value) for r in conversions])
            report.conversions_requested += len(conversions)
        rows = [r for r in rows if r.topic != CONVERSION_QUEUE]
        if rows:
            unloadable = await self._load_warehouse.handle(rows)
            if unloadable:  # our own messages, just encoded: a bug, not a bad file
                raise DicomCloudError(f"the warehouse refused a record: {unloadable[0].reason}")
        indexed = [e for i, e in enumerate(events) if i not in refused]
        report.indexed += len(indexed)
        return indexed

    async def _build_metadata(self, studies: list[StudyKey], tell: Callable[[str, int, int], None]) -> list[Skipped]:
        """Bring the metadata files of every touched study (and its series) up to date."""
        queue = iter(studies)
        done = 0
        failed: list[Skipped] = []
        tell("metadata", 0, len(studies))

        async def worker() -> None:
            nonlocal done
            for key in queue:
                try:
                    await self._metadata.ensure_study(key)
                except Exception as exc:  # e.g. a damaged .dcm in a series folder: the other studies go on
                    failed.append(Skipped(study_metadata_path(key), f"not built: {type(exc).__name__}: {exc}"))
                done += 1
                tell("metadata", done, len(studies))

        await asyncio.gather(*(worker() for _ in range(min(4, len(studies)))))
        return failed
